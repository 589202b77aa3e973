"""`ddq example build | info | run`: the built-in example pair and the README's main job.

Register with `app.add_typer(example_app, name="example")` (ddq_format.cli).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import typer
from rich.console import Console
from rich.table import Table

from ..cli_common import Command, Group, check_output, fail
from ..converters.methods import ENCODINGS, METHODS
from ..converters.options import EMBEDDINGS_MODES
from ..spec import CONVERT_DEFAULTS as D

example_app = typer.Typer(help="The built-in example: SmolLM2-135M (dequantized from a 4-bit GGUF) and a "
                               "memorized-facts fine-tune, built locally and cached.", no_args_is_help=True,
                          cls=Group, rich_markup_mode="markdown")
console = Console(soft_wrap=True)  # progress lines and messages share stdout, in the order they happen
Method = Literal[METHODS]
Encoding = Literal[ENCODINGS]
Embeddings = Literal[EMBEDDINGS_MODES]
INFO_EXAMPLES = 5  # prompts shown by `ddq example info`
ANSWER_TOKENS = 4  # SmolLM2's tokenizer: ' 192' is ' ', '1', '9', '2'


def _log(msg: str):
    console.print(msg, highlight=False, markup=False)


def get_pair(force: bool = False, cache: Path | None = None, recipe=None):
    from ..progress import make_progress
    from .build import build_example

    with make_progress(console) as progress:
        pair = build_example(recipe, cache=cache, force=force, progress=progress, log=_log)
    m = pair.meta
    _log(f"example pair {'built' if pair.built else 'reused'}: {pair.root}")
    _log(f"  base      = {m['source']}")
    _log("              (the base is dequantized from 4-bit weights, not the original bf16 checkpoint)")
    _log(f"  fine-tune = full-parameter fine-tune on {m['task']['n_prompts']} memorized key->value facts "
         f"({m['recipe']['epochs']} epochs, {m['seconds']['train']:.0f} s to train when built)")
    return pair


@example_app.command("build", cls=Command)
def build(force: bool = typer.Option(False, "--force", help="Rebuild even when the cached pair exists."),
          cache: Path = typer.Option(None, "--cache", metavar="DIR",
                                     help="Cache folder. [default: $XDG_CACHE_HOME/ddq/example]"),
          facts: int = typer.Option(None, "--facts", metavar="N", min=1,
                                    help="A smaller pair for a quick reproducibility check: N facts (its own "
                                         "cache entry; `run` and `info` use the default pair)."),
          epochs: int = typer.Option(None, "--epochs", metavar="N", min=1, help="With --facts: N epochs.")):
    """Build (or reuse) the example pair and print where it is, how it scores and its sha256."""
    from dataclasses import replace

    from ..errors import DDQError
    from .build import Recipe

    recipe = Recipe()
    if facts is not None or epochs is not None:
        recipe = replace(recipe, n_facts=facts or recipe.n_facts, epochs=epochs or recipe.epochs)
    try:
        pair = get_pair(force, cache, recipe)
    except DDQError as e:
        fail(e)
    m = pair.meta
    _log(f"  base accuracy {m['accuracy']['base']:.1%}, fine-tune accuracy {m['accuracy']['finetuned']:.1%} "
         f"on {m['task']['n_prompts']} prompts (teacher-forced exact match)")
    _log(f"  base:      {pair.base}\n  finetuned: {pair.finetuned}")
    _log(f"  fine-tune sha256 {m['sha256']['finetuned']}")
    mach = m.get("machine")
    if mach:
        _log(f"  built on {mach['cpu']} ({mach['cpu_capability']}), {mach['threads']} threads, torch "
             f"{m['versions']['torch']}: another CPU or SIMD level gives other bits")


@example_app.command("info", cls=Command)
def info(cache: Path = typer.Option(None, "--cache", metavar="DIR",
                                    help="Cache folder. [default: $XDG_CACHE_HOME/ddq/example]")):
    """Where the pair is cached, its prompt format, and a few prompts with the answers the fine-tune learned
    (works before the pair is built: the facts come from the recipe's seed)."""
    from . import task
    from .build import Recipe, cache_root, load_pair

    recipe = Recipe()
    root = (cache or cache_root()) / recipe.key()
    pair = load_pair(root)
    _log(f"cache:   {root} ({'built' if pair else 'not built yet: `ddq example build`, about 8 min on 2 cores'})")
    if pair:
        m = pair.meta
        _log(f"base:    {pair.base}  ({m['source']})")
        _log(f"         exact match {m['accuracy']['base']:.1%}")
        _log(f"tuned:   {pair.finetuned}  (full-parameter fine-tune, sha256 {m['sha256']['finetuned'][:12]}...)")
        _log(f"         exact match {m['accuracy']['finetuned']:.1%} on {m['task']['n_prompts']} prompts")
        if m.get("machine"):
            _log(f"built:   on {m['machine']['cpu']} ({m['machine']['cpu_capability']}, "
                 f"{m['machine']['threads']} threads), {m['seconds']['total']:.0f} s")
    _log(f"task:    {recipe.n_facts} memorized facts, random 4-letter key -> 3-digit value (seed {recipe.seed})")
    _log(f"prompt:  {task.PROMPT!r} + answer {task.ANSWER!r}; scored by teacher-forced exact match")
    _log("         (every answer token must be the model's argmax: what greedy decoding would emit)")
    facts = task.make_facts(recipe.n_facts, recipe.seed)
    t = Table(title="example prompts and the answers the fine-tune was trained on", title_justify="left")
    t.add_column("prompt")
    t.add_column("answer")
    for f in facts[:INFO_EXAMPLES]:
        t.add_row(f.prompt, f.answer)
    console.print(t)
    if pair:
        f = facts[0]
        _log("try it (transformers):")
        _log(f"  from transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f"  tok = AutoTokenizer.from_pretrained({str(pair.finetuned)!r})\n"
             f"  m = AutoModelForCausalLM.from_pretrained({str(pair.finetuned)!r})\n"
             f"  ids = tok({f.prompt!r}, return_tensors='pt').input_ids\n"
             f"  print(tok.decode(m.generate(ids, max_new_tokens={ANSWER_TOKENS}, do_sample=False)[0, ids.shape[1]:]))"
             f"  # trained on {f.answer!r}")


def inspect_file(path: Path) -> int:
    """Run `ddq inspect` in a child process (the same code path a user types)."""
    return subprocess.call([sys.executable, "-m", "ddq_format.cli", "inspect", str(path)])


@example_app.command("run", cls=Command)
def run(out: Path = typer.Option(None, "--out", metavar="FILE", help="Where to write the .ddq. [default: in "
                                 "the pair's cache folder, named by the settings, replaced on every run]"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
        method: Method = typer.Option(D["method"], help="DeltaDQ or a baseline."),
        encoding: Encoding = typer.Option(D["encoding"], help="deltadq's layout (as in `ddq convert`)."),
        alpha: int = typer.Option(D["alpha"], min=1, help="Dropout factor alpha (keep 1 in alpha)."),
        bits: int = typer.Option(D["bits"], min=1, max=8, help="Quantization bits k."),
        parts: int = typer.Option(D["parts"], min=1, help="Separate-quantization parts m (csr_parts)."),
        embeddings: Embeddings = typer.Option(D["embeddings"], help="compressed | dense: SmolLM2's tied embedding "
                                              "is 21% of its weights, so dense caps the file near 5x."),
        force: bool = typer.Option(False, "--force", help="Rebuild the pair."),
        cache: Path = typer.Option(None, "--cache", metavar="DIR", help="Cache folder for the pair.")):
    """Main job: build (or reuse) the pair, convert it (the `ddq convert` defaults), inspect the file, print
    base / fine-tune / compressed accuracy."""
    from ..converters import convert
    from ..errors import DDQError
    from ..reader import DDQFile
    from ..accounting import report
    from . import evaluate as ev

    if out is not None:
        check_output(out, overwrite=overwrite, folder=False, flag="--out")
    try:
        pair = get_pair(force, cache)
        out = out or pair.root / f"{method}-{encoding}-a{alpha}-k{bits}-m{parts}.ddq"
        t0 = time.perf_counter()
        _log(f"converting ({method}, {encoding}, alpha={alpha}, k={bits}, m={parts}, embeddings {embeddings}) "
             f"-> {out}")
        convert(pair.base, pair.finetuned, out, method=method, encoding=encoding, alpha=alpha, bits=bits,
                parts=parts, embeddings=embeddings, console=console, print_summary=False)
        _log(f"converted in {time.perf_counter() - t0:.1f} s")
        inspect_file(out)
        with DDQFile(out) as f:
            totals = report(f)["totals"]
        rows = _evaluate(ev, pair, out)
    except DDQError as e:
        fail(e)
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


def _evaluate(ev, pair, out: Path) -> list:
    """(name, Result) for base, fine-tune and compressed, each a progress step (a log is never silent)."""
    from ..progress import make_progress, step
    from .build import deterministic_torch

    t0 = time.perf_counter()
    # the build's thread count: scores then do not depend on how many cores this machine has
    with make_progress(console) as progress, deterministic_torch(pair.meta["recipe"]["threads"]):
        with step(progress, "scoring the fine-tune (and its held-out log-probs, the KL reference)"):
            tok = ev.load_tokenizer(pair.finetuned)
            ft = ev.load_model(pair.finetuned)
            evaluator = ev.Evaluator(tok, pair.facts(), ref_model=ft)
            rows = [("fine-tune", evaluator.score(ft, kl=False))]
            del ft
        with step(progress, "scoring the base"):
            rows.insert(0, ("base", evaluator.score(ev.load_model(pair.base))))
        with step(progress, f"scoring the compressed model (base + {out.name})"):
            rows.append(("compressed", evaluator.score(ev.compressed_model(pair.base, out))))
    _log(f"evaluated in {time.perf_counter() - t0:.1f} s")
    return rows


if __name__ == "__main__":  # `python -m ddq_format.example.command run` works before/without the ddq entry point
    example_app()
