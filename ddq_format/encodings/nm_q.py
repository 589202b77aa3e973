"""`nm_q`: n:m structured sparsity with per-row k-bit codes (DeltaZip: SparseGPT 2:4 + 4-bit; SPEC.md §9.7).

Params: `n`, `m` (1 <= n <= m <= 256: each group of m consecutive columns of a row keeps n entries; a tail
group of T = cols mod m columns keeps min(n, T)), `bits` k (1..8), `zero` z (0..2^k - 1; the symmetric grid
of GPTQ/DeltaZip has z = 2^(k-1)). Per row r: K = kept_per_row entries, in column order.

Buffers: `scales` F16 [rows] (one per row); `codes` PACKED k-bit, rows*K codes row-major; `positions` PACKED
ceil(log2 m)-bit (0 bits when m = 1), rows*K indices row-major: the kept entry's column within its group,
strictly increasing within a group. Entry (r, e) in group j decodes to float32(scales[r]) * float32(q - z)
at column j*m + position; every other element is 0.
"""
from __future__ import annotations

import math

import numpy as np

from .. import bitpack
from ..errors import EncodingError
from ..spec import ENC_NM_Q, PACKED
from . import Encoded
from ._common import buffer, matrix_shape, param, view

ID = ENC_NM_Q
ROLES = {"scales": "values", "codes": "values", "positions": "col_indices"}  # "scalars" is the params

MAX_M = 256


def position_bits(m: int) -> int:
    return (m - 1).bit_length()


def kept_per_row(cols: int, n: int, m: int) -> int:
    return cols // m * n + min(n, cols % m)


def encode(shape, keep: np.ndarray, codes: np.ndarray, scales: np.ndarray, *, n: int, m: int, bits: int,
           zero: int) -> Encoded:
    """keep: bool [rows, cols] with exactly the n:m pattern; codes: uint8 [rows, cols] (read where keep)."""
    rows, cols = shape
    K = kept_per_row(cols, n, m)
    keep = np.asarray(keep, bool).reshape(rows, cols)
    r, c = np.nonzero(keep)  # row-major: column order within each row
    if r.size != rows * K or np.any(np.bincount(r, minlength=rows) != K):
        raise ValueError(f"mask is not {n}:{m} (every row must keep {K} entries)")
    pos = (c % m).astype(np.uint8)
    q = np.asarray(codes, np.uint8)[r, c]
    params = {"n": int(n), "m": int(m), "bits": int(bits), "zero": int(zero)}
    return Encoded(ENC_NM_Q, params, {
        "scales": ("F16", np.ascontiguousarray(np.asarray(scales, "<f2").reshape(rows)).view(np.uint8)),
        "codes": (PACKED, bitpack.pack(q, bits)),
        "positions": (PACKED, bitpack.pack(pos, position_bits(m))),
    })


def check(entry, ctx):
    rows, cols = matrix_shape(entry, ctx)
    m = param(entry, "m", ctx, int, 1, MAX_M)
    n = param(entry, "n", ctx, int, 1, m)
    bits = param(entry, "bits", ctx, int, 1, 8)
    param(entry, "zero", ctx, int, 0, (1 << bits) - 1)
    count = rows * kept_per_row(cols, n, m)
    buffer(entry, "scales", ctx, ("F16",), 2 * rows)
    buffer(entry, "codes", ctx, (PACKED,), bitpack.packed_nbytes(count, bits))
    buffer(entry, "positions", ctx, (PACKED,), bitpack.packed_nbytes(count, position_bits(m)))


def columns(entry, bufs) -> np.ndarray:
    """Column of every kept entry, int64 [rows, K], validated (inside the row, increasing within a group)."""
    rows, cols = entry["shape"]
    p = entry["params"]
    n, m = p["n"], p["m"]
    K = kept_per_row(cols, n, m)
    pos = bitpack.unpack(bufs["positions"], position_bits(m), rows * K).reshape(rows, K).astype(np.int64)
    group = np.concatenate([np.repeat(np.arange(cols // m), n), np.full(min(n, cols % m), cols // m)])
    col = group[None, :] * m + pos
    same = group[1:] == group[:-1]
    if np.any(col >= cols) or np.any((np.diff(pos, axis=1) <= 0) & same[None, :]):
        raise EncodingError("positions must lie inside their group and increase within it", tensor=entry.get("name"),
                            field="buffers.positions")
    return col


def decode(entry, bufs) -> np.ndarray:
    rows, cols = entry["shape"]
    p = entry["params"]
    K = kept_per_row(cols, p["n"], p["m"])
    col = columns(entry, bufs)
    q = bitpack.unpack(bufs["codes"], p["bits"], rows * K).reshape(rows, K)
    s = view(bufs["scales"], "F16").astype(np.float32)
    out = np.zeros((rows, cols), np.float32)
    vals = s[:, None] * (q.astype(np.int32) - p["zero"]).astype(np.float32)
    np.put_along_axis(out, col, vals, axis=1)
    return out


def nominal_ratio(entry) -> float:
    """16 bits over the value bits per original element, m/n kept (positions and scales not counted)."""
    p = entry.get("params", {})
    return 16 * p["m"] / (p["n"] * p["bits"]) if {"n", "m", "bits"} <= p.keys() else math.nan
