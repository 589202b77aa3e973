"""seeded_rans_split (formats 1.4 / 2.1): seeded_rans over two classes of input columns (SPEC.md §9.9)."""
from __future__ import annotations

import numpy as np
import pytest
from ddq_testing import write_read
from hypothesis import given, settings
from hypothesis import strategies as st

from ddq_format import EncodingError, Writer, open_ddq
from ddq_format.converters import budget
from ddq_format.encodings import seeded_rans, seeded_rans_split
from ddq_format.verify import verify


def _split(shape, alpha=8, seed=5, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    d = rng.standard_normal(shape).astype(np.float32) * 1e-3
    m = np.exp(2 * rng.standard_normal(shape[1]))  # a few input channels carry most of the energy
    return d, m, budget.split_encode(budget.Config("split", alpha=alpha), d, seed, m)


def _sub(enc, cls, n):
    e = {"name": "t", "shape": [0, n], "encoding": "seeded_rans", "params": enc.params[cls],
         "buffers": {r: {"dtype": enc.buffers[f"{cls}_{r}"][0], "length": enc.buffers[f"{cls}_{r}"][1].nbytes}
                     for r in ("streams", "stream_offsets")}}
    bufs = {r: enc.buffers[f"{cls}_{r}"][1].reshape(-1).view(np.uint8) for r in ("streams", "stream_offsets")}
    return e, bufs


def test_decode_is_the_two_seeded_rans_classes_put_back(tmp_path):
    d, m, enc = _split((40, 96))
    hot = np.array(enc.params["hot_columns"])
    rest = np.setdiff1d(np.arange(96), hot)
    assert hot.size == round(0.1 * 96) and set(hot) == set(np.argsort(-m)[:hot.size])  # the most input energy
    assert enc.params["hot"]["alpha"] < 8 < enc.params["rest"]["alpha"]  # hot columns kept more often
    got = write_read(tmp_path, d.shape, enc).decode("t")
    for cls, cols in (("hot", hot), ("rest", rest)):
        e, b = _sub(enc, cls, cols.size)
        e["shape"][0] = d.shape[0]
        np.testing.assert_array_equal(got[:, cols], seeded_rans.decode(e, b))
    kept = seeded_rans_split.kept({"shape": list(d.shape), "params": enc.params})
    assert np.count_nonzero(got) <= kept  # a kept value may round to the zero code
    assert np.count_nonzero(got[:, hot]) / hot.size > 2 * np.count_nonzero(got[:, rest]) / rest.size


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 24), cols=st.integers(20, 200), alpha=st.sampled_from([4, 5, 8, 16]),
       seed=st.integers(0, 2**32 - 1))
def test_round_trip_any_shape(tmp_path_factory, rows, cols, alpha, seed):
    d, m, enc = _split((rows, cols), alpha=min(alpha, cols // 10) or 1, seed=seed, rng_seed=rows * cols)
    p = tmp_path_factory.mktemp("s") / "x.ddq"
    with Writer(p) as w:
        w.add("t", "compressed", (rows, cols), "F32", enc)
    f = open_ddq(p)
    got = f.decode("t")
    assert got.shape == (rows, cols)
    np.testing.assert_array_equal(got, seeded_rans_split.decode(
        {"name": "t", "shape": [rows, cols], "params": enc.params,
         "buffers": {r: {"dtype": dt, "length": a.nbytes} for r, (dt, a) in enc.buffers.items()}},
        {r: a.reshape(-1).view(np.uint8) for r, (_, a) in enc.buffers.items()}))


@pytest.mark.parametrize("major,label", [(1, (1, 4)), (2, (2, 1))])
def test_labelled_with_the_minor_that_defines_it_and_verifies(tmp_path, major, label):
    d, m, enc = _split((16, 64))
    p = tmp_path / "x.ddq"
    with Writer(p, major=major) as w:
        w.add("t", "compressed", d.shape, "F32", enc)
    f = open_ddq(p)
    assert f.version == label
    assert verify(p, full=True) == []


@pytest.mark.parametrize("mutate,field", [
    (lambda e: e["params"].update(hot_columns=[5, 3]), "params.hot_columns"),
    (lambda e: e["params"].update(hot_columns=[]), "params.hot_columns"),
    (lambda e: e["params"].update(hot_columns=list(range(64))), "params.hot_columns"),
    (lambda e: e["params"].update(hot_columns=[1, 64]), "params.hot_columns"),
    (lambda e: e["params"].update(hot_columns=[1, True]), "params.hot_columns"),
    (lambda e: e["params"].pop("rest"), "params.rest"),
    (lambda e: e["params"]["hot"].update(freqs=[1] * 16), "params.hot.freqs"),
    (lambda e: e["params"]["rest"].update(alpha=0), "params.rest.alpha"),
    (lambda e: e["buffers"].pop("hot_streams"), "buffers.hot_streams"),
    (lambda e: e.pop("params"), "params.hot"),  # found by tests/test_fuzz.py: an AttributeError before the fix
])
def test_bad_entries_name_the_field(tmp_path, mutate, field):
    d, m, enc = _split((16, 64))
    with pytest.raises(EncodingError) as err:
        write_read(tmp_path, d.shape, enc, mutate).decode("t")
    assert err.value.field == field and err.value.tensor == "t"


def test_corrupt_stream_names_its_class(tmp_path):
    d, m, enc = _split((16, 64))
    streams = enc.buffers["rest_streams"][1]
    streams[-1] ^= 0xFF
    with pytest.raises(EncodingError) as err:
        write_read(tmp_path, d.shape, enc).decode("t")
    assert err.value.field == "buffers.rest_streams" and "rest columns" in str(err.value)


def test_spec_worked_example(tmp_path):
    """SPEC.md §9.9's example: [0.5, -0.25, 1.0, 0.0, 0.25, -0.5], hot column 2, both classes alpha 1."""
    from ddq_format.converters.dropout import groupwise_dropout_blocked
    from ddq_format.quantize import Quantizer
    d = np.array([[0.5, -0.25, 1.0, 0.0, 0.25, -0.5]], np.float32)

    def part(x, g):
        _, v = groupwise_dropout_blocked(x, 1, g, 7)
        return seeded_rans.encode(x.shape, v, bits=4, alpha=1, group_size=g, seed=7, quantizer=Quantizer(0.25, 8, 4))

    enc = seeded_rans_split.encode((1, 6), np.array([2]), part(d[:, [2]], 1),
                                   part(np.ascontiguousarray(d[:, [0, 1, 3, 4, 5]]), 5))
    assert enc.params["hot_columns"] == [2]
    assert enc.params["hot"]["freqs"][12] == 4096
    assert enc.params["rest"]["freqs"][6:11] == [820, 819, 819, 819, 819]
    got = {r: a.reshape(-1).view(np.uint8).tobytes().hex() for r, (_, a) in enc.buffers.items()}
    assert got == {"hot_streams": "00000100", "hot_stream_offsets": "0000000004000000",
                   "rest_streams": "e2dc190c", "rest_stream_offsets": "0000000004000000"}
    np.testing.assert_array_equal(write_read(tmp_path, (1, 6), enc).decode("t"), d)
