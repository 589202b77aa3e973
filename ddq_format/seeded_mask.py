"""The counter-based hash that regenerates a group-wise dropout mask from a seed (SPEC.md §Seeded mask).

Every row of a [rows, cols] matrix is split into groups of G consecutive columns (the last group may be
shorter: L = cols - g*G). Group g of row r keeps n_g = ceil(L/alpha) columns (exactly G/alpha for full
groups). Kept element i (0 <= i < n_g) of that group sits at column g*G + pos(i), where
    pos(i) = (W(i) + rot) mod L,
W is a keyed permutation of [0, L) (a keyed bijection P of [0, 2**w), 2**w >= L, applied by cycle-walking
until the value falls below L) and rot a key-derived rotation. The rotation makes every column's
inclusion probability exactly n_g / L, so rescaling kept values by L / n_g is unbiased.

All arithmetic is on uint32 with wrap-around; numpy's uint32 does exactly that.
"""
from __future__ import annotations

import numpy as np

from .spec import FMIX_C1, FMIX_C2, GOLDEN, PERM_ROUNDS, SEED_SALT

U32 = np.uint32


def fmix32(x):
    """MurmurHash3's 32-bit finalizer, a bijection on uint32."""
    x = np.asarray(x, dtype=U32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> U32(16))
        x = x * U32(FMIX_C1)
        x = x ^ (x >> U32(13))
        x = x * U32(FMIX_C2)
        x = x ^ (x >> U32(16))
    return x


def group_layout(cols: int, group_size: int, alpha: int) -> tuple[int, int, int, int]:
    """(full_groups, keep_per_full_group, tail_length, keep_in_tail) for one row."""
    full, tail = divmod(cols, group_size)
    keep = group_size // alpha
    keep_tail = -(-tail // alpha) if tail else 0
    return full, keep, tail, keep_tail


def kept_per_row(cols: int, group_size: int, alpha: int) -> int:
    full, keep, _, keep_tail = group_layout(cols, group_size, alpha)
    return full * keep + keep_tail


def group_keys(seed: int, rows: np.ndarray, groups: np.ndarray):
    """Round keys k_0..k_{PERM_ROUNDS-1} and the rotation key for each (row, group) pair."""
    h0 = fmix32(U32(seed & 0xFFFFFFFF) ^ U32(SEED_SALT))
    with np.errstate(over="ignore"):
        h1 = fmix32(h0 ^ np.asarray(rows, dtype=U32))
        h2 = fmix32(h1 + np.asarray(groups, dtype=U32) * U32(GOLDEN))
        keys = [fmix32(h2 + U32((t + 1) * GOLDEN & 0xFFFFFFFF)) for t in range(PERM_ROUNDS + 1)]
    return keys[:PERM_ROUNDS], keys[PERM_ROUNDS]


def width_for(length: int) -> int:
    """w with 2**w >= length, at least 1."""
    return max(1, int(length - 1).bit_length())


def _permute(x, round_keys, w: int):
    mask = U32((1 << w) - 1)
    shift = U32((w + 1) >> 1)
    with np.errstate(over="ignore"):
        for k in round_keys:
            x = (x + (k & mask)) & mask
            x = (x * ((k >> U32(8)) | U32(1))) & mask
            x = x ^ (x >> shift)
    return x


def positions(seed: int, rows: np.ndarray, groups: np.ndarray, index: np.ndarray, length: int) -> np.ndarray:
    """Column offsets within their group of kept elements (rows[e], groups[e], index[e]); 1-D arrays of one
    length, every group `length` columns long. Returns uint32 offsets in [0, length)."""
    round_keys, rot = group_keys(seed, rows, groups)
    w = width_for(length)
    x = _permute(np.asarray(index, dtype=U32), round_keys, w)
    todo = np.nonzero(x >= length)[0]
    while todo.size:  # cycle-walking: at most a few steps since 2**w < 2*length
        x[todo] = _permute(x[todo], [k[todo] for k in round_keys], w)
        todo = todo[x[todo] >= length]
    return ((x.astype(np.uint64) + rot % U32(length)) % np.uint64(length)).astype(U32)


def mask_columns(seed: int, rows: int, cols: int, group_size: int, alpha: int) -> np.ndarray:
    """Kept columns of every row, in kept order (SPEC.md): int64 array [rows, kept_per_row]."""
    if group_size % alpha or group_size <= 0:
        raise ValueError(f"group_size {group_size} must be a positive multiple of alpha {alpha}")
    full, keep, tail, keep_tail = group_layout(cols, group_size, alpha)
    per_row = full * keep + keep_tail
    out = np.empty((rows, per_row), np.int64)
    r = np.arange(rows, dtype=U32)
    if full and keep:
        g = np.arange(full, dtype=U32)
        i = np.arange(keep, dtype=U32)
        R, G, I = (a.reshape(-1) for a in np.meshgrid(r, g, i, indexing="ij"))
        pos = positions(seed, R, G, I, group_size).astype(np.int64) + G.astype(np.int64) * group_size
        out[:, : full * keep] = pos.reshape(rows, full * keep)
    if keep_tail:
        i = np.arange(keep_tail, dtype=U32)
        R, I = (a.reshape(-1) for a in np.meshgrid(r, i, indexing="ij"))
        G = np.full(R.shape, full, U32)
        pos = positions(seed, R, G, I, tail).astype(np.int64) + full * group_size
        out[:, full * keep:] = pos.reshape(rows, keep_tail)
    return out
