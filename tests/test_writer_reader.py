"""The streaming writer (atomic, deterministic, refuses bad input) and the reader's access API."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from ddq_testing import write_sample
from ddq_format import DDQError, DDQFile, Writer
from ddq_format.encodings import raw
from ddq_format.spec import FOOTER_MAGIC, FOOTER_SIZE, MAGIC, PREAMBLE_SIZE


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


def test_crash_inside_with_leaves_nothing(tmp_path):
    target = tmp_path / "out.ddq"
    with pytest.raises(RuntimeError, match="boom"):
        with Writer(target) as w:
            w.add("x", "dense", [4], "F32", raw.encode(np.ones(4, np.float32), "F32"))
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_crash_keeps_previous_file(tmp_path):
    target = write_sample(tmp_path / "out.ddq")
    before = target.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with Writer(target) as w:
            w.add("x", "dense", [4], "F32", raw.encode(np.ones(4, np.float32), "F32"))
            raise KeyboardInterrupt
    assert target.read_bytes() == before
    assert leftovers(tmp_path) == ["out.ddq"]


def test_no_file_under_final_name_until_close(tmp_path):
    target = tmp_path / "out.ddq"
    w = Writer(target)
    w.add("x", "dense", [4], "F32", raw.encode(np.ones(4, np.float32), "F32"))
    assert not target.exists()
    assert w.close() == target
    assert target.exists() and len(leftovers(tmp_path)) == 1


def test_same_input_gives_identical_bytes(tmp_path):
    a = write_sample(tmp_path / "a.ddq").read_bytes()
    b = write_sample(tmp_path / "b.ddq").read_bytes()
    assert a == b


def test_layout(sample_file):
    blob = sample_file.read_bytes()
    assert blob[:8] == MAGIC and struct.unpack_from("<HH", blob, 8) == (1, 0)
    assert blob[12:PREAMBLE_SIZE] == bytes(PREAMBLE_SIZE - 12)
    off, length, crc, major, minor = struct.unpack_from("<QQIHH", blob, len(blob) - FOOTER_SIZE)
    assert blob[-8:] == FOOTER_MAGIC and (major, minor) == (1, 0)
    assert off % 64 == 0 and off + length + FOOTER_SIZE == len(blob)
    assert zlib.crc32(blob[off: off + length]) == crc


def test_duplicate_names_refused(tmp_path):
    with Writer(tmp_path / "d.ddq") as w:
        w.add("x", "same", [1], "F32")
        with pytest.raises(DDQError, match="duplicate"):
            w.add("x", "same", [1], "F32")
        w.add_file("f", b"1")
        with pytest.raises(DDQError, match="duplicate"):
            w.add_file("f", b"2")
    with DDQFile(tmp_path / "d.ddq") as f:
        assert f.names == ["x"] and f.file("f") == b"1"


def test_writer_refuses_inconsistent_entries(tmp_path):
    with Writer(tmp_path / "d.ddq") as w:
        with pytest.raises(DDQError, match="kind"):
            w.add("a", "bogus", [1], "F32")
        with pytest.raises(DDQError, match="needs"):
            w.add("a", "dense", [1], "F32")
        with pytest.raises(DDQError, match="takes no"):
            w.add("a", "same", [1], "F32", raw.encode(np.ones(1, np.float32), "F32"))
        with pytest.raises(DDQError, match="tied_to"):
            w.add("a", "tied", [1], "F32")


def test_reader_access_errors(sample_file):
    with DDQFile(sample_file) as f:
        with pytest.raises(DDQError, match="no such tensor"):
            f.decode("nope")
        with pytest.raises(DDQError, match="no such buffer"):
            f.buffer("a.csr", "nope")
        with pytest.raises(DDQError, match="no such file"):
            f.file("nope.json")
        with pytest.raises(DDQError, match="no compressed parts"):
            f.parts("c.dense")
        assert set(f.buffers("a.csr")) == {"row_offsets", "col_indices", "values"}
        assert f.header["metadata"] == {"note": "sample"}


def test_missing_file_is_ddq_error(tmp_path):
    with pytest.raises(DDQError, match="cannot open"):
        DDQFile(tmp_path / "absent.ddq")


def test_writer_checks_each_entry_before_writing_its_bytes(tmp_path):
    """An entry the reader would reject fails at add(), naming the tensor, and nothing of it is written."""
    from ddq_format.encodings import Encoded
    from ddq_format.errors import EncodingError
    target = tmp_path / "out.ddq"
    with Writer(target) as w:
        bad = Encoded("seeded", {"alpha": 2, "group_size": 4, "bits": 9, "scale": 0.5, "zero": 0, "seed": 0},
                      {"codes": ("PACKED", np.zeros(1, np.uint8))})
        with pytest.raises(EncodingError) as e:
            w.add("w", "compressed", [1, 4], "F32", bad)
        assert e.value.tensor == "w" and e.value.field == "params.bits"
        w.add("x", "dense", [4], "F32", raw.encode(np.ones(4, np.float32), "F32"))
    with DDQFile(target) as f:
        assert f.names == ["x"] and f.data_length == 64  # no bytes of the refused entry


def test_minor_version_label_follows_the_features_used(tmp_path):
    from ddq_format.binding import binding
    x = np.ones(4, np.float32)
    for digest, minor in ((False, 0), (True, 2)):
        with Writer(tmp_path / "d.ddq") as w:
            w.add("x", "dense", [4], "F32", raw.encode(x, "F32"), base=binding(x, [4], "F32", digest=digest))
        blob = (tmp_path / "d.ddq").read_bytes()
        assert struct.unpack_from("<HH", blob, 8) == (1, minor) == struct.unpack_from("<HH", blob, len(blob) - 12)
