"""Round trips and header checks of the baseline encodings csr_f16, sign_scale and lowrank."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_format import EncodingError, Writer, open_ddq
from ddq_format.encodings import csr_f16, lowrank, sign_scale
from ddq_format.seeded_mask import kept_per_row, mask_columns


def _write_read(tmp_path, shape, enc, mutate=None):
    p = tmp_path / "x.ddq"
    with Writer(p) as w:
        e = w.add("t", "compressed", shape, "F16", enc)
        if mutate:
            mutate(e)
    return open_ddq(p)


@pytest.mark.parametrize("shape", [(5, 7), (3, 300), (1, 1)])
def test_csr_f16_round_trip(tmp_path, shape):
    rng = np.random.default_rng(1)
    dense = rng.standard_normal(shape).astype(np.float32) * (rng.random(shape) < 0.4)
    r, c = np.nonzero(dense)
    perm = rng.permutation(r.size)  # encode accepts any order
    enc = csr_f16.encode(shape, r[perm], c[perm], dense[r, c][perm], method="dare", alpha=3, seed=9)
    f = _write_read(tmp_path, shape, enc)
    assert f.entries["t"]["buffers"]["col_indices"]["dtype"] == ("U8" if shape[1] <= 256 else "U16")
    np.testing.assert_array_equal(f.decode("t"), dense.astype(np.float16).astype(np.float32))


def test_csr_f16_header_check_catches_wrong_length(tmp_path):
    enc = csr_f16.encode((4, 4), [0, 1], [1, 2], [1.0, 2.0], method="magnitude", alpha=2)

    def bad(e):
        e["params"]["nnz"] = 3
    with pytest.raises(EncodingError, match="col_indices"):
        _write_read(tmp_path, (4, 4), enc, bad)


@pytest.mark.parametrize("alpha,group", [(1, 9), (3, 6), (4, 8)])
def test_sign_scale_round_trip(tmp_path, alpha, group):
    shape = (6, 9)
    rng = np.random.default_rng(2)
    delta = rng.standard_normal(shape).astype(np.float32)
    if alpha == 1:
        vals, cols = delta, np.tile(np.arange(9), (6, 1))
    else:
        cols = mask_columns(5, *shape, group, alpha)
        vals = np.take_along_axis(delta, cols, 1)
    enc = sign_scale.encode(shape, vals, alpha=alpha, group_size=group, seed=5)
    f = _write_read(tmp_path, shape, enc)
    s = np.float32(np.abs(vals.astype(np.float64)).mean())
    want = np.zeros(shape, np.float32)
    np.put_along_axis(want, cols, np.where(vals >= 0, s, -s).astype(np.float32), 1)
    np.testing.assert_array_equal(f.decode("t"), want)
    n = 6 * (9 if alpha == 1 else kept_per_row(9, group, alpha))
    assert f.entries["t"]["buffers"]["signs"]["length"] == (n + 7) // 8


def test_sign_scale_header_check(tmp_path):
    enc = sign_scale.encode((4, 8), np.ones((4, 8), np.float32), alpha=1, group_size=8, seed=0)

    def bad(e):
        e["params"]["group_size"] = 3
        e["params"]["alpha"] = 2
    with pytest.raises(EncodingError, match="group_size"):
        _write_read(tmp_path, (4, 8), enc, bad)


def test_lowrank_round_trip_and_check(tmp_path):
    rng = np.random.default_rng(3)
    u, v = rng.standard_normal((7, 2)), rng.standard_normal((2, 5))
    f = _write_read(tmp_path, (7, 5), lowrank.encode(u, v))
    want = u.astype(np.float16).astype(np.float32) @ v.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(f.decode("t"), want, rtol=1e-6, atol=1e-6)

    def bad(e):
        e["params"]["rank"] = 3
    with pytest.raises(EncodingError, match="buffers.u"):
        _write_read(tmp_path, (7, 5), lowrank.encode(u, v), bad)
