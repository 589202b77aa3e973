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

from . import accel
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
    # In place after the first add (which allocates the broadcast result). The mask after the add is
    # skipped: (x + a) * m mod 2^w only depends on x + a mod 2^w, and 2^w divides 2^32.
    mask = U32((1 << w) - 1)
    shift = U32((w + 1) >> 1)
    with np.errstate(over="ignore"):
        for t, k in enumerate(round_keys):
            add = k & mask
            x = x + add if t == 0 else np.add(x, add, out=x)
            np.multiply(x, (k >> U32(8)) | U32(1), out=x)
            np.bitwise_and(x, mask, out=x)
            np.bitwise_xor(x, x >> shift, out=x)
    return x


def positions(seed: int, rows: np.ndarray, groups: np.ndarray, index: np.ndarray, length: int) -> np.ndarray:
    """Column offsets within their group of kept elements (rows, groups, index); arrays broadcast against each
    other, every group `length` columns long. Returns uint32 offsets in [0, length) of the broadcast shape.
    Keys depend on (row, group) only, so callers pass rows/groups shaped to broadcast over index: the hash
    then runs once per group, not once per element."""
    round_keys, rot = group_keys(seed, rows, groups)
    return place(index, round_keys, rot, length)


def place(index, round_keys, rot, length: int, permute=None) -> np.ndarray:
    """positions() from the keys: permute (default: the spec's rounds, _permute(x, round_keys, w)) on w bits,
    cycle-walked into [0, length), then rotated by rot. `permute` exists so a candidate rule
    (benchmarks/mask_rules.py) reuses the walk and rotation as they are."""
    permute = permute or _permute
    w = width_for(length)
    x = permute(np.asarray(index, dtype=U32), round_keys, w)
    if x.shape != rot.shape:
        x = np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, rot.shape)))  # own, writable
    todo = np.nonzero(x >= length) if length & (length - 1) else (np.zeros(0, np.intp),)  # 2**w == length: no walk
    while todo[0].size:  # cycle-walking: at most a few steps since 2**w < 2*length
        v = permute(x[todo], [np.broadcast_to(k, x.shape)[todo] for k in round_keys], w)
        x[todo] = v
        todo = tuple(t[v >= length] for t in todo)
    # x < length and rot % length < length <= 2**31: the sum fits uint32
    x += rot % U32(length)
    np.minimum(x, x - U32(length), out=x)  # x < 2*length: x - length wraps above x exactly when x < length
    return x


def mask_columns(seed: int, rows: int, cols: int, group_size: int, alpha: int, *, row_stride: int = 0) -> np.ndarray:
    """Kept columns of every row, in kept order (SPEC.md): int64 array [rows, kept_per_row]. With
    row_stride=cols, r * cols is added to row r: flat indices into the row-major matrix."""
    if group_size % alpha or group_size <= 0:
        raise ValueError(f"group_size {group_size} must be a positive multiple of alpha {alpha}")
    k = accel.kernels()
    if k is not None:
        return k.mask_columns(seed, rows, cols, group_size, alpha, row_stride)
    full, keep, tail, keep_tail = group_layout(cols, group_size, alpha)
    per_row = full * keep + keep_tail
    out = np.empty((rows, per_row), np.int64)
    r = np.arange(rows, dtype=U32)[:, None, None]
    if full and keep:
        g = np.arange(full, dtype=U32)[None, :, None]
        pos = positions(seed, r, g, np.arange(keep, dtype=U32), group_size)  # [rows, full, keep]
        start = (np.arange(rows, dtype=np.int64)[:, None, None] * row_stride
                 + np.arange(full, dtype=np.int64)[None, :, None] * group_size)
        if not keep_tail:  # the common case: no copy into `out`
            return np.add(pos, start, dtype=np.int64).reshape(rows, per_row)
        out[:, : full * keep] = (pos + start).reshape(rows, full * keep)
    if keep_tail:
        g = np.full((1, 1, 1), full, U32)
        pos = positions(seed, r, g, np.arange(keep_tail, dtype=U32), tail)  # [rows, 1, keep_tail]
        start = np.arange(rows, dtype=np.int64)[:, None] * row_stride + full * group_size
        out[:, full * keep:] = pos.reshape(rows, keep_tail) + start
    return out
