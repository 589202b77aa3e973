"""The `ddq` command: inspect, verify, and (registered from their own modules) convert, materialize, eval,
example."""
from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console

from .cli_common import Command, Group, check_roles, fail, tagged

app = typer.Typer(help="Tools for .ddq compressed fine-tune deltas (DeltaDQ).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=Group,
                  rich_markup_mode="markdown")
console = Console()
VERIFY_SHOWN = 10  # fault lines printed without --verbose


def _version(value: bool):
    if value:
        from . import __version__
        from .spec import COMPACT_MAJOR, COMPACT_MINOR, FORMAT_MAJOR, FORMAT_MINOR
        compact = f"{COMPACT_MAJOR}.0" + (f" to {COMPACT_MAJOR}.{COMPACT_MINOR}" if COMPACT_MINOR else "")
        typer.echo(f"ddq {__version__} (reads and writes .ddq format {FORMAT_MAJOR}.0 to "
                   f"{FORMAT_MAJOR}.{FORMAT_MINOR} and {compact})")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """Tools for .ddq compressed fine-tune deltas (DeltaDQ)."""


def _open_report(file: Path) -> dict:
    """accounting.report() of `file`; any failure is one error line (exit 2), never a traceback."""
    from .accounting import report
    from .errors import DDQError
    from .reader import DDQFile
    check_roles("inspect", [("FILE", "ddq", file)])
    try:
        with DDQFile(file) as ddq:
            return report(ddq)
    except DDQError as e:
        fail(e)
    except Exception as e:  # the reader accepted the file, so this is a bug in ddq: say so on one line
        fail(f"{file}: accepted by the reader but its sizes cannot be accounted for "
             f"({type(e).__name__}: {e}); please report this as a bug")


def inspect(file: Path = typer.Argument(..., metavar="FILE", help="A .ddq file."),
            tensors: bool = typer.Option(False, "--tensors", help="List every tensor with its bytes by component."),
            as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON (every tensor).")):
    """What a .ddq file holds: how it was made, its sizes with nominal, true and all-tensor ratios, its largest
    tensors (--tensors: all of them; --json: everything)."""
    from .cli_report import print_summary, print_tensor_table
    rep = _open_report(file)
    if as_json:
        print(json.dumps(rep, indent=2, allow_nan=False))  # report() is JSON-safe by construction
        return
    out = console if console.is_terminal else Console(width=240)  # piped: wide tables stay whole
    if tensors:
        print_tensor_table(out, rep)
        out.print()
    print_summary(out, rep)


# -- verify ------------------------------------------------------------------------------------------------
_TENSOR = re.compile(r"tensor (?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")")
# fault text -> the most likely cause, in order of precedence
_CAUSES = (("base.fingerprint", "not the base this delta was made from"),
           ("base.shape", "not the base this delta was made from"),
           ("base.dtype", "not the base this delta was made from"),
           ("missing from the base", "not the base this delta was made from"),
           ("cannot read base", "the --base folder is not a readable checkpoint"),
           ("CRC-32", "the file is damaged (changed after it was written: transfer, disk or an edit)"),
           ("padding", "the file is damaged (changed after it was written: transfer, disk or an edit)"),
           ("bad magic", "not a .ddq file"),
           ("zlib stream", "the file is damaged (changed after it was written: transfer, disk or an edit)"),
           ("unknown encoding", "written by a newer ddq (an encoding this version does not know), or damaged"),
           ("is not readable by this library", "written by a newer, incompatible ddq (major version)"),
           ("cannot open", "the file cannot be read"),
           ("truncated", "the file is truncated (an interrupted copy or download?)"))


def _cause(faults: list[str]) -> str:
    scores = {}
    for f in faults:
        for needle, cause in _CAUSES:
            if needle in f:
                scores[cause] = scores.get(cause, 0) + 1
                break
    if not scores:
        return "the file is not well-formed (see the lines above)"
    return max(scores, key=scores.get)


def _tensors_in(faults: list[str]) -> set[str]:
    return {m.group(1) or m.group(2) for f in faults for m in [_TENSOR.search(f)] if m}


def verify(file: Path = typer.Argument(..., metavar="FILE", help="A .ddq file."),
           base: Path = typer.Option(None, "--base", metavar="BASE",
                                     help="Base model folder (safetensors) to check the binding against."),
           full: bool = typer.Option(False, "--full", help="With --base: hash every element of every bound base "
                                     "tensor against its recorded digest (a tensor without one is a fault saying "
                                     "only the sampled fingerprint could be checked)."),
           verbose: bool = typer.Option(False, "--verbose", "-v",
                                        help=f"Print every fault line (default: the first {VERIFY_SHOWN}).")):
    """Check structure, every checksum, every tensor and (with --base) the base binding. Ends with one line:
    sound, or N faults in M tensors and their most likely cause. Exit 0 when sound, 1 on faults."""
    from .verify import verify as run_verify
    roles = [("FILE", "ddq", file)] + ([("--base", "model", base)] if base is not None else [])
    check_roles("verify", roles)
    try:
        if full and base is None:
            fail("--full checks the base binding: give the base with --base BASE")
        faults = run_verify(file, base, full=full)
    except Exception as e:  # verify reports faults as lines; an exception is a bug in ddq, said on one line
        fail(f"{file}: verify could not finish ({type(e).__name__}: {e}); please report this as a bug")
    shown = faults if verbose else faults[:VERIFY_SHOWN]
    err = Console(stderr=True, soft_wrap=True)
    for f in shown:
        err.print(tagged("FAULT", "red", f), highlight=False)
    if len(shown) < len(faults):
        err.print(f"... {len(faults) - len(shown)} more fault(s) (--verbose prints all)", highlight=False,
                  markup=False)
    if faults:
        n_t = len(_tensors_in(faults))
        console.print(tagged("FAILED", "red", f"{file}: {len(faults)} fault(s)"
                             + (f" in {n_t} tensor(s)" if n_t else "") + f"; most likely cause: {_cause(faults)}"),
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(tagged("OK", "green", f"{file}: sound (structure, checksums, every tensor decoded"
                         + (f"; bound to {base})" if base else "; no --base given, binding not checked)")),
                  highlight=False, soft_wrap=True)


# -- repack ------------------------------------------------------------------------------------------------
def repack(file: Path = typer.Argument(..., metavar="FILE", help="A .ddq file."),
           output: Path = typer.Option(..., "-o", "--output", metavar="OUT", help="The .ddq file to write."),
           format_major: int = typer.Option(..., "--format", min=1, max=2, metavar="1|2",
                                            help="1: a plain msgpack header (format 1.x, what every reader of "
                                            "1.x opens); 2: the header zlib-compressed (format 2.0)."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists.")):
    """Rewrite FILE in another container version: the same entries and buffer bytes (it decodes to the same
    arrays), only the header's storage and the version label change."""
    from .cli_common import check_output
    from .errors import DDQError
    from .reader import DDQFile
    from .repack import repack as run_repack
    check_roles("repack", [("FILE", "ddq", file)])
    check_output(output, overwrite=overwrite, folder=False, inputs=(file,))
    try:
        run_repack(file, output, format_major)
        with DDQFile(file) as a, DDQFile(output) as b:
            was, now = (a.version, a.file_size, a.header_length), (b.version, b.file_size, b.header_length)
    except DDQError as e:
        fail(e)
    console.print(f"wrote {output}: format {now[0][0]}.{now[0][1]}, {now[1]:,} bytes, header {now[2]:,} bytes "
                  f"(was format {was[0][0]}.{was[0][1]}, {was[1]:,} bytes, header {was[2]:,})", highlight=False,
                  markup=False, soft_wrap=True)


# Commands that live beside their subpackage; each imports torch (if at all) only when it runs.
from .converters.command import convert  # noqa: E402
from .evaluate.command import eval_command  # noqa: E402
from .example.command import example_app  # noqa: E402
from .loaders.command import materialize  # noqa: E402

for _command in (convert, inspect, verify, repack, materialize):  # the order `ddq --help` lists them in
    app.command(cls=Command)(_command)
app.command("eval", cls=Command)(eval_command)
app.add_typer(example_app, name="example")


def main():
    app()


if __name__ == "__main__":
    main()
