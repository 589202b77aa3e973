"""Materialize base + delta into a Hugging Face folder that transformers and vLLM load unchanged.

Streams: reads one base tensor at a time from the base's safetensors shards and holds at most one output
shard in memory. The folder is built in a temporary directory beside the target and renamed into place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import torch

from ..errors import DDQError, UsageError
from .apply import iter_finetuned, missing_from_base, open_file

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
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


# -- the base checkpoint ----------------------------------------------------------------------------------
def base_shards(base) -> list[Path]:
    """The base's safetensors files in order: index.json order, else model.safetensors, else all of them."""
    base = Path(base)
    if base.is_file():
        if base.suffix != ".safetensors":
            raise UsageError("the base must be a folder or a .safetensors file", path=base)
        return [base]
    if not base.is_dir():
        raise UsageError("no such base model folder", path=base)
    index = base / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [base / f for f in dict.fromkeys(weight_map.values())]
    if (base / SINGLE_NAME).is_file():
        return [base / SINGLE_NAME]
    found = sorted(base.glob("*.safetensors"))
    if not found:
        raise UsageError("no safetensors weights in the base folder (convert .bin checkpoints to safetensors "
                         "first: .ddq never loads pickles)", path=base)
    return found


def base_names(shards) -> list[str]:
    from safetensors import safe_open
    names = []
    for s in shards:
        with safe_open(str(s), framework="pt") as f:
            names += list(f.keys())
    return names


def iter_base(shards, device="cpu"):
    """(name, tensor) over every base shard, one tensor at a time."""
    from safetensors import safe_open
    for s in shards:
        with safe_open(str(s), framework="pt", device=str(device)) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


# -- the output folder ----------------------------------------------------------------------------------
def _safe_relpath(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts) or "\\" in name:
        raise UsageError(f"refusing auxiliary file name {name!r}", field=f"files.{name}")
    return p


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


def _aux_files(ddq, base, tmp: Path) -> dict[str, str]:
    """Write the fine-tune's files from the .ddq; fill gaps with the base folder's non-weight files (same
    architecture, usually the same tokenizer). Returns name -> 'delta' | 'base'."""
    origin = {}
    for name in ddq.files:
        rel = _safe_relpath(name)
        dest = tmp.joinpath(*rel.parts)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(ddq.file(name))
        origin[name] = "delta"
    base = Path(base)
    if base.is_dir():
        for src in sorted(base.iterdir()):
            if (src.is_file() and src.name not in origin and src.name != INDEX_NAME
                    and not src.name.endswith(WEIGHT_SUFFIXES) and not src.name.startswith(".")):
                shutil.copyfile(src, tmp / src.name)
                origin[src.name] = "base"
    return origin


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
    shards = base_shards(base)
    names = base_names(shards)
    missing = missing_from_base(ddq, names)
    if missing:  # fail before writing anything
        raise DDQError(f"the base lacks tensors the delta was made against: {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''} (wrong base model?)", path=ddq.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        writer = _ShardWriter(tmp, max_bytes)
        stream = iter_finetuned(ddq, iter_base(shards, device), device, check=verify_binding)
        from ..progress import make_progress  # a bar on a terminal, timestamped lines in logs
        with make_progress(enabled=progress, transient=True) as bar:
            task = bar.add_task("materialize", total=len(names), what="tensors")
            for name, t in stream:
                writer.add(name, t)
                bar.update(task, advance=1, description=name)
        weight_files = writer.finish()
        origin = _aux_files(ddq, base, tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out), "weights": weight_files, "bytes": writer.total, "files": origin,
            "tensors": writer.count}
