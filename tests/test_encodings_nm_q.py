"""nm_q (format 1.3): n:m sparsity with per-row scales (DeltaZip). Round trips, the SPEC vector, header checks."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_testing import write_read as _write_read
from ddq_format import EncodingError
from ddq_format.encodings import nm_q


def _random_mask(rng, rows, cols, n, m):
    keep = np.zeros((rows, cols), bool)
    for r in range(rows):
        for g0 in range(0, cols, m):
            width = min(m, cols - g0)
            keep[r, g0 + rng.choice(width, min(n, width), replace=False)] = True
    return keep


def test_spec_vector():
    keep = np.array([[1, 0, 0, 1, 1], [0, 1, 1, 0, 1]], bool)
    codes = np.array([[3, 0, 0, 0, 1], [0, 2, 1, 0, 3]], np.uint8)
    enc = nm_q.encode((2, 5), keep, codes, np.array([0.5, 0.25]), n=1, m=2, bits=2, zero=2)
    assert enc.buffers["scales"][1].tobytes().hex() == "00380034"
    assert enc.buffers["codes"][1].tobytes().hex() == "930d"
    assert enc.buffers["positions"][1].tobytes().hex() == "0a"


@pytest.mark.parametrize("shape,n,m,bits", [((6, 16), 2, 4, 4), ((5, 13), 1, 4, 2), ((3, 7), 3, 7, 3),
                                            ((4, 9), 1, 1, 8), ((2, 300), 1, 256, 1)])
def test_round_trip(tmp_path, shape, n, m, bits):
    rng = np.random.default_rng(5)
    keep = _random_mask(rng, *shape, n, m)
    codes = rng.integers(0, 1 << bits, shape).astype(np.uint8)
    scales = rng.random(shape[0]).astype(np.float16)
    z = 1 << (bits - 1)
    f = _write_read(tmp_path, shape, nm_q.encode(shape, keep, codes, scales, n=n, m=m, bits=bits, zero=z))
    want = np.where(keep, scales.astype(np.float32)[:, None] * (codes.astype(np.float32) - z), 0)
    np.testing.assert_array_equal(f.decode("t"), want.astype(np.float32))
    assert f.version == (1, 3)


def test_encode_refuses_a_mask_that_is_not_n_of_m():
    keep = np.zeros((2, 4), bool)
    keep[0, :3] = True
    with pytest.raises(ValueError, match="2:4"):
        nm_q.encode((2, 4), keep, np.zeros((2, 4), np.uint8), np.ones(2), n=2, m=4, bits=4, zero=8)


@pytest.mark.parametrize("field,value,match", [("n", 5, "params.n"), ("m", 0, "params.m"), ("bits", 0, "bits"),
                                               ("zero", 16, "zero"), ("m", 8, "positions|codes")])
def test_header_checks(tmp_path, field, value, match):
    rng = np.random.default_rng(1)
    enc = nm_q.encode((4, 8), _random_mask(rng, 4, 8, 2, 4), np.zeros((4, 8), np.uint8), np.ones(4), n=2, m=4,
                      bits=4, zero=8)

    def bad(e):
        e["params"][field] = value
    with pytest.raises(EncodingError, match=match):
        _write_read(tmp_path, (4, 8), enc, bad)


def test_positions_out_of_order_are_refused_at_decode(tmp_path):
    from ddq_format import bitpack
    enc = nm_q.encode((1, 4), np.array([[1, 1, 0, 0]], bool), np.zeros((1, 4), np.uint8), np.ones(1), n=2, m=4,
                      bits=4, zero=8)
    enc.buffers["positions"] = ("PACKED", bitpack.pack(np.array([1, 0], np.uint8), 2))  # decreasing in a group
    f = _write_read(tmp_path, (1, 4), enc)
    with pytest.raises(EncodingError, match="positions"):
        f.decode("t")
