"""Quality at equal ALL-TENSOR true bytes: the project's --target-ratio planner against DeltaDQ's fixed settings,
DARE, magnitude, BitDelta (mean and distilled scales, with and without dropout), low-rank, Delta-CoMe, DeltaMix
and DeltaZip, from 8x to 2048x.

    python benchmarks/quality.py                       # the example pair (built/cached by `ddq example build`)
    python benchmarks/quality.py --quick               # fewer settings per method
    python benchmarks/quality.py --bounded --workers 2  # the sweep of benchmarks/results/quality.md (~1-2 h, 2 cores)
    python benchmarks/quality.py --only "target,DeltaZip" --name quality-part
    python benchmarks/quality.py --render results/quality.csv more.csv   # re-draw table and plot only

Every setting is converted with ddq_format.converters.convert into a real .ddq file, applied to the base with
ddq_format.loaders.apply_delta and scored on the example task: teacher-forced exact match, answer NLL, and mean
KL(fine-tune || compressed) on held-out prose. Sizes come from the file (ddq_format.accounting):
  all-tensor true ratio = fp16 bytes of every tensor's delta / every byte the tensors take (buffers, padding,
  header entries and records; the copied config/tokenizer files excluded), the x axis;
  linear-only = fp16 bytes / stored bytes of the decoder's linear layers (embeddings and lm_head excluded).
Every method compresses the embeddings with its own procedure. Calibration (h_g search, seed search, the
planner, GPTQ/SparseGPT Hessians, BitDelta's distillation) uses the same text for every method: by default
200 facts in the task's format with keys the fine-tune never learned (--calib-facts), or --calib FILE.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

from _common import write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROJECT = "ddq --target-ratio (planner)"
LADDER = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
SWEEP = {
    PROJECT: [dict(target_ratio=r) for r in LADDER],
    "DeltaDQ seeded_rans (k=4; the default at alpha=8)": [
        dict(method="deltadq", encoding="seeded_rans", alpha=a, bits=4, parts=1) for a in (2, 8, 32, 128)],
    "DeltaDQ csr_parts (paper presets)": [dict(method="deltadq", encoding="csr_parts", alpha=a, bits=4, parts=m)
                                          for a, m in ((2, 1), (8, 8), (32, 8))],
    "DARE": [dict(method="dare", alpha=a) for a in (16, 64, 256)],
    "magnitude": [dict(method="magnitude", alpha=a) for a in (16, 256)],
    "BitDelta": [dict(method="bitdelta", alpha=1)],
    "BitDelta + dropout": [dict(method="bitdelta", alpha=a) for a in (4, 32, 128)],
    "BitDelta distilled": [dict(method="bitdelta-distill", method_options={"alpha": a}) for a in (1, 32)],
    "low-rank": [dict(method="lowrank", rank=r) for r in (64, 16, 4, 1)],
    "Delta-CoMe": [dict(method="deltacome", target_ratio=r) for r in (16, 64, 256, 1024)],
    "DeltaMix (ILP)": [dict(method="deltacome", target_ratio=r, method_options={"allocation": "ilp"})
                       for r in (16, 64, 256, 1024)],
    "DeltaZip": [dict(method="deltazip", method_options={"nm": nm}) for nm in
                 ((2, 4, 4), (1, 8, 4), (1, 32, 2), (1, 128, 2), (1, 256, 1))],
}
QUICK = {k: (v[::3] if k == PROJECT else v[::2] if len(v) > 2 else v) for k, v in SWEEP.items()}
# --bounded: what a shared 2-core machine runs in about an hour: the planner at 8x..2048x by factors of 4, two or
# three settings of every other method spanning its range (the targets, 128x and 512x, measured directly)
BOUNDED = {PROJECT: [dict(target_ratio=r) for r in (128, 512, 32, 2048, 8, 64, 256)],
           "DeltaDQ seeded_rans (k=4; the default at alpha=8)": [
               dict(method="deltadq", encoding="seeded_rans", alpha=a, bits=4, parts=1) for a in (32, 128, 8)],
           "BitDelta distilled": [dict(method="bitdelta-distill", method_options={"alpha": a}) for a in (32, 1)],
           "BitDelta + dropout": [dict(method="bitdelta", alpha=a) for a in (32, 128)],
           "Delta-CoMe": [dict(method="deltacome", target_ratio=r) for r in (128, 512)],
           "DeltaMix (ILP)": [dict(method="deltacome", target_ratio=r, method_options={"allocation": "ilp"})
                              for r in (128, 512)],
           "DeltaZip": [dict(method="deltazip", method_options={"nm": nm}) for nm in ((2, 4, 4), (1, 32, 2))],
           "BitDelta": [dict(method="bitdelta", alpha=1)],
           "DARE": [dict(method="dare", alpha=a) for a in (64, 256)],
           "magnitude": [dict(method="magnitude", alpha=256)],
           "low-rank": [dict(method="lowrank", rank=r) for r in (16, 1)],
           "DeltaDQ csr_parts (paper presets)": [dict(method="deltadq", encoding="csr_parts", alpha=32, bits=4,
                                                      parts=8)]}
PLANNED = ("deltacome", "deltazip", "bitdelta-distill")
X, XL = "true_ratio_all", "true_ratio_linear"
GRID = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TARGETS = ((128, 0.90), (512, 0.50))  # (all-tensor true ratio, share of the fine-tune's exact-match gain)
FIELDS = ["method", "setting", "nominal_ratio", X, XL, "true_ratio_file", "tensor_bytes", "linear_stored_bytes",
          "file_bytes", "accuracy", "correct", "n", "answer_nll", "kl_heldout", "convert_s", "eval_s", "pareto"]
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "lm_head.weight", "embed_out.weight")


def setting_label(o: dict) -> str:
    m, mo = o.get("method", "deltadq"), o.get("method_options", {})
    if "target_ratio" in o and m == "deltadq":
        return f"R={o['target_ratio']}"
    if m == "deltacome":
        return f"R={o['target_ratio']}"
    if m == "deltazip":
        n, mm, b = mo["nm"]
        return f"{n}:{mm} k={b}"
    if m == "bitdelta-distill":
        return f"alpha={mo['alpha']}"
    if m == "lowrank":
        return f"rank={o['rank']}"
    s = f"alpha={o['alpha']}"
    return s + (f" k={o['bits']} m={o['parts']}" if m == "deltadq" else "")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path)
    p.add_argument("--finetuned", type=Path)
    p.add_argument("--facts-n", type=int, default=None, help="with --base/--finetuned: facts the fine-tune learned")
    p.add_argument("--facts-seed", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="fewer settings per method")
    p.add_argument("--bounded", action="store_true", help="the ~1 h sweep of a shared 2-core machine (BOUNDED)")
    p.add_argument("--first", type=int, default=None, metavar="N", help="only the first N settings of each method")
    p.add_argument("--seed", type=int, default=0, help="the converter's run seed (dropout masks, seed trials); "
                   "other than 0 it is appended to each method's label, so runs at several seeds render side by side")
    p.add_argument("--only", default=None, help="comma-separated method labels (substring match; =LABEL: exact)")
    p.add_argument("--objective", default=None, help="the planner's objective (budget.OBJECTIVES), as its own rows")
    p.add_argument("--no-rescale", action="store_true", help="the planner without its rescale, as its own rows")
    p.add_argument("--ladder", default=None, help="comma-separated target ratios of the planner (default: "
                   + ",".join(map(str, LADDER)) + ")")
    p.add_argument("--format", type=int, choices=(1, 2), default=None,
                   help="the container's major version for every method (default: the converter's: 2.0 for "
                        "deltadq's --target-ratio, 1.x otherwise)")
    p.add_argument("--calib", type=Path, default=None, help="calibration text for every method")
    p.add_argument("--calib-facts", type=int, default=7, metavar="SEED",
                   help="default calibration: 200 facts in the task's format drawn with this seed (unlearned keys)")
    p.add_argument("--device", default="cpu", help="torch device for evaluation (cpu, cuda)")
    p.add_argument("--workers", type=int, default=1, help="converter worker threads")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="quality", help="output file stem (CSV, PNG, MD)")
    p.add_argument("--note", default="", help="free text recorded in the markdown (machine, build)")
    p.add_argument("--source", default=None, help="--render: what the rows were measured on (the markdown's words)")
    p.add_argument("--render", type=Path, nargs="+", default=None,
                   help="only re-render png/md from these CSV files (rows concatenated, duplicates dropped)")
    return p.parse_args(argv)


def sizes(path) -> dict:
    from ddq_format.accounting import report
    from ddq_format.reader import DDQFile
    with DDQFile(path) as f:
        rep = report(f)
    tot = rep["totals"]
    tensor_bytes = tot["stored_bytes"] - tot["components"]["files"]
    lin = [t for t in rep["tensors"] if t["kind"] == "compressed" and not t["name"].endswith(EMBEDDING_SUFFIXES)]
    lin_fp16, lin_stored = sum(t["delta_fp16_bytes"] for t in lin), sum(t["stored_bytes"] for t in lin)
    return {X: tot["delta_fp16_bytes"] / tensor_bytes, XL: lin_fp16 / lin_stored if lin_stored else None,
            "true_ratio_file": tot["true_ratio"], "tensor_bytes": tensor_bytes, "linear_stored_bytes": lin_stored,
            "file_bytes": tot["stored_bytes"], "nominal_ratio": tot["nominal_ratio"]}


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        rows = read_csv(args.render)
        finish(rows, args, source=args.source or "the example pair")
        return
    import torch

    from ddq_format.converters import convert
    from ddq_format.example import evaluate as ev
    from ddq_format.example import task
    from ddq_format.loaders import apply_delta

    if args.base is None:
        from ddq_format.example.build import build_example
        pair = build_example()
        base, finetuned, facts = pair.base, pair.finetuned, pair.facts()
        source = f"the example pair {pair.root.name}, fine-tune sha256 {pair.meta['sha256']['finetuned'][:16]}"
    else:
        base, finetuned = args.base, args.finetuned
        facts = task.make_facts(args.facts_n or 512, args.facts_seed if args.facts_seed is not None else 1234)
        source = f"{base} -> {finetuned}"
    sweep = dict(BOUNDED if args.bounded else QUICK if args.quick else SWEEP)
    if args.ladder:
        sweep[PROJECT] = [dict(target_ratio=float(r)) for r in args.ladder.split(",")]
    if args.first:
        sweep = {k: v[:args.first] for k, v in sweep.items()}
    if args.objective:  # the planner with another objective, as its own rows
        rows_of = sweep.pop(PROJECT, [])
        sweep[f"{PROJECT}, objective {args.objective}"] = [
            dict(o, method_options={"objective": args.objective}) for o in rows_of]
    if args.no_rescale:
        sweep = {(f"{k}, no rescale" if k.startswith(PROJECT) else k):
                 [dict(o, method_options=dict(o.get("method_options", {}), rescale=False)) for o in v]
                 if k.startswith(PROJECT) else v for k, v in sweep.items()}
    if args.only:
        keys = [s.strip().lower() for s in args.only.split(",")]  # "=label": that label exactly
        sweep = {k: v for k, v in sweep.items()
                 if any(k.lower() == s[1:] if s.startswith("=") else s in k.lower() for s in keys)}
    if args.format:  # every method in this container; labelled, so both containers render side by side
        sweep = {f"{k}, format {args.format}.0": [dict(o, format_major=args.format) for o in v]
                 for k, v in sweep.items()}
    if args.seed:
        sweep = {f"{k}, seed {args.seed}": v for k, v in sweep.items()}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    calib = args.calib
    if calib is None:
        learned = {f.key for f in facts}
        other = [f for f in task.make_facts(400, args.calib_facts) if f.key not in learned][:200]
        calib = args.out_dir / f"calib-facts-{args.calib_facts}.txt"
        calib.write_text("\n".join(f.prompt + f.answer + "." for f in other) + "\n")
    dev = torch.device(args.device)
    tok = ev.load_tokenizer(finetuned)
    ft = ev.load_model(finetuned).to(dev)
    evaluator = ev.Evaluator(tok, facts, ref_model=ft)
    r_ft = evaluator.score(ft, kl=False)
    rows = [dict(method="fine-tune (uncompressed)", setting="-", nominal_ratio=1, **{X: 1, XL: 1}, true_ratio_file=1,
                 accuracy=r_ft.accuracy, correct=r_ft.correct, n=r_ft.n, answer_nll=r_ft.answer_nll, kl_heldout=0.0)]
    del ft
    model = ev.load_model(base).to(dev)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    r_base = evaluator.score(model)
    rows.append(dict(method="base (no delta)", setting="-", accuracy=r_base.accuracy, correct=r_base.correct,
                     n=r_base.n, answer_nll=r_base.answer_nll, kl_heldout=r_base.kl))
    print(f"fine-tune {r_ft.accuracy:.1%}  base {r_base.accuracy:.1%} (KL {r_base.kl:.3f}); calibration {calib}",
          flush=True)
    csv_path = args.out_dir / f"{args.name}.csv"
    failures, cache = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in sweep.items():
            for o in settings:
                out = Path(tmp) / "x.ddq"
                o = dict(o)
                if o.get("target_ratio") is not None or o.get("method") in PLANNED:
                    # one calibration for every planned method, one scoring for the whole --target-ratio ladder
                    o["method_options"] = dict(o.get("method_options", {}), cache=cache)
                t0 = time.perf_counter()
                try:
                    convert(base, finetuned, out, embeddings="compressed", calib=calib, workers=args.workers,
                            seed=args.seed, progress=False, quiet=True, print_summary=False, **o)
                except Exception as e:  # a setting the converter refuses is reported, not hidden
                    failures.append(f"{label} {setting_label(o)}: {type(e).__name__}: {e}")
                    traceback.print_exc()
                    continue
                t1 = time.perf_counter()
                sz = sizes(out)
                model.load_state_dict(base_sd)
                apply_delta(model, out)
                r = evaluator.score(model)
                t2 = time.perf_counter()
                row = dict(method=label, setting=setting_label(o), **sz, accuracy=r.accuracy, correct=r.correct,
                           n=r.n, answer_nll=r.answer_nll, kl_heldout=r.kl, convert_s=round(t1 - t0, 1),
                           eval_s=round(t2 - t1, 1))
                rows.append(row)
                print(f"{label:32s} {row['setting']:12s} all {row[X]:7.1f}x  linear {row[XL] or 0:7.1f}x  "
                      f"acc {r.accuracy:6.1%}  nll {r.answer_nll:.3f}  KL {r.kl:.4f}  [{row['convert_s']}+"
                      f"{row['eval_s']} s]", flush=True)
                write_csv(csv_path, rows, FIELDS)
                out.unlink()
    finish(rows, args, source=source, failures=failures, calib=calib)


def finish(rows, args, *, source, failures=(), calib=None):
    mark_pareto(rows)
    write_csv(args.out_dir / f"{args.name}.csv", rows, FIELDS)
    plot(rows, args.out_dir / f"{args.name}.png")
    write_md(rows, args.out_dir / f"{args.name}.md", note=args.note, source=source, failures=failures, calib=calib,
             png=f"{args.name}.png")
    print(f"wrote {args.out_dir / args.name}.csv/.png/.md", flush=True)


def read_csv(paths):
    rows, seen = [], set()
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                key = (r["method"], r["setting"])
                if key in seen:
                    continue
                seen.add(key)
                rows.append({k: (None if v in ("", None) else v if k in ("method", "setting", "pareto") else float(v))
                             for k, v in r.items()})
    return rows


def method_rows(rows, x=X):
    by = {}
    for r in rows:
        if r.get(x) is None or r["method"].startswith(("fine-tune", "base")):
            continue
        by.setdefault(r["method"], []).append(r)
    return {k: sorted(v, key=lambda r: r[x]) for k, v in by.items()}


def mark_pareto(rows):
    """A compressed row is on the front when no other row is at least as small (all-tensor) and more accurate."""
    pts = [r for rs in method_rows(rows).values() for r in rs]
    for r in pts:
        r["pareto"] = "yes" if not any(o is not r and o[X] >= r[X] and o["accuracy"] > r["accuracy"] for o in pts) else ""


def interpolate_at(rs, ratio, x=X):
    """Accuracy of a method at a given true ratio (log-linear between its measured points), None outside."""
    pts = [(math.log(r[x]), r["accuracy"]) for r in rs]
    t = math.log(ratio)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= t <= x1:
            return y0 + (y1 - y0) * (t - x0) / (x1 - x0) if x1 > x0 else max(y0, y1)
    if pts and abs(pts[0][0] - t) < 1e-9:
        return pts[0][1]
    return None


def plot(rows, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib not installed: no plot", flush=True)
        return
    fig, axes = plt.subplots(1, 2, figsize=(14, 7.5), sharey=True)
    ft = next(r for r in rows if r["method"].startswith("fine-tune"))
    base = next(r for r in rows if r["method"].startswith("base"))
    for ax, x, title in ((axes[0], X, "all tensors (the byte budget)"), (axes[1], XL, "linear layers only")):
        for label, rs in method_rows(rows, x).items():
            # the planner's variants, run seeds and earlier versions: one gray family (the table names each)
            variant = label.startswith(PROJECT) and label != PROJECT
            ax.plot([r[x] for r in rs], [100 * r["accuracy"] for r in rs], marker="o", ms=3 if variant else 5,
                    label=None if variant else label, color="0.78" if variant else None, zorder=1 if variant else 2,
                    lw=2.5 if label == PROJECT else 0.8 if variant else 1.2)
        ax.plot([], [], color="0.78", marker="o", ms=3, lw=0.8,
                label=f"{PROJECT}: its variants, run seeds and earlier versions (the table's rows)")
        ax.axhline(100 * ft["accuracy"], color="k", ls="--", lw=1, label="fine-tune (uncompressed)")
        ax.axhline(100 * base["accuracy"], color="gray", ls=":", lw=1, label="base")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_xlabel(f"true compression ratio, {title}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("exact match (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.suptitle("Example task (memorized facts): accuracy vs true compression")
    fig.tight_layout(rect=(0, 0.02 + 0.028 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=120)


def write_md(rows, path: Path, *, note, source, failures=(), calib=None, png="quality.png"):
    f = lambda v, p="{:.1f}x": "-" if v is None or (isinstance(v, float) and math.isnan(v)) else p.format(v)  # noqa
    ft = next(r for r in rows if r["method"].startswith("fine-tune"))
    base = next(r for r in rows if r["method"].startswith("base"))
    gain = ft["accuracy"] - base["accuracy"]
    lines = ["# Quality at equal all-tensor true bytes", "",
             f"Generated by `benchmarks/quality.py` on {source}. {note}".strip(), "",
             "Task: the example fine-tune's memorized key→value facts, teacher-forced exact match (every answer "
             "token must be the argmax). NLL: mean per answer token. KL: mean KL(fine-tune ‖ compressed) per token of "
             "held-out prose. **all-tensor** = fp16 bytes of every tensor's delta ÷ every byte the tensors take "
             "(indices, scales, padding, header entries and records; the copied config/tokenizer files are excluded "
             "and reported in the CSV's file_bytes); **linear** = the decoder's linear layers alone (embeddings and "
             "lm_head excluded). Every method compresses the embeddings with its own procedure"
             + (f"; calibration text for every method: `{Path(calib).name}`." if calib else "."), "",
             "| method | setting | all-tensor | linear | exact match | % of gain | answer NLL | KL held-out | Pareto |",
             "|---|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        pg = "-" if gain <= 0 or r["method"].startswith(("fine-tune", "base")) else \
            f"{100 * (r['accuracy'] - base['accuracy']) / gain:.1f}%"
        lines.append(f"| {r['method']} | {r['setting']} | {f(r.get(X))} | {f(r.get(XL))} | "
                     f"{int(r['correct'])}/{int(r['n'])} = {100 * r['accuracy']:.1f}% | {pg} | {r['answer_nll']:.3f} | "
                     f"{f(r.get('kl_heldout'), '{:.4f}')} | {r.get('pareto') or ''} |")
    for x, what in ((X, "all-tensor"), (XL, "linear-only")):
        by = method_rows(rows, x)
        lines += ["", f"## At equal {what} true ratio (exact match, interpolated log-linearly between measured "
                      "points; - outside a method's measured range)", "",
                  "| method | " + " | ".join(f"{g}x" for g in GRID) + " |", "|---|" + "---:|" * len(GRID)]
        table = {k: [interpolate_at(v, g, x) for g in GRID] for k, v in by.items()}
        for k, vals in table.items():
            lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{100 * v:.1f}%" for v in vals) + " |")
        if x == X:
            losses = [f"at {g}x, {k} ({100 * table[k][i]:.1f}%) beats {PROJECT} ({100 * table[PROJECT][i]:.1f}%)"
                      for i, g in enumerate(GRID) if PROJECT in table and table[PROJECT][i] is not None
                      for k in table if not k.startswith(PROJECT) and table[k][i] is not None
                      and table[k][i] > table[PROJECT][i] + 0.005]
    lines += ["", "## The issue's targets (issue 11), on the all-tensor true ratio", ""]
    proj = method_rows(rows).get(PROJECT, [])
    for at, want in TARGETS:
        got = interpolate_at(proj, at) if proj else None
        if got is None and proj:  # just outside the measured range: the planner's point within 5% of it
            near = min(proj, key=lambda r: abs(math.log(r[X] / at)))
            got = near["accuracy"] if abs(near[X] / at - 1) <= 0.05 else None
        if got is None or gain <= 0:
            lines.append(f"- at {at}x, >= {want:.0%} of the fine-tune's gain: not measured (no {PROJECT} rows "
                         f"around {at}x)")
            continue
        share = (got - base["accuracy"]) / gain
        near = min(proj, key=lambda r: abs(math.log(r[X] / at)))
        lines.append(f"- at {at}x, >= {want:.0%} of the gain: **{'met' if share >= want else 'missed'}**, "
                     f"{100 * share:.1f}% ({100 * got:.1f}% exact match vs the fine-tune's "
                     f"{100 * ft['accuracy']:.1f}% and the base's {100 * base['accuracy']:.1f}%; nearest measured "
                     f"point {near['setting']} at {near[X]:.1f}x: {100 * near['accuracy']:.1f}%)")
        seeds = [r["accuracy"] for k, v in method_rows(rows).items() if k == PROJECT or k.startswith(f"{PROJECT}, seed ")
                 for r in v if abs(r[X] / at - 1) <= 0.05]
        if len(seeds) > 1:  # the same setting at several run seeds (--seed): the mean is the figure to read
            shares = [(a - base["accuracy"]) / gain for a in seeds]
            mean = sum(shares) / len(shares)
            lines.append(f"  - over {len(seeds)} run seeds: mean **{100 * mean:.1f}%** of the gain "
                         f"({'met' if mean >= want else 'missed'}; {', '.join(f'{100 * x:.1f}%' for x in shares)})")
    lines += ["", f"## Where {PROJECT} is not the best (its own variants, objectives and run seeds, aside)", ""]
    lines += [f"- {x}" for x in losses] if losses else [
        "- Nowhere in its measured range: at every common all-tensor ratio it is at least as accurate as every "
        "other method (within 0.5 points)."]
    if failures:
        lines += ["", "## Settings the converter refused", ""] + [f"- {x}" for x in failures]
    lines += ["", f"![accuracy vs true ratio]({png})", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
