"""`ddq materialize`: the typer command (registered by ddq_format/cli.py)."""
from __future__ import annotations

from pathlib import Path

import typer


def materialize(
    base: Path = typer.Argument(..., help="Base model: a Hugging Face folder (safetensors) or a .safetensors file."),
    delta: Path = typer.Argument(..., help="The .ddq file made against that base."),
    output: Path = typer.Option(..., "--output", "-o", help="Folder to write (created atomically)."),
    max_shard_size: str = typer.Option("5GB", help="Largest safetensors shard, e.g. 5GB, 500MB."),
    device: str = typer.Option("auto", help="Where deltas are decoded and added: auto, cpu, cuda, cuda:1..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Write base + delta as a Hugging Face folder (safetensors shards, config, tokenizer) that
    transformers and vLLM load unchanged."""
    from rich.console import Console

    from ..errors import DDQError
    from .hf_folder import materialize as run

    console = Console(stderr=True, soft_wrap=True)  # paths in messages must stay greppable
    try:
        summary = run(base, delta, output, max_shard_size=max_shard_size,
                      device=None if device == "auto" else device, overwrite=overwrite, progress=progress)
    except DDQError as e:
        console.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    from_base = sorted(n for n, o in summary["files"].items() if o == "base")
    console.print(f"wrote {summary['path']}: {summary['tensors']} tensors, {summary['bytes']:,} bytes in "
                  f"{len(summary['weights'])} safetensors file(s)", highlight=False)
    if from_base:
        console.print(f"copied from the base (not stored in the delta): {', '.join(from_base)}", highlight=False)
