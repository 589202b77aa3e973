"""Streaming .ddq writer: buffers are appended as tensors arrive; the header and footer go last.

Holds one tensor's buffers at a time. Writes to a temporary file beside the target and renames it into
place on close, so a crash never leaves a half-written file under the final name. Each compressed entry is
checked by its encoding before its bytes are written, and the finished header by the reader's own parser and
validator before the rename: the writer never publishes a file the reader rejects.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import msgpack
import numpy as np

from . import encodings
from .encodings import Encoded
from .encodings._common import Ctx
from .errors import UsageError
from .header import parse, validate
from .spec import (CHECKSUM, COMPACT_MAJOR, FOOTER_MAGIC, FORMAT_MAJOR, HEADER_ZLIB_LEVEL, KIND_COMPRESSED,
                   KIND_DENSE, KIND_REMOVED, KIND_REPLACE, KIND_SAME, KIND_TIED, KINDS, MAGIC, PREAMBLE_SIZE, align_up,
                   min_alignment, minor_needed)


# Files start as 1.0; close() raises the minor to the lowest one defining every encoding used (SPEC.md §2).
BASE_MINOR = 0


def preamble(major=FORMAT_MAJOR, minor=BASE_MINOR) -> bytes:
    return MAGIC + struct.pack("<HH", major, minor) + bytes(PREAMBLE_SIZE - len(MAGIC) - 4)


def footer(header_offset: int, header: bytes, major=FORMAT_MAJOR, minor=BASE_MINOR) -> bytes:
    return struct.pack("<QQIHH", header_offset, len(header), zlib.crc32(header), major, minor) + FOOTER_MAGIC


def required_minor(tensors, major: int = FORMAT_MAJOR) -> int:
    """The lowest minor version that defines every encoding and feature in these entries (1.0 readers keep
    working on files that need nothing newer)."""
    return max(BASE_MINOR, minor_needed(tensors, major))


def _nbytes(arr) -> int:
    return arr.nbytes if isinstance(arr, np.ndarray) else memoryview(arr).nbytes


def pack_header(header: dict) -> bytes:
    # Floats stay binary64 on the wire; scales are exactly binary32 values (SPEC.md).
    return msgpack.packb(header, use_bin_type=True, use_single_float=False)


class Writer:
    """with Writer(path, base=..., algorithm=...) as w: w.add(name, kind, ...)"""

    def __init__(self, path, *, metadata: dict | None = None, base: dict | None = None,
                 algorithm: dict | None = None, major: int = FORMAT_MAJOR):
        """major: FORMAT_MAJOR (1.x, a plain msgpack header) or COMPACT_MAJOR (2.0, the header zlib-compressed)."""
        if major not in (FORMAT_MAJOR, COMPACT_MAJOR):
            raise UsageError(f"format major version must be {FORMAT_MAJOR} or {COMPACT_MAJOR}, got {major!r}",
                             path=path, field="format")
        self.path, self.major, self.alignment = Path(path), major, min_alignment(major)
        self.header = {"alignment": self.alignment, "checksum": CHECKSUM, "metadata": dict(metadata or {}),
                       "base": dict(base or {}), "algorithm": dict(algorithm or {}), "files": [], "tensors": []}
        self._names: set[str] = set()
        self._pos = 0  # relative to the data section
        self._closed = False
        self._f, self._tmp = self._open_output()

    def _open_output(self):
        """(file, temp path) positioned after the preamble; subclasses (resumable writes) override it."""
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or ".")
        f = os.fdopen(fd, "wb")
        f.write(preamble())
        return f, Path(tmp)

    # -- buffers -------------------------------------------------------------------------------
    def _append(self, data) -> dict:
        data = memoryview(np.ascontiguousarray(data).view(np.uint8).reshape(-1)) if isinstance(
            data, np.ndarray) else memoryview(data)
        start = align_up(self._pos, self.alignment)
        if start > self._pos:
            self._f.write(bytes(start - self._pos))
        self._f.write(data)
        self._pos = start + data.nbytes
        return {"offset": start, "length": data.nbytes, "crc32": zlib.crc32(data)}

    # -- entries -------------------------------------------------------------------------------
    def add(self, name: str, kind: str, shape, dtype: str, encoded: Encoded | None = None, *,
            base: dict | None = None, tied_to: str | None = None, extra: dict | None = None) -> dict:
        """Append one entry; buffers are written now and may be dropped by the caller afterwards."""
        if name in self._names:
            raise UsageError("duplicate tensor name", path=self.path, tensor=name, field="name")
        if kind not in KINDS:
            raise UsageError(f"unknown kind {kind!r}", path=self.path, tensor=name, field="kind")
        needs_data = kind in (KIND_COMPRESSED, KIND_DENSE, KIND_REPLACE)
        if needs_data != (encoded is not None):
            raise UsageError(f"kind {kind} {'needs' if needs_data else 'takes no'} data", path=self.path,
                             tensor=name, field="encoded")
        if (kind == KIND_TIED) != (tied_to is not None):
            raise UsageError("tied_to goes with kind 'tied' only", path=self.path, tensor=name, field="tied_to")
        entry = {"name": name, "kind": kind, "shape": [int(s) for s in shape], "dtype": dtype}
        if encoded is not None:
            entry["encoding"] = encoded.encoding
            entry["params"] = encoded.params
            # The encoding's header checks need only each buffer's dtype and length: run them before writing.
            entry["buffers"] = {role: {"dtype": bdtype, "length": _nbytes(arr)}
                                for role, (bdtype, arr) in encoded.buffers.items()}
            encodings.require(encoded.encoding, Ctx(self.path, name)).check(entry, Ctx(self.path, name))
            for role, (bdtype, arr) in encoded.buffers.items():
                entry["buffers"][role] = {"dtype": bdtype, **self._append(arr)}
        if base is not None:
            entry["base"] = base
        if tied_to is not None:
            entry["tied_to"] = tied_to
        if extra:
            entry.update(extra)
        self._names.add(name)
        self.header["tensors"].append(entry)
        return entry

    def add_same(self, name, shape, dtype, base=None):
        return self.add(name, KIND_SAME, shape, dtype, base=base)

    def add_removed(self, name, shape, dtype, base=None):
        return self.add(name, KIND_REMOVED, shape, dtype, base=base)

    def add_file(self, name: str, data: bytes) -> None:
        """An auxiliary file of the fine-tune (config.json, tokenizer files), stored verbatim."""
        if any(f["name"] == name for f in self.header["files"]):
            raise UsageError(f"duplicate file {name!r}", path=self.path, field="files")
        self.header["files"].append({"name": name, **self._append(data)})

    # -- finish --------------------------------------------------------------------------------
    def close(self) -> Path:
        if self._closed:
            return self.path
        try:
            header = pack_header(self.header)
            # The reader's own checks: caps, layout, every entry. A file the reader rejects is never published.
            validate(parse(header, self.path).header, align_up(self._pos, self.alignment), self.path,
                     major=self.major)
        except BaseException:
            self.abort()
            raise
        end = align_up(self._pos, self.alignment)
        header_offset = PREAMBLE_SIZE + end
        self._f.write(bytes(end - self._pos))
        major, minor = self.major, required_minor(self.header["tensors"], self.major)  # resumed entries count too
        stored = header if major == FORMAT_MAJOR else zlib.compress(header, HEADER_ZLIB_LEVEL)
        self._f.write(stored)
        self._f.write(footer(header_offset, stored, major, minor))
        if (major, minor) != (FORMAT_MAJOR, BASE_MINOR):
            self._f.seek(0)
            self._f.write(preamble(major, minor))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)
        self._closed = True
        return self.path

    def abort(self) -> None:
        if not self._closed:
            self._f.close()
            self._tmp.unlink(missing_ok=True)
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
