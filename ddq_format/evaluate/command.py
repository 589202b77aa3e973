"""`ddq eval`: the typer command (the CLI registers it with app.command("eval")(eval_command))."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..cli_common import fail
from ..errors import DDQError

SWEEP_RATIOS = (8, 16, 32, 64, 128, 256, 512, 1024)


def eval_command(
    base: Path = typer.Argument(..., help="Base model folder (Hugging Face, safetensors)."),
    finetuned: Path = typer.Argument(..., help="Fine-tuned model folder."),
    files: Optional[List[Path]] = typer.Argument(None, help=".ddq deltas of FINETUNED against BASE to score."),
    data: Path = typer.Option(..., "--data", help='JSON lines: {"prompt": ..., "answer": ...} (exact match, '
                              'answer NLL) and/or {"text": ...} (perplexity); KL(fine-tune || model) on all.'),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the accuracy vs all-tensor true ratio plot here (PNG)."),
    sweep: bool = typer.Option(False, "--sweep", help="Also convert at a ladder of --target-ratio values and score each."),
    ratios: str = typer.Option(",".join(map(str, SWEEP_RATIOS)), "--ratios", help="--sweep: comma-separated target ratios."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="--sweep: keep the converted files here (default: a temporary folder)."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="--sweep: calibration text for the converter (default: its built-in text)."),
    device: str = typer.Option("cpu", "--device", help="torch device for the models (cpu, cuda)."),
    workers: int = typer.Option(1, help="--sweep: converter worker threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    """Score BASE, FINETUNED and each .ddq on your data: exact match, answer NLL, perplexity, KL to the fine-tune."""
    from .run import run
    try:
        rs = [float(r) for r in ratios.split(",") if r.strip()] if sweep else []
        rows = run(base, finetuned, list(files or []), data, sweep=rs, out_dir=out_dir, calib=calib, device=device,
                   workers=workers, progress=not quiet)
    except DDQError as e:
        fail(e)
    except ValueError as e:  # a malformed --ratios list
        fail(f"--ratios must be comma-separated numbers: {e}")
    if plot is not None:
        from .run import plot_rows
        plot_rows(rows, plot)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        from .run import print_table
        print_table(rows)
