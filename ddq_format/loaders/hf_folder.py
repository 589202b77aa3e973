"""materialize(): base + delta written as a Hugging Face folder that transformers and vLLM load unchanged.

Streams: reads one base tensor at a time from the base's safetensors shards (found, ordered and validated by
ddq_format.checkpoint_raw) and holds at most one output shard in memory. The folder is built in a temporary
directory beside the target and renamed into place. Auxiliary files never take a name that materialize
writes or that a loader would read as weights; names that collide with each other are refused before any
tensor is read.

(This module is not named `materialize`: a submodule of that name would shadow the function
`ddq_format.loaders.materialize` once imported.)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import torch

from ..checkpoint_raw import INDEX_NAME, SINGLE_NAME, SafetensorsCheckpoint
from ..errors import DDQError, UsageError
from .apply import iter_finetuned, missing_from_base, open_file

# Names a loader reads as weights or as a weight index: never taken by an auxiliary file.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".index.json")
DEFAULT_SHARD_BYTES = 5 * 10**9  # what save_pretrained uses ("5GB")


def parse_size(text) -> int:
    """'5GB', '500MB', '60KiB', '1024' -> bytes (decimal units, binary with 'iB')."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(text).upper())
    if not m:
        raise UsageError(f"cannot read size {text!r} (e.g. 5GB, 500MB, 64KiB)", field="max_shard_size")
    num, unit, binary = m.groups()
    base = 1024 if binary else 1000
    return int(float(num) * base ** " KMGT".index(unit or " "))


def iter_base(ck: SafetensorsCheckpoint, device="cpu"):
    """(name, tensor) over every base tensor in the checkpoint's order, one tensor at a time."""
    from safetensors import safe_open
    for shard in ck.shards:
        with safe_open(str(shard.path), framework="pt", device=str(device)) as f:
            for name in shard.names():
                yield name, f.get_tensor(name)


# -- the output folder ----------------------------------------------------------------------------------
class _ShardWriter:
    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[Path, list[str]]] = []
        self.total = 0
        self.count = 0

    def add(self, name, t: torch.Tensor):
        n = t.numel() * t.element_size()
        if self.pending and self.pending_bytes + n > self.max_bytes:
            self.flush()
        self.pending[name] = t.detach().to("cpu").contiguous()
        self.pending_bytes += n
        self.total += n
        self.count += 1

    def flush(self):
        from safetensors.torch import save_file
        if not self.pending:
            return
        path = self.folder / f".shard-{len(self.shards):05d}.safetensors"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.shards.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        self.flush()
        if len(self.shards) <= 1:
            names = [SINGLE_NAME]
            if self.shards:
                os.replace(self.shards[0][0], self.folder / SINGLE_NAME)
            else:  # a model with no tensors at all still gets a (valid, empty) weights file
                from safetensors.torch import save_file
                save_file({}, str(self.folder / SINGLE_NAME), metadata={"format": "pt"})
            return names
        n = len(self.shards)
        weight_map, names = {}, []
        for i, (path, tensors) in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.folder / final)
            names.append(final)
            weight_map.update({t: final for t in tensors})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return names


# -- auxiliary files -----------------------------------------------------------------------------------
def _refuse(ddq, name, why):
    raise UsageError(f"auxiliary file {name!r} {why}", path=ddq.path, field=f"files.{name}")


def _aux_plan(ddq, base) -> dict[str, str]:
    """name -> 'delta' | 'base' for every auxiliary file to write, checked before any tensor is read: the
    fine-tune's files from the .ddq, then the base folder's non-weight files that fill gaps (same architecture,
    usually the same tokenizer). Names are compared case-insensitively (macOS and Windows folders are)."""
    plan, taken, dirs = {}, {}, set()
    for name in ddq.files:
        p = PurePosixPath(name)
        if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts) or "\\" in name:
            _refuse(ddq, name, "is not a plain relative path")
        if p.name.lower().endswith(WEIGHT_SUFFIXES):
            _refuse(ddq, name, "has the name of a weights file (materialize writes the weights; loaders would "
                               "read it as weights)")
        key = name.casefold()
        if key in taken:
            _refuse(ddq, name, f"differs from {taken[key]!r} only in letter case")
        if key in dirs:
            _refuse(ddq, name, "is also a folder of another auxiliary file")
        taken[key] = name
        parents = {str(q).casefold() for q in p.parents if str(q) != "."}
        clash = parents & set(taken)
        if clash:
            _refuse(ddq, name, f"needs {taken[clash.pop()]!r} to be a folder, but it is a file")
        dirs |= parents
        plan[name] = "delta"
    base = Path(base)
    if base.is_dir():
        for src in sorted(base.iterdir()):
            key = src.name.casefold()
            if (src.is_file() and key not in taken and key not in dirs and not src.name.startswith(".")
                    and not key.endswith(WEIGHT_SUFFIXES)):
                plan[src.name] = "base"
    return plan


def _write_aux(ddq, base, tmp: Path, plan: dict[str, str]) -> None:
    for name, origin in plan.items():
        dest = tmp.joinpath(*PurePosixPath(name).parts)
        if dest.exists():  # the plan excludes this; a file materialize wrote is never replaced
            _refuse(ddq, name, "collides with a file materialize wrote")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if origin == "delta":
            dest.write_bytes(ddq.file(name))
        else:
            shutil.copyfile(Path(base) / name, dest)


# -- materialize ---------------------------------------------------------------------------------------
def _write_tensors(writer: _ShardWriter, stream, total: int, progress: bool) -> None:
    from ..progress import make_progress
    bar = make_progress(enabled=progress, transient=True)
    with bar:
        task = bar.add_task("materialize", total=total, what="tensors")
        for name, t in stream:
            writer.add(name, t)
            bar.update(task, advance=1, description=name)


def _publish(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / "x")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def materialize(base, ddq, out, *, max_shard_size=DEFAULT_SHARD_BYTES, device=None, overwrite: bool = False,
                progress: bool = True, verify_binding: bool = True) -> dict:
    """Write base + delta as an HF folder at `out`; returns a summary dict (files, shards, bytes, origin).

    `base`: an HF folder (safetensors, sharded or not) or one .safetensors file. `device`: where deltas are
    decoded and added (None: CUDA when available, else CPU).
    """
    ddq = open_file(ddq)
    out = Path(out)
    max_bytes = parse_size(max_shard_size)
    if max_bytes <= 0:
        raise UsageError("max shard size must be positive", field="max_shard_size")
    if out.exists() and not overwrite:
        raise UsageError("output exists (pass overwrite=True / --overwrite to replace it)", path=out)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    ck = SafetensorsCheckpoint(base)
    missing = missing_from_base(ddq, ck.tensors)
    if missing:  # fail before writing anything
        raise DDQError(f"the base lacks tensors the delta was made against: {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''} (wrong base model?)", path=ddq.path)
    aux = _aux_plan(ddq, base)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        writer = _ShardWriter(tmp, max_bytes)
        stream = iter_finetuned(ddq, iter_base(ck, device), device, check=verify_binding)
        _write_tensors(writer, stream, len(ck.tensors), progress)
        weight_files = writer.finish()
        _write_aux(ddq, base, tmp, aux)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out), "weights": weight_files, "bytes": writer.total, "files": aux,
            "tensors": writer.count}
