"""`seeded_rans` (SPEC.md §9.5): the seeded codes, rANS-coded in streams of rows_per_stream rows.

Decoding must give seeded's array bit for bit; malformed tables, offsets and streams must raise
EncodingError (never hang or read out of bounds); files using it are 1.1 and a 1.0 reader fails only there.
"""
from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddq_testing import assemble, split_file
from ddq_format import DDQError, DDQFile, Writer
from ddq_format import encodings, header as header_mod
from ddq_format.accounting import report
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import seeded, seeded_rans
from ddq_format.errors import EncodingError
from ddq_format.seeded_mask import kept_per_row
from ddq_format.spec import FOOTER_SIZE, RANS_STATE_LOW


def _entry(enc, shape, name="w"):
    """The header entry a reader would see for an Encoded (no file needed)."""
    return {"name": name, "kind": "compressed", "shape": list(shape), "params": enc.params,
            "buffers": {r: {"dtype": dt, "length": a.nbytes} for r, (dt, a) in enc.buffers.items()}}


def _bufs(enc):
    return {r: np.ascontiguousarray(a).view(np.uint8).reshape(-1) for r, (_, a) in enc.buffers.items()}


def _decode(enc, shape):
    module = encodings.get(enc.encoding)
    e = _entry(enc, shape)
    module.check(e, encodings._common.Ctx("mem", "w"))
    return module.decode(e, _bufs(enc))


@st.composite
def cases(draw):
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(1, 40))
    alpha = draw(st.sampled_from([a for a in (1, 2, 3, 4, 8) if a <= cols]))
    group = alpha * draw(st.integers(1, max(1, cols // alpha)))
    bits = draw(st.integers(1, 8))
    per_row = kept_per_row(cols, group, alpha)
    kind = draw(st.sampled_from(["uniform", "skewed", "constant_row", "one_symbol"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uniform":
        vals = rng.uniform(-1, 1, (rows, per_row))
    elif kind == "skewed":  # most codes near the zero point, a few far out: a peaked table
        vals = rng.standard_normal((rows, per_row)) ** 3
    elif kind == "constant_row":
        vals = rng.standard_normal((rows, per_row))
        vals[draw(st.integers(0, rows - 1))] = 0.25
    else:  # all values equal: every code is the same symbol (the table is one 2^P entry)
        vals = np.full((rows, per_row), draw(st.sampled_from([0.0, 0.5, -3.0])))
    b = draw(st.one_of(st.none(), st.integers(1, rows + 2)))
    return (rows, cols), alpha, group, bits, vals.astype(np.float32), b, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(cases())
def test_decode_equals_seeded_bit_for_bit(case):
    shape, alpha, group, bits, vals, b, seed = case
    a = seeded.encode(shape, vals, bits=bits, alpha=alpha, group_size=group, seed=seed)
    r = seeded_rans.encode(shape, vals, bits=bits, alpha=alpha, group_size=group, seed=seed, rows_per_stream=b)
    assert {k: v for k, v in r.params.items() if k not in ("freqs", "rows_per_stream")} == a.params
    assert sum(r.params["freqs"]) == 4096 and len(r.params["freqs"]) == 1 << bits
    assert _decode(r, shape).tobytes() == _decode(a, shape).tobytes()
    assert np.array_equal(seeded_rans.codes_of(_entry(r, shape), _bufs(r)), seeded.codes_of(_entry(a, shape), _bufs(a)))


def test_single_symbol_tensor_streams_hold_only_the_state():
    vals = np.zeros((5, 4), np.float32)
    r = seeded_rans.encode((5, 8), vals, bits=4, alpha=2, group_size=4, seed=1, rows_per_stream=2)
    assert r.params["freqs"][0] == 4096 and sum(r.params["freqs"][1:]) == 0
    assert r.buffers["streams"][1].tobytes() == struct.pack("<I", RANS_STATE_LOW) * 3
    assert r.buffers["stream_offsets"][1].tolist() == [0, 4, 8, 12]
    assert not _decode(r, (5, 8)).any()


def test_worked_example_bytes():
    """SPEC.md §9.5 worked example: 2 rows of 10 codes, k=2, one stream per row; stream 0 renormalises once."""
    codes = np.array([[3, 1, 2, 1, 0, 1, 3, 1, 1, 2], [1, 1, 1, 0, 1, 1, 1, 1, 1, 1]], np.uint8)
    freqs, streams, offsets, odt = seeded_rans.encode_codes(codes, 2, 1)
    assert freqs == [409, 2869, 409, 409] and odt == "U32"
    assert streams.tobytes().hex() == "eb2e09000fe32627f500"
    assert offsets.tolist() == [0, 6, 10]
    vals = (codes.astype(np.float32) - 1) * np.float32(0.5)  # fit(): s = 0.5, z = 1 gives back these codes
    r = seeded_rans.encode((2, 20), vals, bits=2, alpha=2, group_size=4, seed=0, rows_per_stream=1)
    assert r.params["scale"] == 0.5 and r.params["zero"] == 1
    assert r.buffers["streams"][1].tobytes() == streams.tobytes()


def test_quantize_freqs_keeps_every_occurring_symbol():
    counts = np.zeros(256, np.int64)
    counts[0] = 10**9
    counts[1:] = 1  # 255 rare symbols force the common one down
    f = seeded_rans.quantize_freqs(counts)
    assert f.sum() == 4096 and f.min() == 1 and f[0] == 4096 - 255
    assert seeded_rans.quantize_freqs(np.zeros(4, np.int64)).tolist() == [4096, 0, 0, 0]


def test_stream_sizes_shrink_for_peaked_codes():
    rng = np.random.default_rng(0)
    vals = (rng.standard_normal((64, 256)) ** 3).astype(np.float32)
    a = seeded.encode((64, 512), vals, bits=4, alpha=2, group_size=64, seed=0)
    r = seeded_rans.encode((64, 512), vals, bits=4, alpha=2, group_size=64, seed=0)
    assert r.buffers["streams"][1].nbytes < 0.8 * a.buffers["codes"][1].nbytes


# -- files: minor version, accounting, malformed input ------------------------------------------------
def _write(path, *, with_rans=True):
    d = np.linspace(-1, 1, 6 * 40, dtype=np.float32).reshape(6, 40) ** 3
    cols, vals = groupwise_dropout(d, 4, 16, seed=3)
    with Writer(path) as w:
        w.add("s", "compressed", d.shape, "F16", seeded.encode(d.shape, vals, bits=4, alpha=4, group_size=16, seed=3))
        if with_rans:
            w.add("r", "compressed", d.shape, "F16",
                  seeded_rans.encode(d.shape, vals, bits=4, alpha=4, group_size=16, seed=3, rows_per_stream=4))
    return path


def _version(blob: bytes):
    return struct.unpack_from("<HH", blob, 8), struct.unpack_from("<HH", blob, len(blob) - FOOTER_SIZE + 20)


@pytest.fixture
def rans_file(tmp_path):
    return _write(tmp_path / "r.ddq")


def test_writer_records_minor_1_only_when_a_1_1_encoding_is_used(tmp_path, rans_file):
    assert _version(rans_file.read_bytes()) == ((1, 1), (1, 1))
    plain = _write(tmp_path / "plain.ddq", with_rans=False)
    assert _version(plain.read_bytes()) == ((1, 0), (1, 0))
    with DDQFile(rans_file) as f:
        assert f.version == (1, 1)
        assert f.decode("r").tobytes() == f.decode("s").tobytes()


def test_resumed_writer_counts_replayed_entries(tmp_path):
    from ddq_format.converters.resume import ResumableWriter
    vals = np.ones((2, 2), np.float32)
    out = tmp_path / "o.ddq"
    w = ResumableWriter(out, run_key="k")
    w.add("r", "compressed", (2, 4), "F16", seeded_rans.encode((2, 4), vals, bits=2, alpha=2, group_size=4, seed=0))
    w.abort()
    ResumableWriter(out, run_key="k", resume=True).close()
    assert _version(out.read_bytes()) == ((1, 1), (1, 1))


def test_a_1_0_reader_opens_the_file_and_fails_only_on_that_tensor(rans_file, monkeypatch):
    registry = encodings.registry
    monkeypatch.setattr(header_mod, "FORMAT_MINOR", 0)  # a reader of version 1.0 ...
    monkeypatch.setattr(encodings, "registry",  # ... that has never heard of seeded_rans
                        lambda: {k: v for k, v in registry().items() if k != "seeded_rans"})
    with DDQFile(rans_file) as f:
        assert f.decode("s").shape == (6, 40)
        with pytest.raises(EncodingError, match="newer than this reader") as e:
            f.decode("r")
        assert e.value.tensor == "r" and e.value.field == "encoding"


def test_accounting_roles_and_nominal_ratio(rans_file):
    with DDQFile(rans_file) as f:
        rep = {t["name"]: t for t in report(f)["tensors"]}
        e = f.entries["r"]
    r, s = rep["r"], rep["s"]
    assert r["nominal_ratio"] == s["nominal_ratio"] == 16 * 4 / 4
    assert r["components"]["values"] == e["buffers"]["streams"]["length"]
    assert r["components"]["row_offsets"] == e["buffers"]["stream_offsets"]["length"] == 3 * 4


def _mutated(rans_file, tmp_path, fn, *, name="bad.ddq"):
    header, data = split_file(rans_file)
    header = copy.deepcopy(header)
    data = bytearray(data)
    entry = next(e for e in header["tensors"] if e["name"] == "r")
    fn(entry, data)
    p = tmp_path / name
    p.write_bytes(assemble(header, bytes(data), minor=1))
    return p


def _set(key, value):
    return lambda e, d: e["params"].__setitem__(key, value)


@pytest.mark.parametrize("mutate,field", [
    (_set("freqs", [4096] + [0] * 14), "params.freqs"),  # 15 entries for k=4
    (_set("freqs", [4095] + [0] * 15), "params.freqs"),  # sums to 4095
    (_set("freqs", [4097, -1] + [0] * 14), "params.freqs"),
    (_set("freqs", [True] * 16), "params.freqs"),
    (_set("freqs", "x"), "params.freqs"),
    (_set("rows_per_stream", 0), "params.rows_per_stream"),
    (_set("rows_per_stream", 7), "params.rows_per_stream"),  # > rows
    (_set("rows_per_stream", 2), "buffers.stream_offsets.length"),  # 3 streams need 4 offsets, not 3
    (lambda e, d: e["buffers"]["stream_offsets"].__setitem__("dtype", "U16"), "buffers.stream_offsets.dtype"),
    (lambda e, d: e["buffers"]["streams"].__setitem__("dtype", "PACKED"), "buffers.streams.dtype"),
    (lambda e, d: e["buffers"]["streams"].__setitem__("length", e["buffers"]["streams"]["length"] - 1),
     "buffers.streams.length"),
    (lambda e, d: e["buffers"].pop("stream_offsets"), "buffers.stream_offsets"),
    (_set("zero", 16), "params.zero"),
    (_set("bits", 9), "params.bits"),
])
def test_malformed_header_rejected_at_open(rans_file, tmp_path, mutate, field):
    p = _mutated(rans_file, tmp_path, mutate)
    with pytest.raises(EncodingError) as e:
        DDQFile(p, verify_checksums=False)
    assert e.value.tensor == "r" and e.value.field == field


def _offsets(e, d):
    b = e["buffers"]["stream_offsets"]
    return np.frombuffer(d, "<u4", count=b["length"] // 4, offset=b["offset"]), b["offset"]


def _poke_offsets(values):
    def fn(e, d):
        off = e["buffers"]["stream_offsets"]["offset"]
        d[off: off + 12] = np.array(values, "<u4").tobytes()
    return fn


def _poke_stream(pos, value):
    def fn(e, d):
        d[e["buffers"]["streams"]["offset"] + pos] = value
    return fn


@pytest.mark.parametrize("mutate,match", [
    (lambda length: _poke_offsets([2, 8, length]), "offsets must run from 0"),
    (lambda length: _poke_offsets([0, 8, length - 2]), "offsets must run from 0"),
    (lambda length: _poke_offsets([0, length + 2, length]), "stream 1 has"),  # decreasing: a negative length
    (lambda length: _poke_offsets([0, 3, length]), "stream 0 has"),  # odd
    (lambda length: _poke_offsets([0, 2, length]), "stream 0 has"),  # shorter than the state
    (lambda length: _poke_stream(3, 0x00), "stream 0 is corrupt"),  # initial state < L
    (lambda length: _poke_stream(5, 0x5A), "stream 0 is corrupt"),
])
def test_corrupt_offsets_and_streams_rejected_at_decode(rans_file, tmp_path, mutate, match):
    with DDQFile(rans_file) as f:
        length = f.entries["r"]["buffers"]["streams"]["length"]
    p = _mutated(rans_file, tmp_path, mutate(length))
    with DDQFile(p, verify_checksums=False) as f:
        assert f.decode("s").shape == (6, 40)
        with pytest.raises(EncodingError, match=match) as e:
            f.decode("r")
    assert e.value.tensor == "r" and str(p) in str(e.value)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
       target=st.sampled_from(["streams", "stream_offsets"]))
def test_fuzz_byte_flips_only_raise_ddq_errors(tmp_path_factory, flips, target):
    tmp = tmp_path_factory.mktemp("fz")
    src = _write(tmp / "src.ddq")

    def fn(e, d):
        b = e["buffers"][target]
        for pos, x in flips:
            d[b["offset"] + pos % b["length"]] ^= x
    p = _mutated(src, tmp, fn)
    with DDQFile(p, verify_checksums=False) as f:
        try:
            out = f.decode("r")
        except DDQError:
            return
        assert out.shape == (6, 40)  # a flip that happens to give another valid stream decodes to something


# -- converter and loaders ---------------------------------------------------------------------------
def test_convert_and_apply_delta_fall_back_to_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from ddq_format.converters import convert
    from ddq_format.loaders import apply_delta
    from ddq_format.loaders.apply import has_kernel
    from tests.tiny_models import make_pair

    base, ft = make_pair(tmp_path / "pair", "llama", dtype="float32", steps=2)
    outs = {}
    for enc in ("seeded", "seeded_rans"):
        outs[enc] = tmp_path / f"{enc}.ddq"
        convert(base, ft, outs[enc], alpha=2, bits=4, encoding=enc, group_size=8, quiet=True, progress=False)
    with DDQFile(outs["seeded"]) as a, DDQFile(outs["seeded_rans"]) as r:
        assert a.version == (1, 0) and r.version == (1, 1)  # dense norms stay raw: no 1.3 feature by default
        assert {e["encoding"] for e in a.entries.values() if e["kind"] == "dense"} == {"raw"}
        names = [n for n, e in r.entries.items() if e["kind"] == "compressed"]
        assert names and all(r.entries[n]["encoding"] == "seeded_rans" for n in names)
        for n in names:
            assert r.decode(n).tobytes() == a.decode(n).tobytes()
        name = names[0]
        assert has_kernel(r.entries[name])  # kept compressed by the kernels (issue 10); CPU decode is numpy's
        expected = AutoModelForCausalLM.from_pretrained(base).state_dict()[name] + torch.from_numpy(r.decode(name))
    with torch.no_grad():
        merged = apply_delta(AutoModelForCausalLM.from_pretrained(base).eval(), outs["seeded_rans"])
    assert torch.equal(merged.state_dict()[name], expected)


@pytest.mark.parametrize("shape,alpha,group", [((0, 8), 2, 4), ((3, 0), 1, 1)])
def test_empty_tensors(shape, alpha, group):
    vals = np.zeros((shape[0], kept_per_row(shape[1], group, alpha)), np.float32)
    r = seeded_rans.encode(shape, vals, bits=3, alpha=alpha, group_size=group, seed=0)
    assert r.buffers["streams"][1].nbytes == 4 * (r.buffers["stream_offsets"][1].size - 1)
    assert _decode(r, shape).shape == shape


def test_u64_offsets_accepted():
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((5, 6)).astype(np.float32)
    r = seeded_rans.encode((5, 12), vals, bits=4, alpha=2, group_size=4, seed=2, rows_per_stream=2)
    dt, off = r.buffers["stream_offsets"]
    assert dt == "U32"
    wide = copy.copy(r)
    wide.buffers = dict(r.buffers, stream_offsets=("U64", off.astype("<u8")))
    assert _decode(wide, (5, 12)).tobytes() == _decode(r, (5, 12)).tobytes()


def test_reader_parts_returns_the_seeded_code_matrix(tmp_path, rans_file):
    """DDQFile.parts() gives the raw codes of a seeded_rans entry, equal to those of the same seeded entry."""
    with DDQFile(rans_file) as f:
        names = {e["encoding"]: n for n, e in f.entries.items() if e["kind"] == "compressed"}
        codes = f.parts(names["seeded_rans"])
        assert np.array_equal(codes, f.parts(names["seeded"]))


@pytest.mark.parametrize("scalar_lanes", [0, 32])
def test_one_long_stream_decodes_on_the_numpy_path(monkeypatch, scalar_lanes):
    """Issue 12 fault 9: every code in one stream. The numpy path decodes few lanes with a plain Python loop
    per lane (fast enough for long streams) and many lanes vectorized over lanes: both give the codes, and
    a stream cut short is still rejected."""
    from ddq_format import accel
    from ddq_format.quantize import fit, quantize
    monkeypatch.setattr(seeded_rans, "SCALAR_LANES", scalar_lanes)
    shape = (300, 64)
    _, vals = groupwise_dropout(np.random.default_rng(3).standard_normal(shape).astype(np.float32), 4, 16, 1)
    enc = seeded_rans.encode(shape, vals, bits=4, alpha=4, group_size=16, seed=1, rows_per_stream=300)
    assert len(enc.buffers["stream_offsets"][1]) == 2  # one stream: offsets 0 and its end
    with accel.use("numpy"):
        codes = seeded_rans.codes_of(_entry(enc, shape), _bufs(enc))
        assert np.array_equal(codes, quantize(vals, fit(vals, 4)))
        bufs = _bufs(enc)
        bufs["streams"] = bufs["streams"].copy()
        bufs["streams"][-2:] = 0  # the last word: the walk no longer ends in state L
        with pytest.raises(EncodingError, match="stream 0 is corrupt"):
            seeded_rans.codes_of(_entry(enc, shape), bufs)


def test_rows_too_long_for_one_stream_are_stored_as_seeded():
    """A row of more kept codes than one stream may hold (RANS_MAX_STREAM_SYMBOLS) used to make a file the
    writer refused, so the whole conversion failed; such a tensor is stored as `seeded` (same codes)."""
    from ddq_format import DDQFile, Writer
    from ddq_format.encodings import seeded, seeded_rans
    from ddq_format.spec import ENC_SEEDED, RANS_MAX_STREAM_SYMBOLS
    import tempfile, pathlib
    cols = RANS_MAX_STREAM_SYMBOLS + 8
    vals = np.random.default_rng(0).standard_normal((2, cols)).astype(np.float32)
    enc = seeded_rans.encode((2, cols), vals, bits=4, alpha=1, group_size=cols, seed=3)
    assert enc.encoding == ENC_SEEDED
    ref = seeded.encode((2, cols), vals, bits=4, alpha=1, group_size=cols, seed=3)
    assert enc.params == ref.params
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "long.ddq"
        with Writer(out) as wr:
            wr.add("w", "compressed", (2, cols), "F32", enc)
            wr.add("ref", "compressed", (2, cols), "F32", ref)
        with DDQFile(out) as f:
            assert f.entries["w"]["encoding"] == ENC_SEEDED
            got = f.decode("w")
            assert np.array_equal(got, f.decode("ref")) and np.count_nonzero(got) > cols
