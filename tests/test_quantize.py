"""Uniform k-bit quantization and its separation into m parts (SPEC.md §Quantization)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ddq_format import quantize as qm

finite32 = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def k_and_m(draw):
    k = draw(st.integers(1, 8))
    return k, 1 << draw(st.integers(0, k))


def bits_equal(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@given(km=k_and_m(), values=hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)),
                                       elements=finite32))
def test_separate_quantization_is_lossless(km, values):
    """Σ_j scatter(s·(Q_j − z − o_j)) over the m parts equals s·(Q − z) bit for bit."""
    k, m = km
    qz = qm.fit(values, k)
    q = qm.quantize(values, qz)
    kbit = qm.dequantize(q, qz.scale, qz.zero)
    part, code = qm.split_parts(q, k, m)
    offsets = qm.part_offsets(k, m)
    assert code.max(initial=0) < 1 << (k - (m.bit_length() - 1))  # each part needs only k - log2 m bits
    total = np.zeros(values.shape, np.float32)
    for j in range(m):
        dense_j = np.zeros(values.shape, np.float32)
        sel = part == j
        dense_j[sel] = qm.dequantize(code[sel], qz.scale, qz.zero, offsets[j])
        total += dense_j
    assert bits_equal(total, kbit)
    # the stored code of part j is Q + o_j
    assert np.array_equal(code.astype(np.int64) - np.array(offsets)[part], q.astype(np.int64))


@given(k=st.integers(1, 8), values=hnp.arrays(np.float32, st.integers(1, 200), elements=finite32))
def test_fit_contains_zero_and_codes_in_range(k, values):
    qz = qm.fit(values, k)
    assert 0 <= qz.zero <= (1 << k) - 1
    assert float(np.float32(qz.scale)) == qz.scale  # exactly binary32
    q = qm.quantize(values, qz)
    assert q.dtype == np.uint8 and int(q.max()) < 1 << k
    # zero maps to the code z, so exact zeros stay exact zeros
    assert int(qm.quantize(np.zeros(1, np.float32), qz)[0]) == qz.zero
    # dequantization error is at most half a step (plus float rounding) inside the range; subnormal
    # scales are not exact enough for this bound
    if qz.scale > 1e-30:
        err = np.abs(qm.dequantize(q, qz.scale, qz.zero) - values)
        assert err.max() <= qz.scale * (0.5 + 1e-3) + 1e-6 * np.abs(values).max()


def test_fit_reference_values():
    # lo = -1, hi = 2, k = 2: s = 3/3 = 1, z = round(1/1) = 1
    qz = qm.fit(np.array([-1.0, 0.5, 2.0], np.float32), 2)
    assert (qz.scale, qz.zero, qz.bits) == (1.0, 1, 2)
    assert qm.quantize(np.array([-1.0, 0.5, 2.0, 1.49], np.float32), qz).tolist() == [0, 1, 3, 2]  # 0.5 → even
    # all positive: 0 is the lower end of the range, z = 0
    qz = qm.fit(np.array([0.25, 1.0], np.float32), 3)
    assert qz.zero == 0 and qz.scale == float(np.float32(1.0 / 7))
    # all zero tensor: s = 0, every code is z
    qz = qm.fit(np.zeros(4, np.float32), 4)
    assert (qz.scale, qz.zero) == (0.0, 0)
    assert bits_equal(qm.dequantize(qm.quantize(np.zeros(4, np.float32), qz), 0.0, 0), np.zeros(4))


def test_dequantize_is_one_float32_multiply():
    q = np.array([0, 3, 15], np.uint8)
    s = float(np.float32(0.1))
    got = qm.dequantize(q, s, 7, -8)
    expect = np.array([np.float32(s) * np.float32(v) for v in (0 - 7 + 8, 3 - 7 + 8, 15 - 7 + 8)], np.float32)
    assert got.dtype == np.float32 and bits_equal(got, expect)


def test_part_offsets_and_bad_parts():
    assert qm.part_offsets(4, 8) == [0, -2, -4, -6, -8, -10, -12, -14]
    assert qm.part_offsets(3, 2) == [0, -4]
    assert qm.part_offsets(5, 1) == [0]
    assert qm.check_parts(8, 256) == 0
    for k, m in [(4, 3), (4, 32), (2, 0), (0, 1), (9, 1)]:
        with pytest.raises(ValueError):
            qm.check_parts(k, m)
    with pytest.raises(ValueError):
        qm.fit(np.ones(2, np.float32), 9)
    with pytest.raises(ValueError):
        qm.fit(np.array([np.inf], np.float32), 4)


@pytest.mark.parametrize("zero,offset", [(-(2**31), 0), (2**31 - 1, -12), (-(2**31), -(2**31) + 8)])
def test_dequantize_extreme_zero_is_exact(zero, offset):
    """SPEC §8.1: Q − z − o is the exact integer, then rounded once to binary32 (no 32-bit wrap-around)."""
    q = np.array([0, 1, 255], np.uint8)
    got = qm.dequantize(q, 1.0, zero, offset)
    expect = np.array([np.float32(int(v) - zero - offset) for v in q], np.float32)
    assert bits_equal(got, expect)
    assert bits_equal(qm.dequantize(q.astype(np.int64), 1.0, zero, offset), expect)


@given(k=st.integers(1, 8), values=st.lists(st.floats(-1e3, 1e3, width=32), max_size=50))
def test_fit_range_equals_fit(k, values):
    """The fused convert pass fits from the min and max it saw: the same quantizer as fit() on the values."""
    v = np.asarray(values, np.float32)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    assert qm.fit_range(lo, hi, k) == qm.fit(v, k)
