"""`ddq convert`: the typer command (registered by ddq_format/cli.py with app.command()(convert))."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import DDQError


def convert(
    base: str = typer.Argument(..., help="Base model: local HF folder or a model id in the local HF cache."),
    finetuned: str = typer.Argument(..., help="Fine-tuned model: local HF folder or cached model id."),
    output: Path = typer.Option(..., "-o", "--output", help="The .ddq file to write (atomically)."),
    method: str = typer.Option("deltadq", help="deltadq | dare | magnitude | bitdelta | lowrank."),
    alpha: Optional[int] = typer.Option(None, help="Dropout factor: keep 1/alpha of each delta "
                                        "(default: 4; bitdelta 1 = no dropout in front)."),
    bits: Optional[int] = typer.Option(None, help="k: bits of the uniform quantizer (default 4)."),
    parts: Optional[int] = typer.Option(None, help="m: parts of separate quantization, power of two (default 1)."),
    group_size: str = typer.Option("auto", help="h_g: 'auto' (search on layer 0) or a multiple of alpha."),
    encoding: str = typer.Option("csr_parts", help="csr_parts (paper) | seeded (mask from the seed) | "
                                 "seeded_rans (seeded with entropy-coded codes; format 1.1)."),
    seed: int = typer.Option(0, help="Run seed; each tensor's seed derives from it and the tensor name."),
    calib: Optional[Path] = typer.Option(None, help="Calibration text for the group-size search "
                                         "and --seed-trials (default: a built-in text)."),
    ratio: Optional[int] = typer.Option(None, help="Preset alpha/k/m for a nominal ratio: 8, 16, 32, 64, 128, "
                                        "256, 512 (deltadq)."),
    embeddings: str = typer.Option("dense", help="Embeddings and lm_head: dense delta (default) or compressed."),
    rank: Optional[int] = typer.Option(None, help="lowrank: rank of the truncated SVD (default 16)."),
    seed_trials: int = typer.Option(1, "--seed-trials", help="Try N dropout seeds per tensor and keep the one "
                                    "with the least layer-output error on the calibration text (deltadq, "
                                    "bitdelta with alpha > 1). N > 1 loads the whole fine-tune with "
                                    "transformers in float32 (it must fit in RAM) and costs about N "
                                    "reconstructions per tensor. 1 = off."),
    workers: int = typer.Option(1, help="Tensors processed in parallel (output bytes do not depend on it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from OUTPUT.partial."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
):
    """Compress FINETUNED's delta from BASE into a .ddq file (DeltaDQ or a baseline)."""
    from .pipeline import convert as run
    try:
        run(base, finetuned, output, method=method, alpha=alpha, bits=bits, parts=parts, group_size=group_size,
            encoding=encoding, seed=seed, calib=calib, ratio=ratio, workers=workers, resume=resume,
            embeddings=embeddings, rank=rank, progress=not quiet, quiet=quiet, seed_trials=seed_trials)
    except DDQError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
