"""Format 2.0, the compact container (SPEC.md §2, §3.3): the 1.3 container with its header stored as a zlib
stream and buffers aligned to 16. Whatever a file holds, its 1.x and 2.0 forms decode to the same arrays from the
same buffer bytes, account for every byte and verify sound."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ddq_testing import assemble, split_file, without_offsets, write_sample
from ddq_format import DDQFile, Writer
from ddq_format.accounting import report
from ddq_format.encodings import dense_q, raw, seeded_rans
from ddq_format.spec import COMPACT_MINOR
from ddq_format.errors import EncodingError, UsageError
from ddq_format.repack import repack
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.verify import verify


def _write(path, deltas, major):
    with Writer(path, metadata={"t": "compact"}, major=major) as w:
        for i, d in enumerate(deltas):
            name = f"model.layers.{i}.mlp.up_proj.weight"
            if d.ndim == 1:
                w.add(name, "dense", d.shape, "F32", dense_q.encode(d, 8))
            else:
                _, vals = groupwise_dropout(d, 2, 8, seed=i)
                w.add(name, "compressed", d.shape, "F16", seeded_rans.encode(d.shape, vals, bits=4, alpha=2,
                                                                             group_size=8, seed=i))
    return path


shapes = st.lists(st.one_of(st.tuples(st.integers(1, 6), st.integers(8, 20)), st.tuples(st.integers(1, 30))),
                  min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(shapes=shapes, seed=st.integers(0, 2**16))
def test_both_majors_hold_the_same_tensors(tmp_path_factory, shapes, seed):
    rng = np.random.default_rng(seed)
    deltas = [rng.standard_normal(s).astype(np.float32) * np.float32(0.01) for s in shapes]
    tmp = tmp_path_factory.mktemp("c")
    one, two = _write(tmp / "one.ddq", deltas, 1), _write(tmp / "two.ddq", deltas, 2)
    with DDQFile(one) as a, DDQFile(two) as b:
        assert b.version == (2, 0) and a.version[0] == 1
        assert (a.header["alignment"], b.header["alignment"]) == (64, 16)
        assert without_offsets(a.header) == without_offsets(b.header) and a.names == b.names
        for name in a.names:
            assert a.decode(name).tobytes() == b.decode(name).tobytes()
        stored = two.read_bytes()[b.header_offset: b.header_offset + b.header_length]
        assert zlib.decompress(stored) == bytes(b._plain) and len(b._plain) == b.header_plain_length
        ra, rb = report(a), report(b)  # report() asserts that every byte is accounted for
        for key in ("values", "dense", "row_offsets"):  # the same buffers
            assert ra["totals"]["components"][key] == rb["totals"]["components"][key]
        assert rb["totals"]["components"]["padding"] <= ra["totals"]["components"]["padding"]
        assert rb["header_bytes"] == b.header_length and rb["header_msgpack_bytes"] == b.header_plain_length
        head = rb["totals"]["components"]["header"] + rb["totals"]["components"]["scalars"]
        assert head == b.header_length + 64 + 32 + b.layout.trailing  # preamble, footer, stored header
        json.dumps(rb, allow_nan=False)
    assert verify(one) == [] and verify(two) == []
    # repack converts either way, byte for byte what the writer gives in that major
    assert repack(one, tmp / "r2.ddq", 2).read_bytes() == two.read_bytes()
    assert repack(two, tmp / "r1.ddq", 1).read_bytes() == one.read_bytes()


def test_compact_header_of_many_entries_is_a_fraction_of_the_plain_one(tmp_path):
    rng = np.random.default_rng(0)
    deltas = [rng.standard_normal((4, 64)).astype(np.float32) for _ in range(200)]
    a, b = _write(tmp_path / "a.ddq", deltas, 1), _write(tmp_path / "b.ddq", deltas, 2)
    with DDQFile(a) as fa, DDQFile(b) as fb:
        assert fb.header_length < fa.header_length / 3, (fb.header_length, fa.header_length)
        per_entry = [t["components"]["header"] + t["components"]["scalars"] for t in report(fb)["tensors"]]
        assert max(per_entry) < 150  # each entry is charged its share of the compressed header


def test_writer_refuses_an_unknown_major(tmp_path):
    with pytest.raises(UsageError, match="major"):
        Writer(tmp_path / "x.ddq", major=3)
    assert list(tmp_path.iterdir()) == []


def test_a_newer_minor_of_major_2_keeps_the_file_readable_but_not_its_unknown_encoding(tmp_path):
    header, data = split_file(write_sample(tmp_path / "s.ddq"))
    header["tensors"][0]["encoding"] = "future_codec"
    p = tmp_path / "n.ddq"
    p.write_bytes(assemble(header, data, major=2, minor=COMPACT_MINOR + 1))
    with DDQFile(p) as f:
        assert f.version == (2, COMPACT_MINOR + 1)
        assert f.decode("c.dense").shape == (5,)
        with pytest.raises(EncodingError, match="newer than this reader"):
            f.decode("a.csr")
    p.write_bytes(assemble(header, data, major=2, minor=COMPACT_MINOR))  # the same in a file this reader knows
    with pytest.raises(EncodingError):
        DDQFile(p)


def test_preamble_and_footer_carry_2_0(tmp_path):
    p = _write(tmp_path / "x.ddq", [np.ones(8, np.float32)], 2)
    blob = p.read_bytes()
    assert struct.unpack_from("<HH", blob, 8) == (2, 0) == struct.unpack_from("<HH", blob, len(blob) - 12)
    assert blob[12:64] == bytes(52)


GOLDEN = sorted(p for p in (Path(__file__).resolve().parent / "data").glob("*.ddq") if p.stem != "mixed_v2")


@pytest.mark.parametrize("src", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_repack_of_every_golden_file_round_trips_byte_for_byte(tmp_path, src):
    two = repack(src, tmp_path / "two.ddq", 2)
    assert repack(two, tmp_path / "one.ddq", 1).read_bytes() == src.read_bytes()
    if src.stem == "mixed":  # the committed 2.0 golden file is exactly this repack
        assert two.read_bytes() == (src.parent / "mixed_v2.ddq").read_bytes()


def test_cli_repack(tmp_path):
    from typer.testing import CliRunner

    from ddq_format.cli import app
    src = Path(__file__).resolve().parent / "data" / "mixed.ddq"
    out = tmp_path / "m.ddq"
    res = CliRunner().invoke(app, ["repack", str(src), "-o", str(out), "--format", "2"])
    assert res.exit_code == 0 and "format 2.0" in res.stdout and "was format 1.0" in res.stdout, res.output
    res = CliRunner().invoke(app, ["repack", str(src), "-o", str(out), "--format", "2"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    newer = Path(__file__).resolve().parent / "attacks" / "encoding_unknown_newer_minor.ddq"
    res = CliRunner().invoke(app, ["repack", str(newer), "-o", str(tmp_path / "n.ddq"), "--format", "2"])
    assert res.exit_code == 2 and "newer than this library" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "n.ddq").exists()
