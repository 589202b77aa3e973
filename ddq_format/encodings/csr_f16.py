"""`csr_f16`: a sparse delta with fp16 values in one CSR matrix (baselines DARE and magnitude; SPEC.md §csr_f16).

Buffers: row_offsets [rows+1] (U32, or U64 when nnz >= 2^32), col_indices [nnz] in the narrowest unsigned type
that holds cols-1, values [nnz] F16; columns ascending within a row. Element e of row r decodes to
float32(values[e]) at column col_indices[e]; every other element is 0.
"""
from __future__ import annotations

import numpy as np

from .. import accel
from ..spec import ENC_CSR_F16, INDEX_DTYPES, MAX_DARE_SEED, OFFSET_DTYPES, index_dtype_for, offsets_dtype
from . import Encoded
from ._common import Ctx, as_bytes, buffer, matrix_shape, nbytes, param, view

ID = ENC_CSR_F16
ROLES = {"row_offsets": "row_offsets", "col_indices": "col_indices", "values": "values"}
METHODS = ("dare", "magnitude")


def encode(shape, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, *, method: str, alpha: int,
           seed: int = 0) -> Encoded:
    """COO triplets (any order, no duplicates) of the kept values, stored as fp16 (round to nearest)."""
    n_rows, n_cols = shape
    if method not in METHODS:
        raise ValueError(f"method {method!r} not one of {METHODS}")
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    values = np.asarray(values, np.float32)[order].astype("<f2")
    nnz = int(values.size)
    off_dtype = offsets_dtype(nnz)
    counts = np.bincount(rows, minlength=n_rows)
    offsets = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    idx_dtype = index_dtype_for(max(n_cols - 1, 0))
    params = {"method": method, "alpha": int(alpha), "nnz": nnz, "seed": int(seed)}
    return Encoded(ENC_CSR_F16, params, {
        "row_offsets": (off_dtype, as_bytes(offsets, off_dtype)),
        "col_indices": (idx_dtype, as_bytes(cols, idx_dtype)),
        "values": ("F16", values.view(np.uint8)),
    })


def check(entry, ctx):
    n_rows, n_cols = matrix_shape(entry, ctx)
    method = entry.get("params", {}).get("method")
    if method not in METHODS:
        raise ctx.fail(f"must be one of {METHODS}", "params.method")
    param(entry, "alpha", ctx, int, 1, None)
    param(entry, "seed", ctx, int, 0, MAX_DARE_SEED)
    nnz = param(entry, "nnz", ctx, int, 0, n_rows * n_cols)
    buffer(entry, "row_offsets", ctx, OFFSET_DTYPES, count=n_rows + 1, holds=nnz, what="row offset")
    buffer(entry, "col_indices", ctx, INDEX_DTYPES, count=nnz, holds=n_cols - 1 if nnz else None,
           what="column index")
    buffer(entry, "values", ctx, ("F16",), nbytes("F16", nnz))


def arrays_of(entry, bufs, ctx=None):
    """(row_offsets int64 [rows+1], col_indices, values float16), validated."""
    ctx = ctx or Ctx(None, entry.get("name"))
    n_rows, n_cols = entry["shape"]
    nnz = entry["params"]["nnz"]
    ro = view(bufs["row_offsets"], entry["buffers"]["row_offsets"]["dtype"]).astype(np.int64)
    if ro[0] != 0 or (np.diff(ro) < 0).any() or ro[-1] != nnz:
        raise ctx.fail("row offsets must start at 0, never decrease and end at nnz", "buffers.row_offsets")
    ci = view(bufs["col_indices"], entry["buffers"]["col_indices"]["dtype"])
    if nnz and int(ci.max()) >= n_cols:
        raise ctx.fail(f"column index {int(ci.max())} out of range for {n_cols} columns", "buffers.col_indices")
    return ro, ci, view(bufs["values"], "F16")


def decode(entry, bufs) -> np.ndarray:
    n_rows, n_cols = entry["shape"]
    ro, ci, vals = arrays_of(entry, bufs)
    k = accel.kernels()
    if k is not None:
        return k.csr_f16_scatter(ro, ci, vals, n_rows, n_cols)
    out = np.zeros(n_rows * n_cols, np.float32)
    row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(ro))
    out[row * n_cols + ci] = vals.astype(np.float32)
    return out.reshape(n_rows, n_cols)
