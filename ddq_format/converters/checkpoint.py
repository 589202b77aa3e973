"""Hugging Face checkpoints read tensor by tensor, as raw bit patterns (no torch on the safetensors path).

Safetensors files are read with our own parse of their (tiny, fixed) layout: 8-byte little-endian header
length, JSON header, data. Each tensor is read with one positioned read into a fresh array, so memory holds
only the tensor asked for; BF16 comes back as its uint16 bit patterns, which is what the base fingerprint
and a raw BF16 buffer need, without importing torch (safe_open's numpy framework cannot return bf16).
pytorch_model*.bin shards go through torch.load(weights_only=True, mmap=True): file-backed, no pickle code.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

# safetensors dtype -> (our dtype name, numpy storage dtype of the bit patterns)
ST_DTYPES = {"F32": ("F32", "<f4"), "F16": ("F16", "<u2"), "BF16": ("BF16", "<u2")}
TORCH_DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16"}
AUX_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
             "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
MAX_ST_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple
    dtype: str  # our name: F32/F16/BF16, or the source's name when unsupported (e.g. "I64")
    source: str  # file it lives in
    offset: int = 0  # absolute byte offset (safetensors)
    nbytes: int = 0


def resolve(model: str | os.PathLike) -> Path:
    """A local folder, or a model id found in the local Hugging Face cache (never the network)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise UsageError("is a file; give the model folder", path=p)
    if "/" in str(model) and not str(model).startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(str(model), local_files_only=True))
        except Exception as e:  # huggingface_hub raises several types for "not cached"
            raise UsageError(f"no such folder, and not in the local Hugging Face cache ({type(e).__name__})",
                             path=model) from None
    raise UsageError("no such model folder", path=p)


def _st_header(path: Path) -> dict:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UsageError("truncated safetensors file", path=path)
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_ST_HEADER:
            raise UsageError(f"safetensors header of {n} bytes is too large", path=path)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise UsageError(f"safetensors header is not JSON: {e}", path=path) from None
    header.pop("__metadata__", None)
    base = 8 + n
    size = path.stat().st_size
    for name, t in header.items():
        a, b = t["data_offsets"]
        if not 0 <= a <= b or base + b > size:
            raise UsageError(f"data offsets {a}..{b} run past the file", path=path, tensor=name)
    return {name: (t["dtype"], tuple(t["shape"]), base + t["data_offsets"][0],
                   t["data_offsets"][1] - t["data_offsets"][0]) for name, t in header.items()}


class Checkpoint:
    """Tensors of one model folder: `.tensors` (name -> TensorInfo), `.read(name)` -> bit-pattern array."""

    def __init__(self, folder):
        self.folder = resolve(folder)
        self.config = self._json("config.json")
        self.tensors: dict[str, TensorInfo] = {}
        self._bin_cache: tuple[str, dict] | None = None
        self._bin_lock = threading.Lock()  # workers share one loaded .bin shard
        st_index = self.folder / "model.safetensors.index.json"
        bin_index = self.folder / "pytorch_model.bin.index.json"
        if st_index.exists():
            files = sorted(set(self._index(st_index).values()))
        elif (self.folder / "model.safetensors").exists():
            files = ["model.safetensors"]
        elif bin_index.exists():
            files = sorted(set(self._index(bin_index).values()))
        elif (self.folder / "pytorch_model.bin").exists():
            files = ["pytorch_model.bin"]
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
            if not files:
                raise UsageError("no model.safetensors, sharded safetensors index or pytorch_model.bin",
                                 path=self.folder)
        for fname in files:
            path = self.folder / fname
            if not path.exists():
                raise UsageError("shard named in the index is missing", path=path)
            if fname.endswith(".safetensors"):
                for name, (dt, shape, off, nb) in _st_header(path).items():
                    self._add(TensorInfo(name, shape, ST_DTYPES.get(dt, (dt,))[0], str(path), off, nb))
            else:
                for name, t in self._load_bin(str(path)).items():
                    self._add(TensorInfo(name, tuple(t.shape), TORCH_DTYPES.get(str(t.dtype), str(t.dtype)),
                                         str(path)))

    def _add(self, info: TensorInfo):
        if info.name in self.tensors:
            raise UsageError("tensor appears in two shards", path=info.source, tensor=info.name)
        self.tensors[info.name] = info

    def _json(self, name):
        p = self.folder / name
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise UsageError(f"not valid JSON: {e}", path=p) from None

    def _index(self, path) -> dict:
        try:
            return json.loads(Path(path).read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise UsageError(f"bad shard index ({e})", path=path) from None

    def _load_bin(self, path: str) -> dict:
        with self._bin_lock:
            if self._bin_cache and self._bin_cache[0] == path:
                return self._bin_cache[1]
            import torch
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # weights_only refuses anything but tensors and containers
                raise UsageError(f"cannot load with weights_only=True: {e}", path=path) from None
            self._bin_cache = (path, sd)
            return sd

    def read(self, name: str) -> np.ndarray:
        """The tensor's bit patterns: float32 for F32, uint16 for F16/BF16 (shape preserved)."""
        info = self.tensors[name]
        if info.dtype not in ("F32", "F16", "BF16"):
            raise UsageError(f"dtype {info.dtype} is not supported (F32, F16, BF16)", path=info.source,
                             tensor=name, field="dtype")
        if info.source.endswith(".safetensors"):
            # A private (copy-on-write) mapping of the tensor's bytes, not a read into a fresh array: no copy
            # out of the page cache, and the converter's fused pass reads each byte once. Still writable (the
            # in-place F32 delta writes private pages); the mapping goes when the array does.
            np_dtype = np.dtype(ST_DTYPES[info.dtype][1])
            count = info.nbytes // np_dtype.itemsize
            if count == 0:
                return np.zeros(info.shape, np_dtype)
            start = info.offset - info.offset % mmap.ALLOCATIONGRANULARITY
            try:
                with open(info.source, "rb") as f:
                    if os.fstat(f.fileno()).st_size < info.offset + info.nbytes:
                        raise UsageError("truncated tensor data", path=info.source, tensor=name)
                    m = mmap.mmap(f.fileno(), info.offset + info.nbytes - start, access=mmap.ACCESS_COPY,
                                  offset=start)
            except OSError as e:
                raise UsageError(f"cannot read: {e.strerror}", path=info.source, tensor=name) from None
            if hasattr(m, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
                m.madvise(mmap.MADV_WILLNEED)  # a cold page cache: read ahead the whole tensor at once
            return np.frombuffer(m, np_dtype, count=count, offset=info.offset - start).reshape(info.shape)
        import torch
        t = self._load_bin(info.source)[name].contiguous()
        if t.dtype == torch.float32:
            return t.numpy().copy()
        return t.view(torch.int16).numpy().view(np.uint16).copy()

    def aux_files(self) -> dict[str, bytes]:
        """config, generation config, tokenizer and chat-template files present in the folder."""
        return {n: (self.folder / n).read_bytes() for n in AUX_FILES if (self.folder / n).is_file()}


def to_f32(bits: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return np.asarray(bits, np.float32)
    if dtype == "F16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
