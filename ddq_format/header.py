"""Validate a parsed .ddq header (SPEC.md §4, §5, §9, §11) against the data section, before any buffer byte is
read. Parsing the msgpack itself, with its caps, is header_parse's job."""
from __future__ import annotations

import math

from . import encodings
from .encodings._common import Ctx
from .errors import EncodingError, FormatError
from .header_parse import Parsed, parse  # noqa: F401  (re-exported: the reader's entry point)
from .layout import Layout, Region, walk
from .spec import (CHECKSUM, ENCODINGS_BY_KIND, FLOAT_DTYPES, FORMAT_MAJOR, FORMAT_MINOR, KIND_TIED, KINDS,
                   MAX_ALIGNMENT, MAX_DECODED_BYTES, MAX_DIM, MAX_FILE_NAME_BYTES, MAX_FILES, MAX_NAME_BYTES,
                   MAX_NDIM, MAX_TENSORS, dtype_max, min_alignment, newest_minor)


def _safe_file_name(name) -> bool:
    """Aux files are written to disk by materialize: no absolute paths, no traversal."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_FILE_NAME_BYTES or "\\" in name or "\0" in name:
        return False
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in name.split("/"))


def _int(v):
    return type(v) is int  # msgpack builds exact ints; bool is not an int here


def _check_buffer(b, where, path, name, data_length, alignment):
    if not isinstance(b, dict):
        raise FormatError("buffer must be a map", path=path, tensor=name, field=where)
    for key in ("offset", "length", "crc32"):
        if not _int(b.get(key)) or b[key] < 0:
            raise FormatError("missing or not a non-negative integer", path=path, tensor=name,
                              field=f"{where}.{key}")
    if b["crc32"] > dtype_max("U32"):
        raise FormatError("crc32 exceeds 32 bits", path=path, tensor=name, field=f"{where}.crc32")
    if b["offset"] % alignment:
        raise FormatError(f"offset {b['offset']} not aligned to {alignment}", path=path, tensor=name,
                          field=f"{where}.offset")
    if b["offset"] > data_length or b["length"] > data_length - b["offset"]:
        raise FormatError(f"buffer [{b['offset']}, +{b['length']}) runs past the data section "
                          f"({data_length} bytes)", path=path, tensor=name, field=where)


def validate(header: dict, data_length: int, path, minor: int = FORMAT_MINOR, major: int = FORMAT_MAJOR
             ) -> tuple[list[dict], set[str], Layout]:
    """Check every key, type and limit. Returns (entries, names of entries whose encoding is unknown but
    allowed because the file's minor version is newer than this library's, the data section's layout).
    Raises FormatError/EncodingError."""
    newest = FORMAT_MINOR if major == FORMAT_MAJOR else newest_minor(major)  # the module's, for tests to lower
    newer_minor, unsupported = minor > newest, set()
    alignment, low = header.get("alignment"), min_alignment(major)
    if not _int(alignment) or alignment < low or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
        raise FormatError(f"must be a power of two >= {low} (format {major}.x), got {alignment!r}", path=path,
                          field="alignment")
    if data_length % alignment:
        raise FormatError(f"data section of {data_length} bytes is not a multiple of the alignment {alignment}",
                          path=path, field="footer.header_offset")
    if header.get("checksum") != CHECKSUM:
        raise FormatError(f"unsupported checksum {header.get('checksum')!r}", path=path, field="checksum")
    for key in ("metadata", "base", "algorithm"):
        if key in header and not isinstance(header[key], dict):
            raise FormatError("must be a map", path=path, field=key)
    if not all(isinstance(v, str) for v in header.get("metadata", {}).values()):
        raise FormatError("must map strings to strings", path=path, field="metadata")
    files = header.get("files", [])
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise FormatError(f"must be a list of at most {MAX_FILES} files", path=path, field="files")
    tensors = header.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise FormatError(f"must be a list of at most {MAX_TENSORS} entries", path=path, field="tensors")

    regions = []  # every buffer and file record, for the layout walk
    file_names = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not _safe_file_name(f.get("name")):
            raise FormatError(f"file name must be a relative path of at most {MAX_FILE_NAME_BYTES} bytes without "
                              "'..', '.', empty segments, backslashes or NUL", path=path, field=f"files[{i}].name")
        if f["name"] in file_names:
            raise FormatError(f"duplicate file {f['name']!r}", path=path, field=f"files[{i}].name")
        file_names.add(f["name"])
        _check_buffer(f, f"files[{i}]", path, None, data_length, alignment)
        regions.append(Region(f["offset"], f["length"], f["crc32"], None, f["name"]))

    names = {}
    for i, e in enumerate(tensors):
        if not isinstance(e, dict):
            raise FormatError("entry must be a map", path=path, field=f"tensors[{i}]")
        name = e.get("name")
        if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_BYTES:
            raise FormatError(f"name must be a non-empty string of at most {MAX_NAME_BYTES} bytes", path=path,
                              field=f"tensors[{i}].name")
        if name in names:
            raise FormatError("duplicate tensor name", path=path, tensor=name, field="name")
        names[name] = e
        if _check_entry(e, path, data_length, alignment, regions, newer_minor):
            unsupported.add(name)
    _check_tied(names, path)
    return tensors, unsupported, walk(regions, data_length, alignment, path)


def _check_tied(names, path):
    for name, e in names.items():
        if e["kind"] == KIND_TIED:
            tied_to = e.get("tied_to")
            target = names.get(tied_to) if isinstance(tied_to, str) else None  # lists/maps are unhashable
            if target is None or target["kind"] == KIND_TIED:
                raise FormatError(f"tied_to {e.get('tied_to')!r} must name a non-tied entry", path=path,
                                  tensor=name, field="tied_to")
            if target["shape"] != e["shape"]:
                raise FormatError(f"shape {e['shape']} differs from tied target's {target['shape']}", path=path,
                                  tensor=name, field="shape")


def _check_shape(shape, path, name, field):
    """<= MAX_NDIM dims in 0..MAX_DIM whose non-zero product x 4 bytes is <= MAX_DECODED_BYTES. Zero dims are
    skipped in the product, so [0, 2^31-1, 2^31-1] is refused too: no intermediate size ever overflows."""
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(s) is int and 0 <= s <= MAX_DIM for s in shape)):
        raise FormatError(f"must be a list of at most {MAX_NDIM} integers in 0..{MAX_DIM}", path=path,
                          tensor=name, field=field)
    if math.prod(s for s in shape if s) * 4 > MAX_DECODED_BYTES:
        raise FormatError(f"shape {shape}: its non-zero dimensions multiply to more than {MAX_DECODED_BYTES // 4} "
                          "elements", path=path, tensor=name, field=field)


def _check_entry(e, path, data_length, alignment, regions, newer_minor) -> bool:
    """Check one entry and add its buffers to `regions`. True when its encoding is unknown but tolerated (newer
    minor version)."""
    name = e["name"]
    kind = e.get("kind")
    if kind not in KINDS:
        raise FormatError(f"unknown kind {kind!r}", path=path, tensor=name, field="kind")
    _check_shape(e.get("shape"), path, name, "shape")
    if e.get("dtype") not in FLOAT_DTYPES:
        raise FormatError(f"dtype {e.get('dtype')!r} not one of {FLOAT_DTYPES}", path=path, tensor=name,
                          field="dtype")
    if "base" in e:
        _check_base(e["base"], path, name)
    allowed = ENCODINGS_BY_KIND.get(kind)
    bufs = e.get("buffers", {})
    if allowed is None:  # same, tied, removed: `buffers` absent or an empty map; nil is not a map (SPEC.md §5.1)
        if not isinstance(bufs, dict) or bufs:
            raise FormatError(f"kind {kind} stores no buffers: `buffers` must be absent or an empty map", path=path,
                              tensor=name, field="buffers")
        return False
    if not isinstance(e.get("params", {}), dict):
        raise FormatError("must be a map", path=path, tensor=name, field="params")
    if not isinstance(e.get("buffers"), dict):
        raise FormatError("must be a map", path=path, tensor=name, field="buffers")
    for role, b in bufs.items():
        _check_buffer(b, f"buffers.{role}", path, name, data_length, alignment)
        if not isinstance(b.get("dtype"), str):
            raise FormatError("missing dtype", path=path, tensor=name, field=f"buffers.{role}.dtype")
        regions.append(Region(b["offset"], b["length"], b["crc32"], name, role))
    enc_id = e.get("encoding")
    enc = encodings.get(enc_id)
    if enc is None:
        if newer_minor and isinstance(enc_id, str):
            # A later minor version may add encodings: the rest of the file stays readable (SPEC.md §2).
            return True
        raise EncodingError(f"unknown encoding {enc_id!r}", path=path, tensor=name, field="encoding")
    if kind not in enc.kinds:
        raise EncodingError(f"encoding {enc_id!r} is not allowed for kind {kind}", path=path, tensor=name,
                            field="encoding")
    enc.check(e, Ctx(path, name))
    return False


def _check_base(b, path, name):
    """The per-tensor binding (SPEC.md §5.3): shape, dtype and fingerprint REQUIRED; digest OPTIONAL (1.2)."""
    if not isinstance(b, dict):
        raise FormatError("must be a map", path=path, tensor=name, field="base")
    _check_shape(b.get("shape"), path, name, "base.shape")
    for key in ("dtype", "fingerprint"):
        if not isinstance(b.get(key), str):
            raise FormatError("base binding needs dtype and fingerprint strings", path=path, tensor=name,
                              field="base")
    if "digest" in b and not isinstance(b["digest"], str):
        raise FormatError("must be a string '<scheme>:<hex>'", path=path, tensor=name, field="base.digest")
