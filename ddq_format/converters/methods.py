"""Per-tensor compression of one linear delta: DeltaDQ and the baselines, each to its encoding.

compress(delta, opts, seed, group_size) -> Encoded is what the file stores; reconstruct(...) -> the dense
float32 delta a loader would decode, computed without building the buffers (the group-size search uses it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import accel, encodings
from ..encodings import Encoded, csr_f16, lowrank, sign_scale
from ..spec import ENC_CSR_PARTS
from .csr_rows import encode_rows
from ..quantize import dequantize, fit, fit_range, quantize
from .dropout import groupwise_dropout_blocked, rescale_factors

METHODS = ("deltadq", "dare", "magnitude", "bitdelta", "lowrank")
ENCODINGS = encodings.deltadq_encodings()  # csr_parts, seeded, seeded_rans
# --alpha when not given: DeltaDQ's 16x recipe (with k=4, m=1), DARE/magnitude drop 75%, BitDelta no dropout.
DEFAULT_ALPHA = {"deltadq": 4, "dare": 4, "magnitude": 4, "bitdelta": 1, "lowrank": 1}
DEFAULT_RANK = 16
ROW_BLOCK = 1 << 22  # elements per block for blocked passes (bounded temporaries)


@dataclass(frozen=True)
class Options:
    method: str = "deltadq"
    alpha: int = 4
    bits: int = 4
    parts: int = 1
    encoding: str = ENC_CSR_PARTS
    rank: int = DEFAULT_RANK

    @property
    def uses_groups(self) -> bool:
        """Methods whose result depends on h_g (the group-size search applies to them)."""
        return self.method == "deltadq" or (self.method == "bitdelta" and self.alpha > 1)

    def nominal_ratio(self) -> float:
        """The paper's accounting: fp16 bits per delta element over stored value bits (indices not counted)."""
        if self.method == "deltadq":
            return 16 * self.alpha / (self.bits - (self.parts.bit_length() - 1))
        if self.method in ("dare", "magnitude"):
            return float(self.alpha)
        if self.method == "bitdelta":
            return 16.0 * self.alpha
        return float("nan")  # lowrank: depends on the shape; only the true ratio is meaningful


def tensor_group_size(group_size: int, cols: int, alpha: int) -> int | None:
    """h_g for a tensor with `cols` columns: the run's h_g, or when the row is shorter, the largest multiple of
    alpha that fits (the row then is one group plus a tail). None when cols < alpha (stored dense instead)."""
    if group_size <= cols:
        return group_size
    g = cols // alpha * alpha
    return g or None


def compress(delta: np.ndarray, opts: Options, seed: int, group_size: int | None) -> Encoded:
    """delta: float32 [rows, cols], modified in place. Pass it without keeping a reference (compress(f(...)))
    so the delta's memory goes as soon as the kept values are out."""
    shape = delta.shape
    m = opts.method
    if m == "deltadq":
        enc = encodings.get(opts.encoding)
        # kept-order layouts (seeded, seeded_rans) store values as the mask yields them; CSR sorts columns
        cols, vals = groupwise_dropout_blocked(delta, opts.alpha, group_size, seed, ROW_BLOCK,
                                               sort_columns=not enc.kept_order, columns=not enc.kept_order)
        del delta
        if enc.kept_order:
            return enc.encode(shape, vals, bits=opts.bits, alpha=opts.alpha, group_size=group_size, seed=seed)
        return encode_rows(shape, cols, vals, bits=opts.bits, parts=opts.parts, alpha=opts.alpha,
                           group_size=group_size, seed=seed)
    if m == "dare":
        rows, cols, vals = dare(delta, opts.alpha, seed)
        return csr_f16.encode(shape, rows, cols, vals, method="dare", alpha=opts.alpha, seed=seed)
    if m == "magnitude":
        rows, cols, vals = magnitude(delta, opts.alpha)
        return csr_f16.encode(shape, rows, cols, vals, method="magnitude", alpha=opts.alpha, seed=0)
    if m == "bitdelta":
        if opts.alpha == 1:
            return sign_scale.encode(shape, delta, alpha=1, group_size=shape[1], seed=0)
        _, vals = groupwise_dropout_blocked(delta, opts.alpha, group_size, seed, ROW_BLOCK, columns=False)
        return sign_scale.encode(shape, vals, alpha=opts.alpha, group_size=group_size, seed=seed)
    if m == "lowrank":
        return lowrank.encode(*svd_factors(delta, opts.rank, seed))
    raise ValueError(f"unknown method {m!r}")


def compress_bits(ft: np.ndarray, ft_dtype: str, base: np.ndarray, base_dtype: str, opts: Options, seed: int,
                  group_size: int | None) -> Encoded | None:
    """compress(float32(ft) - float32(base), ...) from the two weights' bit patterns (as Checkpoint.read gives
    them) in one fused pass: the delta is computed only where the seeded mask keeps an element, and the
    full float32 delta never exists. Same bytes as compress(). None when the method needs the whole delta
    or the accelerated kernels are not installed (the caller then computes the delta and calls compress).
    Raises NonFinite when an element of either weight, or a kept delta, is NaN or inf."""
    k = accel.kernels()
    if k is None or not opts.uses_groups or group_size is None:
        return None
    shape = ft.shape
    enc = encodings.get(opts.encoding) if opts.method == "deltadq" else None
    sort = enc is not None and not enc.kept_order
    flags, vals, cols = k.gather_kept(ft, ft_dtype, base, base_dtype, seed, group_size, opts.alpha,
                                      rescale_factors(shape[1], group_size, opts.alpha), sort)
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 0.0)
    if flags or not (np.isfinite(lo) and np.isfinite(hi)):  # the latter: fine-tune - base overflowed
        raise NonFinite(flags or NonFinite.DELTA)
    if enc is None:  # bitdelta behind dropout
        return sign_scale.encode(shape, vals, alpha=opts.alpha, group_size=group_size, seed=seed)
    qz = fit_range(lo, hi, opts.bits)  # = fit(vals)
    if enc.kept_order:
        return enc.encode(shape, vals, bits=opts.bits, alpha=opts.alpha, group_size=group_size, seed=seed,
                          quantizer=qz)
    return encode_rows(shape, cols, vals, bits=opts.bits, parts=opts.parts, alpha=opts.alpha,
                       group_size=group_size, seed=seed, quantizer=qz)


class NonFinite(ValueError):
    """NaN or inf in a weight or its delta; `flags`: accel NONFINITE_* bits (1 fine-tune, 2 base, 4 delta)."""

    FT, BASE, DELTA = 1, 2, 4

    def __init__(self, flags: int):
        self.flags = flags
        super().__init__("non-finite values (NaN or inf)")


def reconstruct(delta: np.ndarray, opts: Options, seed: int, group_size: int) -> np.ndarray:
    """The decoded delta of compress(...) for the group-size methods, straight from the kept values."""
    k = accel.kernels()
    cols, vals = groupwise_dropout_blocked(delta, opts.alpha, group_size, seed, ROW_BLOCK, columns=k is None)
    if opts.method == "deltadq":
        qz = fit(vals, opts.bits)
        codes = quantize(vals, qz)
        if k is not None:
            return k.seeded_scatter(codes, k.code_lut(qz.scale, qz.zero), seed, *delta.shape, group_size,
                                    opts.alpha)
        deq = dequantize(codes, qz.scale, qz.zero)
    else:  # bitdelta behind dropout
        scale = np.float32(np.abs(vals, dtype=np.float64).mean()) if vals.size else np.float32(0)
        if k is not None:
            return k.seeded_scatter((vals >= 0).view(np.uint8), np.array([-scale, scale], np.float32), seed,
                                    *delta.shape, group_size, opts.alpha)
        deq = np.where(vals >= 0, scale, -scale).astype(np.float32)
    out = np.zeros(delta.shape, np.float32)
    np.put_along_axis(out, cols.astype(np.int64), deq, axis=1)
    return out


def dare(delta: np.ndarray, alpha: int, seed: int):
    """DARE: keep each element with probability 1/alpha (Bernoulli, PCG64(seed), row blocks in order), x alpha."""
    rng = np.random.Generator(np.random.PCG64(seed))
    n_rows, n_cols = delta.shape
    step = max(1, ROW_BLOCK // max(n_cols, 1))
    rows, cols, vals = [], [], []
    for r0 in range(0, n_rows, step):
        block = delta[r0:r0 + step]
        keep = rng.random(block.shape, dtype=np.float32) < np.float32(1.0 / alpha)
        r, c = np.nonzero(keep)
        rows.append(r + r0)
        cols.append(c)
        vals.append(block[r, c] * np.float32(alpha))
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def magnitude(delta: np.ndarray, alpha: int):
    """Keep the numel // alpha entries of largest |delta| (ties broken by position, row-major), unscaled."""
    n = delta.size
    k = n // alpha
    flat = delta.reshape(-1)
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    neg = np.signbit(flat)
    np.abs(flat, out=flat)  # delta now holds |delta|; signs kept aside (a quarter of the memory)
    t = np.partition(flat, n - k)[n - k]  # k-th largest magnitude
    above = np.flatnonzero(flat > t)
    ties = np.flatnonzero(flat == t)[: k - above.size]
    idx = np.sort(np.concatenate([above, ties]))
    vals = np.where(neg[idx], -flat[idx], flat[idx]).astype(np.float32)
    return idx // delta.shape[1], idx % delta.shape[1], vals


def svd_factors(delta: np.ndarray, rank: int, seed: int):
    """Truncated SVD: u = U_r * S_r, v = V_r^T. Exact SVD for small matrices, else a randomized range finder
    (Halko et al.: Gaussian sketch from PCG64(seed), 10 oversamples, 2 power iterations)."""
    n_rows, n_cols = delta.shape
    r = max(1, min(rank, n_rows, n_cols))
    if min(n_rows, n_cols) <= 4 * (r + 10):
        U, S, Vt = np.linalg.svd(delta.astype(np.float64), full_matrices=False)
        return (U[:, :r] * S[:r]).astype(np.float32), Vt[:r].astype(np.float32)
    rng = np.random.Generator(np.random.PCG64(seed))
    omega = rng.standard_normal((n_cols, r + 10), dtype=np.float32)
    Q, _ = np.linalg.qr(delta @ omega)
    for _ in range(2):
        Q, _ = np.linalg.qr(delta.T @ Q)
        Q, _ = np.linalg.qr(delta @ Q)
    B = Q.T @ delta
    Ub, S, Vt = np.linalg.svd(B.astype(np.float64), full_matrices=False)
    u = (Q.astype(np.float64) @ (Ub[:, :r] * S[:r])).astype(np.float32)
    return u, Vt[:r].astype(np.float32)
