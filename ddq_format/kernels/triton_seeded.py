"""The seeded mask on the device, both directions, for [rows, groups, elements] tiles.

Forward (kept index i -> column): the matmul kernels walk the kept elements only and gather x there.
Inverse (column -> kept index, or none): the decode kernel builds every output element of a row tile in
registers and writes the row once, coalesced, instead of a zero fill followed by a scatter. The inverse of
P runs the rounds backwards with the multipliers' inverses mod 2^32; cycle-walking inverts by walking P^-1
(the restriction of a permutation to [0, L) by first return is inverted by the first return of its inverse).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import device, group_keys, inv_odd, perm_round, perm_unround


@device
def _fwd(x, a0, m0, a1, m1, a2, m2, msk, sh):
    return perm_round(perm_round(perm_round(x, a0, m0, msk, sh), a1, m1, msk, sh), a2, m2, msk, sh)


@device
def _inv(x, a0, i0, a1, i1, a2, i2, msk, sh):
    return perm_unround(perm_unround(perm_unround(x, a2, i2, msk, sh), a1, i1, msk, sh), a0, i0, msk, sh)


@device
def _any(m):
    return tl.max(tl.reshape(m.to(tl.int32), [m.numel]), 0) > 0


@device
def _walk(x, live, L, a0, m0, a1, m1, a2, m2, msk, sh, INVERSE: tl.constexpr):
    """Cycle-walking (SPEC §9.3.2): apply P (or P^-1) again where the value is still >= L; never needed when
    every group length is a power of two (WALK=False)."""
    need = live & (x >= L)
    while _any(need):
        if INVERSE:
            x = tl.where(need, _inv(x, a0, m0, a1, m1, a2, m2, msk, sh), x)
        else:
            x = tl.where(need, _fwd(x, a0, m0, a1, m1, a2, m2, msk, sh), x)
        need = live & (x >= L)
    return x


@device
def _keys3(h1, g, g0, full, keep, tail, keep_tail, w_full, w_tail, G):
    """Keys of the (row, group) pairs of h1 [R] x g [GPC], as [R, GPC, 1]."""
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = group_keys(h1[:, None], g[None, :], g0, full, keep, tail,
                                                            keep_tail, w_full, w_tail, G)
    return (L[:, :, None], n[:, :, None], msk[:, :, None], sh[:, :, None], a0[:, :, None], m0[:, :, None],
            a1[:, :, None], m1[:, :, None], a2[:, :, None], m2[:, :, None], rot[:, :, None])


@device
def _clip(col, valid, col0, cols, CLIP: tl.constexpr):
    """Shard columns: shifted by the columns cut off the first group, and kept inside [0, cols)."""
    if CLIP:
        col = col - col0
        valid = valid & (col >= 0) & (col < cols)
    return col, valid


@device
def kept_columns(h1, rmask, gs, il, g0, col0, cols, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups,
                 GPC: tl.constexpr, WALK: tl.constexpr, CLIP: tl.constexpr):
    """Columns [R, GPC, KP] (int32) of kept elements il of groups gs..gs+GPC-1, their kept index within
    the row (int32) and validity."""
    g = gs + tl.arange(0, GPC)
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = _keys3(h1, g, g0, full, keep, tail, keep_tail, w_full, w_tail, G)
    valid = rmask[:, None, None] & (g < ngroups)[None, :, None] & (il[None, None, :] < n)
    x = tl.where(valid, il[None, None, :], 0).to(tl.uint32)
    x = _fwd(x, a0, m0, a1, m1, a2, m2, msk, sh)
    if WALK:
        x = _walk(x, valid, L, a0, m0, a1, m1, a2, m2, msk, sh, False)
    pos = x + rot
    pos = tl.where(pos >= L, pos - L, pos)
    g3 = g[None, :, None]
    col, valid = _clip(g3 * G + pos.to(tl.int32), valid, col0, cols, CLIP)
    return col, g3 * keep + il[None, None, :], valid


@device
def pair_keys(h1, pmask, g, g0, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups):
    """Keys of the (row, group) pairs h1 [P] x g [P] as [1, P] rows (dead pairs keep nothing). Pairs run
    along the threads, so each pair's keys are computed by one thread, once per step."""
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = group_keys(h1, g, g0, full, keep, tail, keep_tail, w_full, w_tail,
                                                            G)
    n = tl.where(pmask & (g < ngroups), n, 0)
    return (L[None, :], n[None, :], msk[None, :], sh[None, :], a0[None, :], m0[None, :], a1[None, :], m1[None, :],
            a2[None, :], m2[None, :], rot[None, :])


@device
def pair_columns(L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot, g, il, G, keep, col0, cols, WALK: tl.constexpr,
                 CLIP: tl.constexpr):
    """Forward mask of kept indices il [KC] for the pairs of pair_keys: columns (int32), kept index within
    the row (int32) and validity, each [KC, P]."""
    valid = il[:, None] < n
    if WALK:
        x = tl.where(valid, il[:, None], 0).to(tl.uint32)
        x = _walk(_fwd(x, a0, m0, a1, m1, a2, m2, msk, sh), valid, L, a0, m0, a1, m1, a2, m2, msk, sh, False)
        pos = x + rot
        pos = tl.where(pos >= L, pos - L, pos)
    else:  # every group length a power of two: msk = L - 1 and x + rot < 2L; invalid lanes are masked later
        pos = (_fwd(il[:, None].to(tl.uint32), a0, m0, a1, m1, a2, m2, msk, sh) + rot) & msk
    g2 = g[None, :]
    col, valid = _clip(g2 * G + pos.to(tl.int32), valid, col0, cols, CLIP)
    return col, g2 * keep + il[:, None], valid


@device
def kept_index(h1, pmask, g, jj, g0, col0, cols, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups,
               WALK: tl.constexpr, CLIP: tl.constexpr):
    """Inverse mask for column offsets jj [NQ, 1, LANES] of the (row, group) pairs h1 [P] x g [P]: (in
    range, kept, kept index within the row (int32), column (int32)), each [NQ, P, LANES]. The pairs run
    along the warps and lanes along the columns: every warp owns whole groups, so a pair's keys are computed
    once per warp (tests/kernels/aot_check.py: per-warp keys cut the decode's instructions ~2.5x)."""
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = group_keys(h1, g, g0, full, keep, tail, keep_tail, w_full, w_tail,
                                                            G)
    i0 = inv_odd(m0)[None, :, None]
    i1 = inv_odd(m1)[None, :, None]
    i2 = inv_odd(m2)[None, :, None]
    L = L[None, :, None]
    msk = msk[None, :, None]
    sh = sh[None, :, None]
    a0 = a0[None, :, None]
    a1 = a1[None, :, None]
    a2 = a2[None, :, None]
    j = jj.to(tl.uint32)
    inside = (pmask & (g < ngroups))[None, :, None] & (j < L)
    if WALK:
        y = tl.where(inside, j + L - rot[None, :, None], 0)  # (j - rot) mod L, rot < L
        y = tl.where(y >= L, y - L, y)
    else:  # L a power of two divides 2^32: the wrapped difference masked; lanes outside are masked later
        y = (j - rot[None, :, None]) & msk
    x = _inv(y, a0, i0, a1, i1, a2, i2, msk, sh)
    if WALK:
        x = _walk(x, inside, L, a0, i0, a1, i1, a2, i2, msk, sh, True)
    g3 = g[None, :, None]
    col, inside = _clip(g3 * G + jj, inside, col0, cols, CLIP)
    kept = inside & (x < n[None, :, None].to(tl.uint32))
    return inside, kept, g3 * keep + x.to(tl.int32), col
