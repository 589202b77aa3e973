"""What every `ddq` command shares: help rendering, one-line errors, and the checks a newcomer's mistakes hit
(an existing output, a missing folder, arguments in the wrong order), worded the same in every command."""
from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .spec import MAGIC

err_console = Console(stderr=True, soft_wrap=True)  # paths in messages stay whole (greppable)


def tagged(tag: str, style: str, message) -> Text:
    """`tag message` with only the tag styled: messages hold paths, tensor names and header values, which
    must never be read as rich markup (`[/x]` in a name would raise)."""
    return Text.assemble((tag, style), " ", str(message))


def fail(message, code: int = 2):
    """Print `error: message` on one line to stderr and exit (2: bad input or usage; 1 is verify's faults)."""
    err_console.print(tagged("error:", "red", message), highlight=False)
    raise typer.Exit(code)


def warn(message, console: Console | None = None):
    (console or err_console).print(tagged("warning:", "yellow", message), highlight=False)


# -- help ------------------------------------------------------------------------------------------------
class _FlagOption(TyperOption):
    """typer 0.29's rich help prints `display_type_rich()` for every option, so each flag (--help included)
    reads `<bool>`; its plain formatter, and typer up to 0.27, show no type for a flag, which takes no value."""

    def display_type_rich(self, ctx):
        return None if self.is_flag else super().display_type_rich(ctx)


class _Help:
    """Help as users expect it: `Usage: ddq convert [OPTIONS] BASE FINETUNED` (typer 0.29 writes
    `{base} {finetuned}`) and no type label on flags."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if type(p) is TyperOption and p.is_flag:
                p.__class__ = _FlagOption  # same object for parsing; only its help label changes
        return params

    def collect_usage_pieces(self, ctx):
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = p.metavar or p.name.upper()
                name += "..." if p.nargs != 1 else ""
                pieces.append(name if p.required else f"[{name}]")
        if isinstance(self, TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class Command(_Help, TyperCommand):
    pass


class Group(_Help, TyperGroup):
    pass


# -- what a path is --------------------------------------------------------------------------------------
def is_ddq_file(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def describe(p: Path) -> str:
    """'a .ddq file', 'a model folder', 'a folder', 'a file', 'missing' (for messages about argument order)."""
    p = Path(p)
    if p.is_dir():
        model = (p / "config.json").is_file() or any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin"))
        return "a model folder" if model else "a folder"
    if p.is_file():
        if is_ddq_file(p):
            return "a .ddq file"
        return "a safetensors file" if p.suffix == ".safetensors" else "a file"
    return "missing"


_EXPECTS = {"model": ("a model folder", "a safetensors file", "a folder", "missing"), "ddq": ("a .ddq file",
            "a file", "missing")}


def check_roles(command: str, args: list[tuple[str, str, Path | str]]):
    """args: (role words, 'model' | 'ddq', value) in command-line order. When a value is what another role
    expects (a .ddq file given as a model, a model folder given as the .ddq), fail with a message that says
    which argument is which, e.g. `the first argument is the base model folder; x.ddq is a .ddq file`.
    Missing paths pass (convert takes cached model ids; the command reports them)."""
    found = [(role, want, v, describe(Path(v))) for role, want, v in args]
    wrong = [x for x in found if x[3] not in _EXPECTS[x[1]]]
    if not wrong:
        return
    expected = "; ".join(f"{role} is {'a .ddq file' if want == 'ddq' else 'a model folder'}"
                         for role, want, _, _ in found)
    got = " and ".join(f"{v} is {what}" for _, _, v, what in wrong)
    fail(f"ddq {command}: {expected}; but {got}")


# -- outputs ---------------------------------------------------------------------------------------------
def check_output(out: Path, *, overwrite: bool, folder: bool, inputs=(), flag: str = "-o/--output"):
    """The one rule for every command that writes: refuse an existing output unless --overwrite; refuse a
    missing parent folder (never create folders the user did not ask for); never replace an input."""
    out = Path(out)
    what = "folder" if folder else "file"
    if out.exists() or out.is_symlink():
        if out.is_dir() != folder:
            fail(f"{out} is {'a file' if out.is_file() else 'a folder'}; {flag} takes the {what} to write")
        if not overwrite:
            fail(f"{out}: output exists; pass --overwrite to replace it")
    parent = out.parent
    if not parent.is_dir():
        fail(f"{parent} does not exist: create the folder first, or choose another {flag}")
    if not os.access(parent, os.W_OK):
        fail(f"{parent} is not writable")
    resolved = out.resolve()
    for i in inputs:
        r = Path(i).resolve() if Path(i).exists() else None
        if r is not None and (r == resolved or resolved in r.parents):
            fail(f"{out} would replace the input {i}; choose another {flag}")
