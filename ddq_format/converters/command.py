"""`ddq convert`: the typer command (registered by ddq_format/cli.py with app.command()(convert)).

With no options it writes the recommended file (spec.CONVERT_DEFAULTS) and says so in one line; after writing
it prints the same summary as `ddq inspect` (both from accounting.report of the written file) and warns
about inputs that are probably a mistake.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import typer

from ..cli_common import check_output, check_roles, fail, warn
from ..errors import DDQError
from ..spec import (CONVERT_DEFAULTS, CONVERT_DEFAULTS_WHY, CONVERT_RATIO_PRESETS, CONVERT_WARN_CHANGED_SHARE,
                    KIND_SAME, KIND_TIED)
from .methods import ENCODINGS, METHODS
from .options import EMBEDDINGS_MODES, settings
from .planned import METHODS as PLANNED_METHODS

D = CONVERT_DEFAULTS
Method = Literal[METHODS + PLANNED_METHODS]
Allocation = Literal["paper", "ilp"]
Encoding = Literal[ENCODINGS]
Embeddings = Literal[EMBEDDINGS_MODES]


def choice_line(s: dict, defaulted: bool) -> str:
    if s["ratio"] is not None:
        a, k, m = CONVERT_RATIO_PRESETS.get(s["ratio"], ("?", "?", "?"))
        what = f"{s['method']} {s['encoding']} --ratio {s['ratio']} (alpha={a} k={k} m={m})"
    else:
        knobs = " ".join(f"{n}={s[k]}" for k, n in (("alpha", "alpha"), ("bits", "k"), ("parts", "m"))
                         if s[k] is not None)
        enc = s["encoding"] if s["method"] == "deltadq" else ""
        what = " ".join(x for x in (s["method"], enc, knobs) if x)
    if s["method"] in ("deltadq", "bitdelta"):  # the methods with group-wise dropout
        what += f", h_g {'searched' if s['group_size'] == 'auto' else s['group_size']}"
    what += f", embeddings {s['embeddings']}"
    return f"settings: {what} ({'defaults: ' + CONVERT_DEFAULTS_WHY if defaulted else 'from your options'})"


def input_warnings(rep: dict) -> list[str]:
    """A delta that is all zero (the same model twice) or tiny (wrong pair?), from the written file."""
    tensors = rep["tensors"]
    total = sum(math.prod(t["shape"]) for t in tensors if t["kind"] != KIND_TIED)
    changed = sum(math.prod(t["shape"]) for t in tensors if t["kind"] not in (KIND_SAME, KIND_TIED))
    if tensors and changed == 0:
        return ["the delta is all zero: every tensor of FINETUNED equals BASE (the same model twice?); "
                "the ratios above count the zero delta of unchanged tensors"]
    if total and changed / total < CONVERT_WARN_CHANGED_SHARE:
        n = sum(t["kind"] not in (KIND_SAME, KIND_TIED) for t in tensors)
        return [f"the delta is tiny: only {n} of {len(tensors)} tensors ({changed / total:.2%} of the elements) "
                "differ from BASE; is FINETUNED a fine-tune of BASE?"]
    return []


def convert(
    base: str = typer.Argument(..., metavar="BASE", show_default=False,
                               help="Base model: local HF folder or a model id in the local HF cache."),
    finetuned: str = typer.Argument(..., metavar="FINETUNED", show_default=False,
                                    help="Fine-tuned model (same architecture): local HF folder or cached model id."),
    output: Path = typer.Option(..., "-o", "--output", metavar="FILE", help="The .ddq file to write (atomically)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace FILE if it exists."),
    method: Method = typer.Option(D["method"], help="DeltaDQ or a baseline (deltacome, deltazip and "
                                  "bitdelta-distill use calibration activations; see --target-ratio)."),
    target_ratio: Optional[float] = typer.Option(
        None, "--target-ratio", metavar="R", help="A byte budget: the all-tensor true ratio R (every tensor's fp16 "
        "delta bytes / every byte the tensors take). deltadq then chooses per tensor the encoding, alpha, k and "
        "grid for the least summed element-wise noise-to-signal ratio, then rescales the dropout deltas (see "
        "--rescale); deltacome and deltazip size themselves to R."),
    rescale: bool = typer.Option(
        True, "--rescale/--no-rescale", help="--target-ratio: store each dropout delta times t = 1/(1 + c "
        "(alpha - 1)), c chosen on the calibration text by the KL to the fine-tune, then per role (each module "
        "name across layers) (loads the fine-tune, then the base, with transformers in float32: the model's "
        "float32 size in RAM beside the dropout deltas' kept elements, skipped with a warning where that is not "
        "available; some 20-40 passes over 1024 tokens). "
        "--no-rescale keeps the unbiased scale alpha."),
    split: bool = typer.Option(
        True, "--split/--no-split", help="--target-ratio: store linear deltas at alpha >= 4 as seeded_rans_split "
        "(the 10% of input columns with the most energy on the calibration text kept more often; one forward "
        "pass of the fine-tune). The loaders merge such entries or hold them decoded: --no-split keeps "
        "seeded_rans, which the delta kernels serve compressed (many deltas on one GPU)."),
    allocation: Allocation = typer.Option("paper", help="deltacome: bits per singular-vector band as the "
                                          "Delta-CoMe paper (paper) or DeltaMix's 0/1 integer program (ilp)."),
    encoding: Optional[Encoding] = typer.Option(
        None, show_default=False, help=f"deltadq's layout: seeded_rans (seeded with entropy-coded codes; format 1.1), "
        f"seeded (mask from the seed), csr_parts (the paper's). [default: {D['encoding']}; csr_parts with --ratio "
        f"or --parts > 1]"),
    alpha: Optional[int] = typer.Option(None, min=1, help=f"Dropout factor: keep 1 in alpha of each delta. "
                                        f"[default: {D['alpha']} (deltadq), 4 (dare, magnitude), 1 (bitdelta)]"),
    bits: Optional[int] = typer.Option(None, min=1, max=8, help=f"k: bits of the uniform quantizer. "
                                       f"[default: {D['bits']}]"),
    parts: Optional[int] = typer.Option(None, min=1, help=f"m: parts of separate quantization, a power of two "
                                        f"(csr_parts only). [default: {D['parts']}]"),
    ratio: Optional[int] = typer.Option(None, help="The paper's csr_parts presets for a nominal ratio: "
                                        f"{', '.join(map(str, CONVERT_RATIO_PRESETS))} (sets alpha, k, m)."),
    group_size: str = typer.Option(D["group_size"], metavar="auto|N",
                                   help="h_g: 'auto' (searched on layer 0) or a multiple of alpha."),
    embeddings: Embeddings = typer.Option(D["embeddings"], help="Embeddings and lm_head: compressed like the "
                                          "linear layers, or stored as a dense delta."),
    seed: int = typer.Option(0, help="Run seed; each tensor's seed derives from it and the tensor name."),
    calib: Optional[Path] = typer.Option(None, metavar="FILE", help="Calibration text for the group-size search, "
                                         "--seed-trials and --target-ratio's rescale. [default: a built-in text]"),
    rank: Optional[int] = typer.Option(None, help="lowrank: rank of the truncated SVD. [default: 16]"),
    seed_trials: int = typer.Option(1, "--seed-trials", metavar="N", help="Try N dropout seeds per tensor and keep "
                                    "the one with the least layer-output error on the calibration text (deltadq, "
                                    "bitdelta with alpha > 1). N > 1 loads the whole fine-tune with "
                                    "transformers in float32 (it must fit in RAM) and costs about N "
                                    "reconstructions per tensor. 1 = off."),
    workers: int = typer.Option(1, metavar="N", help="Tensors processed in parallel (the bytes do not depend on it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from FILE.partial."),
    base_digest: bool = typer.Option(False, "--base-digest", help="Also record a SHA-256 of every base tensor "
                                     "(format 1.2; reads each base tensor in full): `ddq verify --full --base` "
                                     "then proves the base bit-identical."),
    format_major: Optional[int] = typer.Option(
        None, "--format", min=1, max=2, metavar="1|2", show_default=False, help="The container's major version: 2 "
        "stores the header zlib-compressed (format 2.0, about 6x smaller; readers of 1.x only cannot open it), 1 "
        "a plain msgpack header (format 1.x). [default: 2 with deltadq's --target-ratio, where the header's bytes "
        "count against the budget; 1 otherwise]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary (warnings and errors only)."),
):
    """Compress FINETUNED's delta from BASE into a .ddq file. With no options: the recommended file
    (DeltaDQ seeded_rans, alpha=8, k=4, embeddings compressed)."""
    from rich.console import Console

    from .pipeline import convert as run

    check_roles("convert", [("BASE (the first argument)", "model", base),
                            ("FINETUNED (the second)", "model", finetuned)])
    check_output(output, overwrite=overwrite, folder=False, inputs=(base, finetuned))
    log = Console(stderr=True, quiet=quiet, soft_wrap=True)
    planned = target_ratio is not None or method in PLANNED_METHODS
    s = settings(method, alpha, bits, parts, encoding, ratio, embeddings, group_size)
    defaulted = all(v is None for v in (encoding, alpha, bits, parts, ratio)) and method == D["method"] and \
        embeddings == D["embeddings"] and group_size == D["group_size"]
    if planned:  # the planner chooses per tensor; only what the user gave is passed on (and checked there)
        s.update(alpha=alpha, bits=bits, parts=parts)
        log.print(f"settings: {method}" + (f" --target-ratio {target_ratio:g}" if target_ratio is not None else "")
                  + " (chosen per tensor; recorded in the header)", highlight=False,
                  markup=False)
    else:
        log.print(choice_line(s, defaulted), highlight=False, markup=False)
    if Path(base).exists() and Path(finetuned).exists() and Path(base).resolve() == Path(finetuned).resolve():
        warn("BASE and FINETUNED are the same folder: the delta will be all zero")
    try:
        summary = run(base, finetuned, output, method=s["method"], alpha=s["alpha"], bits=s["bits"],
                      parts=s["parts"], group_size=s["group_size"], encoding=s["encoding"], seed=seed, calib=calib,
                      ratio=s["ratio"], workers=workers, resume=resume, embeddings=s["embeddings"], rank=rank,
                      progress=not quiet, console=log, quiet=quiet, seed_trials=seed_trials, print_summary=False,
                      base_digest=base_digest, target_ratio=target_ratio, format_major=format_major,
                      method_options={"allocation": allocation} if method == "deltacome" else
                      {"rescale": rescale, "split": split} if target_ratio is not None else None)
    except DDQError as e:
        fail(e)
    _report_written(output, summary, quiet)


def _report_written(output: Path, summary, quiet: bool):
    """The written file's summary (the same function and figures as `ddq inspect`) and input warnings."""
    from rich.console import Console

    from ..accounting import report
    from ..cli_report import print_summary
    from ..reader import DDQFile

    with DDQFile(output) as f:
        rep = report(f)
    if not quiet:
        took = f"{summary.seconds:.1f} s (group-size search {summary.search_seconds:.1f} s"
        took += f", resumed after {summary.resumed_tensors} tensors)" if summary.resumed_tensors else ")"
        print_summary(Console(), rep, title=f"wrote {output} in {took}")
    else:  # the file's own warnings (a tensor that is most of the file...) still matter when quiet
        from ..cli_report import warnings
        for w in warnings(rep):
            warn(w)
    for w in input_warnings(rep):
        warn(w)
