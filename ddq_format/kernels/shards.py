"""Tensor-parallel shards of a file entry: rows [r0, r1) x columns [c0, c1), resident as deltas the normal
kernels serve (CompressedDelta.from_entry(..., rows=, cols=)). Host-side numpy, once at load.

- seeded layouts (seeded, seeded_rans; seeded_rans_split per column class, the run of the class's columns
  inside [c0, c1) with its column list shifted by c0: registry.SplitToSeeded.shard): the codes of the shard's
  rows and of the groups its columns overlap, with the shard's offsets in its params
  (registry.SeededLayout): the mask keys take the GLOBAL
  row and group index, so the shard's mask is exactly the tensor's. A group an edge cuts is kept whole (at
  most two per row) and its elements outside the shard are skipped.
- csr_parts: re-encoded as a csr_parts entry of the shard (same quantizer, codes repacked).
Every shard decodes to exactly decode(full)[r0:r1, c0:c1] (tests/kernels/test_shards.py).
"""
from __future__ import annotations

import numpy as np

from .. import bitpack
from ..encodings._common import NP_DTYPES
from ..quantize import check_parts
from ..seeded_mask import group_layout
from ..spec import PACKED, index_dtype_for


def seeded_shard(entry: dict, codes: np.ndarray, rows: tuple, cols: tuple) -> tuple[dict, np.ndarray]:
    """(params, uint8 codes [r1 - r0, kept]) of a seeded-layout entry's shard; codes: its code matrix
    [rows, kept_per_row] in kept order."""
    p = entry["params"]
    n_cols = entry["shape"][1]
    (r0, r1), (c0, c1) = rows, cols
    G = p["group_size"]
    full, keep, _, keep_tail = group_layout(n_cols, G, p["alpha"])
    g_lo = min(c0 // G, full) if c1 > c0 else 0
    g_end = -(-c1 // G) if c1 > c0 else 0
    k_lo = g_lo * keep
    k_hi = min(g_end, full) * keep + (keep_tail if g_end > full else 0)
    params = {**p, "row_offset": r0, "group_offset": g_lo, "col_offset": c0 - g_lo * G if c1 > c0 else 0,
              "full_cols": n_cols}
    return params, np.ascontiguousarray(codes[r0:r1, k_lo:max(k_lo, k_hi)])


def _typed_bytes(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).astype(np.dtype(NP_DTYPES[dtype]))).reshape(-1).view(np.uint8)


def csr_shard(entry: dict, parts: list, rows: np.ndarray, c0: int, c1: int) -> tuple[dict, dict]:
    """(entry, buffers) of a csr_parts entry restricted to `rows` (int64 indices, in the shard's order) x
    [c0, c1): a valid csr_parts entry. parts: the entry's stored parts (the encoding's parts())."""
    p = entry["params"]
    r = rows.size
    offsets = np.zeros((len(parts), r + 1), np.int64)
    cols_out, codes_out = [], []
    for j, part in enumerate(parts):
        ro = part.row_offsets.astype(np.int64)
        starts, counts = ro[rows], ro[rows + 1] - ro[rows]
        # element positions of the selected rows, in shard row order: start_i + 0..count_i-1
        pos = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        ci = part.col_indices[pos].astype(np.int64)
        keep = (ci >= c0) & (ci < c1)
        row_of = np.repeat(np.arange(r), counts)[keep]
        np.cumsum(np.bincount(row_of, minlength=r), out=offsets[j, 1:])
        cols_out.append(ci[keep] - c0)
        codes_out.append(part.codes[pos][keep])
    ci, codes = np.concatenate(cols_out), np.concatenate(codes_out)
    nnz = int(ci.size)
    off_dtype = "U32" if nnz < 2**32 else "U64"
    idx_dtype = index_dtype_for(max(c1 - c0 - 1, 0))
    bufs = {"row_offsets": _typed_bytes(offsets, off_dtype), "col_indices": _typed_bytes(ci, idx_dtype),
            "values": bitpack.pack(codes.astype(np.uint8), check_parts(p["bits"], p["parts"]))}
    dtypes = {"row_offsets": off_dtype, "col_indices": idx_dtype, "values": PACKED}
    params = {**p, "nnz": nnz}
    if p["group_size"] > max(c1 - c0, 1):  # descriptive for csr_parts (the kept set is explicit): keep it valid
        params.update(alpha=1, group_size=max(c1 - c0, 1))
    sub = {**entry, "shape": [r, c1 - c0], "params": params,
           "buffers": {k: {"dtype": dtypes[k], "length": int(v.size)} for k, v in bufs.items()}}
    return sub, bufs
