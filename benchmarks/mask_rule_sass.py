"""Static GPU cost of the cheaper mask rules of benchmarks/mask_rules.py: SASS instructions per kept element.

    python benchmarks/mask_rule_sass.py            # sm_90, no GPU needed (ptxas and cuobjdump ship with triton)

The seeded products' forward mask (`triton_seeded._fwd`, kept index -> offset in the group) is replaced by
each candidate rule in a fresh process, then the first two launches `tests/kernels/aot_check.py --quick`
records (fused base + delta and delta-only products at 1 token, 4096 columns, alpha 8, h_g 128, k 4: no
cycle-walking) are compiled ahead of time, and the instructions of each kernel's outer loop are counted.
One step of that loop covers BLOCK_R x GPC (row, group) pairs of all their KP kept elements on 4 warps
(8 x 16 x 16 = 2048 kept elements, 512 per warp), so instructions per kept element = loop instructions / 512
(the method of kernels-issue10.md's bounds; the fused kernel's loop also holds the base W loads and FMAs).
These are counts, not timings.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ddq_format.kernels.triton_common import perm_round  # noqa: E402

RULES = ("spec", "rounds1", "affine")
WARPS = 4


def kept_per_warp_step(r: dict) -> int:
    """Kept elements one warp multiplies per step of the outer loop: BLOCK_R x GPC pairs of KP."""
    return r["block_r"] * r["gpc"] * r["kp"] // WARPS


@triton.jit
def _rounds1(x, a0, m0, a1, m1, a2, m2, msk, sh):
    """benchmarks/mask_rules.py's rounds1: the first of the spec's three rounds."""
    return perm_round(x, a0, m0, msk, sh)


@triton.jit
def _affine(x, a0, m0, a1, m1, a2, m2, msk, sh):
    """benchmarks/mask_rules.py's affine: (x + a) * m mod 2^w."""
    return ((x + a0) * m0) & msk


def outer_loop(sass: str) -> int:
    """Instructions of the longest loop (a backward branch and its target, both included)."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    best = 0
    for a, text in ins:
        t = re.search(r"\bBRA\b[^;]*?0x([0-9a-f]+)", text)
        if t and int(t.group(1), 16) <= a:
            best = max(best, sum(1 for b, _ in ins if int(t.group(1), 16) <= b <= a))
    return best


def child(rule: str) -> None:
    """In this process: patch the forward mask, compile the first two launches, print their loop counts."""
    sys.path.insert(0, str(ROOT / "tests" / "kernels"))
    import aot_check

    from ddq_format.kernels import triton_seeded
    if rule != "spec":
        triton_seeded._fwd = {"rounds1": _rounds1, "affine": _affine}[rule]
    calls = aot_check.scenarios(quick=True)[:2]
    rows = []
    for r in aot_check.compile_calls(calls, 90):
        c = r["config"]
        if c["BLOCK_B"] != 1 or c["KP"] < 16:  # one pass per group: the loop's instructions are all its work
            raise SystemExit(f"unexpected launch {c}: the count assumes 1 token and KP >= kept per group")
        rows.append({"kernel": f"{'fused' if c['HAS_BASE'] else 'delta'}, {c['BLOCK_B']} token"
                               f"{'s' if c['BLOCK_B'] > 1 else ''}", "tokens": c["BLOCK_B"], "kp": c["KP"],
                     "gpc": c["GPC"], "block_r": c["BLOCK_R"], "regs": r["regs"], "loop": outer_loop(r["sass"])})
    print(json.dumps(rows))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(sys.argv[2])
    out = {}
    for rule in RULES:
        with tempfile.TemporaryDirectory() as cache:  # no compiled kernel reused across rules
            env = {**os.environ, "TRITON_CACHE_DIR": cache}
            env.pop("TRITON_INTERPRET", None)
            res = subprocess.run([sys.executable, __file__, "--child", rule], capture_output=True, text=True,
                                 env=env)
        if res.returncode:
            raise SystemExit(f"{rule}: {res.stderr[-2000:]}")
        out[rule] = json.loads(res.stdout.strip().splitlines()[-1])
    if len({json.dumps(v) for v in out.values()}) != len(out):
        raise SystemExit("two rules compiled to the same loops: the patch did not reach the compiler")
    print("| kernel (4096 columns) | rule | registers | loop instructions | per kept element | / spec |")
    print("|---|---|---:|---:|---:|---:|")
    for i, spec in enumerate(out["spec"]):
        for rule in RULES:
            r = out[rule][i]
            per = r["loop"] / kept_per_warp_step(r)
            print(f"| {r['kernel']} | {rule} | {r['regs']} | {r['loop']} | {per:.2f} | "
                  f"{r['loop'] / spec['loop']:.2f} |")


if __name__ == "__main__":
    main()
