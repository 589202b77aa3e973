"""Per-tensor uniform k-bit quantization and its separation into m parts (SPEC.md §Quantization).

Encoder side of csr_parts and seeded; the decoder only needs dequantize().
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import accel


@dataclass(frozen=True)
class Quantizer:
    scale: float  # exactly representable in binary32
    zero: int
    bits: int

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return dequantize(q, self.scale, self.zero)


def fit(values: np.ndarray, bits: int) -> Quantizer:
    """s = (max - min) / (2^k - 1), z = round(-min / s) over the values with 0 included in [min, max], so
    z lies in [0, 2^k - 1] and an all-zero tensor gets s = 0."""
    v = np.asarray(values, np.float32)
    return fit_range(float(v.min()) if v.size else 0.0, float(v.max()) if v.size else 0.0, bits)


def fit_range(vmin: float, vmax: float, bits: int) -> Quantizer:
    """fit() from the values' min and max (what a fused pass that saw every value computes)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits k={bits} outside 1..8")
    lo = min(vmin, 0.0)
    hi = max(vmax, 0.0)
    scale = float(np.float32((hi - lo) / ((1 << bits) - 1)))
    if scale == 0.0 or not np.isfinite(scale):
        if not np.isfinite(scale):
            raise ValueError("values are not finite")
        return Quantizer(0.0, 0, bits)
    zero = int(np.clip(np.rint(-lo / scale), 0, (1 << bits) - 1))
    return Quantizer(scale, zero, bits)


def quantize(values: np.ndarray, qz: Quantizer) -> np.ndarray:
    """Q = clip(round(v / s) + z, 0, 2^k - 1) as uint8 (round half to even)."""
    v = np.asarray(values, np.float32)
    if qz.scale == 0.0:
        return np.full(v.shape, qz.zero, np.uint8)
    k = accel.kernels()
    out = None if k is None else k.quantize(v, qz.scale, qz.zero, qz.bits)
    if out is not None:
        return out
    q = np.rint(v / np.float32(qz.scale)) + qz.zero
    return np.clip(q, 0, (1 << qz.bits) - 1).astype(np.uint8)


def dequantize(q: np.ndarray, scale: float, zero: int, offset: int = 0) -> np.ndarray:
    """s * (Q - z - o) computed as one binary32 multiply of exact operands: bit-exact everywhere."""
    q = np.asarray(q)
    shift = int(zero) + int(offset)
    # Q - z - o must be the exact integer: int32 only when it cannot wrap (uint8 codes, |shift| < 2^31 - 256)
    if q.dtype == np.uint8 and 256 - 2**31 <= shift < 2**31:
        ints = q.astype(np.int32) - np.int32(shift)
    else:
        ints = q.astype(np.int64) - shift
    return np.float32(scale) * ints.astype(np.float32)


def part_offsets(bits: int, parts: int) -> list[int]:
    """o_j = -j * 2^k / m: the stored code of part j is Q_j = Q + o_j, so s*(Q_j - z - o_j) = s*(Q - z)."""
    check_parts(bits, parts)
    width = (1 << bits) // parts
    return [-j * width for j in range(parts)]


def check_parts(bits: int, parts: int) -> int:
    """Validate m for k and return the per-part bit width k - log2 m."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits k={bits} outside 1..8")
    if parts < 1 or parts & (parts - 1) or parts > (1 << bits):
        raise ValueError(f"parts m={parts} must be a power of two in 1..2^k={1 << bits}")
    return bits - (parts.bit_length() - 1)


def split_parts(q: np.ndarray, bits: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """(part index j, stored code Q_j) for each k-bit code Q."""
    part_bits = check_parts(bits, parts)
    q = np.asarray(q, np.uint8)
    return (q >> part_bits).astype(np.int64), (q & ((1 << part_bits) - 1)).astype(np.uint8)
