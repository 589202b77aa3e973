"""Read raw tensor bytes from safetensors checkpoints with numpy alone (bf16 included), for `ddq verify`.

The safetensors library's numpy backend cannot return bf16, and verify must not need torch. The format is
an 8-byte little-endian header length, a JSON header, then the data: simple enough to read with caps.
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from .errors import FormatError

MAX_ST_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_ST_DTYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
_BITS = {"F32": np.dtype("<u4"), "F16": np.dtype("<u2"), "BF16": np.dtype("<u2")}


class SafetensorsRaw:
    """name -> (dtype, shape, element bit patterns) over one .safetensors file, memory-mapped."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mm) < 8:
            raise FormatError("truncated safetensors file", path=self.path)
        (n,) = struct.unpack_from("<Q", self._mm, 0)
        if n > MAX_ST_HEADER or 8 + n > len(self._mm):
            raise FormatError(f"safetensors header length {n} is invalid", path=self.path)
        try:
            meta = json.loads(bytes(self._mm[8: 8 + n]))
        except ValueError as e:
            raise FormatError(f"safetensors header is not JSON: {e}", path=self.path) from None
        meta.pop("__metadata__", None)
        self.meta, self._base = meta, 8 + n

    def names(self):
        return list(self.meta)

    def info(self, name):
        m = self.meta[name]
        return m["dtype"], list(m["shape"])

    def bits(self, name) -> np.ndarray:
        """The tensor's elements as raw bit patterns (uint16 for F16/BF16, uint32 for F32)."""
        dtype, shape = self.info(name)
        if dtype not in _BITS:
            raise FormatError(f"dtype {dtype} is not supported", path=self.path, tensor=name, field="dtype")
        start, end = self.meta[name]["data_offsets"]
        count = (end - start) // _BITS[dtype].itemsize
        return np.frombuffer(self._mm, _BITS[dtype], count=count, offset=self._base + start).reshape(shape)


def open_checkpoint(folder) -> dict[str, SafetensorsRaw]:
    """Map every tensor name of a HF folder (single file or sharded with an index) to its shard."""
    folder = Path(folder)
    if folder.is_file():
        files = [folder]
    else:
        index = folder / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({folder / f for f in weight_map.values()})
        else:
            files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FormatError("no .safetensors files found", path=folder)
    out = {}
    for f in files:
        shard = SafetensorsRaw(f)
        for name in shard.names():
            out[name] = shard
    return out
