"""One Triton kernel for every product with a compressed delta:

- delta only:           out[b] = x[b] · ΔŴᵀ                      (HAS_BASE=False)
- fused base + delta:   out[b] = x[b] · Wᵀ + bias + x[b] · ΔŴᵀ   (HAS_BASE=True, batch <= FUSED_MAX_BATCH)
- grouped multi-delta:  out[t] (+)= x[t] · ΔŴ_{index[t]}ᵀ        (SEGMENTS=True, SGMV)

A program owns BLOCK_R output rows and BLOCK_B tokens that share one delta: the tokens of one batch (single
delta) or one tile of tokens sorted by delta (`segments.DeltaSegments`).

Seeded tiles are BLOCK_R x GPC (row, group) pairs, one per thread: a thread computes its pair's keys (5
fmix32) once per step, then walks the pair's kept elements in chunks of KP (its registers) and multiplies
each by x of every token of the tile ([tokens, kept, pairs]). No key is computed twice and no kept column
or code is computed once per token (tests/kernels/aot_check.py: 2.0 warp-instructions per kept element at
one token, 3.7 for the previous kernel).

Fused: one loop walks W in BLOCK_C column chunks (the bytes that bound the kernel; tl.dot for 2-16 tokens);
every DSTEP chunks it runs one seeded step, so one warp's integer work overlaps other warps' W loads.
csr_parts has no column order across its parts, so its loop follows the base loop.

With more than one token per tile, x is gathered from xᵀ [cols, tokens] (sorted by delta for SGMV): the
tokens of one kept column are adjacent in memory.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .triton_common import (INTERPRETED, KIND_FIELD, NF, colmap_fields, csr_cols, csr_fields, csr_segment, device,
                            mapped_column, row_codes, row_hash, seeded_fields, shard_fields, unpack, unpack_in_row)
from .triton_seeded import pair_columns, pair_keys

FUSED_MAX_BATCH = 16  # tokens one fused launch serves (one batch tile); above: cuBLAS base + delta kernel
DELTA_CHUNK = 16  # tokens per delta-only launch
_ENV = {k: os.environ.get(k) for k in ("DDQ_BLOCK_R", "DDQ_NUM_WARPS", "DDQ_FUSED_BLOCK_R", "DDQ_FUSED_BLOCK_C",
                                        "DDQ_FUSED_NUM_WARPS", "DDQ_CSR_BLOCK_E")}  # tile overrides (benchmark sweeps)
CSR_BLOCK_E = int(_ENV["DDQ_CSR_BLOCK_E"] or 32)


def _pairs(block_r: int, num_warps: int, groups: int) -> int:
    """Groups per seeded step: BLOCK_R x GPC pairs = one per thread (the interpreter: every group at once)."""
    return groups if INTERPRETED else max(1, min(groups, 32 * num_warps // block_r))


def kept_chunk(block_b: int, consts: dict) -> int:
    """Kept elements per thread and pass (KP): [tokens, KP] gathered values per thread stay near 16."""
    return max(1, min(consts.get("KP", 1), 16 // block_b))


def delta_tiles(block_b: int, groups: int) -> tuple[int, int, int]:
    """(BLOCK_R, num_warps, seeded groups per step) of the seeded delta-only and SGMV launches: 8 rows x 4
    warps (measured best on an H100 for the previous kernel at 1-4 tokens, benchmarks/results/kernels-h100.md)
    and 16 groups: 128 (row, group) pairs, one per thread."""
    br, nw = 8, 4
    br, nw = int(_ENV["DDQ_BLOCK_R"] or (16 if INTERPRETED else br)), int(_ENV["DDQ_NUM_WARPS"] or nw)
    return br, nw, _pairs(br, nw, groups)


def csr_tiles(block_b: int) -> tuple[int, int]:
    """(BLOCK_R, num_warps) of csr_parts: 8 x 4 up to 4 tokens, 2 x 2 above (measured best on an H100)."""
    br, nw = (8, 4) if block_b <= 4 else (2, 2)
    return int(_ENV["DDQ_BLOCK_R"] or (16 if INTERPRETED else br)), int(_ENV["DDQ_NUM_WARPS"] or nw)


def fused_tiles(block_b: int, consts: dict) -> tuple[int, int, int, int, int]:
    """(BLOCK_R, BLOCK_C, num_warps, seeded groups per step, column chunks per seeded step) of the fused
    launch, not tuned on a GPU yet: W in 8 x 256 chunks for one token (16 fp16 per thread and chunk), 16 x 128
    feeding tl.dot for 2-16 tokens; the seeded delta as one pair per thread every GPC * h_g / BLOCK_C chunks."""
    br, bc, nw = (8, 256, 4) if block_b == 1 else (16, 128, 4)
    br = int(_ENV["DDQ_FUSED_BLOCK_R"] or (16 if INTERPRETED else br))
    bc = int(_ENV["DDQ_FUSED_BLOCK_C"] or bc)
    nw = int(_ENV["DDQ_FUSED_NUM_WARPS"] or nw)
    if consts.get("G") is None:  # no seeded delta (csr_parts: its loop follows the base loop)
        return br, bc, nw, 1, 1
    gpc = _pairs(br, nw, consts["GROUPS"])
    return br, bc, nw, gpc, max(1, gpc * consts["G"] // bc)


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
def _seeded_setup(tp, rp, pmask, cols, active, SEGMENTS: tl.constexpr, SHARD: tl.constexpr, COLMAP: tl.constexpr,
                  SEARCH: tl.constexpr):
    """(state for _seeded_step, group count (0 for another layout's tile), scale) of one seeded delta (or
    column class) for the pairs of rows rp: its fields, the pairs' row hashes and code pointers."""
    codes, seed, scale, zero, bits, G, keep, full, tail, keep_tail, w_full, w_tail, per_row = seeded_fields(tp)
    row0, g0, col0 = shard_fields(tp, SHARD)
    cmap, has_map, n_comp, steps, dcols = colmap_fields(tp, cols, COLMAP, SEARCH)
    ngroups = full + (tail > 0).to(tl.int32)
    if SEGMENTS:
        ngroups = tl.where(active, ngroups, 0)
    h1 = row_hash(seed, rp + row0)
    rowptr, rowsh = row_codes(codes, rp, per_row, bits)
    return (rowptr, rowsh, bits, zero, h1, g0, col0, dcols, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups,
            cmap, has_map, n_comp, steps), ngroups, scale


@device
def _seeded_step(acc, cls, pmask, g, il, gbase, bok, g_sc, KP: tl.constexpr, WALK: tl.constexpr, XT: tl.constexpr,
                 CLIP: tl.constexpr, COLMAP: tl.constexpr, SEARCH: tl.constexpr, BYTE: tl.constexpr):
    """acc [BLOCK_B, P] += the products of the pairs (h1, g) of a seeded delta (cls: _seeded_setup) for every
    token of the tile (gbase, bok); a column class (COLMAP bytes per list element) reads x at its mapped
    columns (mapped_column; SEARCH: some class of the launch is a complement)."""
    rowptr, rowsh, bits, zero, h1, g0, col0, cols, full, keep, tail, keep_tail, w_full, w_tail, G, ngroups, cmap, \
        has_map, n_comp, steps = cls
    L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot = pair_keys(h1, pmask, g, g0, full, keep, tail, keep_tail, w_full,
                                                           w_tail, G, ngroups)
    for i0 in range(0, tl.maximum(keep, keep_tail), KP):
        col, kidx, valid = pair_columns(L, n, msk, sh, a0, m0, a1, m1, a2, m2, rot, g, i0 + il, G, keep, col0, cols,
                                        WALK, CLIP)
        v = (unpack_in_row(rowptr[None, :], rowsh[None, :], kidx, bits, valid, BYTE) - zero).to(tl.float32)
        if COLMAP:
            col = mapped_column(cmap, has_map, n_comp, steps, col, valid, COLMAP, SEARCH)
        if XT:
            col = col * g_sc  # cols * tokens < 2^31 (host)
        xv = tl.load(gbase[:, None, None] + col[None, :, :], mask=valid[None, :, :] & bok[:, None, None],
                     other=0.0).to(tl.float32)
        acc += tl.sum(xv * v[None, :, :], 1)
    return acc


@device
def _csr_product(tp, gbase, g_sc, bok, r, rmask, rows, active, RO64: tl.constexpr, CI_BYTES: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr, SEGMENTS: tl.constexpr,
                 XT: tl.constexpr, BYTE: tl.constexpr):
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
            v = (unpack(vals, idx, pbits, valid, BYTE) + off).to(tl.float32)
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
                  BLOCK_E: tl.constexpr, DSTEP: tl.constexpr, CLIP: tl.constexpr, SHARD: tl.constexpr,
                  COLMAP: tl.constexpr, SEARCH: tl.constexpr, CLASSES: tl.constexpr, BYTE: tl.constexpr):
    """DELTA: 0 none (base only), 1 seeded codes (CLASSES 2: both column classes of a split delta, the slot's
    table rows 2d and 2d + 1; a zero second row for a delta of one class), 2 csr_parts (CLASSES: the table's
    rows per slot). x gathers for the delta read g_ptr +
    token * g_sb + column * g_sc, token = position in the sorted order when XT (xᵀ), else the token id.
    Seeded: BLOCK_R x GPC pairs per step, KP kept per pass, one step every DSTEP iterations."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    bl = tl.arange(0, BLOCK_B)
    if SEGMENTS:  # tile = (delta, first position in the sorted order, token count)
        t3 = tiles_ptr + tl.program_id(1) * 3
        d = tl.load(t3).to(tl.int64)
        pos = tl.load(t3 + 1) + bl
        active = tl.load(tab + d * (NF * CLASSES) + KIND_FIELD) == DELTA  # other layouts' tiles: another launch
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
        tp = tab + d * (NF * CLASSES)  # a slot's CLASSES rows (dispatch.multi_tables)
        if XT:
            gbase = g_ptr + pos.to(tl.int64) * g_sb
        else:
            gbase = g_ptr + tok.to(tl.int64) * g_sb
        n_it = 0
        if DELTA == 1:  # (row, group) pairs of a step, one per thread; CLASSES 2: a split delta's two column
            pp = tl.arange(0, BLOCK_R * GPC)  # classes, table rows tp and tp + NF, in the same steps
            rp = tl.program_id(0) * BLOCK_R + pp // GPC
            gl = pp % GPC
            pmask = rp < rows
            il = tl.arange(0, KP)
            ca, ng_a, scale_a = _seeded_setup(tp, rp, pmask, cols, active, SEGMENTS, SHARD, COLMAP, SEARCH)
            dacc = tl.zeros([BLOCK_B, BLOCK_R * GPC], tl.float32)
            n_it = tl.cdiv(ng_a, GPC) * DSTEP
            if CLASSES == 2:
                cb, ng_b, scale_b = _seeded_setup(tp + NF, rp, pmask, cols, active, SEGMENTS, SHARD, COLMAP,
                                             SEARCH)
                dacc2 = tl.zeros([BLOCK_B, BLOCK_R * GPC], tl.float32)
                n_it = tl.maximum(n_it, tl.cdiv(ng_b, GPC) * DSTEP)
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
                if it % DSTEP == 0:  # fused: one seeded step (GPC groups) per DSTEP column chunks
                    g = (it // DSTEP) * GPC + gl
                    dacc = _seeded_step(dacc, ca, pmask, g, il, gbase, bok, g_sc, KP, WALK, XT, CLIP, COLMAP,
                                        SEARCH, BYTE)
                    if CLASSES == 2:
                        dacc2 = _seeded_step(dacc2, cb, pmask, g, il, gbase, bok, g_sc, KP, WALK, XT, CLIP,
                                             COLMAP, SEARCH, BYTE)
        y = tl.zeros([BLOCK_R, BLOCK_B], tl.float32)
        if DELTA == 1:  # per row: the sum over the step's groups
            y = tl.trans(tl.sum(tl.reshape(dacc, (BLOCK_B, BLOCK_R, GPC)), 2)) * scale_a
            if CLASSES == 2:
                y += tl.trans(tl.sum(tl.reshape(dacc2, (BLOCK_B, BLOCK_R, GPC)), 2)) * scale_b
        if DELTA == 2:
            y = _csr_product(tp, gbase, g_sc, bok, r, rmask, rows, active, RO64, CI_BYTES, BLOCK_R, BLOCK_E, BLOCK_B,
                             SEGMENTS, XT, BYTE)
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
            tiles=None, order=None, accumulate=False, dot=False, block_c=16, gpc=1, dstep=1):
    rows, cols = out.shape[1], x.shape[1]
    g, g_sb, g_sc = (xt, 1, xt.stride(0)) if xt is not None else (x, x.stride(0), 1)
    dummy = tab
    linear_kernel[grid](
        x, x.stride(0), g, g_sb, g_sc, weight if weight is not None else dummy,
        weight.stride(0) if weight is not None else 0, bias if bias is not None else dummy, out, out.stride(0),
        tab, tiles if tiles is not None else dummy, order if order is not None else dummy, x.shape[0], rows, cols,
        HAS_BASE=weight is not None, HAS_BIAS=bias is not None, DELTA=kind, SEGMENTS=tiles is not None,
        ACCUM=accumulate, XT=xt is not None, DOT=dot, BLOCK_B=block_b, BLOCK_R=block_r, BLOCK_C=block_c,
        GPC=gpc, KP=kept_chunk(block_b, consts), WALK=consts.get("WALK", False),
        RO64=consts.get("RO64", False), CI_BYTES=consts.get("CI_BYTES", 2), BLOCK_E=CSR_BLOCK_E,
        DSTEP=dstep, CLIP=consts.get("CLIP", False), SHARD=consts.get("SHARD", False),
        COLMAP=consts.get("COLMAP", 0), SEARCH=consts.get("SEARCH", False), CLASSES=consts.get("CLASSES", 1),
        BYTE=consts.get("BYTE", False), num_warps=num_warps)


def delta_matmul(x, kind, tab, consts, rows) -> torch.Tensor:
    """x [B, in] (B <= a few dozen) -> x · ΔŴᵀ [B, rows] in x.dtype, float32 accumulation."""
    B = x.shape[0]
    out = torch.empty((B, rows), dtype=x.dtype, device=x.device)
    if B == 0 or rows == 0:
        return out.zero_()
    for s in range(0, B, DELTA_CHUNK):
        xs = x[s:s + DELTA_CHUNK]
        bb = 1 << (xs.shape[0] - 1).bit_length()
        br, nw, gpc = _tiles(kind, bb, consts)
        xt = xs.t().contiguous() if xs.shape[0] > 1 else None
        _launch((triton.cdiv(rows, br), 1), xs, out[s:s + DELTA_CHUNK], tab, consts, kind=kind, block_b=bb,
                block_r=br, num_warps=nw, xt=xt, gpc=gpc)
    return out


def _tiles(kind: int, bb: int, consts: dict) -> tuple[int, int, int]:
    return delta_tiles(bb, consts["GROUPS"]) if kind == 1 else (*csr_tiles(bb), 1)


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
            xt=xt, weight=weight, bias=bias, dot=bb > 1, block_c=bc, gpc=gpc, dstep=dstep)
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
        br, nw, gpc = _tiles(kind, bb, consts)
        _launch((triton.cdiv(rows, br), segments.tiles.shape[0]), x, out, tab, consts, kind=kind, block_b=bb,
                block_r=br, num_warps=nw, xt=xt, tiles=segments.tiles, order=segments.order, accumulate=True,
                gpc=gpc)
