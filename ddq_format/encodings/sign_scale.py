"""`sign_scale`: BitDelta's 1-bit delta, sign x one per-matrix scale, optionally behind group-wise dropout
(SPEC.md §sign_scale).

Params: scale (binary32, >= 0), alpha, group_size, seed (uint32). Buffer `signs`: PACKED 1-bit codes, one per
kept element, row-major. alpha == 1: every element is kept, in natural column order (group_size and seed
are recorded but unused). alpha > 1: row r keeps the columns mask_columns(seed, rows, cols, group_size,
alpha)[r, :] (the seeded mask), in that kept order. Kept element with bit b decodes to +scale when b = 1 and
-scale when b = 0; every other element is 0.
"""
from __future__ import annotations

import numpy as np

from .. import accel, bitpack
from ..seeded_mask import kept_per_row, mask_columns
from ..spec import ENC_SIGN_SCALE, MAX_SEED, PACKED
from . import Encoded
from ._common import alpha_group, buffer, matrix_shape, param

ID = ENC_SIGN_SCALE
ROLES = {"signs": "values"}


def encode(shape, values: np.ndarray, *, alpha: int, group_size: int, seed: int, scale: float | None = None) -> Encoded:
    """values: float32 [rows, kept_per_row] in kept order (all of the row when alpha == 1). scale: the stored
    magnitude (default BitDelta's mean |v|; a trained or unbiased scale otherwise), rounded to binary32."""
    n_rows, n_cols = shape
    per_row = n_cols if alpha == 1 else kept_per_row(n_cols, group_size, alpha)
    values = np.asarray(values, np.float32).reshape(n_rows, per_row)
    if scale is None:
        scale = float(np.float32(np.abs(values, dtype=np.float64).mean())) if values.size else 0.0
    scale = float(np.float32(scale))
    params = {"alpha": int(alpha), "group_size": int(group_size), "seed": int(seed), "scale": scale}
    return Encoded(ENC_SIGN_SCALE, params, {"signs": (PACKED, bitpack.pack((values >= 0).view(np.uint8), 1))})


def count(entry) -> int:
    n_rows, n_cols = entry["shape"]
    p = entry["params"]
    return n_rows * (n_cols if p["alpha"] == 1 else kept_per_row(n_cols, p["group_size"], p["alpha"]))


def check(entry, ctx):
    _, n_cols = matrix_shape(entry, ctx)
    alpha_group(entry, ctx, n_cols)
    param(entry, "scale", ctx, float, 0.0)
    param(entry, "seed", ctx, int, 0, MAX_SEED)
    buffer(entry, "signs", ctx, (PACKED,), bitpack.packed_nbytes(count(entry), 1))


def decode(entry, bufs) -> np.ndarray:
    p = entry["params"]
    n_rows, n_cols = entry["shape"]
    k = accel.kernels()
    if k is not None and p["alpha"] > 1:
        lut = np.float32(p["scale"]) * np.array([-1, 1], np.float32)  # the two values decoded below
        return k.seeded_scatter(bitpack.packed_view(bufs["signs"], 1, count(entry)), lut, p["seed"], n_rows,
                                n_cols, p["group_size"], p["alpha"], bits=1)
    bits = bitpack.unpack(bufs["signs"], 1, count(entry))
    vals = np.float32(p["scale"]) * (2 * bits.astype(np.int32) - 1).astype(np.float32)
    if p["alpha"] == 1:
        return vals.reshape(n_rows, n_cols)
    cols = mask_columns(p["seed"], n_rows, n_cols, p["group_size"], p["alpha"])
    out = np.zeros((n_rows, n_cols), np.float32)
    np.put_along_axis(out, cols, vals.reshape(cols.shape), axis=1)
    return out
