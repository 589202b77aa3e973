"""Honest size accounting (SPEC.md §Size accounting): every byte of the file is attributed to a component.

Per tensor: its buffers by role, the alignment padding in front of each, its params (the scalars) and the
rest of its header entry. The nominal ratio is the paper's alpha*16/(k - log2 m); the true ratio is the
fp16 bytes of the tensor's delta divided by the bytes the tensor takes in this file.
"""
from __future__ import annotations

import math

import msgpack

from . import encodings
from .spec import FOOTER_SIZE, KIND_COMPRESSED, KIND_REMOVED, KIND_TIED, PREAMBLE_SIZE, align_up

COMPONENTS = ("values", "col_indices", "row_offsets", "scalars", "dense", "padding", "header")


def _packed_size(obj) -> int:
    return len(msgpack.packb(obj, use_bin_type=True))


def nominal_ratio(entry: dict) -> float | None:
    """The paper's ratio for compressed entries; None where it has no meaning (dense, same...)."""
    if entry["kind"] != KIND_COMPRESSED:
        return None
    enc = encodings.get(entry.get("encoding"))
    return enc.nominal_ratio(entry) if enc is not None else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den and num else None


def tensor_report(entry: dict, padding_before: dict[tuple, int]) -> dict:
    comps = dict.fromkeys(COMPONENTS, 0)
    enc = encodings.get(entry.get("encoding"))
    roles = enc.roles if enc is not None else {}
    for role, b in entry.get("buffers", {}).items():
        comps[roles.get(role, "dense")] += b["length"]  # an encoding newer than this reader: "dense"
        comps["padding"] += padding_before.get((entry["name"], role), 0)
    params = entry.get("params", {})
    comps["scalars"] = _packed_size(params) if params else 0
    comps["header"] = _packed_size(entry) - comps["scalars"]
    stored = sum(comps.values())
    numel = math.prod(entry["shape"])
    # A removed tensor has no delta; a tied one is the same delta as its target, counted there once.
    fp16 = 0 if entry["kind"] in (KIND_REMOVED, KIND_TIED) else 2 * numel
    return {"name": entry["name"], "kind": entry["kind"], "encoding": entry.get("encoding"),
            "shape": entry["shape"], "dtype": entry["dtype"], "delta_fp16_bytes": fp16, "stored_bytes": stored,
            "true_ratio": _ratio(fp16, stored), "nominal_ratio": nominal_ratio(entry), "components": comps,
            "params": params}


def _padding(header: dict) -> tuple[dict, int]:
    """Padding bytes in front of each buffer (attributed to it) and the trailing padding of the data section."""
    spans = []
    for e in header["tensors"]:
        for role, b in e.get("buffers", {}).items():
            if b["length"]:
                spans.append((b["offset"], b["length"], (e["name"], role)))
    for f in header.get("files", []):
        if f["length"]:
            spans.append((f["offset"], f["length"], ("\0file", f["name"])))
    spans.sort()
    pos, before = 0, {}
    for off, length, key in spans:
        before[key] = off - pos
        pos = off + length
    return before, pos


def report(ddq) -> dict:
    """The whole-file report behind `ddq inspect` (and its --json)."""
    header = ddq.header
    before, end = _padding(header)
    tensors = [tensor_report(e, before) for e in header["tensors"]]
    files_bytes = sum(f["length"] + before.get(("\0file", f["name"]), 0) for f in header.get("files", []))
    header_bytes = ddq.file_size - PREAMBLE_SIZE - ddq.data_length - FOOTER_SIZE
    entries_header = sum(t["components"]["header"] + t["components"]["scalars"] for t in tensors)
    overhead = PREAMBLE_SIZE + FOOTER_SIZE + (header_bytes - entries_header) + (align_up(end) - end)
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
    return {
        "path": str(ddq.path),
        "format_version": f"{ddq.version[0]}.{ddq.version[1]}",
        "file_bytes": ddq.file_size,
        "header_bytes": header_bytes,
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
            "components": totals_comp,
        },
        "tensors": tensors,
    }
