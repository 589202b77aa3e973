"""Compile the Triton kernels for NVIDIA GPUs on a machine without one (ptxas ships with triton).

The interpreter (how CI runs the kernels) accepts code the GPU compiler rejects, so this runs the real host
wrappers with triton's launcher replaced by a recorder, then compiles every recorded launch ahead of time
with the specialization the JIT would apply (16-byte aligned pointers and integers divisible by 16 marked
`tt.divisibility=16`, integers equal to 1 made constants). Prints registers, spill bytes, spill loads and
stores inside loops and, with --sass DIR, writes each kernel's SASS.

    python tests/kernels/aot_check.py [--arch 90] [--sass DIR] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).parent)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from ddq_format.kernels.registry import SPLIT_COLUMNS_ENV  # noqa: E402
from sass_loops import loop_spills  # noqa: E402

_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int64: "*i64",
          torch.int32: "*i32", torch.int16: "*i16", torch.uint8: "*u8", torch.int8: "*i8"}


def record(fn_calls):
    """Run fn_calls() with every Triton launch recorded instead of run: [(kernel, args, kwargs)]."""
    calls = []
    real = JITFunction.run

    def fake(self, *args, grid, warmup, **kwargs):
        calls.append((self, args, kwargs))
    JITFunction.run = fake
    try:
        fn_calls()
    finally:
        JITFunction.run = real
    return calls


def specialize(fn, args, kwargs):
    """(signature, constexprs, attrs, options) as the JIT would build them for these arguments."""
    opts = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    consts = {k: v for k, v in kwargs.items() if k not in opts}
    sig, attrs = {}, {}
    names = [n for n in fn.arg_names if n not in consts]
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        v = args[names.index(name)]
        if isinstance(v, torch.Tensor):
            sig[name] = _TYPES[v.dtype]
            div = v.data_ptr() % 16 == 0
        elif isinstance(v, bool):
            sig[name] = "i1"
            div = False
        else:
            if v == 1:
                sig[name] = "constexpr"
                consts[name] = 1
                continue
            sig[name] = "i32" if -2**31 <= v < 2**31 else "i64"
            div = v % 16 == 0
        if div:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs, opts


def resources(cubin: bytes) -> dict:
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
        line = next(ln for ln in out.splitlines() if "REG:" in ln)
        sass = subprocess.run([str(tool), "-sass", f.name], capture_output=True, text=True).stdout
    fields = dict(kv.split(":") for kv in line.split() if ":" in kv)
    return {"regs": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields["LOCAL"]),
            "loop_spills": loop_spills(sass), "sass": sass}


def compile_calls(calls, arch: int):
    target = GPUTarget("cuda", arch, 32)
    out = []
    for fn, args, kwargs in calls:
        sig, consts, attrs, opts = specialize(fn, args, kwargs)
        src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
        k = triton.compile(src, target=target, options=opts)
        res = resources(k.asm["cubin"])
        keys = ("HAS_BASE", "DELTA", "SEGMENTS", "DOT", "BLOCK_B", "BLOCK_R", "BLOCK_C", "GPC", "KP", "NQ", "LANES", "TB",
                "WALK", "BLOCK_S", "CLIP", "SHARD", "COLMAP", "SEARCH", "CLASSES")
        out.append({"kernel": fn.__name__, "config": {k_: v for k_, v in consts.items() if k_ in keys},
                    "num_warps": opts.get("num_warps", 4), **res})
    return out


def scenarios(quick: bool = False):
    """The launches the dispatch makes for representative deltas (alpha 8, k 4, h_g 128; a cycle-walking
    group; csr_parts m 8; seeded_rans), at batch 1, 5 and 16, fp16. quick: the serving-path subset (batch 1
    and 16 of seeded, batch 1 of csr_parts, SGMV, decode, rANS lanes)."""
    from kernel_builders import make_delta
    from ddq_format.kernels import CompressedDelta, delta_segments
    from ddq_format.kernels import dispatch, triton_decode, triton_linear, triton_rans
    rng = np.random.default_rng(0)

    def delta(rows, cols, **kw):
        enc = make_delta(rng, rows, cols, **kw)
        entry = {"name": "t", "kind": "compressed", "shape": [rows, cols], "dtype": "F16", "encoding": enc.encoding,
                 "params": enc.params,
                 "buffers": {k: {"dtype": dt, "length": int(a.nbytes)} for k, (dt, a) in enc.buffers.items()}}
        bufs = {k: np.ascontiguousarray(a).view(np.uint8).reshape(-1) for k, (_, a) in enc.buffers.items()}
        return entry, bufs, CompressedDelta.from_entry(entry, bufs, "cpu", backend="torch")

    s_entry, s_bufs, seeded = delta(64, 4096, encoding="seeded", alpha=8, group_size=128, bits=4)  # as a 7B layer
    # a row-parallel rank's shard cut inside groups (CLIP: columns range-checked)
    shard = CompressedDelta.from_entry(s_entry, s_bufs, "cpu", backend="torch", cols=(100, 2100))
    seeded512 = delta(64, 512, encoding="seeded", alpha=8, group_size=128, bits=4)[2]
    walk = delta(64, 480, encoding="seeded", alpha=4, group_size=48, bits=3)[2]
    csr = delta(64, 512, encoding="csr_parts", alpha=8, group_size=128, bits=4, parts=8)[2]
    rans_entry, rans_bufs, _ = delta(64, 512, encoding="seeded_rans", alpha=8, group_size=128, bits=4)
    # the planner's split at a mean alpha of 8: 410 hot columns at alpha 2, the rest at 12
    split = delta(64, 4096, encoding="seeded_rans_split", alpha=12, group_size=120, bits=4, hot=(410, 2, 128))[2]
    os.environ[SPLIT_COLUMNS_ENV] = "complement"  # the same, its rest class reading the hot list's complement
    try:
        split_c = delta(64, 4096, encoding="seeded_rans_split", alpha=12, group_size=120, bits=4, hot=(410, 2, 128))[2]
    finally:
        del os.environ[SPLIT_COLUMNS_ENV]
    w = torch.randn(64, 512, dtype=torch.float16)
    w4k = torch.randn(64, 4096, dtype=torch.float16)
    b = torch.randn(64, dtype=torch.float16)

    def calls():
        for d in (seeded, csr) if quick else (seeded, walk, csr):
            tab, consts = dispatch.table(d), d.layout.consts([d])
            for B in ((1, 16) if d is seeded else (1,)) if quick else (1, 5, 16):
                x = torch.randn(B, d.shape[1], dtype=torch.float16)
                wd = {512: w, 4096: w4k}.get(d.shape[1]) if d is not walk else torch.randn(64, 480, dtype=torch.float16)
                triton_linear.fused_linear(x, wd, b, d.layout.kind, tab, consts)
                triton_linear.delta_matmul(x, d.layout.kind, tab, consts, 64)
            decoder = triton_decode.seeded_rows if d.layout.kind == 1 else triton_decode.csr_scatter
            triton_decode.run(decoder, tab, d.shape, torch.float16, "cpu", consts)
        tab, consts = dispatch.table(shard), shard.layout.consts([shard])
        x = torch.randn(1, shard.shape[1], dtype=torch.float16)
        triton_linear.fused_linear(x, torch.randn(64, shard.shape[1], dtype=torch.float16), b, 1, tab, consts)
        triton_decode.run(triton_decode.seeded_rows, tab, shard.shape, torch.float16, "cpu", consts)
        if not quick:
            triton_decode.run(triton_decode.seeded_scatter, dispatch.table(seeded), seeded.shape, torch.float16,
                              "cpu", seeded.layout.consts([seeded]))
            triton_linear.fused_linear(torch.randn(1, 4096, dtype=torch.float16), w4k, b, 0, dispatch.table(seeded), {})
        for sd in (split, split_c):
            for B in (1, 16):  # split: both column classes in one fused (or delta-only) launch
                x = torch.randn(B, 4096, dtype=torch.float16)
                triton_linear.fused_linear(x, w4k, b, *dispatch.launch_args(sd))
                triton_linear.delta_matmul(x, *dispatch.launch_args(sd), 64)
                # bench_kernels.two_launches: the rest class fused, the hot class delta-only
                triton_linear.fused_linear(x, w4k, b, *dispatch.launch_args(sd.parts[1]))
                triton_linear.delta_matmul(x, *dispatch.launch_args(sd.parts[0]), 64)
            x = torch.randn(16, 4096, dtype=torch.float16)  # SGMV: both column classes in one launch
            for n in (4, 16):  # 4 and 1 tokens per delta
                seg = delta_segments(torch.arange(16) % n, n)
                tab, launches = dispatch.multi_tables([sd, seeded] * (n // 2))
                triton_linear.multi_matmul(x, torch.zeros(16, 64, dtype=torch.float16),
                                           [(k, tab, c) for k, c in launches], seg)
        for B, n in ((16, 16),) if quick else ((16, 16), (64, 16)):
            x = torch.randn(B, 512, dtype=torch.float16)
            seg = delta_segments(torch.arange(B) % n, n)
            tab, launches = dispatch.multi_tables([seeded512, csr] * (n // 2))
            triton_linear.multi_matmul(x, torch.zeros(B, 64, dtype=torch.float16), [(k, tab, c) for k, c in launches],
                                       seg)
        p = rans_entry["params"]
        off = np.frombuffer(rans_bufs["stream_offsets"].tobytes(), "<u4").astype(np.int64) // 2
        per_stream = p["rows_per_stream"] * 64  # 64 kept per row
        triton_rans.decode_lanes(torch.from_numpy(rans_bufs["streams"].copy()).view(torch.int16),
                                 torch.from_numpy(off), torch.from_numpy(triton_rans.decoder_table(p["freqs"])),
                                 off.size - 1, per_stream,
                                 64 * 64 - (off.size - 2) * per_stream)
    return record(calls)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--sass", type=Path)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    seen, rows = set(), []
    for r in compile_calls(scenarios(a.quick), a.arch):
        key = (r["kernel"], json.dumps(r["config"], sort_keys=True), r["num_warps"])
        if key in seen:
            continue
        seen.add(key)
        if a.sass:
            a.sass.mkdir(parents=True, exist_ok=True)
            (a.sass / f"{len(rows):02d}-{r['kernel']}.sass").write_text(r["sass"])
        rows.append({k: v for k, v in r.items() if k != "sass"})
    if a.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['kernel']:28s} warps={r['num_warps']} regs={r['regs']:3d} spill={r['stack'] + r['local']:4d} "
                  f"in-loop={r['loop_spills']} "
                  f"{r['config']}")


if __name__ == "__main__":
    main()
