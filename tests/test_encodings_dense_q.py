"""dense_q (format 1.3, kind dense): k-bit codes for small dense deltas."""
from __future__ import annotations

import numpy as np
import pytest
from ddq_testing import write_read

from ddq_format import EncodingError, Writer, open_ddq
from ddq_format.encodings import dense_q


def test_spec_vector_and_round_trip(tmp_path):
    x = np.array([0.5, -0.25, 0.0, 1.0], np.float32)
    enc = dense_q.encode(x, bits=4)
    assert enc.params == {"bits": 4, "scale": float(np.float32(1.25 / 15)), "zero": 3}
    assert enc.buffers["codes"][1].tobytes().hex() == "09f3"
    p = tmp_path / "x.ddq"
    with Writer(p) as w:
        w.add("norm", "dense", (4,), "F32", enc)
    f = open_ddq(p)
    assert f.version == (1, 3)
    np.testing.assert_array_equal(f.decode("norm"), np.float32(enc.params["scale"]) * (np.array([9, 0, 3, 15]) - 3).astype(np.float32))


@pytest.mark.parametrize("shape,bits", [((576,), 8), ((3, 5, 2), 3), ((1,), 1)])
def test_any_shape_within_half_a_step(tmp_path, shape, bits):
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32) * 1e-3
    enc = dense_q.encode(x, bits=bits)
    p = tmp_path / "x.ddq"
    with Writer(p) as w:
        w.add("t", "dense", shape, "F32", enc)
    got = open_ddq(p).decode("t")
    assert got.shape == shape
    assert np.abs(got - x).max() <= enc.params["scale"] * 0.5 * (1 + 1e-6) + 1e-12


def test_wrong_length_is_refused(tmp_path):
    enc = dense_q.encode(np.ones(10, np.float32), bits=8)
    with pytest.raises(EncodingError, match="codes"):
        write_read(tmp_path, (10,), enc, lambda e: e.update(shape=[11]), kind="dense")
