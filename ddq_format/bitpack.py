"""Bit packing of unsigned codes, widths 0..8, LSB-first (SPEC.md §Bit packing).

Code i occupies stream bits [i*b, (i+1)*b); stream bit j is bit (j % 8) of byte j // 8. The stream is
padded with zero bits to a whole byte. Width 0 stores nothing (every code is 0).
"""
from __future__ import annotations

import numpy as np

from . import accel

MAX_BITS = 8


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def _check(bits: int) -> None:
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bit width {bits} outside 0..{MAX_BITS}")


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes (each < 2**bits) into a uint8 array of packed_nbytes(len(codes), bits) bytes."""
    _check(bits)
    codes = np.ascontiguousarray(codes).reshape(-1)
    n = codes.size
    if bits == 0 or n == 0:
        return np.zeros(packed_nbytes(n, bits), np.uint8)
    if codes.dtype.kind not in "ui":
        raise TypeError(f"codes must be integers, got {codes.dtype}")
    k = accel.kernels()
    if k is not None and bits < 8:
        out = k.pack(codes, bits)
        if out is None:
            raise ValueError(f"code out of range for {bits} bits")
        return out
    if int(codes.max()) >= 1 << bits or int(codes.min()) < 0:
        raise ValueError(f"code out of range for {bits} bits")
    c = codes.astype(np.uint8, copy=False)
    if bits == 8:
        return c.copy()
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte, no straddling
        per = 8 // bits
        padded = np.zeros(-(-n // per) * per, np.uint8)
        padded[:n] = c
        padded = padded.reshape(-1, per)
        out = np.zeros(padded.shape[0], np.uint8)
        for i in range(per):
            out |= padded[:, i] << np.uint8(i * bits)
        return out
    # 3, 5, 6, 7: expand to bits then let numpy pack them LSB-first.
    bitplanes = ((c[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return np.packbits(bitplanes.reshape(-1), bitorder="little")


def packed_view(buf, bits: int, count: int) -> np.ndarray:
    """The bytes of `count` packed codes as a flat uint8 view, after checking `buf` holds them."""
    _check(bits)
    data = np.frombuffer(buf, np.uint8) if not isinstance(buf, np.ndarray) else buf.reshape(-1)
    need = packed_nbytes(count, bits)
    if data.size < need:
        raise ValueError(f"packed buffer has {data.size} bytes, {need} needed for {count} codes of {bits} bits")
    return data[:need]


def unpack(buf, bits: int, count: int) -> np.ndarray:
    """Inverse of pack: the first `count` codes of `buf` as uint8. `buf` must hold enough bytes."""
    data = packed_view(buf, bits, count)
    need = data.size
    if bits == 0 or count == 0:
        return np.zeros(count, np.uint8)
    if bits == 8:
        return data[:count].copy()
    k = accel.kernels()
    if k is not None:
        return k.unpack(data, bits, count)
    mask = np.uint8((1 << bits) - 1)
    if 8 % bits == 0:
        per = 8 // bits
        d = data[:need]
        out = np.empty((need, per), np.uint8)
        for i in range(per):
            out[:, i] = (d >> np.uint8(i * bits)) & mask
        return out.reshape(-1)[:count]
    # Straddling widths: read the 16-bit little-endian window that holds each code.
    d16 = np.zeros(need + 1, np.uint16)
    d16[:need] = data[:need]
    start = np.arange(count, dtype=np.int64) * bits
    byte = start >> 3
    window = d16[byte] | (d16[byte + 1] << np.uint16(8))
    return ((window >> (start & 7).astype(np.uint16)) & np.uint16(mask)).astype(np.uint8)
