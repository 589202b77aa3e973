"""Hugging Face checkpoints read tensor by tensor, as raw bit patterns (no torch on the safetensors path).

Safetensors files go through the project's one reader (ddq_format.checkpoint_raw: layout validated as
safetensors does, shards found and ordered in one place). Each tensor is read with one positioned read into a
fresh array, so memory holds only the tensor asked for; BF16 comes back as its uint16 bit patterns, which is
what the base fingerprint and a raw BF16 buffer need, without importing torch (safe_open's numpy framework
cannot return bf16). pytorch_model*.bin shards go through torch.load(weights_only=True, mmap=True):
file-backed, no pickle code.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import threading
from pathlib import Path

import numpy as np

from ..checkpoint_raw import SafetensorsCheckpoint, TensorInfo, weight_files
from ..errors import UsageError
from ..spec import DTYPES, FLOAT_DTYPES

__all__ = ["AUX_FILES", "Checkpoint", "TensorInfo", "resolve", "to_f32", "non_finite", "count_non_finite"]

# What `Checkpoint.read` returns per dtype: (name, numpy dtype) - float32 values for F32, bit patterns else.
ST_DTYPES = {n: (n, DTYPES[n].numpy if n == "F32" else DTYPES[n].bits) for n in FLOAT_DTYPES}
TORCH_DTYPES = {f"torch.{d.torch}": n for n, d in DTYPES.items()}  # str(tensor.dtype) of a .bin tensor
AUX_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
             "added_tokens.json", "chat_template.jinja", "chat_template.json", "preprocessor_config.json")
NON_FINITE = "non-finite values (NaN or inf)"  # the start of every such error (tensor_work raises it too)
_EXPONENT = {"F16": 0x7C00, "BF16": 0x7F80}  # all-ones exponent: inf or NaN


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


class Checkpoint:
    """Tensors of one model folder: `.tensors` (name -> TensorInfo), `.read(name)` -> bit-pattern array."""

    def __init__(self, folder):
        self.folder = resolve(folder)
        self.config = self._json("config.json")
        self._bin_cache: tuple[str, dict] | None = None
        self._bin_lock = threading.Lock()  # workers share one loaded .bin shard
        files = weight_files(self.folder, bin_ok=True)
        if files[0].suffix == ".safetensors":
            self.tensors: dict[str, TensorInfo] = SafetensorsCheckpoint(self.folder).tensors
        else:
            self.tensors = {}
            for path in files:
                for name, t in self._load_bin(str(path)).items():
                    if name in self.tensors:
                        raise UsageError("tensor appears in two shards", path=path, tensor=name)
                    self.tensors[name] = TensorInfo(name, tuple(t.shape),
                                                    TORCH_DTYPES.get(str(t.dtype), str(t.dtype)), str(path))

    def _json(self, name):
        p = self.folder / name
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except ValueError as e:
            raise UsageError(f"not valid JSON: {e}", path=p) from None

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


def count_non_finite(bits: np.ndarray, dtype: str, block: int = 1 << 22) -> int:
    """NaN and inf elements of a tensor as `Checkpoint.read` returns it, in blocks (no full-size temporary)."""
    flat = bits.reshape(-1)
    if dtype == "F32":
        return sum(int(flat[i:i + block].size - np.count_nonzero(np.isfinite(flat[i:i + block])))
                   for i in range(0, flat.size, block))
    e = np.uint16(_EXPONENT[dtype])
    return sum(int(np.count_nonzero((flat[i:i + block] & e) == e)) for i in range(0, flat.size, block))


def non_finite(info: TensorInfo, count: int | None = None) -> UsageError:
    """The error for a tensor holding NaN or inf (a delta of it would carry them into every loaded model)."""
    n = f"{count} of {math.prod(info.shape)} elements; " if count is not None else ""
    return UsageError(f"{NON_FINITE}: {n}a .ddq delta needs finite weights (fix or drop this tensor)",
                      path=info.source, tensor=info.name, field="values")
