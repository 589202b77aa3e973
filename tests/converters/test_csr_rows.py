"""The converter's row-major csr_parts builder gives exactly csr_parts.encode's bytes."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ddq_format.converters.csr_rows import encode_rows
from ddq_format.converters.dropout import groupwise_dropout, groupwise_dropout_blocked
from ddq_format.encodings import csr_parts


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 300), alpha=st.sampled_from([1, 2, 4]),
       gmul=st.sampled_from([1, 2, 8]), bits=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_encode_rows_equals_csr_parts_encode(rows, cols, alpha, gmul, bits, seed, data):
    g = alpha * gmul
    if g > cols:
        return
    parts = data.draw(st.sampled_from([m for m in (1, 2, 4, 8) if m <= 1 << (bits - 1) or m == 1]))
    delta = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    c, v = groupwise_dropout_blocked(delta, alpha, g, seed, block_elems=37, sort_columns=True)
    c0, v0 = groupwise_dropout(delta, alpha, g, seed)
    ref = csr_parts.encode((rows, cols), np.repeat(np.arange(rows), c0.shape[1]), c0.reshape(-1), v0.reshape(-1),
                           bits=bits, parts=parts, alpha=alpha, group_size=g, seed=seed)
    got = encode_rows((rows, cols), c, v, bits=bits, parts=parts, alpha=alpha, group_size=g, seed=seed)
    assert list(got.params.items()) == list(ref.params.items())
    assert got.buffers.keys() == ref.buffers.keys()
    for role, (dt, arr) in ref.buffers.items():
        assert got.buffers[role][0] == dt
        assert got.buffers[role][1].tobytes() == arr.tobytes(), role


def test_sorted_blocked_dropout_is_the_same_set():
    d = np.random.default_rng(0).standard_normal((13, 70)).astype(np.float32)
    c, v = groupwise_dropout_blocked(d, 4, 16, 3, block_elems=20, sort_columns=True)
    c0, v0 = groupwise_dropout(d, 4, 16, 3)
    assert (np.diff(c.astype(np.int64), axis=1) > 0).all()
    o = np.argsort(c0, axis=1)
    np.testing.assert_array_equal(c, np.take_along_axis(c0, o, 1))
    np.testing.assert_array_equal(v, np.take_along_axis(v0, o, 1))
