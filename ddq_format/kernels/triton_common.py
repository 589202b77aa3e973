"""Device helpers shared by the Triton kernels: the seeded mask hash (forward and inverse), bit unpacking,
and the per-delta parameter table.

Every kernel reads its delta's parameters from one int64 table row of NF fields (buffer addresses, scalars,
the float32 scale as its bit pattern; field KIND_FIELD says which resident layout the row describes), so
one kernel serves a single delta and a batch of deltas (tile t uses row tiles[t].delta). The seeded mask is
regenerated with the spec's uint32 hash (seeded_mask.py), bit-exact. Packed codes are read through a
16-bit window so every width 1..8 works.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from ..spec import FMIX_C1, FMIX_C2, GOLDEN, PERM_ROUNDS, SEED_SALT
from . import common

assert PERM_ROUNDS == 3, "the kernels unroll three permutation rounds"

C1 = tl.constexpr(FMIX_C1)
C2 = tl.constexpr(FMIX_C2)
GOLD = tl.constexpr(GOLDEN)
GOLD2 = tl.constexpr(2 * GOLDEN & 0xFFFFFFFF)
GOLD3 = tl.constexpr(3 * GOLDEN & 0xFFFFFFFF)
GOLD4 = tl.constexpr(4 * GOLDEN & 0xFFFFFFFF)
SALT = tl.constexpr(SEED_SALT)
NF = tl.constexpr(common.NF)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def device(fn):
    """Decorator of the kernels' device helpers: triton.jit when compiling; a plain function under the
    interpreter, where a launch already maps triton.language to numpy and every call of a jit helper would
    map it again (about 1 ms each: CI time)."""
    return fn if INTERPRETED else triton.jit(fn)

KIND_FIELD = tl.constexpr(common.KIND_FIELD)
ROW_OFFSET_FIELD = tl.constexpr(common.ROW_OFFSET_FIELD)
GROUP_OFFSET_FIELD = tl.constexpr(common.GROUP_OFFSET_FIELD)
COL_OFFSET_FIELD = tl.constexpr(common.COL_OFFSET_FIELD)
COLMAP_FIELD = tl.constexpr(common.COLMAP_FIELD)
COMPLEMENT_FIELD = tl.constexpr(common.COMPLEMENT_FIELD)
SEARCH_STEPS_FIELD = tl.constexpr(common.SEARCH_STEPS_FIELD)
LOCAL_COLS_FIELD = tl.constexpr(common.LOCAL_COLS_FIELD)

# -- hashing ----------------------------------------------------------------------------------------
@device
def fmix32(x):
    x = x ^ (x >> 16)
    x = x * C1
    x = x ^ (x >> 13)
    x = x * C2
    return x ^ (x >> 16)


@device
def perm_round(x, a, m, msk, sh):
    x = (x + a) & msk
    x = (x * m) & msk
    return x ^ (x >> sh)


@device
def perm_unround(x, a, minv, msk, sh):
    """Inverse of perm_round: x ^ (x >> sh) is its own inverse on w bits because 2*sh >= w."""
    x = x ^ (x >> sh)
    x = (x * minv) & msk
    return (x - a) & msk


@device
def inv_odd(m):
    """Inverse of odd m modulo 2^32 (Newton: each step doubles the correct low bits, 3 -> 48)."""
    v = m
    v = v * (2 - m * v)
    v = v * (2 - m * v)
    v = v * (2 - m * v)
    return v * (2 - m * v)


@device
def row_hash(seed, r):
    """h1 of SPEC §9.3.2 for rows r (uint32)."""
    return fmix32(fmix32(seed ^ SALT) ^ r.to(tl.uint32))


@device
def group_keys(h1, g, g0, full, keep, tail, keep_tail, w_full, w_tail, G):
    """Elementwise over h1 (row hashes) and g (local group indices; the key takes the global index g + g0)
    of one shape: group length L, kept count n, bit mask, shift, the three (add, multiplier) round keys and
    the rotation mod L of each (row, group)."""
    is_tail = g == full
    L = tl.maximum(tl.where(is_tail, tail, G), 1).to(tl.uint32)  # no remainder by 0 in padding lanes
    n = tl.where(is_tail, keep_tail, keep)
    w = tl.where(is_tail, w_tail, w_full).to(tl.uint32)
    msk = (tl.full(w.shape, 1, tl.uint32) << w) - 1
    sh = (w + 1) >> 1
    h2 = fmix32(h1 + (g + g0).to(tl.uint32) * GOLD)
    k0 = fmix32(h2 + GOLD)
    k1 = fmix32(h2 + GOLD2)
    k2 = fmix32(h2 + GOLD3)
    rot = fmix32(h2 + GOLD4) % L
    return L, n, msk, sh, k0 & msk, (k0 >> 8) | 1, k1 & msk, (k1 >> 8) | 1, k2 & msk, (k2 >> 8) | 1, rot


@device
def unpack(base, idx, bits, valid, BYTE: tl.constexpr):
    """Code number idx (int64) of an LSB-first stream of `bits`-bit codes, as int32 (BYTE: as unpack_in_row)."""
    bit = idx * bits
    byte = bit >> 3
    sh = (bit & 7).to(tl.int32)
    lo = tl.load(base + byte, mask=valid, other=0).to(tl.int32)
    if BYTE:
        return (lo >> sh) & ((1 << bits) - 1)
    hi = tl.load(base + byte + 1, mask=valid & (sh + bits > 8), other=0).to(tl.int32)
    return ((lo | (hi << 8)) >> sh) & ((1 << bits) - 1)


@device
def row_codes(codes, r, per_row, bits):
    """Byte pointer and bit shift of the first code of rows r (64-bit math once per row, so the per-element
    offsets below stay 32-bit; the host keeps per_row * bits < 2^31)."""
    bit = r.to(tl.int64) * per_row * bits
    return codes + (bit >> 3), (bit & 7).to(tl.int32)


@device
def unpack_in_row(rowptr, rowsh, e, bits, valid, BYTE: tl.constexpr):
    """Code e (int32) of the row whose codes start at (rowptr, rowsh), as int32. BYTE: bits divides 8, so
    every code lies in one byte (rows start at multiples of bits) and the second load is not emitted: a
    predicated-off load still issues, and at k = 4 it cost a fifth of the product's instructions."""
    b = rowsh + e * bits
    p = rowptr + (b >> 3)
    sh = b & 7
    lo = tl.load(p, mask=valid, other=0).to(tl.int32)
    if BYTE:
        return (lo >> sh) & ((1 << bits) - 1)
    hi = tl.load(p + 1, mask=valid & (sh + bits > 8), other=0).to(tl.int32)
    return ((lo | (hi << 8)) >> sh) & ((1 << bits) - 1)


# -- table rows ---------------------------------------------------------------------------------------
@device
def seeded_fields(tp):
    codes = tl.load(tp + 0).to(tl.pointer_type(tl.uint8))
    seed = tl.load(tp + 1).to(tl.uint32)
    scale = tl.load(tp + 2).to(tl.int32).to(tl.float32, bitcast=True)
    zero = tl.load(tp + 3).to(tl.int32)
    bits = tl.load(tp + 4).to(tl.int32)
    G = tl.load(tp + 5).to(tl.int32)
    keep = tl.load(tp + 6).to(tl.int32)
    full = tl.load(tp + 7).to(tl.int32)
    tail = tl.load(tp + 8).to(tl.int32)
    keep_tail = tl.load(tp + 9).to(tl.int32)
    w_full = tl.load(tp + 10).to(tl.int32)
    w_tail = tl.load(tp + 11).to(tl.int32)
    per_row = tl.load(tp + 12)
    return codes, seed, scale, zero, bits, G, keep, full, tail, keep_tail, w_full, w_tail, per_row


@device
def shard_fields(tp, SHARD: tl.constexpr):
    """A seeded shard's global row of local row 0, global group of local group 0, and the columns of its
    first group before its first column; constant zeros when no delta of the launch is a shard (no
    registers spent on them)."""
    row0 = 0
    g0 = 0
    col0 = 0
    if SHARD:
        row0 = tl.load(tp + ROW_OFFSET_FIELD).to(tl.int32)
        g0 = tl.load(tp + GROUP_OFFSET_FIELD).to(tl.int32)
        col0 = tl.load(tp + COL_OFFSET_FIELD).to(tl.int32)
    return row0, g0, col0


@device
def colmap_fields(tp, cols, COLMAP: tl.constexpr, SEARCH: tl.constexpr):
    """A split delta's column class: its column list (a pointer to COLMAP-byte elements), whether this row
    has one, the list's length when the class is its complement (0: the list holds its columns) and the
    search's steps, and its own width (else the launch's `cols`); constants when no delta of the launch is
    a class (COLMAP 0) or none a complement (SEARCH off)."""
    cmap = tp.to(tl.pointer_type(tl.int32))  # never read without a list
    has_map = cols < 0
    dcols = cols
    n_comp = cols * 0
    steps = cols * 0
    if COLMAP:
        addr = tl.load(tp + COLMAP_FIELD)
        has_map = addr != 0
        if COLMAP == 2:
            cmap = addr.to(tl.pointer_type(tl.int16))
        else:
            cmap = addr.to(tl.pointer_type(tl.int32))
        dcols = tl.where(has_map, tl.load(tp + LOCAL_COLS_FIELD).to(tl.int32), cols)
        if SEARCH:
            n_comp = tl.load(tp + COMPLEMENT_FIELD).to(tl.int32)
            steps = tl.load(tp + SEARCH_STEPS_FIELD).to(tl.int32)
    return cmap, has_map, n_comp, steps, dcols


@device
def mapped_column(cmap, has_map, n_comp, steps, col, valid, COLMAP: tl.constexpr, SEARCH: tl.constexpr):
    """The input column of local columns `col` of a column class (colmap_fields; unchanged without a list):
    list[col], or for a complement class col + #{i : list[i] - i <= col}: a branchless binary search over
    the ascending list[i] - i in `steps` (2^steps > n) dependent loads of the (cached) list."""
    if SEARCH:
        if n_comp > 0:
            pos = col * 0
            top = 1 << (steps - 1)
            for t in range(0, steps):
                cand = pos + (top >> t)
                ok = (cand <= n_comp) & valid
                g = tl.load(cmap + (cand - 1), mask=ok, other=0).to(tl.int32)
                if COLMAP == 2:
                    g = g & 0xFFFF
                pos = tl.where(ok & (g - (cand - 1) <= col), cand, pos)
            m = col + pos
        else:
            m = _direct_column(cmap, has_map, col, valid, COLMAP)
    else:
        m = _direct_column(cmap, has_map, col, valid, COLMAP)
    return m


@device
def _direct_column(cmap, has_map, col, valid, COLMAP: tl.constexpr):
    # the mask is a where, not valid & has_map: the interpreter mistypes (tensor & scalar) masks
    m = tl.load(cmap + col, mask=tl.where(has_map, valid, False), other=col).to(tl.int32)
    if COLMAP == 2:  # U16 lists travel as int16 bits (and every column of such a launch is below 2^16)
        m = m & 0xFFFF
    return m


@device
def csr_fields(tp, RO64: tl.constexpr, CI_BYTES: tl.constexpr):
    if RO64:
        ro = tl.load(tp + 0).to(tl.pointer_type(tl.int64))
    else:
        ro = tl.load(tp + 0).to(tl.pointer_type(tl.int32))
    if CI_BYTES == 1:
        ci = tl.load(tp + 1).to(tl.pointer_type(tl.uint8))
    elif CI_BYTES == 2:
        ci = tl.load(tp + 1).to(tl.pointer_type(tl.int16))
    else:
        ci = tl.load(tp + 1).to(tl.pointer_type(tl.int32))
    vals = tl.load(tp + 2).to(tl.pointer_type(tl.uint8))
    scale = tl.load(tp + 3).to(tl.int32).to(tl.float32, bitcast=True)
    zero = tl.load(tp + 4).to(tl.int32)
    pbits = tl.load(tp + 5).to(tl.int32)
    m = tl.load(tp + 6).to(tl.int32)
    width = tl.load(tp + 7).to(tl.int32)
    ps = tl.load(tp + 8).to(tl.pointer_type(tl.int64))
    mx = tl.load(tp + 9).to(tl.pointer_type(tl.int64))
    return ro, ci, vals, scale, zero, pbits, m, width, ps, mx


@device
def csr_segment(ro, ps, j, r, rmask, rows, RO64: tl.constexpr):
    """(first element, length) of row r in part j."""
    base = ro + j * (rows + 1) + r
    st = tl.load(base, mask=rmask, other=0).to(tl.int64)
    en = tl.load(base + 1, mask=rmask, other=0).to(tl.int64)
    if not RO64:  # U32 offsets travel as int32 bit patterns
        st = st & 0xFFFFFFFF
        en = en & 0xFFFFFFFF
    return tl.load(ps + j) + st, en - st


@device
def csr_cols(ci, idx, valid, CI_BYTES: tl.constexpr):
    c = tl.load(ci + idx, mask=valid, other=0).to(tl.int32)
    if CI_BYTES == 2:
        c = c & 0xFFFF
    return c
