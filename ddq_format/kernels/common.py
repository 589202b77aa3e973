"""Constants and small helpers shared by the host code and the Triton kernels (no triton import here)."""
from __future__ import annotations

import struct

NF = 16  # int64 fields per parameter-table row
KIND_FIELD = 15  # table field holding the resident layout's kind (0: no delta in this slot)


def f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def is_pow2(n: int) -> bool:
    return n & (n - 1) == 0
