"""Bounded msgpack parsing of an untrusted header (SPEC.md §3.3): caps on nesting depth, object counts and
sizes are enforced before or while objects are built, so a small header cannot demand seconds and GiBs.

How: the top-level map is walked with msgpack's Unpacker, whose `skip()` finds each value's byte span in C
without building anything. The `tensors` array's length is checked against MAX_TENSORS before any entry is
built; each entry (at most MAX_ENTRY_BYTES) is then built by msgpack with a hook that counts objects,
measures depth and rejects duplicate keys. Every other top-level value is first scanned (a loop that only
counts, capped at MAX_SECTION_OBJECTS steps over all of them) and built only if it passes. Python's cyclic
GC is paused while building (paused_gc).
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

import msgpack

from .errors import FormatError
from .spec import (MAX_ARRAY, MAX_DEPTH, MAX_ENTRY_BYTES, MAX_HEADER_OBJECTS, MAX_MAP, MAX_SECTION_OBJECTS,
                   MAX_STRING, MAX_TENSORS, MAX_TOP_KEYS)


@dataclass
class Parsed:
    header: dict
    entry_spans: list[tuple[int, int]]  # byte span of each tensors[i] inside the header


class _Reject(ValueError):
    """A cap or rule broken while parsing; turned into a FormatError naming `field`."""

    def __init__(self, msg, field="header"):
        super().__init__(msg)
        self.field = field


_STR = {str}


def _no_ext(code, data):
    raise _Reject(f"msgpack ext type {code} is not allowed")


class _Builder:
    """Builds values with msgpack's C parser and checks them as they complete: str keys only, no duplicate
    keys (the pairs hook), and a running count and depth. Arrays get no hook (a Python call per array is the
    slowest part of a header of tiny arrays): each is measured, with a comprehension, when the map holding it
    completes, or at the end when it is the value itself."""

    def __init__(self):
        self.objects = 0
        self.base_depth = 0  # depth of the value being built, minus one
        self._depth = {}  # id(map) -> depth, for maps holding containers

    def _count(self, children):
        self.objects += children
        if self.objects > MAX_HEADER_OBJECTS:
            raise _Reject(f"more than {MAX_HEADER_OBJECTS} objects")

    def _list_depth(self, items, room) -> int:
        """Depth of an array (counting its elements); room = levels it may still take below the cap."""
        if room < 1:
            raise _Reject(f"nested deeper than {MAX_DEPTH} levels")
        self._count(len(items))
        kinds = set(map(type, items))  # C speed: most arrays hold no containers
        depth = 1
        if dict in kinds:
            depth = 1 + max(self._depth.get(id(v), 1) for v in items if type(v) is dict)
        if list in kinds:
            subs = [v for v in items if type(v) is list]
            if any(subs):
                depth = max(depth, 1 + max(self._list_depth(v, room - 1) for v in subs))
            else:
                depth = max(depth, 2)  # only empty arrays inside
        if depth > room:
            raise _Reject(f"nested deeper than {MAX_DEPTH} levels")
        return depth

    def pairs(self, pairs):
        try:
            out = dict(pairs)
        except TypeError:  # an unhashable (array or map) key
            raise _Reject("map key is not a string") from None
        if len(out) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise _Reject(f"duplicate map key {dup!r:.60}")
        if out and set(map(type, out)) != _STR:
            bad = next(k for k in out if type(k) is not str)
            raise _Reject(f"map key {bad!r:.40} is not a string")
        self._count(2 * len(out))
        values = out.values()
        kinds = set(map(type, values))
        depth = 1
        if dict in kinds:
            depth = 1 + max(self._depth.get(id(v), 1) for v in values if type(v) is dict)
        if list in kinds:
            room = MAX_DEPTH - self.base_depth - 1  # this map sits at base_depth + 1 or deeper
            depth = max(depth, 1 + max(self._list_depth(v, room) for v in values if type(v) is list))
        if depth > 1:
            if self.base_depth + depth > MAX_DEPTH:
                raise _Reject(f"nested deeper than {MAX_DEPTH} levels")
            self._depth[id(out)] = depth
        return out

    def build(self, buf, base_depth):
        """One value from its bytes; containers inside it sit at base_depth + their own depth."""
        self.base_depth, self._depth = base_depth, {}
        value = msgpack.unpackb(buf, raw=False, strict_map_key=False, object_pairs_hook=self.pairs,
                                ext_hook=_no_ext, max_str_len=MAX_STRING, max_bin_len=MAX_STRING,
                                max_array_len=MAX_ARRAY, max_map_len=MAX_MAP, max_ext_len=0)
        if type(value) is list:
            self._list_depth(value, MAX_DEPTH - base_depth)
        return value


# First byte -> total size of a fixed-size msgpack value (nil, bool, ints, floats).
_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9, 0xD0: 2, 0xD1: 3,
          0xD2: 5, 0xD3: 9}
_SIZED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin/str: width of the length field
_COUNTED = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # array/map: length width, items per element


def scan(buf, base_depth: int, max_objects: int) -> int:
    """Count the values of one msgpack value without building it, enforcing depth and container caps; stop
    after max_objects values. Returns the count. Well-formedness beyond that is left to msgpack."""
    n, pos, objects = len(buf), 0, 0
    stack, remaining = [], 1
    while True:
        while not remaining:
            if not stack:
                return objects
            remaining = stack.pop()
        remaining -= 1
        objects += 1
        if objects > max_objects:
            raise _Reject(f"the top-level values other than `tensors` hold more than {MAX_SECTION_OBJECTS} objects")
        if pos >= n:
            raise _Reject("truncated msgpack value")
        b = buf[pos]
        if b <= 0x7F or b >= 0xE0:  # fixint
            pos += 1
            continue
        if 0xA0 <= b <= 0xBF:  # fixstr
            pos += 1 + (b & 0x1F)
            continue
        if b in _FIXED:
            pos += _FIXED[b]
            continue
        if b in _SIZED:
            w = _SIZED[b]
            pos += 1 + w + int.from_bytes(buf[pos + 1: pos + 1 + w], "big")
            continue
        if b <= 0x9F:  # fixmap, fixarray
            count, per, pos = b & 0x0F, 2 if b <= 0x8F else 1, pos + 1
        elif b in _COUNTED:
            w, per = _COUNTED[b]
            count, pos = int.from_bytes(buf[pos + 1: pos + 1 + w], "big"), pos + 1 + w
        else:
            raise _Reject(f"msgpack type byte 0x{b:02x} is not allowed (ext types and 0xc1 are rejected)")
        if count > (MAX_MAP if per == 2 else MAX_ARRAY):
            raise _Reject(f"container of {count} elements exceeds the cap")
        if base_depth + len(stack) + 1 > MAX_DEPTH:
            raise _Reject(f"nested deeper than {MAX_DEPTH} levels")
        stack.append(remaining)
        remaining = count * per


def _is_str(first: int) -> bool:
    return 0xA0 <= first <= 0xBF or first in (0xD9, 0xDA, 0xDB)


def _is_array(first: int) -> bool:
    return 0x90 <= first <= 0x9F or first in (0xDC, 0xDD)


@contextmanager
def paused_gc():
    """Building (and validating) a header creates up to millions of objects and no cycles: the cyclic GC would
    only rescan them again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(raw, path) -> Parsed:
    """The header map of `raw` (bytes or a memoryview), with the byte span of every tensor entry."""
    try:
        with paused_gc():
            return _parse(memoryview(raw), path)
    except _Reject as e:
        raise FormatError(str(e), path=path, field=e.field) from None
    except Exception as e:  # msgpack raises several types (OutOfData, StackError, ValueError...); all mean this
        raise FormatError(f"header is not valid msgpack ({type(e).__name__}: {e})", path=path,
                          field="header") from None


def _parse(view: memoryview, path) -> Parsed:
    u = msgpack.Unpacker(raw=False, max_buffer_size=max(len(view), 1))
    u.feed(view)
    if not len(view) or view[0] not in range(0x80, 0x90) and view[0] not in (0xDE, 0xDF):
        raise _Reject("header must be a map")
    n_keys = u.read_map_header()
    if n_keys > MAX_TOP_KEYS:
        raise _Reject(f"the top-level map has {n_keys} keys, more than {MAX_TOP_KEYS}")
    b = _Builder()
    b.objects = 1 + 2 * n_keys
    header, spans, sections = {}, [], 0
    for _ in range(n_keys):
        start = u.tell()
        u.skip()
        if not _is_str(view[start]):
            raise _Reject("top-level map key is not a string")
        key = msgpack.unpackb(view[start:u.tell()], raw=False, max_str_len=MAX_STRING)
        if key in header:
            raise _Reject(f"duplicate map key {key!r}")
        start = u.tell()
        if key == "tensors" and start < len(view) and _is_array(view[start]):
            header[key] = _entries(u, view, b, spans)
            continue
        u.skip()
        value = view[start:u.tell()]
        # The scan bounds what building may allocate (and costs a bounded number of steps); the hooks count.
        sections += scan(value, 1, MAX_SECTION_OBJECTS - sections)
        header[key] = b.build(value, 1)
    if u.tell() != len(view):
        raise _Reject(f"{len(view) - u.tell()} trailing bytes after the header map")
    return Parsed(header, spans)


def _entries(u, view, b: _Builder, spans) -> list:
    count = u.read_array_header()
    if count > MAX_TENSORS:
        raise _Reject(f"must be a list of at most {MAX_TENSORS} entries, has {count}", "tensors")
    b.objects += count
    if b.objects > MAX_HEADER_OBJECTS:
        raise _Reject(f"more than {MAX_HEADER_OBJECTS} objects")
    out = []
    for i in range(count):
        start = u.tell()
        u.skip()
        end = u.tell()
        if end - start > MAX_ENTRY_BYTES:
            raise _Reject(f"entry of {end - start} bytes exceeds the cap of {MAX_ENTRY_BYTES}", f"tensors[{i}]")
        out.append(b.build(view[start:end], 2))
        spans.append((start, end))
    return out
