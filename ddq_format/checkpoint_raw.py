"""The project's one safetensors reader: numpy only (verify and convert need no torch; bf16 comes back as its
uint16 bit patterns, which safetensors' numpy backend cannot return), and the one place where a checkpoint's
weight files are found and ordered.

A file is 8 bytes of little-endian header length N, N bytes of JSON, then the data. It is accepted exactly
when safetensors' own `SafeTensors::read_metadata` / `Metadata::validate` would accept it: N at most
100,000,000; the header UTF-8 and a JSON object; `__metadata__` absent, null or a map of strings to strings;
every tensor a known dtype, a shape of non-negative integers and two data offsets; sorted by offsets, the
tensors tile the data from 0 with no hole or overlap, each exactly shape product x dtype width bytes (overflow
past 64 bits refused), and the last one ends at the end of the file. Stricter than safetensors in two ways
that only refuse malformed JSON it would read differently: duplicate keys and NaN/Infinity literals. Every
error names the file, the tensor and the field.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import UsageError
from .spec import DTYPES

MAX_HEADER_BYTES = 100_000_000  # safetensors' MAX_HEADER_SIZE
# Bits per element of the safetensors dtypes that .ddq does not store (spec.DTYPES holds the others): known
# so that every file safetensors opens opens here; their tensors are listed, never read.
OTHER_DTYPE_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
                    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "C64": 64, "F64": 64}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
BIN_NAME = "pytorch_model.bin"
_USIZE = 2**64  # offsets and sizes are u64 in safetensors (usize on the 64-bit hosts it runs on)
MAX_JSON_DEPTH = 127  # nesting serde_json (safetensors' parser) accepts: its recursion limit is 128


def dtype_bits(name) -> int | None:
    """Bits per element of a safetensors dtype name, None when safetensors does not know it."""
    if isinstance(name, str) and name in DTYPES:
        return 8 * DTYPES[name].size
    return OTHER_DTYPE_BITS.get(name) if isinstance(name, str) else None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str  # the source's dtype name (F32, BF16, I64, F8_E4M3, ...)
    source: str  # the file it lives in
    offset: int = 0  # absolute byte offset of its data (safetensors)
    nbytes: int = 0


class SafetensorsFile:
    """One validated .safetensors file: `.tensors` (name -> TensorInfo, sorted by name as safetensors lists
    them), `.metadata` (the `__metadata__` map or None); `.bits(name)` maps a tensor's data, read-only."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                raw = _read_header_bytes(f, size, self.path)
        except OSError as e:
            raise UsageError(f"cannot read safetensors file: {e.strerror or e}", path=self.path) from None
        self.data_start = 8 + len(raw)
        self.metadata, self.tensors = _parse_header(raw, self.path, self.data_start, size)
        self._mm = None

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name) -> tuple[str, list[int]]:
        t = self.tensors[name]
        return t.dtype, list(t.shape)

    def bits(self, name) -> np.ndarray:
        """The tensor's elements as stored, memory-mapped: float dtypes as their unsigned bit patterns (uint32
        for F32, uint16 for F16/BF16), the other .ddq dtypes in their numpy storage dtype."""
        t = self.tensors[name]
        if t.dtype not in DTYPES:
            raise UsageError(f"dtype {t.dtype} is not supported ({', '.join(DTYPES)})", path=self.path,
                             tensor=name, field="dtype")
        d = DTYPES[t.dtype]
        if self._mm is None:
            with open(self.path, "rb") as f:  # the size was checked at open: data end == file size
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._mm, np.dtype(d.bits or d.numpy), count=t.nbytes // d.size,
                             offset=t.offset).reshape(t.shape)


def _read_header_bytes(f, size: int, path: Path) -> bytes:
    if size < 8:
        raise UsageError(f"truncated: {size} bytes, shorter than the 8-byte header length", path=path,
                         field="header_length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        raise UsageError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit", path=path,
                         field="header_length")
    if 8 + n > size:
        raise UsageError(f"header length {n} runs past the end of the {size}-byte file", path=path,
                         field="header_length")
    return f.read(n)


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _parse_header(raw: bytes, path: Path, data_start: int, size: int):
    """(metadata, name -> TensorInfo): the header checked as safetensors' Metadata::validate does."""
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise UsageError("header is not UTF-8", path=path, field="header") from None
    except (ValueError, RecursionError) as e:
        raise UsageError(f"header is not valid JSON: {e}", path=path, field="header") from None
    if not isinstance(header, dict):
        raise UsageError(f"header must be a JSON object, not {type(header).__name__}", path=path, field="header")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(v, str) for v in metadata.values())):
        raise UsageError("must map strings to strings", path=path, field="__metadata__")
    bad = next((t for t in [*header, *(metadata or {}), *(metadata or {}).values()] if not _utf8(t)), None)
    if bad is not None:  # json accepts "\ud800"; serde_json, msgpack and file systems do not
        raise UsageError(f"{bad!r} holds an unpaired surrogate escape", path=path, field="header")
    spans = sorted((_tensor_span(name, t, path) + (name,) for name, t in header.items()))
    end = 0
    tensors = {}
    for start, stop, dtype, shape, name in spans:
        if start != end:
            what = "overlaps the previous tensor" if start < end else f"leaves a hole after byte {end}"
            raise UsageError(f"data offsets [{start}, {stop}] {what} (tensors must tile the data from 0)",
                             path=path, tensor=name, field="data_offsets")
        end = stop
        tensors[name] = TensorInfo(name, shape, dtype, str(path), data_start + start, stop - start)
    if data_start + end != size:
        raise UsageError(f"the tensors' data ends at byte {data_start + end} but the file has {size} bytes",
                         path=path, field="data_offsets")
    return metadata, dict(sorted(tensors.items()))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _depth(v) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, todo = 0, [(v, 1)]
    while todo:
        v, d = todo.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is not None:
            deepest = max(deepest, d)
            todo.extend((c, d + 1) for c in children)
    return deepest


def _uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _USIZE


def _tensor_span(name, t, path: Path) -> tuple[int, int, str, tuple]:
    """(start, stop, dtype, shape) of one header entry; its byte length must match dtype and shape."""
    if not isinstance(t, dict):
        raise UsageError("tensor entry must be a JSON object", path=path, tensor=name)
    dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
    bits = dtype_bits(dtype)
    if bits is None:
        raise UsageError(f"unknown dtype {dtype!r}", path=path, tensor=name, field="dtype")
    if not isinstance(shape, list) or not all(_uint(s) for s in shape):
        raise UsageError("must be a list of non-negative integers", path=path, tensor=name, field="shape")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_uint(o) for o in offsets)):
        raise UsageError("must be two non-negative integers [start, end]", path=path, tensor=name,
                         field="data_offsets")
    if any(_depth(v) > MAX_JSON_DEPTH - 2 for k, v in t.items() if k not in ("dtype", "shape", "data_offsets")):
        raise UsageError(f"nested deeper than {MAX_JSON_DEPTH} levels", path=path, tensor=name, field="header")
    start, stop = offsets
    if stop < start:
        raise UsageError(f"end {stop} is before start {start}", path=path, tensor=name, field="data_offsets")
    count = 1
    for s in shape:  # checked like safetensors: the element count and bit count must fit in 64 bits
        count *= s
        if count >= _USIZE:
            raise UsageError(f"element count of shape {shape} overflows 64 bits", path=path, tensor=name,
                             field="shape")
    if count * bits >= _USIZE:
        raise UsageError(f"byte size of shape {shape} x {dtype} overflows 64 bits", path=path, tensor=name,
                         field="shape")
    if count * bits % 8:
        raise UsageError(f"{count} elements of {bits}-bit {dtype} do not fill whole bytes", path=path,
                         tensor=name, field="shape")
    if stop - start != count * bits // 8:
        raise UsageError(f"data offsets span {stop - start} bytes but shape {shape} x {dtype} needs "
                         f"{count * bits // 8}", path=path, tensor=name, field="data_offsets")
    return start, stop, dtype, tuple(shape)


# -- checkpoints: which files, in which order ----------------------------------------------------------
def _index_files(index: Path) -> list[Path]:
    """The distinct shards of an index's weight_map, in sorted order; each a plain name inside the folder."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"bad shard index ({type(e).__name__}: {e})", path=index, field="weight_map") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UsageError("must map tensor names to shard file names", path=index, field="weight_map")
    files = []
    for name in sorted(set(weight_map.values())):
        p = PurePosixPath(name)
        if p.is_absolute() or any(part in ("", ".", "..") for part in p.parts) or "\\" in name:
            raise UsageError(f"shard name {name!r} leaves the model folder", path=index, field="weight_map")
        path = index.parent / name
        if not path.is_file():
            raise UsageError("shard named in the index is missing", path=path)
        files.append(path)
    if not files:
        raise UsageError("the index names no shard files", path=index, field="weight_map")
    return files


def weight_files(model, *, bin_ok: bool = False) -> list[Path]:
    """A checkpoint's weight files in their fixed order, found the same way everywhere: a .safetensors file
    itself; else in the folder the shards of model.safetensors.index.json (sorted), model.safetensors,
    (bin_ok) the shards of pytorch_model.bin.index.json or pytorch_model.bin, else every *.safetensors (sorted,
    hidden files skipped)."""
    model = Path(model)
    if model.is_file():
        if model.suffix != ".safetensors":
            raise UsageError("a checkpoint must be a folder or a .safetensors file", path=model)
        return [model]
    if not model.is_dir():
        raise UsageError("no such model folder", path=model)
    if (model / INDEX_NAME).is_file():
        return _index_files(model / INDEX_NAME)
    if (model / SINGLE_NAME).is_file():
        return [model / SINGLE_NAME]
    if bin_ok and (model / BIN_INDEX_NAME).is_file():
        return _index_files(model / BIN_INDEX_NAME)
    if bin_ok and (model / BIN_NAME).is_file():
        return [model / BIN_NAME]
    found = sorted(p for p in model.glob("*.safetensors") if p.is_file() and not p.name.startswith("."))
    if found:
        return found
    if bin_ok:
        raise UsageError(f"no {SINGLE_NAME}, {INDEX_NAME}, *.safetensors or {BIN_NAME}", path=model)
    hint = (f" ({BIN_NAME} found: convert it to safetensors first, .ddq tools never load pickles)"
            if any(model.glob("*.bin")) else "")
    raise UsageError(f"no {SINGLE_NAME}, {INDEX_NAME} or *.safetensors{hint}", path=model)


class SafetensorsCheckpoint:
    """A checkpoint's safetensors shards, validated: `.files` (ordered), `.tensors` (name -> TensorInfo, file
    by file); `.shard(name)` is the SafetensorsFile holding a tensor. A name in two shards is an error."""

    def __init__(self, model):
        self.files = weight_files(model)
        self.shards = [SafetensorsFile(f) for f in self.files]
        self.tensors: dict[str, TensorInfo] = {}
        self._shard_of: dict[str, SafetensorsFile] = {}
        for shard in self.shards:
            for name, info in shard.tensors.items():
                if name in self.tensors:
                    raise UsageError(f"tensor appears in two shards (also in {self.tensors[name].source})",
                                     path=shard.path, tensor=name)
                self.tensors[name] = info
                self._shard_of[name] = shard

    def shard(self, name) -> SafetensorsFile:
        return self._shard_of[name]


def open_checkpoint(folder) -> dict[str, SafetensorsFile]:
    """name -> the SafetensorsFile holding it (`.info(name)`, `.bits(name)`), for `ddq verify --base`."""
    ck = SafetensorsCheckpoint(folder)
    return {name: ck.shard(name) for name in ck.tensors}
