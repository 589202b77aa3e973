"""Bit packing (SPEC.md §Bit packing): LSB-first stream, widths 0..8, zero-padded to a whole byte."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddq_format import bitpack


def ref_pack(codes, bits: int) -> bytes:
    """Independent reference: code i occupies stream bits [i*b, (i+1)*b), stream bit j is bit j%8 of byte j//8."""
    out = bytearray((len(codes) * bits + 7) // 8)
    for i, c in enumerate(codes):
        for t in range(bits):
            if (int(c) >> t) & 1:
                j = i * bits + t
                out[j // 8] |= 1 << (j % 8)
    return bytes(out)


# Literal vectors: any change of bit order or padding fails here.
KNOWN = [
    (1, [1, 0, 1, 1], b"\x0d"),
    (1, [1, 1, 1, 1, 1, 1, 1, 1, 1], b"\xff\x01"),
    (2, [1, 2, 3], b"\x39"),
    (3, [5, 3], b"\x1d"),
    (3, [7, 0, 7], b"\xc7\x01"),  # third code straddles bytes 0 and 1
    (4, [0xA, 0x5], b"\x5a"),
    (4, [0xA, 0x5, 0xF], b"\x5a\x0f"),
    (5, [0x1F, 0x01], b"\x3f\x00"),
    (6, [0x3F, 0x00, 0x2A], b"\x3f\xa0\x02"),
    (7, [0x7F, 0x7F], b"\xff\x3f"),
    (8, [0xAB, 0x01], b"\xab\x01"),
    (0, [0, 0, 0], b""),
]


@pytest.mark.parametrize("bits,codes,packed", KNOWN)
def test_known_vectors(bits, codes, packed):
    assert ref_pack(codes, bits) == packed  # the reference agrees with the literal vector
    got = bitpack.pack(np.array(codes, np.uint8), bits)
    assert got.dtype == np.uint8 and got.tobytes() == packed
    assert bitpack.unpack(np.frombuffer(packed, np.uint8), bits, len(codes)).tolist() == codes
    assert bitpack.unpack(packed, bits, len(codes)).tolist() == codes  # bytes input too


@pytest.mark.parametrize("bits", range(0, 9))
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 23, 24, 25, 63, 64, 65, 1000, 1001])
def test_round_trip_every_width_and_length(bits, n):
    rng = np.random.default_rng(bits * 10007 + n)
    codes = rng.integers(0, 1 << bits, n, dtype=np.uint8) if bits else np.zeros(n, np.uint8)
    packed = bitpack.pack(codes, bits)
    assert packed.size == bitpack.packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert packed.tobytes() == ref_pack(codes, bits)
    back = bitpack.unpack(packed, bits, n)
    assert back.dtype == np.uint8 and np.array_equal(back, codes)


@given(bits=st.integers(0, 8), data=st.data())
def test_round_trip_hypothesis(bits, data):
    codes = data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200))
    arr = np.array(codes, np.int64)  # wider integer input is accepted
    packed = bitpack.pack(arr, bits)
    assert packed.tobytes() == ref_pack(codes, bits)
    assert bitpack.unpack(packed, bits, len(codes)).tolist() == codes
    # A prefix can be read from a longer stream.
    k = data.draw(st.integers(0, len(codes)))
    assert bitpack.unpack(packed, bits, k).tolist() == codes[:k]


def test_padding_bits_are_zero():
    for bits in range(1, 9):
        codes = np.full(3, (1 << bits) - 1, np.uint8)
        packed = bitpack.pack(codes, bits)
        used = 3 * bits
        tail = int(packed[-1]) >> (used % 8) if used % 8 else 0
        assert tail == 0


def test_errors():
    with pytest.raises(ValueError):
        bitpack.pack(np.array([4], np.uint8), 2)
    with pytest.raises(ValueError):
        bitpack.pack(np.array([-1], np.int8), 3)
    with pytest.raises(ValueError):
        bitpack.pack(np.array([0], np.uint8), 9)
    with pytest.raises(TypeError):
        bitpack.pack(np.array([0.5]), 3)
    with pytest.raises(ValueError, match="needed"):
        bitpack.unpack(np.zeros(1, np.uint8), 3, 3)
