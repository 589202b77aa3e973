"""`ddq materialize`: the typer command (registered by ddq_format/cli.py)."""
from __future__ import annotations

from pathlib import Path

import typer

from ..cli_common import check_output, check_roles, err_console, fail


def materialize(
    base: Path = typer.Argument(..., metavar="BASE", show_default=False,
                                help="Base model: a Hugging Face folder (safetensors) or a .safetensors file."),
    delta: Path = typer.Argument(..., metavar="DELTA", show_default=False,
                                 help="The .ddq file made against that base."),
    output: Path = typer.Option(..., "--output", "-o", metavar="DIR", help="Folder to write (created atomically)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DIR if it exists."),
    max_shard_size: str = typer.Option("5GB", metavar="SIZE", help="Largest safetensors shard, e.g. 5GB, 500MB."),
    device: str = typer.Option("auto", metavar="auto|cpu|cuda[:N]",
                               help="Where deltas are decoded and added."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress."),
):
    """Write base + delta as a Hugging Face folder (safetensors shards, config, tokenizer) that
    transformers and vLLM load unchanged."""
    from ..errors import DDQError
    from .hf_folder import materialize as run

    check_roles("materialize", [("BASE (the first argument)", "model", base), ("DELTA (the second)", "ddq", delta)])
    check_output(output, overwrite=overwrite, folder=True, inputs=(base, delta))
    try:
        summary = run(base, delta, output, max_shard_size=max_shard_size,
                      device=None if device == "auto" else device, overwrite=overwrite, progress=progress)
    except DDQError as e:
        fail(e)
    from_base = sorted(n for n, o in summary["files"].items() if o == "base")
    err_console.print(f"wrote {summary['path']}: {summary['tensors']} tensors, {summary['bytes']:,} bytes in "
                      f"{len(summary['weights'])} safetensors file(s)", highlight=False)
    if from_base:
        err_console.print(f"copied from the base (not stored in the delta): {', '.join(from_base)}", highlight=False)
