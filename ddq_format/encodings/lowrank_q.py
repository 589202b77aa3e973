"""`lowrank_q`: a delta as a sum of rank-1 terms whose vectors are quantized, with a bit width per band of
singular vectors (Delta-CoMe / DeltaMix mixed precision; SPEC.md §9.6).

Params: `bands` = [[r_0, k_0], [r_1, k_1], ...] (r_b >= 1 vectors at k_b bits, 1 <= k_b <= 8), `group_size` g.
Band b holds r_b left vectors u (length rows) and r_b right vectors v (length cols); the delta is the sum over
every band and vector of u v^T. Vector order: band 0's u_0..u_{r-1}, then its v_0..v_{r-1}, then band 1, ...
Each vector is cut into groups of g consecutive elements (the last may be shorter); a group has a binary16
scale and a k_b-bit zero, and its element with code q decodes to float32(scale) * float32(q - zero).

Buffers: `codes` (U8): per band, the codes of its vectors in vector order as one PACKED stream of k_b-bit
codes (SPEC.md §7), the bands' streams back to back (each padded to a whole byte); `scales` (F16) and
`zeros` (U8): one per group, groups in vector order. Decoding sums float32 outer products in binary32 or
wider in any order, so decodes agree to binary32 rounding, not bit for bit (as `lowrank`).
"""
from __future__ import annotations

import math

import numpy as np

from .. import bitpack
from ..spec import ENC_LOWRANK_Q, MAX_DIM
from . import Encoded
from ._common import buffer, matrix_shape, param, view

ID = ENC_LOWRANK_Q
ROLES = {"codes": "values", "scales": "values", "zeros": "values"}  # "scalars" is the params (accounting)

MAX_BANDS = 64


def n_groups(length: int, group_size: int) -> int:
    return -(-length // group_size) if length else 0


def layout(shape, bands, group_size):
    """(code bytes per band, total groups): the sizes every buffer must have."""
    rows, cols = shape
    per_vec = n_groups(rows, group_size) + n_groups(cols, group_size)
    code_bytes = [bitpack.packed_nbytes(r * (rows + cols), k) for r, k in bands]
    return code_bytes, sum(r for r, _ in bands) * per_vec


def quantize_groups(x: np.ndarray, bits: int, group_size: int):
    """Asymmetric min-max codes of one vector per group (GPTQ's grid): (codes uint8, scales f16, zeros u8)."""
    x = np.asarray(x, np.float32)
    n = x.size
    g = n_groups(n, group_size)
    pad = np.zeros(g * group_size, np.float32)
    pad[:n] = x
    blocks = pad.reshape(g, group_size)
    valid = (np.arange(g * group_size) < n).reshape(g, group_size)
    lo = np.minimum(np.where(valid, blocks, np.inf).min(1), 0)
    hi = np.maximum(np.where(valid, blocks, -np.inf).max(1), 0)
    top = (1 << bits) - 1
    scale = ((hi - lo) / top).astype(np.float16)
    s32 = scale.astype(np.float32)
    safe = np.where(s32 > 0, s32, 1)
    zero = np.where(s32 > 0, np.clip(np.rint(-lo / safe), 0, top), 0).astype(np.uint8)
    q = np.clip(np.rint(blocks / safe[:, None]) + zero[:, None], 0, top).astype(np.uint8)
    return q.reshape(-1)[:n], scale, zero


def dequantize_groups(q, scale, zero, group_size):
    idx = np.arange(q.size) // group_size
    return scale.astype(np.float32)[idx] * (q.astype(np.float32) - zero.astype(np.float32)[idx])


def encode(shape, bands_vectors, *, group_size: int) -> Encoded:
    """bands_vectors: list of (bits, codes_u [r, rows], scales_u [r, G_rows], zeros_u, codes_v [r, cols],
    scales_v [r, G_cols], zeros_v) per band: codes already chosen (by a GPTQ pass or round to nearest)."""
    codes, scales, zeros, bands = [], [], [], []
    for bits, qu, su, zu, qv, sv, zv in bands_vectors:
        r = qu.shape[0]
        if r == 0:
            continue
        bands.append([int(r), int(bits)])
        codes.append(bitpack.pack(np.concatenate([np.asarray(qu, np.uint8).reshape(-1),
                                                  np.asarray(qv, np.uint8).reshape(-1)]), bits))
        scales += [np.asarray(su, np.float16).reshape(r, -1), np.asarray(sv, np.float16).reshape(r, -1)]
        zeros += [np.asarray(zu, np.uint8).reshape(r, -1), np.asarray(zv, np.uint8).reshape(r, -1)]
    # groups in vector order: a band's u vectors' groups, then its v vectors' groups
    sc = np.concatenate([s.reshape(-1) for s in scales]) if scales else np.zeros(0, np.float16)
    zr = np.concatenate([z.reshape(-1) for z in zeros]) if zeros else np.zeros(0, np.uint8)
    params = {"bands": bands, "group_size": int(group_size)}
    return Encoded(ENC_LOWRANK_Q, params, {
        "codes": ("U8", np.concatenate(codes) if codes else np.zeros(0, np.uint8)),
        "scales": ("F16", np.ascontiguousarray(sc, "<f2").view(np.uint8)),
        "zeros": ("U8", np.ascontiguousarray(zr)),
    })


def check(entry, ctx):
    rows, cols = matrix_shape(entry, ctx)
    bands = entry.get("params", {}).get("bands")
    if (not isinstance(bands, list) or len(bands) > MAX_BANDS
            or not all(isinstance(b, list) and len(b) == 2 and all(type(x) is int for x in b) for b in bands)):
        raise ctx.fail(f"must be a list of at most {MAX_BANDS} [rank, bits] integer pairs", "params.bands")
    if any(r < 1 or not 1 <= k <= 8 for r, k in bands):
        raise ctx.fail("every band needs rank >= 1 and bits in 1..8", "params.bands")
    if sum(r for r, _ in bands) > min(rows, cols):
        raise ctx.fail(f"total rank {sum(r for r, _ in bands)} exceeds min(rows, cols) = {min(rows, cols)}",
                       "params.bands")
    g = param(entry, "group_size", ctx, int, 1, MAX_DIM)
    code_bytes, groups = layout((rows, cols), bands, g)
    buffer(entry, "codes", ctx, ("U8",), sum(code_bytes))
    buffer(entry, "scales", ctx, ("F16",), 2 * groups)
    buffer(entry, "zeros", ctx, ("U8",), groups)


def vectors(entry, bufs):
    """Yield (bits, U [rows, r], V [r, cols]) per band, dequantized (float32)."""
    rows, cols = entry["shape"]
    p = entry["params"]
    g = p["group_size"]
    code_bytes, _ = layout((rows, cols), p["bands"], g)
    raw = np.asarray(bufs["codes"], np.uint8).reshape(-1)
    scales = view(bufs["scales"], "F16")
    zeros = np.asarray(bufs["zeros"], np.uint8).reshape(-1)
    gr, gc = n_groups(rows, g), n_groups(cols, g)
    off, goff = 0, 0
    for (r, k), nb in zip(p["bands"], code_bytes):
        q = bitpack.unpack(raw[off:off + nb], k, r * (rows + cols))
        off += nb
        if int(zeros[goff:goff + r * (gr + gc)].max(initial=0)) >= 1 << k:
            from ..errors import EncodingError
            raise EncodingError(f"a zero point exceeds 2^{k} - 1", tensor=entry.get("name"), field="buffers.zeros")
        u = np.empty((rows, r), np.float32)
        v = np.empty((r, cols), np.float32)
        for i in range(r):
            s, z = scales[goff:goff + gr], zeros[goff:goff + gr]
            u[:, i] = dequantize_groups(q[i * rows:(i + 1) * rows], s, z, g)
            goff += gr
        base = r * rows
        for i in range(r):
            s, z = scales[goff:goff + gc], zeros[goff:goff + gc]
            v[i] = dequantize_groups(q[base + i * cols: base + (i + 1) * cols], s, z, g)
            goff += gc
        yield k, u, v


def factors(entry, bufs) -> tuple[np.ndarray, np.ndarray]:
    """(U [rows, r], V [r, cols]) float32, every band's vectors dequantized: the delta is U @ V."""
    rows, cols = entry["shape"]
    us, vs = zip(*[(u, v) for _, u, v in vectors(entry, bufs)]) if entry["params"]["bands"] else ((), ())
    return (np.concatenate(us, 1) if us else np.zeros((rows, 0), np.float32),
            np.concatenate(vs, 0) if vs else np.zeros((0, cols), np.float32))


def decode(entry, bufs) -> np.ndarray:
    rows, cols = entry["shape"]
    out = np.zeros((rows, cols), np.float32)
    for _, u, v in vectors(entry, bufs):
        out += u @ v
    return out


def nominal_ratio(entry) -> float:
    """fp16 bits of the matrix over the code bits (scales and zeros not counted, as the paper's alpha)."""
    rows, cols = entry["shape"]
    bits = sum(r * k for r, k in entry.get("params", {}).get("bands", [])) * (rows + cols)
    return 16 * rows * cols / bits if bits else math.nan
