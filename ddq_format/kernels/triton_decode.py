"""Decode to dense on the device.

`seeded_rows`: every output element of a [BLOCK_R, GPC groups] tile is computed in registers (the inverse
mask says whether a column is kept and which code it holds) and the tile is stored once, contiguous along
the row: no zero pass, no scattered 2- or 4-byte stores. `seeded_scatter` (the previous kernel, kept to be
measured against) and `csr_scatter` zero the rows, then scatter the kept values.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import (INTERPRETED, csr_cols, csr_fields, csr_segment, device, row_codes, row_hash, seeded_fields,
                            shard_fields, unpack, unpack_in_row)
from .triton_seeded import kept_columns, kept_index


@device
def _zeroed_rows(out_ptr, rows, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """The program's rows (and mask), zero-filled before the scatter that overwrites some elements."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    c = tl.arange(0, BLOCK_C)
    z = tl.zeros([BLOCK_R, BLOCK_C], out_ptr.dtype.element_ty)
    for c0 in range(0, cols, BLOCK_C):
        cc = c0 + c
        tl.store(out_ptr + r[:, None].to(tl.int64) * cols + cc[None, :], z, mask=rmask[:, None] & (cc < cols)[None, :])
    tl.debug_barrier()  # the zeros land before the values that overwrite some of them
    return r, rmask


@triton.jit
def seeded_rows_decode_kernel(tab, out_ptr, rows, cols, BLOCK_R: tl.constexpr, GPC: tl.constexpr,
                              NQ: tl.constexpr, LANES: tl.constexpr, WALK: tl.constexpr, CLIP: tl.constexpr,
                              SHARD: tl.constexpr, BYTE: tl.constexpr):
    """A program owns BLOCK_R rows; each step covers GPC groups of them as BLOCK_R * GPC (row, group) pairs
    x NQ * LANES columns (one pair per warp when LANES = 32)."""
    p = tl.arange(0, BLOCK_R * GPC)
    r = tl.program_id(0) * BLOCK_R + p // GPC
    gl = p % GPC
    rmask = r < rows
    codes, seed, scale, zero, bits, G, keep, full, tail, keep_tail, w_full, w_tail, per_row = seeded_fields(tab)
    row0, g0, col0 = shard_fields(tab, SHARD)
    ngroups = full + (tail > 0).to(tl.int32)
    h1 = row_hash(seed, r + row0)
    rowptr, rowsh = row_codes(codes, r, per_row, bits)
    rowptr = rowptr[None, :, None]
    rowsh = rowsh[None, :, None]
    orow = (out_ptr + r.to(tl.int64) * cols)[None, :, None]
    jj = tl.arange(0, NQ)[:, None, None] * LANES + tl.arange(0, LANES)[None, None, :]
    for gs in range(0, ngroups, GPC):
        for j0 in range(0, G, NQ * LANES):  # one pass unless a group is wider than NQ * LANES columns
            inside, kept, kidx, col = kept_index(h1, rmask, gs + gl, j0 + jj, g0, col0, cols, full, keep, tail,
                                                 keep_tail, w_full, w_tail, G, ngroups, WALK, CLIP)
            q = unpack_in_row(rowptr, rowsh, kidx, bits, kept, BYTE)
            v = tl.where(kept, scale * (q - zero).to(tl.float32), 0.0)
            tl.store(orow + col, v.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def seeded_scatter_decode_kernel(tab, out_ptr, rows, cols, BLOCK_R: tl.constexpr, GPC: tl.constexpr,
                                 KP: tl.constexpr, BLOCK_C: tl.constexpr, WALK: tl.constexpr, CLIP: tl.constexpr,
                                 SHARD: tl.constexpr, BYTE: tl.constexpr):
    codes, seed, scale, zero, bits, G, keep, full, tail, keep_tail, w_full, w_tail, per_row = seeded_fields(tab)
    row0, g0, col0 = shard_fields(tab, SHARD)
    r, rmask = _zeroed_rows(out_ptr, rows, cols, BLOCK_R, BLOCK_C)
    ngroups = full + (tail > 0).to(tl.int32)
    h1 = row_hash(seed, r + row0)
    il = tl.arange(0, KP)
    orow = (out_ptr + r.to(tl.int64) * cols)[:, None, None]
    rowptr, rowsh = row_codes(codes, r, per_row, bits)
    rowptr = rowptr[:, None, None]
    rowsh = rowsh[:, None, None]
    for gs in range(0, ngroups, GPC):
        for i0 in range(0, tl.maximum(keep, keep_tail), KP):  # one pass unless a group keeps more than KP
            col, kidx, valid = kept_columns(h1, rmask, gs, i0 + il, g0, col0, cols, full, keep, tail, keep_tail,
                                            w_full, w_tail, G, ngroups, GPC, WALK, CLIP)
            q = unpack_in_row(rowptr, rowsh, kidx, bits, valid, BYTE)
            v = scale * (q - zero).to(tl.float32)
            tl.store(orow + col, v.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def csr_scatter_decode_kernel(tab, out_ptr, rows, cols, RO64: tl.constexpr, CI_BYTES: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr,
                              BYTE: tl.constexpr):
    ro, ci, vals, scale, zero, pbits, m, width, ps, mx = csr_fields(tab, RO64, CI_BYTES)
    r, rmask = _zeroed_rows(out_ptr, rows, cols, BLOCK_R, BLOCK_C)
    ae = tl.arange(0, BLOCK_E)
    rowbase = r[:, None].to(tl.int64) * cols
    for j in range(0, m):
        start, ln = csr_segment(ro, ps, j, r, rmask, rows, RO64)
        off = j * width - zero  # Q_j - z - o_j with o_j = -j * 2^k / m
        for e0 in range(0, tl.load(mx + j), BLOCK_E):
            e = e0 + ae
            valid = rmask[:, None] & (e[None, :] < ln[:, None])
            idx = start[:, None] + e[None, :]
            col = csr_cols(ci, idx, valid, CI_BYTES)
            q = unpack(vals, idx, pbits, valid, BYTE)
            v = scale * (q + off).to(tl.float32)
            tl.store(out_ptr + rowbase + col, v.to(out_ptr.dtype.element_ty), mask=valid)


# -- host side -----------------------------------------------------------------------------------------
def seeded_rows(tab, out, consts):
    rows, cols = out.shape
    gp = consts["GP"]
    lanes = min(32, gp)
    pairs = 4 * 32 // lanes  # 4 warps: one pair per thread column, nothing computed twice
    gpc = min(pairs, consts["GROUPS"])
    block_r = 16 if INTERPRETED else pairs // gpc  # the interpreter: fewer programs, less CI time
    seeded_rows_decode_kernel[(triton.cdiv(rows, block_r),)](tab, out, rows, cols, BLOCK_R=block_r, GPC=gpc,
                                                             NQ=gp // lanes, LANES=lanes, WALK=consts["WALK"],
                                                             CLIP=consts["CLIP"], SHARD=consts["SHARD"],
                                                             BYTE=consts["BYTE"], num_warps=4)


def seeded_scatter(tab, out, consts):
    rows, cols = out.shape
    br = 16 if INTERPRETED else 4
    seeded_scatter_decode_kernel[(triton.cdiv(rows, br),)](tab, out, rows, cols, BLOCK_R=br, GPC=consts["GPC"],
                                                          KP=consts["KP"], BLOCK_C=min(1024, consts["BLOCK_COLS"]),
                                                          WALK=consts["WALK"], CLIP=consts["CLIP"],
                                                          SHARD=consts["SHARD"], BYTE=consts["BYTE"])


def csr_scatter(tab, out, consts):
    rows, cols = out.shape
    br = 16 if INTERPRETED else 4
    csr_scatter_decode_kernel[(triton.cdiv(rows, br),)](tab, out, rows, cols, RO64=consts["RO64"],
                                                        CI_BYTES=consts["CI_BYTES"], BLOCK_R=br, BLOCK_E=64,
                                                       BLOCK_C=min(1024, consts["BLOCK_COLS"]), BYTE=consts["BYTE"])


def run(kernel, tab, shape, dtype, device, consts) -> torch.Tensor:
    """Dense [rows, cols] of `dtype` from one table row by one of the decode kernels above."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if out.numel() == 0:
        return out
    kernel(tab, out, consts)
    return out
