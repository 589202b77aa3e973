"""The one walk over a file's data section (SPEC.md §3.2, §3.5 step 10): every buffer and auxiliary file in
offset order, and the padding between them.

Header validation checks it (no overlaps, no holes, no trailing garbage), `verify` reads it (checksums, zero
padding) and `accounting` attributes its padding; nothing else sorts buffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from .errors import FormatError


class Region(NamedTuple):  # a tuple: a file holds up to ~10^6 of them, and they are built and sorted on open
    """One stored buffer: a tensor's buffer (tensor = entry name, name = role) or an aux file (tensor = None)."""
    offset: int  # relative to the data section
    length: int
    crc32: int
    tensor: str | None
    name: str
    pad_before: int = 0  # padding bytes between the previous region's end (or 0) and `offset`

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def field(self) -> str:
        return f"buffers.{self.name}" if self.tensor is not None else f"files.{self.name}"

    @property
    def owner(self) -> str:
        return f"tensor {self.tensor!r}" if self.tensor is not None else f"file {self.name!r}"


@dataclass(frozen=True)
class Layout:
    regions: tuple[Region, ...]  # non-empty, in offset order, pad_before filled in
    empty: tuple[Region, ...]  # zero-length buffers: no bytes, exempt from the overlap and hole rules
    data_length: int

    @property
    def end(self) -> int:
        return self.regions[-1].end if self.regions else 0

    @property
    def trailing(self) -> int:
        """Padding after the last region, up to the end of the data section."""
        return self.data_length - self.end

    def all(self) -> tuple[Region, ...]:
        return self.regions + self.empty

    def padding(self):
        """(start, length) of every non-empty gap, the trailing one included: bytes that must be zero."""
        for r in self.regions:
            if r.pad_before:
                yield r.offset - r.pad_before, r.pad_before
        if self.trailing:
            yield self.end, self.trailing


def walk(records, data_length: int, alignment: int, path) -> Layout:
    """Sort the (already range-checked) records and check the rules of §3.5 step 10."""
    regions, empty, pos = [], [], 0
    for r in sorted(records, key=itemgetter(0, 1)):  # (offset, length)
        if not r.length:
            empty.append(r)
            continue
        if r.offset < pos:
            raise FormatError(f"buffer of {r.owner} at {r.offset} overlaps the previous one (ends at {pos})",
                              path=path, field="buffers")
        if r.offset - pos >= alignment:
            raise FormatError(f"hole of {r.offset - pos} bytes before the buffer of {r.owner}", path=path,
                              field="buffers")
        regions.append(Region(r.offset, r.length, r.crc32, r.tensor, r.name, r.offset - pos))
        pos = r.end
    if data_length - pos >= alignment:
        raise FormatError(f"{data_length - pos} unused bytes at the end of the data section", path=path,
                          field="buffers")
    return Layout(tuple(regions), tuple(empty), data_length)
