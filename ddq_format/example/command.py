"""`ddq example build` and `ddq example run`: the built-in example pair and the README's main job.

Register with `app.add_typer(example_app, name="example")` (ddq_format.cli).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

example_app = typer.Typer(help="The built-in example: SmolLM2-135M (dequantized from a 4-bit GGUF) and a "
                               "memorized-facts fine-tune, built locally and cached.", no_args_is_help=True)
console = Console()


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def _log(msg: str):
    console.print(msg, highlight=False)


def get_pair(force: bool = False, cache: Path | None = None):
    from .build import build_example

    with _progress() as progress:
        pair = build_example(cache=cache, force=force, progress=progress, log=_log)
    m = pair.meta
    _log(f"example pair {'built' if pair.built else 'reused'}: {pair.root}")
    _log(f"  base      = {m['source']}")
    _log("              (the base is dequantized from 4-bit weights, not the original bf16 checkpoint)")
    _log(f"  fine-tune = full-parameter fine-tune on {m['task']['n_prompts']} memorized key->value facts "
         f"({m['recipe']['epochs']} epochs, {m['seconds']['train']:.0f} s to train when built)")
    return pair


@example_app.command("build")
def build(force: bool = typer.Option(False, "--force", help="Rebuild even when the cached pair exists."),
          cache: Path = typer.Option(None, "--cache", help="Cache folder (default $XDG_CACHE_HOME/ddq/example).")):
    """Build (or reuse) the example pair and print where it is and how it scores."""
    from ..errors import DDQError

    try:
        pair = get_pair(force, cache)
    except DDQError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2)
    m = pair.meta
    _log(f"  base accuracy {m['accuracy']['base']:.1%}, fine-tune accuracy {m['accuracy']['finetuned']:.1%} "
         f"on {m['task']['n_prompts']} prompts (teacher-forced exact match)")
    _log(f"  base:      {pair.base}\n  finetuned: {pair.finetuned}")


def inspect_file(path: Path) -> int:
    """Run `ddq inspect --summary` in a child process (the same code path a user types)."""
    return subprocess.call([sys.executable, "-m", "ddq_format.cli", "inspect", "--summary", str(path)])


@example_app.command("run")
def run(out: Path = typer.Option(None, "--out", help="Where to write the .ddq (default: next to the pair)."),
        method: str = typer.Option("deltadq", help="deltadq | dare | magnitude | bitdelta | lowrank."),
        encoding: str = typer.Option("seeded", help="seeded (mask from a seed) | csr_parts (paper layout)."),
        alpha: int = typer.Option(8, help="Dropout ratio alpha (keep 1 in alpha)."),
        bits: int = typer.Option(4, help="Quantization bits k."),
        parts: int = typer.Option(1, help="Separate-quantization parts m (csr_parts)."),
        embeddings: str = typer.Option("compressed", help="compressed | dense: SmolLM2's tied embedding is 21% "
                                                          "of its weights, so dense caps the file near 5x."),
        force: bool = typer.Option(False, "--force", help="Rebuild the pair."),
        cache: Path = typer.Option(None, "--cache", help="Cache folder for the pair.")):
    """Main job: build (or reuse) the pair, convert it, inspect the file, print base/fine-tune/compressed accuracy."""
    from ..converters import convert
    from ..errors import DDQError
    from ..reader import DDQFile
    from ..accounting import report
    from . import evaluate as ev

    try:
        pair = get_pair(force, cache)
        out = out or pair.root / f"{method}-{encoding}-a{alpha}-k{bits}-m{parts}.ddq"
        t0 = time.perf_counter()
        _log(f"converting ({method}, {encoding}, alpha={alpha}, k={bits}, m={parts}, embeddings {embeddings}) "
             f"-> {out}")
        convert(pair.base, pair.finetuned, out, method=method, encoding=encoding, alpha=alpha, bits=bits,
                parts=parts, embeddings=embeddings)
        _log(f"converted in {time.perf_counter() - t0:.1f} s")
        inspect_file(out)
        with DDQFile(out) as f:
            totals = report(f)["totals"]
        tok = ev.load_tokenizer(pair.finetuned)
        ft = ev.load_model(pair.finetuned)
        evaluator = ev.Evaluator(tok, pair.facts(), ref_model=ft)
        rows = [("fine-tune", evaluator.score(ft, kl=False))]
        del ft
        rows.insert(0, ("base", evaluator.score(ev.load_model(pair.base))))
        rows.append(("compressed", evaluator.score(ev.compressed_model(pair.base, out))))
    except DDQError as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2)
    t = Table(title=f"Example task: {rows[0][1].n} memorized facts, teacher-forced exact match; "
                    f"compressed = base + {out.name}")
    for c in ("model", "exact match", "answer NLL", "KL(ft||model) held-out"):
        t.add_column(c, justify="right" if c != "model" else "left")
    for name, r in rows:
        t.add_row(name, f"{r.correct}/{r.n} = {r.accuracy:.1%}", f"{r.answer_nll:.3f}",
                  "-" if r.kl is None else f"{r.kl:.4f}")
    console.print(t)
    _log(f"delta size: {totals['stored_bytes']:,} B file, true ratio {totals['true_ratio']:.1f}x whole file, "
         f"{totals['compressed_true_ratio'] or 0:.1f}x on the compressed tensors (linear layers"
         f"{' and embeddings' if embeddings == 'compressed' else ''})")
    summary = {"file": str(out), "accuracy": {n: r.accuracy for n, r in rows}, "true_ratio": totals["true_ratio"],
               "compressed_true_ratio": totals["compressed_true_ratio"]}
    (out.with_suffix(".eval.json")).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":  # `python -m ddq_format.example.command run` works before/without the ddq entry point
    example_app()
