"""Honest size accounting (SPEC.md §12): every byte of the file is attributed to a component.

Per tensor: its buffers by role, the alignment padding in front of each (from the file's layout walk), its
params (the scalars) and the rest of its header entry, both measured on the header's own bytes (in a 2.x
file, whose header is stored compressed, scaled by the header's compressed/inflated length). The nominal
ratio is the paper's alpha*16/(k - log2 m); the true ratio is the fp16 bytes of the tensor's delta divided by
the bytes the tensor takes in this file.

The report is JSON data (SPEC.md §12): any header the reader accepts gives one that json.dumps(...,
allow_nan=False) serialises: msgpack bin values become {"hex": "..."}, non-finite floats (an infinite nominal
ratio: 0 bits per value) become null.
"""
from __future__ import annotations

import math

import msgpack

from . import encodings
from .spec import ENCODINGS_BY_KIND, FOOTER_SIZE, KIND_COMPRESSED, KIND_REMOVED, KIND_TIED, PREAMBLE_SIZE

COMPONENTS = ("values", "col_indices", "row_offsets", "scalars", "dense", "padding", "header")


def json_safe(obj):
    """`obj` with only JSON types: bytes -> {"hex": ...}, non-finite float -> None, tuples -> lists. The reader
    caps header nesting at MAX_DEPTH, so recursion is bounded."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"hex": bytes(obj).hex()}
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def nominal_ratio(entry: dict) -> float | None:
    """The paper's ratio for compressed entries; None where it has no meaning (dense, same...)."""
    if entry["kind"] != KIND_COMPRESSED:
        return None
    enc = encodings.get(entry.get("encoding"))
    return enc.nominal_ratio(entry) if enc is not None else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den and num else None


def _params_bytes(entry_bytes: bytes) -> int:
    """Length of the `params` value inside one entry's msgpack map (0 when absent)."""
    u = msgpack.Unpacker(raw=False, max_buffer_size=max(len(entry_bytes), 1))
    u.feed(entry_bytes)
    for _ in range(u.read_map_header()):
        key = u.unpack()
        start = u.tell()
        u.skip()
        if key == "params":
            return u.tell() - start
    return 0


def tensor_report(entry: dict, entry_bytes: bytes, padding_before: dict[tuple, int], share: float = 1.0) -> dict:
    """share: stored header bytes per msgpack byte (1 in 1.x; in 2.x, where the header is stored compressed, the
    compressed length over the inflated one: each entry is charged its share of the compressed header)."""
    # Kinds without data ignore `encoding` and `params` (SPEC.md §5.2), so the report does too.
    data_kind = entry["kind"] in ENCODINGS_BY_KIND
    enc = encodings.get(entry.get("encoding")) if data_kind else None
    params = entry.get("params", {}) if data_kind else {}
    comps = dict.fromkeys(COMPONENTS, 0)
    roles = enc.roles if enc is not None else {}
    for role, b in entry.get("buffers", {}).items():
        comps[roles.get(role, "dense")] += b["length"]  # a role this reader does not know: "dense"
        comps["padding"] += padding_before.get((entry["name"], role), 0)
    # floors: the entries' shares never sum past the stored header; the rest is the header's own (report())
    entry_share = math.floor(len(entry_bytes) * share)
    params_bytes = min(math.floor(_params_bytes(entry_bytes) * share), entry_share) if params else 0
    comps["scalars"] += params_bytes  # on top of any buffer role an encoding counts as scalars
    comps["header"] = entry_share - params_bytes
    stored = sum(comps.values())
    numel = math.prod(entry["shape"])
    # A removed tensor has no delta; a tied one is the same delta as its target, counted there once.
    fp16 = 0 if entry["kind"] in (KIND_REMOVED, KIND_TIED) else 2 * numel
    return {"name": entry["name"], "kind": entry["kind"], "encoding": entry.get("encoding") if data_kind else None,
            "shape": entry["shape"], "dtype": entry["dtype"], "delta_fp16_bytes": fp16, "stored_bytes": stored,
            "true_ratio": _ratio(fp16, stored), "nominal_ratio": nominal_ratio(entry), "components": comps,
            "params": params}


def report(ddq) -> dict:
    """The whole-file report behind `ddq inspect` (and its --json), as JSON-safe data."""
    header, layout = ddq.header, ddq.layout
    before = {(r.tensor, r.name): r.pad_before for r in layout.regions if r.tensor is not None}
    files_bytes = sum(r.length + r.pad_before for r in layout.regions if r.tensor is None)
    header_bytes = ddq.file_size - PREAMBLE_SIZE - ddq.data_length - FOOTER_SIZE
    share = header_bytes / ddq.header_plain_length if ddq.header_plain_length else 1.0
    tensors = [tensor_report(e, ddq.entry_bytes(e["name"]), before, share) for e in header["tensors"]]
    entries_header = sum(t["components"]["header"] + t["components"]["scalars"] for t in tensors)
    overhead = PREAMBLE_SIZE + FOOTER_SIZE + (header_bytes - entries_header) + layout.trailing
    totals_comp = dict.fromkeys(COMPONENTS, 0)
    for t in tensors:
        for k, v in t["components"].items():
            totals_comp[k] += v
    totals_comp["header"] += overhead
    totals_comp["files"] = files_bytes
    assert sum(totals_comp.values()) == ddq.file_size, "accounting must cover every byte of the file"
    fp16 = sum(t["delta_fp16_bytes"] for t in tensors)
    comp = [t for t in tensors if t["kind"] == KIND_COMPRESSED]
    comp_fp16 = sum(t["delta_fp16_bytes"] for t in comp)
    comp_stored = sum(t["stored_bytes"] for t in comp)
    # File-level nominal ratio: fp16 bytes over the bytes the paper's formula would give each tensor.
    nominal_den = sum(t["delta_fp16_bytes"] / t["nominal_ratio"] for t in comp if t["nominal_ratio"])
    nominal = _ratio(comp_fp16, nominal_den) if comp and all(t["nominal_ratio"] for t in comp) else None
    counts = {}
    for t in tensors:
        counts[t["kind"]] = counts.get(t["kind"], 0) + 1
    return json_safe({
        "path": str(ddq.path),
        "format_version": f"{ddq.version[0]}.{ddq.version[1]}",
        "file_bytes": ddq.file_size,
        "header_bytes": header_bytes,
        "header_msgpack_bytes": ddq.header_plain_length,  # header_bytes before compression (2.x), else equal
        "alignment": header["alignment"],
        "base": header.get("base", {}),
        "algorithm": header.get("algorithm", {}),
        "metadata": header.get("metadata", {}),
        "files": [{"name": f["name"], "bytes": f["length"]} for f in header.get("files", [])],
        "kinds": counts,
        "totals": {
            "delta_fp16_bytes": fp16, "stored_bytes": ddq.file_size, "true_ratio": _ratio(fp16, ddq.file_size),
            "nominal_ratio": nominal, "compressed_delta_fp16_bytes": comp_fp16,
            "compressed_stored_bytes": comp_stored, "compressed_true_ratio": _ratio(comp_fp16, comp_stored),
            # every tensor's fp16 delta / every byte the tensors take (the file less its copied aux files)
            "tensors_true_ratio": _ratio(fp16, ddq.file_size - files_bytes),
            "components": totals_comp,
        },
        "tensors": tensors,
    })
