"""Group-wise dropout (DeltaDQ §3.1): per row, groups of h_g columns keep exactly h_g/alpha entries.

The kept positions come from the spec's seeded mask, so csr_parts and seeded files of one seed keep the
same entries. A tail group of L < h_g columns keeps ceil(L/alpha) entries, rescaled by L/ceil(L/alpha)
(exactly alpha when alpha divides L) so every entry stays unbiased.
"""
from __future__ import annotations

import numpy as np

from ..seeded_mask import group_layout, mask_columns


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
