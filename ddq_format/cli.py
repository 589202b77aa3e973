"""The `ddq` command: inspect, verify, and (registered from their own modules) convert, materialize, example."""
from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Tools for .ddq compressed fine-tune deltas (DeltaDQ).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console()
if not console.is_terminal:  # piped output: do not squeeze the tensor table into 80 columns
    console = Console(width=240)
err_console = Console(stderr=True)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return "inf" if math.isinf(r) else f"{r:.2f}x"


def _json_safe(obj):
    """JSON has no infinity: an infinite ratio (0-bit parts) becomes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _fail(e: Exception, code: int = 2):
    err_console.print(f"[red]error:[/red] {e}", highlight=False)
    raise typer.Exit(code)


@app.command()
def inspect(file: Path = typer.Argument(..., help="A .ddq file."),
            as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
            all_tensors: bool = typer.Option(True, "--all/--summary", help="List every tensor (default) or totals only.")):
    """Header, algorithm parameters and per-tensor sizes by component, with nominal and true ratios."""
    from .accounting import COMPONENTS, report
    from .errors import DDQError
    from .reader import DDQFile
    try:
        with DDQFile(file) as ddq:
            rep = report(ddq)
    except DDQError as e:
        _fail(e)
    if as_json:
        print(json.dumps(_json_safe(rep), indent=2, sort_keys=False))
        return
    head = Table(title=f"{file}", show_header=False, title_justify="left")
    head.add_row("format version", rep["format_version"])
    head.add_row("file size", f"{_bytes(rep['file_bytes'])} ({rep['file_bytes']} bytes)")
    head.add_row("header", _bytes(rep["header_bytes"]))
    head.add_row("alignment", str(rep["alignment"]))
    head.add_row("tensors", ", ".join(f"{v} {k}" for k, v in rep["kinds"].items()) or "none")
    for k, v in rep["base"].items():
        head.add_row(f"base.{k}", str(v))
    for k, v in rep["metadata"].items():
        head.add_row(f"metadata.{k}", str(v))
    if rep["files"]:
        head.add_row("files", ", ".join(f["name"] for f in rep["files"]))
    console.print(head)
    if rep["algorithm"]:
        alg = Table(title="algorithm", show_header=False, title_justify="left")
        for k, v in rep["algorithm"].items():
            if k == "group_size_search" and isinstance(v, dict):
                cands = v.get("candidates", [])
                errs = v.get("errors", [])
                pairs = ", ".join(f"{c}: {e:.4g}" for c, e in zip(cands, errs))
                alg.add_row("group_size_search", f"chosen {v.get('chosen')} from {{{pairs}}}")
                continue
            alg.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        console.print(alg)
    comps = [c for c in COMPONENTS if any(t["components"][c] for t in rep["tensors"])]
    if all_tensors and rep["tensors"]:
        t = Table(title="tensors (bytes in the file)", title_justify="left")
        short = {"col_indices": "col idx", "row_offsets": "row offs", "padding": "pad"}
        for col in ("name", "kind", "encoding", "shape", *comps, "stored", "nominal", "true"):
            t.add_column(short.get(col, col), justify="left" if col in ("name", "kind", "encoding", "shape") else "right",
                         no_wrap=True)
        for x in rep["tensors"]:
            t.add_row(x["name"], x["kind"], x["encoding"] or "-", "x".join(map(str, x["shape"])) or "scalar",
                      *(_bytes(x["components"][c]) for c in comps), _bytes(x["stored_bytes"]),
                      _ratio(x["nominal_ratio"]), _ratio(x["true_ratio"]))
        console.print(t)
    tot = rep["totals"]
    s = Table(title="totals", show_header=False, title_justify="left")
    for c, v in tot["components"].items():
        s.add_row(f"bytes: {c}", _bytes(v))
    s.add_row("fp16 bytes of the delta (all tensors)", _bytes(tot["delta_fp16_bytes"]))
    s.add_row("file bytes", _bytes(tot["stored_bytes"]))
    s.add_row("nominal ratio (paper: a*16/(k-log2 m))", _ratio(tot["nominal_ratio"]))
    s.add_row("true ratio, compressed tensors", _ratio(tot["compressed_true_ratio"]))
    s.add_row("true ratio, whole file", _ratio(tot["true_ratio"]))
    console.print(s)


@app.command()
def verify(file: Path = typer.Argument(..., help="A .ddq file."),
           base: Path = typer.Option(None, "--base", help="Base model folder (safetensors) to check the binding against.")):
    """Check structure, every checksum, every tensor and (with --base) the base binding. Exit 0 when sound."""
    from .verify import verify as run_verify
    faults = run_verify(file, base)
    for f in faults:
        err_console.print(f"[red]FAULT[/red] {f}", highlight=False, soft_wrap=True)
    if faults:
        raise typer.Exit(1)
    console.print(f"[green]OK[/green] {file}" + (f" (bound to {base})" if base else ""))


# Commands that live beside their subpackage; each imports torch (if at all) only when it runs.
from .converters.command import convert  # noqa: E402
from .example.command import example_app  # noqa: E402
from .loaders.command import materialize  # noqa: E402

app.command()(convert)
app.command()(materialize)
app.add_typer(example_app, name="example")


def main():
    app()


if __name__ == "__main__":
    main()
