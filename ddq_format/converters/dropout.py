"""Group-wise dropout (DeltaDQ §3.1): per row, groups of h_g columns keep exactly h_g/alpha entries.

The kept positions come from the spec's seeded mask, so csr_parts and seeded files of one seed keep the
same entries. A tail group of L < h_g columns keeps ceil(L/alpha) entries, rescaled by L/ceil(L/alpha)
(exactly alpha when alpha divides L) so every entry stays unbiased.
"""
from __future__ import annotations

import numpy as np

from .. import accel
from ..seeded_mask import group_layout, mask_columns, positions


def rescale_factors(cols: int, group_size: int, alpha: int) -> np.ndarray:
    """Per kept position in a row: the factor its value is multiplied by."""
    full, keep, tail, keep_tail = group_layout(cols, group_size, alpha)
    f = np.full(full * keep + keep_tail, float(alpha), np.float32)
    if keep_tail:
        f[full * keep:] = np.float32(tail / keep_tail)
    return f


def groupwise_dropout(delta: np.ndarray, alpha: int, group_size: int, seed: int):
    """(columns [rows, kept], rescaled values [rows, kept]) in the spec's kept order."""
    delta = np.asarray(delta, np.float32)
    rows, cols = delta.shape
    if alpha < 1 or group_size < alpha or group_size % alpha:
        raise ValueError(f"group size {group_size} must be a positive multiple of alpha {alpha}")
    kept = mask_columns(seed, rows, cols, group_size, alpha)
    values = np.take_along_axis(delta, kept, axis=1) * rescale_factors(cols, group_size, alpha)
    return kept, values.astype(np.float32)


def mask_columns_rows(seed: int, r0: int, r1: int, cols: int, group_size: int, alpha: int) -> np.ndarray:
    """Rows r0..r1-1 of mask_columns(seed, rows, cols, group_size, alpha): the hash depends on the row index
    only, so a tall matrix can be masked in row blocks with bounded temporaries."""
    full, keep, tail, keep_tail = group_layout(cols, group_size, alpha)
    out = np.empty((r1 - r0, full * keep + keep_tail), np.int64)
    r = np.arange(r0, r1, dtype=np.uint32)
    if full and keep:
        g = np.arange(full, dtype=np.uint32)
        i = np.arange(keep, dtype=np.uint32)
        R, G, I = (a.reshape(-1) for a in np.meshgrid(r, g, i, indexing="ij"))
        pos = positions(seed, R, G, I, group_size).astype(np.int64) + G.astype(np.int64) * group_size
        out[:, : full * keep] = pos.reshape(r1 - r0, full * keep)
    if keep_tail:
        i = np.arange(keep_tail, dtype=np.uint32)
        R, I = (a.reshape(-1) for a in np.meshgrid(r, i, indexing="ij"))
        pos = positions(seed, R, np.full(R.shape, full, np.uint32), I, tail).astype(np.int64) + full * group_size
        out[:, full * keep:] = pos.reshape(r1 - r0, keep_tail)
    return out


def groupwise_dropout_blocked(delta: np.ndarray, alpha: int, group_size: int, seed: int,
                              block_elems: int = 1 << 22, sort_columns: bool = False, columns: bool = True):
    """groupwise_dropout computed in row blocks of about block_elems entries: same result, the hash's
    temporaries stay a few tens of MB whatever the matrix size. Columns come back as the narrowest dtype.
    sort_columns: each row's kept entries in ascending column order instead of the spec's kept order.
    columns=False: the caller needs the values only (the columns may then come back as None)."""
    delta = np.asarray(delta, np.float32)
    rows, cols = delta.shape
    if alpha < 1 or group_size < alpha or group_size % alpha:
        raise ValueError(f"group size {group_size} must be a positive multiple of alpha {alpha}")
    full, keep, _, keep_tail = group_layout(cols, group_size, alpha)
    per_row = full * keep + keep_tail
    factors = rescale_factors(cols, group_size, alpha)
    col_dtype = np.uint16 if cols <= 1 << 16 else np.uint32
    k = accel.kernels()
    if k is not None:  # one pass over the rows, no temporaries
        _, values, kept = k.gather_kept(delta, "F32", None, None, seed, group_size, alpha, factors, sort_columns)
        if kept is None and columns:
            kept = mask_columns(seed, rows, cols, group_size, alpha).astype(col_dtype)
        return kept, values
    kept = np.empty((rows, per_row), col_dtype)
    values = np.empty((rows, per_row), np.float32)
    step = max(1, block_elems // max(per_row, 1))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        c = mask_columns_rows(seed, r0, r1, cols, group_size, alpha)
        v = np.take_along_axis(delta[r0:r1], c, axis=1) * factors
        if sort_columns:
            order = np.argsort(c, axis=1, kind="stable")
            c, v = np.take_along_axis(c, order, 1), np.take_along_axis(v, order, 1)
        values[r0:r1] = v
        kept[r0:r1] = c
    return kept, values
