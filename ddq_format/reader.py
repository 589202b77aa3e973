"""Memory-mapped .ddq reader. Validates the layout and header on open; decodes tensors lazily.

Limit (SPEC.md §3.5): the file is memory-mapped, so if it is truncated or rewritten in place while open, a
later read of a vanished page kills the process with SIGBUS. Writers replace files by rename (never in place);
run `ddq verify` on a file before serving it.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from . import encodings
from .encodings._common import Ctx
from .errors import ChecksumError, DDQError, EncodingError, FormatError, LimitError, VersionError
from .header import parse, validate
from .header_parse import paused_gc
from .spec import (COMPACT_MAJOR, DECODE_BUDGET_FLOOR, DECODE_BUDGET_RATIO, FOOTER_MAGIC, FOOTER_SIZE, FORMAT_MAJOR,
                   KIND_REMOVED, KIND_SAME, KIND_TIED, MAGIC, MAX_HEADER_BYTES, PREAMBLE_SIZE, newest_minor)


def decoded_nbytes(entry: dict) -> int:
    """Bytes of the float32 array decode() returns for this entry."""
    return 4 * math.prod(entry["shape"])


def stored_nbytes(entry: dict) -> int:
    return sum(b["length"] for b in entry.get("buffers", {}).values())


def default_decode_budget(entry: dict) -> int:
    """max(DECODE_BUDGET_FLOOR, DECODE_BUDGET_RATIO x stored bytes): what decode() allows without max_decoded_bytes."""
    return max(DECODE_BUDGET_FLOOR, DECODE_BUDGET_RATIO * stored_nbytes(entry))


class DDQFile:
    """A .ddq file opened for reading: `header`, `entries`, `layout`, `decode(name)`, `parts(name)`, `file(name)`.

    max_decoded_bytes bounds what one decode() may allocate for its result (checked from the header before
    allocating); None applies the default policy `default_decode_budget` (SPEC.md §11)."""

    def __init__(self, path, *, verify_checksums: bool = True, max_decoded_bytes: int | None = None):
        self.path = Path(path)
        self.verify_checksums = verify_checksums
        self.max_decoded_bytes = max_decoded_bytes
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise DDQError(f"cannot open: {e.strerror}", path=self.path) from None
        try:
            self.file_size = os.fstat(self._fh.fileno()).st_size
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if self.file_size else b""
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- layout ---------------------------------------------------------------------------------
    def _parse(self):
        size, mm, path = self.file_size, self._mm, self.path
        if size < len(MAGIC) or mm[: len(MAGIC)] != MAGIC:
            raise FormatError("not a .ddq file (bad magic)", path=path, field="magic")
        if size < PREAMBLE_SIZE + FOOTER_SIZE:
            raise FormatError(f"truncated: {size} bytes is smaller than preamble + footer", path=path)
        major, minor = struct.unpack_from("<HH", mm, len(MAGIC))
        if newest_minor(major) is None:
            raise VersionError(f"format version {major}.{minor} is not readable by this library (majors "
                               f"{FORMAT_MAJOR} and {COMPACT_MAJOR})", path=path, field="version")
        self.version = (major, minor)
        foot = mm[size - FOOTER_SIZE:]
        if foot[-len(FOOTER_MAGIC):] != FOOTER_MAGIC:
            raise FormatError("truncated or corrupt: footer magic missing at end of file", path=path,
                              field="footer")
        header_offset, header_len, header_crc, fmajor, fminor = struct.unpack_from("<QQIHH", foot, 0)
        if (fmajor, fminor) != (major, minor):
            raise FormatError(f"footer version {fmajor}.{fminor} differs from preamble {major}.{minor}",
                              path=path, field="footer.version")
        if header_len > MAX_HEADER_BYTES:
            raise FormatError(f"header length {header_len} exceeds the cap of {MAX_HEADER_BYTES}", path=path,
                              field="footer.header_length")
        if header_offset < PREAMBLE_SIZE or header_offset + header_len + FOOTER_SIZE != size:
            raise FormatError(f"header [{header_offset}, +{header_len}) does not end where the footer starts "
                              f"({size - FOOTER_SIZE})", path=path, field="footer.header_offset")
        with memoryview(mm) as view:  # released before close(): no copy of a 64 MiB header
            raw = view[header_offset: header_offset + header_len]
            if zlib.crc32(raw) != header_crc:
                raise ChecksumError("header CRC-32 mismatch", path=path, field="footer.header_crc32")
            # the msgpack header: the stored bytes themselves (1.x) or what they inflate to (2.x, capped)
            self._plain = inflate_header(raw, path) if major == COMPACT_MAJOR else None
            with paused_gc():
                parsed = parse(raw if self._plain is None else self._plain, path)
                del raw
                self.header = parsed.header
                self.header_offset = header_offset
                self.header_length = header_len
                self.data_length = header_offset - PREAMBLE_SIZE
                entries, self.unsupported, self.layout = validate(self.header, self.data_length, path, minor,
                                                                  major)
        self.entries = {e["name"]: e for e in entries}
        # Byte span of each entry inside the header (for size accounting: exact, whatever the msgpack widths).
        self.entry_spans = {e["name"]: span for e, span in zip(entries, parsed.entry_spans)}
        self.files = {f["name"]: f for f in self.header.get("files", [])}

    def entry_bytes(self, name: str) -> bytes:
        """The msgpack bytes of one entry, as parsed (inside the inflated header of a 2.x file)."""
        a, b = self.entry_spans[name]
        if self._plain is not None:
            return self._plain[a:b]
        return self._mm[self.header_offset + a: self.header_offset + b]

    @property
    def header_plain_length(self) -> int:
        """Bytes of the msgpack header (after inflating, for a 2.x file)."""
        return self.header_length if self._plain is None else len(self._plain)

    # -- access ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> dict:
        try:
            return self.entries[name]
        except KeyError:
            raise DDQError("no such tensor", path=self.path, tensor=name) from None

    def _bytes(self, b: dict, name, where) -> np.ndarray:
        start = PREAMBLE_SIZE + b["offset"]
        view = np.frombuffer(self._mm, np.uint8, count=b["length"], offset=start) if b["length"] else np.zeros(0, np.uint8)
        if self.verify_checksums and zlib.crc32(view) != b["crc32"]:
            raise ChecksumError("CRC-32 mismatch", path=self.path, tensor=name, field=where)
        return view

    def buffer(self, name: str, role: str) -> np.ndarray:
        """One buffer's bytes as a read-only uint8 view of the mapping (checksum verified if enabled)."""
        e = self.entry(name)
        if role not in e.get("buffers", {}):
            raise DDQError("no such buffer", path=self.path, tensor=name, field=f"buffers.{role}")
        return self._bytes(e["buffers"][role], name, f"buffers.{role}")

    def buffers(self, name: str) -> dict[str, np.ndarray]:
        return {role: self.buffer(name, role) for role in self.entry(name).get("buffers", {})}

    def file(self, name: str) -> bytes:
        """An auxiliary file (config.json, tokenizer files) stored with the delta."""
        if name not in self.files:
            raise DDQError("no such file", path=self.path, field=f"files.{name}")
        return bytes(self._bytes(self.files[name], None, f"files.{name}"))

    def decode_budget(self, name: str, max_decoded_bytes: int | None = None) -> int:
        """The most bytes decode(name) may allocate: the argument, else the file's max_decoded_bytes, else the
        default policy for this entry (a tied entry's is its target's)."""
        e = self.entry(name)
        if e["kind"] == KIND_TIED:
            e = self.entry(e["tied_to"])
        limit = max_decoded_bytes if max_decoded_bytes is not None else self.max_decoded_bytes
        return limit if limit is not None else default_decode_budget(e)

    def decode(self, name: str, *, max_decoded_bytes: int | None = None) -> np.ndarray:
        """float32 array: the delta for compressed/dense, the full tensor for replace, zeros for same.

        Refuses (LimitError, before allocating) a result larger than decode_budget(name, max_decoded_bytes)."""
        e = self.entry(name)
        need, budget = decoded_nbytes(e), self.decode_budget(name, max_decoded_bytes)
        if need > budget:
            raise LimitError(f"decoding shape {e['shape']} needs {need} bytes, more than the decode budget of "
                             f"{budget} bytes (pass max_decoded_bytes to allow more)", path=self.path, tensor=name,
                             field="shape")
        if e["kind"] == KIND_TIED:
            return self.decode(e["tied_to"], max_decoded_bytes=max_decoded_bytes)
        if e["kind"] in (KIND_SAME, KIND_REMOVED):
            return np.zeros(e["shape"], np.float32)
        if name in self.unsupported:
            raise EncodingError(f"encoding {e['encoding']!r} is newer than this reader (file format "
                                f"{self.version[0]}.{self.version[1]}); upgrade ddq to decode it", path=self.path,
                                tensor=name, field="encoding")
        try:
            return encodings.get(e["encoding"]).decode(e, self.buffers(name))
        except DDQError as err:
            if err.path is None:  # decoders do not know the file; name it here
                raise type(err)(err.reason, path=self.path, tensor=err.tensor or name, field=err.field) from None
            raise
        except ValueError as err:
            raise FormatError(str(err), path=self.path, tensor=name, field="buffers") from None

    def parts(self, name: str):
        """The stored parts: csr_parts the list of raw Part(row_offsets, col_indices, codes, offset);
        seeded and seeded_rans the code matrix [rows, kept_per_row] in kept order."""
        e = self.entry(name)
        enc = encodings.get(e.get("encoding")) if name not in self.unsupported else None
        if enc is None or not enc.has_parts:
            raise DDQError(f"entry of kind {e['kind']} has no compressed parts", path=self.path, tensor=name,
                           field="encoding")
        return enc.parts(e, self.buffers(name), Ctx(self.path, name))

    def close(self):
        mm = getattr(self, "_mm", None)
        if isinstance(mm, mmap.mmap):
            try:
                mm.close()
            except BufferError:  # numpy views still alive; the mapping goes with them
                pass
        if getattr(self, "_fh", None):
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


INFLATE_STEP = 2**20


def inflate_header(stored, path) -> bytearray:
    """The msgpack header of a 2.x file: its stored bytes are one complete zlib stream (RFC 1950) and nothing
    after it, inflating to at most MAX_HEADER_BYTES. Bounded before allocating: inflation stops one byte past
    the cap, so a small stream cannot demand more (SPEC.md §3.3)."""
    d, plain, tail = zlib.decompressobj(), bytearray(), stored
    try:  # in 1 MiB steps into one growing buffer: the peak stays near the cap (one call would double it)
        while not d.eof and len(plain) <= MAX_HEADER_BYTES:
            chunk = d.decompress(tail, INFLATE_STEP)
            tail = d.unconsumed_tail
            if not chunk and not tail:  # input used up before the stream's end
                break
            plain += chunk
    except zlib.error as e:
        raise FormatError(f"header is not a valid zlib stream ({e})", path=path, field="header") from None
    if len(plain) > MAX_HEADER_BYTES:
        raise FormatError(f"header inflates past the cap of {MAX_HEADER_BYTES} bytes", path=path, field="header")
    if not d.eof:
        raise FormatError("header's zlib stream is truncated", path=path, field="header")
    if d.unused_data:
        raise FormatError(f"{len(d.unused_data)} bytes after the header's zlib stream", path=path, field="header")
    return plain


def open_ddq(path, **kw) -> DDQFile:
    return DDQFile(path, **kw)
