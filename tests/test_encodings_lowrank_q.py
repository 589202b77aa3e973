"""lowrank_q (format 1.3): quantized low-rank bands (Delta-CoMe / DeltaMix). Round trips, the SPEC test vector,
header checks."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_testing import write_read as _write_read
from ddq_format import EncodingError
from ddq_format.encodings import lowrank_q


def _band(vectors_u, vectors_v, bits, g):
    qu = [lowrank_q.quantize_groups(u, bits, g) for u in vectors_u]
    qv = [lowrank_q.quantize_groups(v, bits, g) for v in vectors_v]
    return (bits, *(np.stack([q[i] for q in qu]) for i in range(3)), *(np.stack([q[i] for q in qv]) for i in range(3)))


def test_spec_vector_bytes_and_decode(tmp_path):
    """SPEC.md §9.6 worked example: 2x3, one band of rank 1 at 2 bits, groups of 2."""
    band = _band([np.array([1.0, -0.5], np.float32)], [np.array([0.25, 0.5, -0.25], np.float32)], 2, 2)
    enc = lowrank_q.encode((2, 3), [band], group_size=2)
    assert enc.params == {"bands": [[1, 2]], "group_size": 2}
    assert enc.buffers["codes"][1].tobytes().hex() == "e300"
    assert enc.buffers["scales"][1].tobytes().hex() == "00385531552d"
    assert enc.buffers["zeros"][1].tobytes().hex() == "010003"
    f = _write_read(tmp_path, (2, 3), enc)
    assert f.version == (1, 3)
    u = np.array([1.0, -0.5], np.float32)
    s1, s2 = np.float32(np.float16(0.5 / 3)), np.float32(np.float16(0.25 / 3))
    v = np.array([s1 * 2, s1 * 3, s2 * (0 - 3)], np.float32)
    np.testing.assert_allclose(f.decode("t"), np.outer(u, v), rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape,bands,g", [((7, 5), [(2, 8), (1, 3)], 3), ((40, 130), [(1, 4), (3, 2), (2, 8)], 128),
                                           ((1, 1), [(1, 1)], 1)])
def test_round_trip_matches_reference(tmp_path, shape, bands, g):
    rng = np.random.default_rng(3)
    rows, cols = shape
    parts, want = [], np.zeros(shape, np.float64)
    for r, k in bands:
        us = [rng.standard_normal(rows).astype(np.float32) for _ in range(r)]
        vs = [rng.standard_normal(cols).astype(np.float32) for _ in range(r)]
        band = _band(us, vs, k, g)
        parts.append(band)
        for i in range(r):  # the reference: dequantize every group by hand
            def deq(q, s, z, n):
                idx = np.arange(n) // g
                return s.astype(np.float32)[idx].astype(np.float64) * (q.astype(np.float64) - z[idx])
            want += np.outer(deq(band[1][i], band[2][i], band[3][i], rows), deq(band[4][i], band[5][i], band[6][i], cols))
    f = _write_read(tmp_path, shape, lowrank_q.encode(shape, parts, group_size=g))
    np.testing.assert_allclose(f.decode("t"), want, rtol=1e-5, atol=1e-5)
    assert f.entries["t"]["params"]["bands"] == [list(b) for b in bands]
    u, v = lowrank_q.factors(f.entries["t"], f.buffers("t"))  # what a loader keeps instead of the dense delta
    assert u.shape == (rows, sum(r for r, _ in bands)) and v.shape == (u.shape[1], cols)
    np.testing.assert_allclose(u.astype(np.float64) @ v, want, rtol=1e-5, atol=1e-5)


def test_quantize_groups_is_within_half_a_step():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    q, s, z = lowrank_q.quantize_groups(x, 3, 64)
    err = np.abs(lowrank_q.dequantize_groups(q, s, z, 64) - x)
    step = np.repeat(s.astype(np.float32), 64)[:1000]
    assert np.all(err <= step * 0.5 + 2e-3 * np.abs(x).max())  # fp16 scale rounding widens the grid slightly


@pytest.mark.parametrize("field,value,match", [("bands", [[0, 2]], "rank >= 1"), ("bands", [[1, 9]], "bits"),
                                               ("bands", [[9, 2]], "exceeds"), ("bands", "x", "pairs"),
                                               ("group_size", 0, "group_size")])
def test_header_check_rejects_bad_params(tmp_path, field, value, match):
    band = _band([np.ones(4, np.float32)], [np.ones(6, np.float32)], 2, 4)
    enc = lowrank_q.encode((4, 6), [band], group_size=4)

    def bad(e):
        e["params"][field] = value
    with pytest.raises(EncodingError, match=match):
        _write_read(tmp_path, (4, 6), enc, bad)


def test_header_check_rejects_wrong_buffer_length(tmp_path):
    band = _band([np.ones(4, np.float32)], [np.ones(6, np.float32)], 2, 4)
    enc = lowrank_q.encode((4, 6), [band], group_size=4)

    def bad(e):
        e["params"]["group_size"] = 2  # more groups: the scales buffer no longer matches
    with pytest.raises(EncodingError, match="scales"):
        _write_read(tmp_path, (4, 6), enc, bad)


def test_zero_point_above_the_grid_is_refused_at_decode(tmp_path):
    band = _band([np.ones(4, np.float32)], [np.ones(6, np.float32)], 2, 4)
    band = band[:3] + (np.full_like(band[3], 7),) + band[4:]  # zero 7 needs 3 bits
    f = _write_read(tmp_path, (4, 6), lowrank_q.encode((4, 6), [band], group_size=4))
    with pytest.raises(EncodingError, match="zero"):
        f.decode("t")
