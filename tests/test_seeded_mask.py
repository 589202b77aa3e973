"""The seeded dropout mask (SPEC.md §Seeded mask): bit-exact hash, exact counts, unbiased inclusion."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddq_format import seeded_mask as sm
from ddq_format.converters.dropout import groupwise_dropout, rescale_factors

M32 = 0xFFFFFFFF


# ---- an independent pure-Python reference of the hash, written from the spec's definition -------------
def py_fmix32(x: int) -> int:
    x &= M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & M32
    x ^= x >> 16
    return x


def py_positions(seed: int, row: int, group: int, n: int, length: int) -> list[int]:
    gold, rounds = 0x9E3779B9, 3
    h0 = py_fmix32((seed & M32) ^ 0x5DD9A11B)
    h1 = py_fmix32(h0 ^ row)
    h2 = py_fmix32((h1 + group * gold) & M32)
    keys = [py_fmix32((h2 + (t + 1) * gold) & M32) for t in range(rounds + 1)]
    w = max(1, (length - 1).bit_length())
    mask, shift = (1 << w) - 1, (w + 1) >> 1

    def perm(x):
        for k in keys[:rounds]:
            x = (x + (k & mask)) & mask
            x = (x * ((k >> 8) | 1)) & mask
            x ^= x >> shift
        return x

    out = []
    for i in range(n):
        x = perm(i)
        while x >= length:  # cycle-walking
            x = perm(x)
        out.append((x + keys[rounds] % length) % length)
    return out


def py_mask(seed, rows, cols, group, alpha):
    full, tail = divmod(cols, group)
    out = []
    for r in range(rows):
        row = []
        for g in range(full):
            row += [g * group + p for p in py_positions(seed, r, g, group // alpha, group)]
        if tail:
            row += [full * group + p for p in py_positions(seed, r, full, -(-tail // alpha), tail)]
        out.append(row)
    return out


# ---- literal vectors: any change of the hash or its constants fails here ------------------------------
def test_fmix32_literal_vectors():
    inputs = [0, 1, 2, 0xDEADBEEF, 0xFFFFFFFF, 0x5DD9A11B]
    expect = [0x00000000, 0x514E28B7, 0x30F4C306, 0x0DE5C6A9, 0x81F16F39, 0xB39303D4]
    assert [int(v) for v in sm.fmix32(np.array(inputs, np.uint32))] == expect
    assert [py_fmix32(v) for v in inputs] == expect
    assert sm.fmix32(np.array(inputs, np.uint32)).dtype == np.uint32


def test_mask_columns_literal_vectors():
    # seed 42, 2 rows x 10 columns, groups of 4, alpha 2: groups [0,4) [4,8) keep 2, tail [8,10) keeps 1.
    assert sm.mask_columns(42, 2, 10, 4, 2).tolist() == [[3, 0, 5, 6, 9], [1, 2, 4, 6, 9]]
    # seed 7, 1 row x 20 columns, groups of 8, alpha 4: tail of 4 keeps 1.
    assert sm.mask_columns(7, 1, 20, 8, 4).tolist() == [[3, 0, 8, 13, 19]]
    # seed 2**32 - 1, 3 rows x 6 columns, one group of 6, alpha 3.
    assert sm.mask_columns(2**32 - 1, 3, 6, 6, 3).tolist() == [[1, 2], [3, 1], [2, 3]]


def test_group_keys_literal_vector():
    keys, rot = sm.group_keys(123, np.array([0, 5], np.uint32), np.array([0, 9], np.uint32))
    assert [[int(v) for v in k] for k in keys] == LITERAL_KEYS
    assert [int(v) for v in rot] == LITERAL_ROT


LITERAL_KEYS = [[0xA30DB348, 0xF15A7C25], [0x6879AECD, 0x1E835CB1], [0x1B57E03F, 0xC9CECCE4]]
LITERAL_ROT = [0xE0136AF6, 0xAF5F0DA0]


# ---- properties -------------------------------------------------------------------------------------------
@st.composite
def layouts(draw):
    cols = draw(st.integers(1, 300))
    alpha = draw(st.integers(1, min(cols, 16)))
    group = alpha * draw(st.integers(1, cols // alpha))
    rows = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    return rows, cols, group, alpha, seed


@given(layouts())
def test_exact_counts_no_duplicates_in_range(layout):
    rows, cols, group, alpha, seed = layout
    m = sm.mask_columns(seed, rows, cols, group, alpha)
    full, keep, tail, keep_tail = sm.group_layout(cols, group, alpha)
    assert m.dtype == np.int64
    assert m.shape == (rows, sm.kept_per_row(cols, group, alpha)) == (rows, full * keep + keep_tail)
    assert keep == group // alpha and keep_tail == (math.ceil(tail / alpha) if tail else 0)
    for r in range(rows):
        for g in range(full):
            seg = m[r, g * keep:(g + 1) * keep]
            assert len(set(seg.tolist())) == keep  # no duplicates
            assert ((seg >= g * group) & (seg < (g + 1) * group)).all()  # inside its group
        seg = m[r, full * keep:]
        assert len(set(seg.tolist())) == keep_tail
        assert ((seg >= full * group) & (seg < cols)).all()


@given(layouts())
def test_matches_pure_python_reference(layout):
    rows, cols, group, alpha, seed = layout
    assert sm.mask_columns(seed, rows, cols, group, alpha).tolist() == py_mask(seed, rows, cols, group, alpha)


def test_large_columns_match_reference():
    # a group longer than 65535 columns, and a tail, on one row
    cols, group, alpha = 70001, 65600, 3280
    m = sm.mask_columns(99, 1, cols, group, alpha)
    assert m.tolist() == py_mask(99, 1, cols, group, alpha)
    assert m.max() < cols


def test_deterministic_and_seed_sensitive():
    a = sm.mask_columns(5, 4, 64, 16, 4)
    assert np.array_equal(a, sm.mask_columns(5, 4, 64, 16, 4))
    assert not np.array_equal(a, sm.mask_columns(6, 4, 64, 16, 4))
    # seeds are taken modulo 2**32
    assert np.array_equal(sm.mask_columns(2**32 + 5, 4, 64, 16, 4), a)
    # rows are independent of how many rows there are
    assert np.array_equal(sm.mask_columns(5, 2, 64, 16, 4), a[:2])


@pytest.mark.parametrize("cols,group,alpha", [(8, 8, 4), (13, 8, 4), (9, 9, 3), (11, 6, 3), (64, 64, 8)])
def test_marginal_inclusion_probability(cols, group, alpha):
    """Every column is kept with probability n_g/L. Across 600 seeds x 8 rows (4800 independent draws per
    column under the hash-is-random model) the observed frequency must lie within 6 standard deviations
    (false-alarm probability < 1e-8 per column; deterministic seeds, so never flaky)."""
    seeds, rows = 600, 8
    counts = np.zeros(cols, np.int64)
    for s in range(seeds):
        m = sm.mask_columns(s, rows, cols, group, alpha)
        counts += np.bincount(m.reshape(-1), minlength=cols)
    trials = seeds * rows
    full, keep, tail, keep_tail = sm.group_layout(cols, group, alpha)
    p = np.array([keep / group] * (full * group) + [keep_tail / tail if tail else 0] * tail)
    sd = np.sqrt(p * (1 - p) / trials)
    freq = counts / trials
    assert (np.abs(freq - p) <= 6 * sd + 1e-12).all(), (freq, p)
    # the expected count per row is exact
    assert counts.sum() == trials * (full * keep + keep_tail)


def test_invalid_group():
    with pytest.raises(ValueError):
        sm.mask_columns(0, 1, 10, 6, 4)
    with pytest.raises(ValueError):
        sm.mask_columns(0, 1, 10, 0, 1)


def test_dropout_keeps_mask_and_rescales():
    rng = np.random.default_rng(0)
    d = rng.standard_normal((3, 21)).astype(np.float32)
    cols, vals = groupwise_dropout(d, 4, 8, seed=11)  # two groups of 8 keep 2; tail of 5 keeps 2
    assert np.array_equal(cols, sm.mask_columns(11, 3, 21, 8, 4))
    f = rescale_factors(21, 8, 4)
    assert f.tolist() == [4.0] * 4 + [np.float32(5 / 2)] * 2
    expect = np.take_along_axis(d, cols, axis=1) * f
    assert np.array_equal(vals.view(np.uint32), expect.astype(np.float32).view(np.uint32))


@given(layouts())
def test_row_stride_gives_flat_indices(layout):
    rows, cols, group, alpha, seed = layout
    m = sm.mask_columns(seed, rows, cols, group, alpha)
    flat = sm.mask_columns(seed, rows, cols, group, alpha, row_stride=cols)
    assert flat.dtype == np.int64
    assert np.array_equal(flat, m + np.arange(rows)[:, None] * cols)


def test_positions_one_dimensional_form():
    """positions() also takes 1-D (row, group, index) triples, as SPEC.md states the hash per element."""
    rows = np.array([0, 0, 1, 3], np.uint32)
    groups = np.array([0, 2, 1, 0], np.uint32)
    index = np.array([0, 1, 2, 0], np.uint32)
    got = sm.positions(77, rows, groups, index, 11)
    assert got.dtype == np.uint32
    assert got.tolist() == [py_positions(77, int(r), int(g), int(i) + 1, 11)[int(i)]
                            for r, g, i in zip(rows, groups, index)]
