"""Parse and validate a .ddq header (SPEC.md §Header) from untrusted bytes, before anything is allocated."""
from __future__ import annotations

import math

import msgpack

from . import encodings
from .encodings._common import Ctx
from .errors import EncodingError, FormatError
from .spec import (ALIGNMENT, CHECKSUM, MAX_ALIGNMENT, MAX_FILE_NAME_BYTES, ENCODINGS_BY_KIND, FLOAT_DTYPES, FORMAT_MINOR, KIND_TIED, KINDS, MAX_ARRAY,
                   MAX_DECODED_BYTES, MAX_DIM, MAX_FILES, MAX_MAP, MAX_NAME_BYTES, MAX_NDIM, MAX_STRING,
                   MAX_TENSORS)


def _pairs(pairs):
    """Maps must have str keys and no duplicates (msgpack itself keeps the last value silently)."""
    out = {}
    for k, v in pairs:
        if type(k) is not str:
            raise ValueError(f"map key {k!r} is not a string")
        if k in out:
            raise ValueError(f"duplicate map key {k!r}")
        out[k] = v
    return out


def _no_ext(code, data):
    raise ValueError(f"msgpack ext type {code} is not allowed")


def unpack(raw: bytes, path) -> dict:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False, object_pairs_hook=_pairs,
                                 ext_hook=_no_ext, max_str_len=MAX_STRING, max_bin_len=MAX_STRING,
                                 max_array_len=MAX_ARRAY, max_map_len=MAX_MAP, max_ext_len=0)
    except Exception as e:  # msgpack raises several types; all mean the same thing here
        raise FormatError(f"header is not valid msgpack ({type(e).__name__}: {e})", path=path,
                          field="header") from None
    if not isinstance(header, dict):
        raise FormatError("header must be a map", path=path, field="header")
    return header


def _safe_file_name(name) -> bool:
    """Aux files are written to disk by materialize: no absolute paths, no traversal."""
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_FILE_NAME_BYTES or "\\" in name or "\0" in name:
        return False
    return not name.startswith("/") and all(part not in ("", ".", "..") for part in name.split("/"))


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_buffer(b, where, path, name, data_length, alignment):
    if not isinstance(b, dict):
        raise FormatError("buffer must be a map", path=path, tensor=name, field=where)
    for key in ("offset", "length", "crc32"):
        if not _int(b.get(key)) or b[key] < 0:
            raise FormatError("missing or not a non-negative integer", path=path, tensor=name,
                              field=f"{where}.{key}")
    if b["crc32"] >= 2**32:
        raise FormatError("crc32 exceeds 32 bits", path=path, tensor=name, field=f"{where}.crc32")
    if b["offset"] % alignment:
        raise FormatError(f"offset {b['offset']} not aligned to {alignment}", path=path, tensor=name,
                          field=f"{where}.offset")
    if b["offset"] > data_length or b["length"] > data_length - b["offset"]:
        raise FormatError(f"buffer [{b['offset']}, +{b['length']}) runs past the data section "
                          f"({data_length} bytes)", path=path, tensor=name, field=where)


def validate(header: dict, data_length: int, path, minor: int = FORMAT_MINOR) -> tuple[list[dict], set[str]]:
    """Check every key, type and limit. Returns (entries, names of entries whose encoding is unknown but
    allowed because the file's minor version is newer than this library's). Raises FormatError/EncodingError."""
    newer_minor, unsupported = minor > FORMAT_MINOR, set()
    alignment = header.get("alignment")
    if not _int(alignment) or alignment < ALIGNMENT or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
        raise FormatError(f"must be a power of two >= {ALIGNMENT}, got {alignment!r}", path=path,
                          field="alignment")
    if data_length % alignment:
        raise FormatError(f"data section of {data_length} bytes is not a multiple of the alignment {alignment}",
                          path=path, field="footer.header_offset")
    if header.get("checksum") != CHECKSUM:
        raise FormatError(f"unsupported checksum {header.get('checksum')!r}", path=path, field="checksum")
    for key in ("metadata", "base", "algorithm"):
        if key in header and not isinstance(header[key], dict):
            raise FormatError("must be a map", path=path, field=key)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in header.get("metadata", {}).items()):
        raise FormatError("must map strings to strings", path=path, field="metadata")
    files = header.get("files", [])
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise FormatError(f"must be a list of at most {MAX_FILES} files", path=path, field="files")
    tensors = header.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise FormatError(f"must be a list of at most {MAX_TENSORS} entries", path=path, field="tensors")

    spans = []  # (offset, length, owner) of every non-empty buffer
    file_names = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict) or not _safe_file_name(f.get("name")):
            raise FormatError(f"file name must be a relative path of at most {MAX_FILE_NAME_BYTES} bytes without '..', '.', empty "
                              "segments, backslashes or NUL", path=path, field=f"files[{i}].name")
        if f["name"] in file_names:
            raise FormatError(f"duplicate file {f['name']!r}", path=path, field=f"files[{i}].name")
        file_names.add(f["name"])
        _check_buffer(f, f"files[{i}]", path, None, data_length, alignment)
        spans.append((f["offset"], f["length"], f"file {f['name']!r}"))

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
        _check_entry(e, path, data_length, alignment, spans, newer_minor, unsupported)

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

    # No overlaps and no holes: buffers in offset order, gaps only alignment padding.
    spans.sort()
    pos = 0
    for off, length, owner in spans:
        if off < pos:
            raise FormatError(f"buffer of {owner} at {off} overlaps the previous one (ends at {pos})", path=path,
                              field="buffers")
        if off - pos >= alignment:
            raise FormatError(f"hole of {off - pos} bytes before the buffer of {owner}", path=path, field="buffers")
        pos = off + length
    if data_length - pos >= alignment:
        raise FormatError(f"{data_length - pos} unused bytes at the end of the data section", path=path,
                          field="buffers")
    return tensors, unsupported


def _check_entry(e, path, data_length, alignment, spans, newer_minor, unsupported):
    name = e["name"]
    kind = e.get("kind")
    if kind not in KINDS:
        raise FormatError(f"unknown kind {kind!r}", path=path, tensor=name, field="kind")
    shape = e.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(_int(s) and 0 <= s <= MAX_DIM for s in shape)):
        raise FormatError(f"must be a list of at most {MAX_NDIM} integers in 0..{MAX_DIM}", path=path,
                          tensor=name, field="shape")
    if math.prod(shape) * 4 > MAX_DECODED_BYTES:
        raise FormatError(f"shape {shape} decodes to more than {MAX_DECODED_BYTES} bytes", path=path,
                          tensor=name, field="shape")
    if e.get("dtype") not in FLOAT_DTYPES:
        raise FormatError(f"dtype {e.get('dtype')!r} not one of {FLOAT_DTYPES}", path=path, tensor=name,
                          field="dtype")
    if "base" in e:
        _check_base(e["base"], path, name)
    allowed = ENCODINGS_BY_KIND.get(kind)
    if allowed is None:
        if "buffers" in e and e["buffers"]:
            raise FormatError(f"kind {kind} stores no buffers", path=path, tensor=name, field="buffers")
        return
    if not isinstance(e.get("params", {}), dict):
        raise FormatError("must be a map", path=path, tensor=name, field="params")
    bufs = e.get("buffers")
    if not isinstance(bufs, dict):
        raise FormatError("must be a map", path=path, tensor=name, field="buffers")
    for role, b in bufs.items():
        _check_buffer(b, f"buffers.{role}", path, name, data_length, alignment)
        if not isinstance(b.get("dtype"), str):
            raise FormatError("missing dtype", path=path, tensor=name, field=f"buffers.{role}.dtype")
        if b["length"]:
            spans.append((b["offset"], b["length"], f"tensor {name!r}"))
    enc = e.get("encoding")
    module = encodings.get(enc) if isinstance(enc, str) else None
    if module is None:
        if newer_minor and isinstance(enc, str):
            # A later minor version may add encodings: the rest of the file stays readable (SPEC.md §Versioning).
            unsupported.add(name)
            return
        raise EncodingError(f"unknown encoding {enc!r}", path=path, tensor=name, field="encoding")
    if enc not in allowed:
        raise EncodingError(f"encoding {enc!r} is not allowed for kind {kind}", path=path, tensor=name,
                            field="encoding")
    module.check(e, Ctx(path, name))


def _check_base(b, path, name):
    if not isinstance(b, dict):
        raise FormatError("must be a map", path=path, tensor=name, field="base")
    shape = b.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_int(s) and 0 <= s <= MAX_DIM for s in shape):
        raise FormatError("must be a list of integers", path=path, tensor=name, field="base.shape")
    if not isinstance(b.get("dtype"), str) or not isinstance(b.get("fingerprint"), str):
        raise FormatError("base binding needs dtype and fingerprint strings", path=path, tensor=name,
                          field="base")
