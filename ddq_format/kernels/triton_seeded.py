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
    return tl.max(tl.max(tl.max(m.to(tl.int32), 2), 1), 0) > 0


@device
def _keys3(h1, g, full, keep, tail, keep_tail, w_full, w_tail, G):
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = group_keys(h1, g, full, keep, tail, keep_tail, w_full, w_tail, G)
    return (L[:, :, None], n[:, :, None], msk[:, :, None], sh[:, :, None], a0[:, :, None], m0[:, :, None],
            a1[:, :, None], m1[:, :, None], a2[:, :, None], m2[:, :, None], rot[:, :, None])


@device
def kept_columns(h1, rmask, g0, il, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups,
                 GPC: tl.constexpr, WALK: tl.constexpr):
    """Columns [R, GPC, KP] (int32) of kept elements il of groups g0..g0+GPC-1, their kept index within
    the row (int32) and validity."""
    g = g0 + tl.arange(0, GPC)
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = _keys3(h1, g, full, keep, tail, keep_tail, w_full, w_tail, G)
    valid = rmask[:, None, None] & (g < ngroups)[None, :, None] & (il[None, None, :] < n)
    x = tl.where(valid, il[None, None, :], 0).to(tl.uint32)
    x = _fwd(x, a0, m0, a1, m1, a2, m2, msk, sh)
    if WALK:  # cycle-walking; never needed when every group length is a power of two
        need = valid & (x >= L)
        while _any(need):
            x = tl.where(need, _fwd(x, a0, m0, a1, m1, a2, m2, msk, sh), x)
            need = valid & (x >= L)
    pos = x + rot
    pos = tl.where(pos >= L, pos - L, pos)
    g3 = g[None, :, None]
    return g3 * G + pos.to(tl.int32), g3 * keep + il[None, None, :], valid


@device
def kept_index(h1, rmask, g0, jj, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups,
               GPC: tl.constexpr, WALK: tl.constexpr):
    """For column offsets jj [GP] inside groups g0..g0+GPC-1: (in-range [R, GPC, GP], kept [R, GPC, GP],
    kept index within the row (int32), column (int32))."""
    g = g0 + tl.arange(0, GPC)
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = _keys3(h1, g, full, keep, tail, keep_tail, w_full, w_tail, G)
    i0 = inv_odd(m0)
    i1 = inv_odd(m1)
    i2 = inv_odd(m2)
    j = jj[None, None, :].to(tl.uint32)
    inside = rmask[:, None, None] & (g < ngroups)[None, :, None] & (j < L)
    y = tl.where(inside, j + L - rot, 0)  # (j - rot) mod L, rot < L
    y = tl.where(y >= L, y - L, y)
    x = _inv(y, a0, i0, a1, i1, a2, i2, msk, sh)
    if WALK:
        need = inside & (x >= L)
        while _any(need):
            x = tl.where(need, _inv(x, a0, i0, a1, i1, a2, i2, msk, sh), x)
            need = inside & (x >= L)
    kept = inside & (x < n.to(tl.uint32))
    g3 = g[None, :, None]
    return inside, kept, g3 * keep + x.to(tl.int32), g3 * G + jj[None, None, :]
