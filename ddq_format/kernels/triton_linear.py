"""One Triton kernel family for every product with a compressed delta:

- delta only:           out[b] = x[b] · ΔŴᵀ                      (HAS_BASE=False)
- fused base + delta:   out[b] = x[b] · Wᵀ + bias + x[b] · ΔŴᵀ   (HAS_BASE=True, batch <= FUSED_MAX_BATCH)
- grouped multi-delta:  out[t] (+)= x[t] · ΔŴ_{index[t]}ᵀ        (SEGMENTS=True, SGMV)

A program owns BLOCK_R output rows and BLOCK_B tokens that share one delta: the tokens of one batch
(single delta) or one tile of tokens sorted by delta (`segments.DeltaSegments`). The delta's per-(row,
group) mask keys, kept columns and codes are computed once per tile and reused for all BLOCK_B tokens.

Fused: one loop walks the columns in BLOCK_C chunks; each step loads the W tile (the bytes that bound the
kernel) and the x tile, and, when the group size divides BLOCK_C, regenerates the seeded mask for exactly
the groups of that chunk, so its gathers of x hit the tile just loaded (L1). The integer work of the mask
overlaps the W loads. csr_parts has no column order across its parts, so its loop follows the base loop.

Token-major gathers: with more than one token per tile, x is gathered from xᵀ [cols, tokens] (sorted by
delta for SGMV), so the BLOCK_B values of one kept column are one contiguous 2*BLOCK_B-byte read instead of
BLOCK_B scattered sectors.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .triton_common import (INTERPRETED, KIND_FIELD, NF, device, csr_cols, csr_fields, csr_segment, row_codes, row_hash, seeded_fields,
                            unpack, unpack_in_row)
from .triton_seeded import kept_columns, kept_columns_pairs

FUSED_MAX_BATCH = 16  # tokens one fused launch serves (one batch tile); above: cuBLAS base + delta kernel
DELTA_CHUNK = 16  # tokens per delta-only launch
_ENV = {k: os.environ.get(k) for k in ("DDQ_BLOCK_R", "DDQ_NUM_WARPS", "DDQ_FUSED_BLOCK_R", "DDQ_FUSED_BLOCK_C",
                                        "DDQ_FUSED_NUM_WARPS", "DDQ_CSR_BLOCK_E")}  # tile overrides (benchmark sweeps)
CSR_BLOCK_E = int(_ENV["DDQ_CSR_BLOCK_E"] or 32)


def delta_tiles(block_b: int, kp: int, gpc_max: int, groups: int) -> tuple[int, int, int]:
    """(BLOCK_R, num_warps, groups per step) of the delta-only and SGMV launches.

    One token: 8 rows x 16 groups = 128 (row, group) pairs, one per thread, so no key is computed twice
    (tests/kernels/aot_check.py: ~3x fewer instructions than 8 x 4 pairs spread over the kept elements).
    2-16 tokens: rows and warps as measured on an H100 for the previous kernel (8 x 4 warps up to 4 tokens,
    2 x 2 above, benchmarks/results/kernels-h100.md); groups per step so the [rows, groups, kept, tokens]
    product holds about 4 values per thread (232 registers at 16, 90-130 at 4)."""
    br, nw = (8, 4) if block_b <= 4 else (2, 2)
    br, nw = int(_ENV["DDQ_BLOCK_R"] or br), int(_ENV["DDQ_NUM_WARPS"] or nw)
    if block_b == 1:
        if INTERPRETED:  # registers are free there and each program costs interpreter time: big tiles
            return 16, nw, groups
        return br, nw, max(1, min(groups, 32 * nw // br))
    if INTERPRETED:
        return max(br, 16), nw, gpc_max
    gpc = max(1, min(gpc_max, 4 * 32 * nw // (br * kp * block_b)))
    return br, nw, 1 << (gpc.bit_length() - 1)


def fused_tiles(block_b: int, consts: dict) -> tuple[int, int, int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps, seeded groups per delta step, column chunks per delta step) of the fused
    launch. Not tuned on a GPU yet. One token: W in 8 x 256 chunks (16 fp16 per thread and step), the seeded
    delta as 8 rows x 16 groups = 128 (row, group) pairs every 16 * h_g / 256 chunks (one pair per thread).
    2-16 tokens: 16 x 128 chunks feeding tl.dot, the seeded groups of the same chunk (when h_g divides it)."""
    br, bc, nw = (8, 256, 4) if block_b == 1 else (16, 128, 4)
    br = int(_ENV["DDQ_FUSED_BLOCK_R"] or (16 if INTERPRETED else br))
    bc = int(_ENV["DDQ_FUSED_BLOCK_C"] or bc)
    nw = int(_ENV["DDQ_FUSED_NUM_WARPS"] or nw)
    G = consts.get("G")
    if G is None:  # csr_parts: its loop follows the base loop
        return br, bc, nw, 1, 1
    if block_b == 1:
        gpc = max(1, min(consts["GROUPS"], 32 * nw // br))
        return br, bc, nw, gpc, max(1, gpc * G // bc)
    if G & (G - 1) == 0 and G <= 1024:
        bc = max(bc, G)
        return br, bc, nw, bc // G, 1
    return br, bc, nw, 1, 1


# -- device code ---------------------------------------------------------------------------------------
@device
def _base_step(bacc, x_ptr, sxb, w_ptr, swr, tok, bok, r, rmask, c0, cols, BLOCK_C: tl.constexpr,
               DOT: tl.constexpr, F32: tl.constexpr):
    c = c0 + tl.arange(0, BLOCK_C)
    cm = c < cols
    w = tl.load(w_ptr + r[:, None].to(tl.int64) * swr + c[None, :], mask=rmask[:, None] & cm[None, :], other=0.0)
    xa = tl.load(x_ptr + tok[:, None].to(tl.int64) * sxb + c[None, :], mask=bok[:, None] & cm[None, :], other=0.0)
    if DOT:  # [BLOCK_B, BLOCK_R]
        if F32:  # no TF32 rounding of float32 inputs
            bacc += tl.dot(xa, tl.trans(w), input_precision="ieee")
        else:
            bacc += tl.dot(xa, tl.trans(w))
    else:  # BLOCK_B == 1: [BLOCK_R, BLOCK_C], reduced at the end
        bacc += w.to(tl.float32) * xa.to(tl.float32)
    return bacc


@device
def _seeded_cols(rowptr, rowsh, bits, zero, h1, rmask, g0, il, full, keep, tail, keep_tail, w_full, w_tail, G,
                 ngroups, g_sc, GPC: tl.constexpr, WALK: tl.constexpr, XT: tl.constexpr):
    """Gather offsets into x (column, times the token-major stride under XT), code - z and validity of the
    kept elements il of groups g0..g0+GPC-1: the per-(row, group) work, done once per tile."""
    col, kidx, valid = kept_columns(h1, rmask, g0, il, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups,
                                    GPC, WALK)
    v = (unpack_in_row(rowptr, rowsh, kidx, bits, valid) - zero).to(tl.float32)
    if XT:
        col = col * g_sc  # cols * tokens < 2^31 (host)
    return col, v, valid


@device
def _gather(col, valid, gbase, bok):
    return tl.load(gbase[None, None, None, :] + col[:, :, :, None],
                   mask=valid[:, :, :, None] & bok[None, None, None, :], other=0.0).to(tl.float32)


@device
def _seeded_step(dacc, rowptr, rowsh, bits, zero, h1, rmask, g0, il, full, keep, tail, keep_tail, w_full,
                 w_tail, G, ngroups, gbase, g_sc, bok, GPC: tl.constexpr, KP: tl.constexpr, WALK: tl.constexpr,
                 XT: tl.constexpr):
    """dacc [R, GPC, KP, BLOCK_B] += the products of groups g0..g0+GPC-1 for every token of the tile."""
    for i0 in range(0, tl.maximum(keep, keep_tail), KP):  # one pass unless a group keeps more than KP
        col, v, valid = _seeded_cols(rowptr, rowsh, bits, zero, h1, rmask, g0, i0 + il, full, keep, tail,
                                     keep_tail, w_full, w_tail, G, ngroups, g_sc, GPC, WALK, XT)
        dacc += _gather(col, valid, gbase, bok) * v[:, :, :, None]
    return dacc


@device
def _seeded_pairs_step(pacc, rowptr, rowsh, bits, zero, h1, pmask, g, il, full, keep, tail, keep_tail, w_full,
                       w_tail, G, ngroups, gone, g_sc, KP: tl.constexpr, WALK: tl.constexpr, XT: tl.constexpr):
    """One token (gone: its x row, or its xᵀ column): pacc [P] += the products of the pairs' groups."""
    for i0 in range(0, tl.maximum(keep, keep_tail), KP):  # one pass unless a group keeps more than KP
        col, kidx, valid = kept_columns_pairs(h1, pmask, g, i0 + il, full, keep, tail, keep_tail, w_full, w_tail,
                                              G, ngroups, WALK)
        v = (unpack_in_row(rowptr[None, :], rowsh[None, :], kidx, bits, valid) - zero).to(tl.float32)
        if XT:
            col = col * g_sc
        xv = tl.load(gone + col, mask=valid, other=0.0).to(tl.float32)
        pacc += tl.sum(xv * v, 0)
    return pacc


@device
def _tokens4(g_ptr, g_sb, b0, c: tl.constexpr, TB: tl.constexpr, B):
    pos = b0 + c * TB + tl.arange(0, TB)
    return g_ptr + pos.to(tl.int64) * g_sb, pos < B


@device
def _seeded_step4(d0, d1, d2, d3, rowptr, rowsh, bits, zero, h1, rmask, g0, il, full, keep, tail, keep_tail,
                  w_full, w_tail, G, ngroups, g_ptr, g_sb, g_sc, b0, B, GPC: tl.constexpr, WALK: tl.constexpr,
                  XT: tl.constexpr, TB: tl.constexpr):
    """The fused 16-token tile: one mask per step, gathered and reduced for 4 chunks of TB tokens, so the
    [rows, groups, kept, tokens] product never lives in registers whole (KP covers every group's kept)."""
    col, v, valid = _seeded_cols(rowptr, rowsh, bits, zero, h1, rmask, g0, il, full, keep, tail, keep_tail,
                                 w_full, w_tail, G, ngroups, g_sc, GPC, WALK, XT)
    v4 = v[:, :, :, None]
    gb, bk = _tokens4(g_ptr, g_sb, b0, 0, TB, B)
    d0 += tl.sum(tl.sum(_gather(col, valid, gb, bk) * v4, 2), 1)
    gb, bk = _tokens4(g_ptr, g_sb, b0, 1, TB, B)
    d1 += tl.sum(tl.sum(_gather(col, valid, gb, bk) * v4, 2), 1)
    gb, bk = _tokens4(g_ptr, g_sb, b0, 2, TB, B)
    d2 += tl.sum(tl.sum(_gather(col, valid, gb, bk) * v4, 2), 1)
    gb, bk = _tokens4(g_ptr, g_sb, b0, 3, TB, B)
    d3 += tl.sum(tl.sum(_gather(col, valid, gb, bk) * v4, 2), 1)
    return d0, d1, d2, d3


@device
def _cat4(d0, d1, d2, d3, BLOCK_R: tl.constexpr, TB: tl.constexpr):
    """[R, TB] x 4 -> [R, 4 * TB], chunk c at columns c*TB.."""
    j = tl.join(tl.join(d0, d1), tl.join(d2, d3))  # [R, TB, 2, 2]: (row, i, c % 2, c // 2)
    return tl.reshape(tl.permute(j, (0, 3, 2, 1)), (BLOCK_R, 4 * TB))


@device
def _csr_product(tp, gbase, g_sc, bok, r, rmask, rows, active, RO64: tl.constexpr, CI_BYTES: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr, SEGMENTS: tl.constexpr,
                 XT: tl.constexpr):
    ro, ci, vals, scale, zero, pbits, m, width, ps, mx = csr_fields(tp, RO64, CI_BYTES)
    if SEGMENTS:
        m = tl.where(active, m, 0)
    ae = tl.arange(0, BLOCK_E)
    acc = tl.zeros([BLOCK_R, BLOCK_E, BLOCK_B], tl.float32)
    for j in range(0, m):
        start, ln = csr_segment(ro, ps, j, r, rmask, rows, RO64)
        off = j * width - zero  # Q_j - z - o_j with o_j = -j * 2^k / m
        for e0 in range(0, tl.load(mx + j), BLOCK_E):  # longest row of part j, precomputed: no reduction
            e = e0 + ae
            valid = rmask[:, None] & (e[None, :] < ln[:, None])
            idx = start[:, None] + e[None, :]
            col = csr_cols(ci, idx, valid, CI_BYTES)
            v = (unpack(vals, idx, pbits, valid) + off).to(tl.float32)
            if XT:
                col = col * g_sc
            xv = tl.load(gbase[None, None, :] + col[:, :, None],
                         mask=valid[:, :, None] & bok[None, None, :], other=0.0).to(tl.float32)
            acc += xv * v[:, :, None]
    return tl.sum(acc, 1) * scale


@triton.jit
def linear_kernel(x_ptr, sxb, g_ptr, g_sb, g_sc, w_ptr, swr, bias_ptr, out_ptr, sob, tab, tiles_ptr, order_ptr,
                  B, rows, cols,
                  HAS_BASE: tl.constexpr, HAS_BIAS: tl.constexpr, DELTA: tl.constexpr, SEGMENTS: tl.constexpr,
                  ACCUM: tl.constexpr, XT: tl.constexpr, DOT: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, GPC: tl.constexpr,
                  KP: tl.constexpr, WALK: tl.constexpr, RO64: tl.constexpr, CI_BYTES: tl.constexpr,
                  BLOCK_E: tl.constexpr, TB: tl.constexpr, DSTEP: tl.constexpr):
    """DELTA: 0 none (base only), 1 seeded codes, 2 csr_parts. x gathers for the delta read g_ptr +
    token * g_sb + column * g_sc, token = position in the sorted order when XT (xᵀ), else the token id.
    TB < BLOCK_B (fused 16-token tiles, not SEGMENTS): the seeded products are reduced per step in 4 token
    chunks of TB. BLOCK_B == 1: the seeded tile is BLOCK_R x GPC (row, group) pairs, one delta step every
    DSTEP column chunks of the base."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    bl = tl.arange(0, BLOCK_B)
    if SEGMENTS:  # tile = (delta, first position in the sorted order, token count)
        t3 = tiles_ptr + tl.program_id(1) * 3
        d = tl.load(t3).to(tl.int64)
        pos = tl.load(t3 + 1) + bl
        active = tl.load(tab + d * NF + KIND_FIELD) == DELTA  # other layouts' tiles: another launch
        bok = bl < tl.where(active, tl.load(t3 + 2), 0)  # no tokens: no gathers, no stores
        tok = tl.load(order_ptr + pos, mask=bok, other=0)
    else:
        d = 0
        pos = tl.program_id(1) * BLOCK_B + bl
        bok = pos < B
        tok = pos
        active = 1  # unused: only SEGMENTS launches mix layouts
    run = True
    if SEGMENTS:
        run = tl.max(bok.to(tl.int32), 0) > 0  # empty tiles and other layouts' tiles do nothing
    if run:
        tp = tab + d * NF
        if XT:
            gbase = g_ptr + pos.to(tl.int64) * g_sb
        else:
            gbase = g_ptr + tok.to(tl.int64) * g_sb
        n_it = 0
        if DELTA == 1:
            codes, seed, scale, zero, bits, G, keep, full, tail, keep_tail, w_full, w_tail, per_row = seeded_fields(tp)
            ngroups = full + (tail > 0).to(tl.int32)
            if SEGMENTS:
                ngroups = tl.where(active, ngroups, 0)
            il = tl.arange(0, KP)
            if BLOCK_B == 1:  # one token: (row, group) pairs along the threads, each pair's keys once
                pp = tl.arange(0, BLOCK_R * GPC)
                rp = tl.program_id(0) * BLOCK_R + pp // GPC
                gl = pp % GPC
                pmask = rp < tl.where(tl.sum(bok.to(tl.int32), 0) > 0, rows, 0)
                h1 = row_hash(seed, rp)
                rowptr, rowsh = row_codes(codes, rp, per_row, bits)
                if XT:
                    gone = g_ptr + tl.sum(pos.to(tl.int64), 0) * g_sb
                else:
                    gone = g_ptr + tl.sum(tok.to(tl.int64), 0) * g_sb
                pacc = tl.zeros([BLOCK_R * GPC], tl.float32)
            else:
                h1 = row_hash(seed, r)
                rowptr, rowsh = row_codes(codes, r, per_row, bits)
                rowptr = rowptr[:, None, None]
                rowsh = rowsh[:, None, None]
            if BLOCK_B == 1:
                pass
            elif TB == BLOCK_B:
                dacc = tl.zeros([BLOCK_R, GPC, KP, BLOCK_B], tl.float32)
            else:
                d0 = tl.zeros([BLOCK_R, TB], tl.float32)
                d1 = tl.zeros([BLOCK_R, TB], tl.float32)
                d2 = tl.zeros([BLOCK_R, TB], tl.float32)
                d3 = tl.zeros([BLOCK_R, TB], tl.float32)
            n_it = tl.cdiv(ngroups, GPC) * DSTEP
        if HAS_BASE:
            n_it = tl.maximum(n_it, tl.cdiv(cols, BLOCK_C))
            if DOT:
                bacc = tl.zeros([BLOCK_B, BLOCK_R], tl.float32)
            else:
                bacc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
        for it in range(0, n_it):
            if HAS_BASE:
                bacc = _base_step(bacc, x_ptr, sxb, w_ptr, swr, tok, bok, r, rmask, it * BLOCK_C, cols, BLOCK_C, DOT,
                                  x_ptr.dtype.element_ty == tl.float32)
            if DELTA == 1:
                if BLOCK_B == 1:
                    if it % DSTEP == 0:  # fused: one delta step (GPC groups) per DSTEP column chunks
                        pacc = _seeded_pairs_step(pacc, rowptr, rowsh, bits, zero, h1, pmask, (it // DSTEP) * GPC + gl,
                                                  il, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups, gone,
                                                  g_sc, KP, WALK, XT)
                elif TB == BLOCK_B:
                    dacc = _seeded_step(dacc, rowptr, rowsh, bits, zero, h1, rmask, it * GPC, il, full, keep, tail,
                                        keep_tail, w_full, w_tail, G, ngroups, gbase, g_sc, bok, GPC, KP, WALK, XT)
                else:
                    d0, d1, d2, d3 = _seeded_step4(d0, d1, d2, d3, rowptr, rowsh, bits, zero, h1, rmask, it * GPC, il,
                                                   full, keep, tail, keep_tail, w_full, w_tail, G, ngroups, g_ptr, g_sb,
                                                   g_sc, tl.program_id(1) * BLOCK_B, B, GPC, WALK, XT, TB)
        y = tl.zeros([BLOCK_R, BLOCK_B], tl.float32)
        if DELTA == 1:
            if BLOCK_B == 1:
                y = tl.sum(tl.reshape(pacc, (BLOCK_R, GPC)), 1)[:, None] * scale
            elif TB == BLOCK_B:
                y = tl.sum(tl.sum(dacc, 2), 1) * scale
            else:
                y = _cat4(d0, d1, d2, d3, BLOCK_R, TB) * scale
        if DELTA == 2:
            y = _csr_product(tp, gbase, g_sc, bok, r, rmask, rows, active, RO64, CI_BYTES, BLOCK_R, BLOCK_E, BLOCK_B,
                             SEGMENTS, XT)
        if HAS_BASE:
            if DOT:
                y += tl.trans(bacc)
            else:
                y += tl.sum(bacc, 1)[:, None]
            if HAS_BIAS:
                y += tl.load(bias_ptr + r, mask=rmask, other=0.0).to(tl.float32)[:, None]
        optr = out_ptr + tok[None, :].to(tl.int64) * sob + r[:, None]
        omask = rmask[:, None] & bok[None, :]
        if ACCUM:
            y += tl.load(optr, mask=omask, other=0.0).to(tl.float32)
        tl.store(optr, y.to(out_ptr.dtype.element_ty), mask=omask)


# -- host side -----------------------------------------------------------------------------------------
def _launch(grid, x, out, tab, consts, *, kind, block_b, block_r, num_warps, xt=None, weight=None, bias=None,
            tiles=None, order=None, accumulate=False, dot=False, block_c=16, gpc=1, tb=None, dstep=1):
    rows, cols = out.shape[1], x.shape[1]
    g, g_sb, g_sc = (xt, 1, xt.stride(0)) if xt is not None else (x, x.stride(0), 1)
    dummy = tab
    linear_kernel[grid](
        x, x.stride(0), g, g_sb, g_sc, weight if weight is not None else dummy,
        weight.stride(0) if weight is not None else 0, bias if bias is not None else dummy, out, out.stride(0),
        tab, tiles if tiles is not None else dummy, order if order is not None else dummy, x.shape[0], rows, cols,
        HAS_BASE=weight is not None, HAS_BIAS=bias is not None, DELTA=kind, SEGMENTS=tiles is not None,
        ACCUM=accumulate, XT=xt is not None, DOT=dot, BLOCK_B=block_b, BLOCK_R=block_r, BLOCK_C=block_c,
        GPC=gpc, KP=consts.get("KP", 1), WALK=consts.get("WALK", False),
        RO64=consts.get("RO64", False), CI_BYTES=consts.get("CI_BYTES", 2), BLOCK_E=CSR_BLOCK_E,
        TB=tb or block_b, DSTEP=dstep, num_warps=num_warps)


def delta_matmul(x, kind, tab, consts, rows) -> torch.Tensor:
    """x [B, in] (B <= a few dozen) -> x · ΔŴᵀ [B, rows] in x.dtype, float32 accumulation."""
    B = x.shape[0]
    out = torch.empty((B, rows), dtype=x.dtype, device=x.device)
    if B == 0 or rows == 0:
        return out.zero_()
    for s in range(0, B, DELTA_CHUNK):
        xs = x[s:s + DELTA_CHUNK]
        bb = 1 << (xs.shape[0] - 1).bit_length()
        br, nw, gpc = delta_tiles(bb, consts.get("KP", 1), consts.get("GPC", 1), consts.get("GROUPS", 1))
        xt = xs.t().contiguous() if xs.shape[0] > 1 else None
        _launch((triton.cdiv(rows, br), 1), xs, out[s:s + DELTA_CHUNK], tab, consts, kind=kind, block_b=bb,
                block_r=br, num_warps=nw, xt=xt, gpc=gpc)
    return out


def _token_chunk(bb: int, kind: int, consts) -> int | None:
    """4-token chunks for the fused 16-token seeded tile, when one pass covers every group's kept elements."""
    return 4 if bb > 1 and kind == 1 and consts["KP"] >= consts["KEEP"] else None


def fused_linear(x, weight, bias, kind, tab, consts) -> torch.Tensor:
    """x [B <= FUSED_MAX_BATCH, in] -> x · Wᵀ + bias + x · ΔŴᵀ in one launch (kind 0: base only)."""
    B = x.shape[0]
    rows = weight.shape[0]
    out = torch.empty((B, rows), dtype=x.dtype, device=x.device)
    if B == 0 or rows == 0:
        return out.zero_()
    bb = 1 if B == 1 else 16
    br, bc, nw, gpc, dstep = fused_tiles(bb, consts if kind == 1 else {})
    xt = x.t().contiguous() if bb > 1 and kind else None
    _launch((triton.cdiv(rows, br), 1), x, out, tab, consts, kind=kind, block_b=bb, block_r=br, num_warps=nw,
            xt=xt, weight=weight, bias=bias, dot=bb > 1, block_c=bc, gpc=gpc, tb=_token_chunk(bb, kind, consts),
            dstep=dstep)
    return out


def multi_matmul(x, out, launches, segments) -> None:
    """out[t] += x[t] · ΔŴ_{delta(t)}ᵀ for every token tile of `segments`; one launch per resident layout
    present (launches: (kind, table, consts)); tiles of other layouts exit at once."""
    B, rows = x.shape[0], out.shape[1]
    if B == 0 or rows == 0 or not launches:
        return
    bb = segments.block_b
    xt = x.index_select(0, segments.order).t().contiguous() if bb > 1 else None
    for kind, tab, consts in launches:
        br, nw, gpc = delta_tiles(bb, consts.get("KP", 1), consts.get("GPC", 1), consts.get("GROUPS", 1))
        _launch((triton.cdiv(rows, br), segments.tiles.shape[0]), x, out, tab, consts, kind=kind, block_b=bb,
                block_r=br, num_warps=nw, xt=xt, tiles=segments.tiles, order=segments.order, accumulate=True,
                gpc=gpc)
