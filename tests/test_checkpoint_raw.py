"""The one safetensors reader (ddq_format.checkpoint_raw): it accepts what safetensors accepts, refuses the
rest naming file, tensor and field, and finds and orders a checkpoint's shards the same way for convert,
verify and materialize."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddq_format import UsageError
from ddq_format.checkpoint_raw import (MAX_HEADER_BYTES, SafetensorsCheckpoint, SafetensorsFile, open_checkpoint,
                                       weight_files)

safetensors = pytest.importorskip("safetensors")


def write_st(path, header, data=b"", *, raw_header: bytes | None = None, length: int | None = None):
    """A safetensors file from a header dict (or raw header bytes) and data bytes."""
    body = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


def library_accepts(path) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
        return True
    except Exception:  # the library raises SafetensorError, and others for I/O
        return False


def ours_accepts(path) -> bool:
    try:
        SafetensorsFile(path)
        return True
    except UsageError:
        return False


def t(dtype, shape, a, b):
    return {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}


F4 = t("F32", [2], 0, 8)
# (header dict or raw bytes, data, declared length or None, field, tensor): each one safetensors refuses too
BAD = {
    "short": (None, b"", 0, "header_length", None),
    "header too long": ({}, b"", MAX_HEADER_BYTES + 1, "header_length", None),
    "header past end": ({}, b"", 4096, "header_length", None),
    "not utf-8": (b"{\"\xff\": 1}", b"", None, "header", None),
    "not json": (b"{\"a\": ", b"", None, "header", None),
    "not an object": ([1, 2], b"", None, "header", None),
    "nan literal": (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": NaN}}', b"0000", None,
                    "header", None),
    "unpaired surrogate": (b'{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', b"0000", None,
                           "header", None),
    "too deep": (('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": %s}}'
                  % ("[" * 126 + "]" * 126)).encode(), b"0000", None, "header", "a"),
    "metadata not strings": ({"__metadata__": {"k": 1}, "a": F4}, b"0" * 8, None, "__metadata__", None),
    "unknown dtype": ({"a": t("F128", [1], 0, 16)}, b"0" * 16, None, "dtype", "a"),
    "negative dim": ({"a": t("F32", [-1], 0, 0)}, b"", None, "shape", "a"),
    "bool dim": ({"a": t("F32", [True], 0, 4)}, b"0" * 4, None, "shape", "a"),
    "float dim": ({"a": t("F32", [1.0], 0, 4)}, b"0" * 4, None, "shape", "a"),
    "three offsets": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 4]}}, b"0" * 4, None,
                      "data_offsets", "a"),
    "end before start": ({"a": t("F32", [0], 4, 0)}, b"0" * 4, None, "data_offsets", "a"),
    "count overflow": ({"a": t("F32", [2**32, 2**32], 0, 4)}, b"0" * 4, None, "shape", "a"),
    "bytes overflow": ({"a": t("F32", [2**62], 0, 4)}, b"0" * 4, None, "shape", "a"),
    "sub-byte tail": ({"a": t("F4", [3], 0, 2)}, b"00", None, "shape", "a"),
    "wrong length": ({"a": t("F32", [3], 0, 8)}, b"0" * 8, None, "data_offsets", "a"),
    "not from 0": ({"a": t("F32", [2], 4, 12)}, b"0" * 12, None, "data_offsets", "a"),
    "hole": ({"a": F4, "b": t("F32", [1], 12, 16)}, b"0" * 16, None, "data_offsets", "b"),
    "overlap": ({"a": F4, "b": t("F32", [2], 4, 12)}, b"0" * 12, None, "data_offsets", "b"),
    "trailing bytes": ({"a": F4}, b"0" * 9, None, "data_offsets", None),
    "truncated data": ({"a": F4}, b"0" * 7, None, "data_offsets", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_files_are_refused_like_safetensors_refuses_them(tmp_path, case):
    header, data, length, field, tensor = BAD[case]
    path = tmp_path / "m.safetensors"
    if case == "short":
        path.write_bytes(b"\x01\x02\x03")
    else:
        write_st(path, None, data, raw_header=header if isinstance(header, bytes) else json.dumps(header).encode(),
                 length=length)
    assert not library_accepts(path), "the oracle accepts this file: the case is wrong"
    with pytest.raises(UsageError) as err:
        SafetensorsFile(path)
    assert err.value.path == str(path) and err.value.field == field and err.value.tensor == tensor, str(err.value)


def test_stricter_than_safetensors_only_on_duplicate_keys(tmp_path):
    dup = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], ' \
          b'"data_offsets": [0, 4]}}'
    path = write_st(tmp_path / "d.safetensors", None, b"0000", raw_header=dup)
    assert library_accepts(path)  # serde keeps the last key; which one a reader sees is not defined
    with pytest.raises(UsageError, match="duplicate key 'a'"):
        SafetensorsFile(path)


def test_valid_files_read_like_the_library(tmp_path):
    from safetensors.numpy import save_file
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "h": np.arange(5, dtype=np.float16),
              "i": np.arange(3, dtype=np.int64), "e": np.zeros((0, 7), np.float32)}
    save_file(arrays, tmp_path / "a.safetensors", metadata={"format": "np"})
    f = SafetensorsFile(tmp_path / "a.safetensors")
    assert f.names() == sorted(arrays) and f.metadata == {"format": "np"}
    for name, want in arrays.items():
        assert f.info(name) == ({"float32": "F32", "float16": "F16", "int64": "I64"}[str(want.dtype)],
                                list(want.shape))
        got = f.bits(name)
        assert got.tobytes() == want.tobytes() and got.shape == want.shape and not got.flags.writeable
    # BF16, and the dtypes .ddq never stores but safetensors knows (listed, never read); empty header
    write_st(tmp_path / "b.safetensors", {"b": t("BF16", [2], 0, 4), "f8": t("F8_E4M3", [3], 4, 7),
                                          "f4": t("F4", [2], 7, 8), "__metadata__": None}, b"\x80\x3f\x00\x40xyzq")
    f = SafetensorsFile(tmp_path / "b.safetensors")
    assert f.bits("b").tolist() == [0x3F80, 0x4000] and f.info("f8") == ("F8_E4M3", [3])
    with pytest.raises(UsageError, match="dtype F8_E4M3 is not supported") as err:
        f.bits("f8")
    assert err.value.tensor == "f8" and err.value.field == "dtype"
    write_st(tmp_path / "c.safetensors", {})
    assert library_accepts(tmp_path / "c.safetensors") and SafetensorsFile(tmp_path / "c.safetensors").names() == []


KNOWN = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "F8_E5M2"]


@given(specs=st.lists(st.tuples(st.sampled_from(KNOWN + ["Q7"]), st.lists(st.integers(0, 4), max_size=3)),
                      max_size=4),
       shift=st.tuples(st.integers(0, 4), st.integers(-2, 2), st.integers(-2, 2)), tail=st.integers(-2, 2),
       order=st.randoms(use_true_random=False))
def test_differential_against_safetensors(tmp_path_factory, specs, shift, tail, order):
    """Random layouts, one offset possibly nudged and the file's end possibly off: our reader accepts a file
    exactly when the safetensors library does."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1, "BOOL": 1, "F64": 8, "F8_E5M2": 1, "Q7": 1}
    header, pos = {}, 0
    for i, (dtype, shape) in enumerate(specs):
        n = sizes[dtype] * int(np.prod(shape))
        header[f"t{i}"] = t(dtype, shape, pos, pos + n)
        pos += n
    which, da, db = shift
    if header and which < len(header):
        off = header[f"t{which}"]["data_offsets"]
        off[0], off[1] = max(0, off[0] + da), max(0, off[1] + db)
    items = list(header.items())
    order.shuffle(items)
    path = write_st(tmp_path_factory.mktemp("d") / "x.safetensors", dict(items), b"\0" * max(0, pos + tail))
    assert ours_accepts(path) == library_accepts(path)


# -- which files, in which order ----------------------------------------------------------------------
def _shard(path, names):
    from safetensors.numpy import save_file
    save_file({n: np.full(2, i, np.float32) for i, n in enumerate(names)}, path)


def test_shards_are_found_and_ordered_in_one_place(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    _shard(m / "model-00002-of-00002.safetensors", ["b"])
    _shard(m / "model-00001-of-00002.safetensors", ["a", "z"])
    _shard(m / "consolidated.safetensors", ["a", "b", "z"])  # Mistral repos ship both: the index wins
    (m / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"z": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                        "a": "model-00001-of-00002.safetensors"}}))
    want = [m / "model-00001-of-00002.safetensors", m / "model-00002-of-00002.safetensors"]
    assert weight_files(m) == want
    ck = SafetensorsCheckpoint(m)
    assert ck.files == want and list(ck.tensors) == ["a", "z", "b"]
    assert {n: s.path for n, s in open_checkpoint(m).items()} == {"a": want[0], "z": want[0], "b": want[1]}
    (m / "model.safetensors.index.json").unlink()
    _shard(m / "model.safetensors", ["a"])
    assert weight_files(m) == [m / "model.safetensors"]
    (m / "model.safetensors").unlink()
    _shard(m / ".hidden.safetensors", ["q"])
    assert weight_files(m) == sorted([*want, m / "consolidated.safetensors"])
    with pytest.raises(UsageError, match="tensor appears in two shards") as err:
        SafetensorsCheckpoint(m)  # consolidated + the shards: every tensor twice
    assert err.value.tensor == "a"


@pytest.mark.parametrize("weight_map,match", [
    ({"a": "gone.safetensors"}, "shard named in the index is missing"),
    ({"a": "../outside.safetensors"}, "leaves the model folder"),
    ({"a": "/etc/passwd"}, "leaves the model folder"),
    ({"a": 3}, "must map tensor names to shard file names"),
    ({}, "names no shard files"),
])
def test_bad_indexes_are_refused(tmp_path, weight_map, match):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(UsageError, match=match):
        weight_files(tmp_path)


def test_folders_without_safetensors(tmp_path):
    with pytest.raises(UsageError, match="no model.safetensors"):
        weight_files(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UsageError, match="convert it to safetensors first"):
        weight_files(tmp_path)
    assert weight_files(tmp_path, bin_ok=True) == [tmp_path / "pytorch_model.bin"]


def test_every_entry_point_uses_the_validating_reader(tmp_path, monkeypatch):
    """convert, verify and materialize see the same refusal for a file whose tensors overlap (before, each had
    its own parse, and all three accepted it)."""
    from ddq_format.converters.checkpoint import Checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    write_st(bad / "model.safetensors", {"a": F4, "b": t("F32", [2], 4, 12)}, b"0" * 12)
    (bad / "config.json").write_text("{}")
    for open_it in (Checkpoint, open_checkpoint):
        with pytest.raises(UsageError, match="overlaps the previous tensor") as err:
            open_it(bad)
        assert err.value.tensor == "b" and err.value.field == "data_offsets"
