"""Does `ddq convert --seed-trials N` pay? DeltaDQ at equal true bytes, N = 1 (one random mask per tensor, the
paper) against N > 1 (the seed with the least layer-output error on calibration activations).

    python benchmarks/seed_search.py                                  # alpha 32 and 64, N 1/8/16, run seeds 0..2
    python benchmarks/seed_search.py --alphas 32 --trials 1 8 --seeds 0 --calib facts.txt

Every setting is a real .ddq file (ddq_format.converters.convert), applied with ddq_format.loaders.apply_delta
and scored on the example task (teacher-forced exact match over the 512 memorized facts, answer NLL, mean
KL(fine-tune || compressed) on held-out prose). Run seeds (--seed) give the spread of one random draw of
masks, the noise the search has to beat. Per prompt correctness is kept so N > 1 vs N = 1 at the same run seed
is compared pairwise (discordant prompts: fixed / broken). The layer-output error the search minimises is
reported as the sum over tensors, chosen / trial 0. Writes results/seed_search.csv and results/seed_search.md.
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from _common import write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIELDS = ["alpha", "seed", "trials", "calib", "group_size", "true_ratio_linear", "linear_stored_bytes", "file_bytes",
          "correct", "n", "accuracy", "se", "answer_nll", "kl_heldout", "error_ratio", "tensors_moved",
          "tensors_searched", "convert_s", "calibration_s", "fixed", "broken"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--alphas", type=int, nargs="+", default=[32, 64])
    p.add_argument("--trials", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (--seed of ddq convert)")
    p.add_argument("--max-trials-seeds", type=int, default=None,
                   help="run the largest --trials only for the first this-many run seeds (time)")
    p.add_argument("--calib", type=Path, default=None, help="calibration text (default: the converter's)")
    p.add_argument("--calib-facts", type=int, default=None, metavar="SEED",
                   help="calibrate on the task's format instead: 200 facts drawn with this seed, keys the "
                        "fine-tune never saw (the converter keeps the first 512 tokens)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="seed_search", help="output file stem")
    return p.parse_args(argv)


def per_prompt(model, tokenizer, facts, batch_size=64):
    """[bool] exact match per fact (task.evaluate's rule, kept per prompt for paired comparisons)."""
    import torch

    from ddq_format.example import task
    pairs = task.encode(tokenizer, facts)
    pad = task.pad_id(tokenizer)
    out = []
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            b = task.collate(pairs[s:s + batch_size], pad)
            ok = (task.answer_logits(model, b).cpu().argmax(-1) == b.target).long()
            n_ex = int(b.example.max()) + 1
            wrong = torch.zeros(n_ex, dtype=torch.long).index_add_(0, b.example, 1 - ok)
            out += [bool(w == 0) for w in wrong]
    return out


def main(argv=None):
    import torch

    from ddq_format.accounting import report
    from ddq_format.converters import convert, seed_search
    from ddq_format.example import evaluate as ev
    from ddq_format.example.build import build_example
    from ddq_format.loaders import apply_delta
    from ddq_format.reader import DDQFile

    args = parse_args(argv)
    pair = build_example()
    facts = pair.facts()
    if args.calib_facts is not None:
        from ddq_format.example import task
        learned = {f.key for f in facts}
        other = [f for f in task.make_facts(200, args.calib_facts) if f.key not in learned]
        args.calib = args.out_dir / f"calib-facts-{args.calib_facts}.txt"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        args.calib.write_text("\n".join(f.prompt + f.answer + "." for f in other) + "\n")
    dev = torch.device(args.device)
    tok = ev.load_tokenizer(pair.finetuned)
    ft = ev.load_model(pair.finetuned).to(dev)
    evaluator = ev.Evaluator(tok, facts, ref_model=ft)
    r_ft = evaluator.score(ft, kl=False)
    del ft
    model = ev.load_model(pair.base).to(dev)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    print(f"fine-tune {r_ft.correct}/{r_ft.n}", flush=True)

    errors = []  # instrumentation only: (tensor, E per trial) of every search in the current conversion
    choose = seed_search.choose

    def recording_choose(*a, **k):
        r = choose(*a, **k)
        errors.append((a[1], r[1]))
        return r
    seed_search.choose = recording_choose

    rows, ok_by = [], {}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = args.out_dir / f"{args.name}.csv"
    with tempfile.TemporaryDirectory() as tmp:
        for alpha in args.alphas:
            for si, seed in enumerate(args.seeds):
                for n in args.trials:
                    if n == max(args.trials) and n > 1 and args.max_trials_seeds is not None \
                            and si >= args.max_trials_seeds:
                        continue
                    out = Path(tmp) / "x.ddq"
                    errors.clear()
                    t0 = time.perf_counter()
                    s = convert(pair.base, pair.finetuned, out, method="deltadq", encoding="seeded", alpha=alpha,
                                bits=4, parts=1, embeddings="compressed", seed=seed, seed_trials=n,
                                calib=args.calib, workers=args.workers, progress=False, quiet=True)
                    t1 = time.perf_counter()
                    with DDQFile(out) as f:
                        tot = report(f)["totals"]
                    model.load_state_dict(base_sd)
                    apply_delta(model, out)
                    r = evaluator.score(model)
                    ok = per_prompt(model, tok, facts)
                    assert sum(ok) == r.correct, (sum(ok), r.correct)
                    ok_by[(alpha, seed, n)] = ok
                    e0 = sum(e[0] for _, e in errors)
                    eb = sum(min(e) for _, e in errors)
                    p = r.accuracy
                    row = dict(alpha=alpha, seed=seed, trials=n, calib=args.calib.name if args.calib else "default",
                               group_size=s.group_size,
                               true_ratio_linear=tot["compressed_true_ratio"],
                               linear_stored_bytes=tot["compressed_stored_bytes"], file_bytes=tot["stored_bytes"],
                               correct=r.correct, n=r.n, accuracy=p, se=math.sqrt(p * (1 - p) / r.n),
                               answer_nll=r.answer_nll, kl_heldout=r.kl,
                               error_ratio=eb / e0 if errors else 1.0,
                               tensors_moved=sum(min(range(len(e)), key=lambda i: (e[i], i)) != 0 for _, e in errors),
                               tensors_searched=len(errors), convert_s=round(t1 - t0, 1),
                               calibration_s=round(s.seed_search_seconds, 1))
                    ref = ok_by.get((alpha, seed, 1))
                    if n > 1 and ref is not None:
                        row["fixed"] = sum(a and not b for a, b in zip(ok, ref))
                        row["broken"] = sum(b and not a for a, b in zip(ok, ref))
                    rows.append(row)
                    print(f"alpha={alpha} seed={seed} N={n:<3} true {row['true_ratio_linear']:.1f}x "
                          f"({row['linear_stored_bytes']} B)  acc {r.correct}/{r.n}  nll {r.answer_nll:.3f}  "
                          f"KL {r.kl:.4f}  E {row['error_ratio']:.3f}  moved {row['tensors_moved']}/"
                          f"{row['tensors_searched']}  [{row['convert_s']} s convert]", flush=True)
                    write_csv(csv_path, rows, FIELDS)
                    out.unlink()
    seed_search.choose = choose
    write_md(rows, args.out_dir / f"{args.name}.md", r_ft, argv if argv is not None else sys.argv[1:])
    print(f"wrote {csv_path} and {args.name}.md", flush=True)


def write_md(rows, path: Path, r_ft, argv):
    cmd = "python benchmarks/seed_search.py " + " ".join(shlex.quote(a) for a in argv)
    lines = [f"<!-- generated by: {cmd.strip()} -->",
             f"Fine-tune (uncompressed): {r_ft.correct}/{r_ft.n}. DeltaDQ seeded, k=4, m=1, embeddings compressed.",
             "", "| alpha | run seed | N | calib | h_g | true (linear) | stored B (linear) | file B | exact match "
             "| ± SE | answer NLL | KL held-out | E / E(trial 0) | moved | fixed / broken vs N=1 | convert s |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fb = f"{r['fixed']} / {r['broken']}" if r.get("fixed") is not None else "-"
        lines.append(f"| {r['alpha']} | {r['seed']} | {r['trials']} | {r['calib']} | {r['group_size']} | "
                     f"{r['true_ratio_linear']:.1f}x | "
                     f"{r['linear_stored_bytes']:,} | {r['file_bytes']:,} | {r['correct']}/{r['n']} = "
                     f"{100 * r['accuracy']:.1f}% | {100 * r['se']:.1f} | {r['answer_nll']:.3f} | "
                     f"{r['kl_heldout']:.4f} | {r['error_ratio']:.3f} | {r['tensors_moved']}/{r['tensors_searched']} | "
                     f"{fb} | {r['convert_s']} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
