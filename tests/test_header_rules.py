"""Header rules decided after review: strict msgpack, aligned data section, safe aux file names,
versioned unknown encodings, canonical quantizer params."""
import copy

import msgpack
import pytest

from ddq_testing import assemble, split_file
from ddq_format import DDQFile
from ddq_format.errors import EncodingError, FormatError


def _open(tmp_path, blob):
    p = tmp_path / "x.ddq"
    p.write_bytes(blob)
    return DDQFile(p)


def _raw_map(pairs) -> bytes:
    """A msgpack map written pair by pair (allows duplicate or non-string keys)."""
    out = bytearray(msgpack.packb({}))  # fixmap header with 0 entries, patched below
    out[0] = 0x80 | len(pairs)
    for k, v in pairs:
        out += msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True)
    return bytes(out)


def test_duplicate_header_key_rejected(sample_file, tmp_path):
    header, data = split_file(sample_file)
    pairs = list(header.items()) + [("alignment", 64)]
    with pytest.raises(FormatError, match="duplicate map key 'alignment'"):
        _open(tmp_path, assemble(None, data, raw_header=_raw_map(pairs)))


def test_binary_map_key_rejected(sample_file, tmp_path):
    header, data = split_file(sample_file)
    pairs = list(header.items()) + [(b"extra", 1)]
    with pytest.raises(FormatError, match="not a string"):
        _open(tmp_path, assemble(None, data, raw_header=_raw_map(pairs)))


def test_ext_type_rejected(sample_file, tmp_path):
    header, data = split_file(sample_file)
    pairs = list(header.items()) + [("extra", msgpack.ExtType(5, b""))]
    with pytest.raises(FormatError, match="ext type"):
        _open(tmp_path, assemble(None, data, raw_header=_raw_map(pairs)))


def test_unaligned_data_section_rejected(sample_file, tmp_path):
    header, data = split_file(sample_file)
    with pytest.raises(FormatError, match="not a multiple of the alignment") as e:
        _open(tmp_path, assemble(header, data + b"\0" * 3))
    assert e.value.field == "footer.header_offset"


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a//b", "a/./b", "a\\b", "x" * 256, ""])
def test_unsafe_aux_file_names_rejected(sample_file, tmp_path, name):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    header["files"][0]["name"] = name
    with pytest.raises(FormatError) as e:
        _open(tmp_path, assemble(header, data))
    assert e.value.field == "files[0].name"


def test_nested_aux_file_name_allowed(sample_file, tmp_path):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    header["files"][0]["name"] = "tokenizer/vocab.json"
    with _open(tmp_path, assemble(header, data)) as f:
        assert f.file("tokenizer/vocab.json") == b'{"model_type": "toy"}'


def _with_future_encoding(sample_file):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    next(e for e in header["tensors"] if e["name"] == "a.csr")["encoding"] = "from_the_future"
    return header, data


def test_unknown_encoding_in_same_minor_rejected_at_open(sample_file, tmp_path):
    header, data = _with_future_encoding(sample_file)
    with pytest.raises(EncodingError, match="unknown encoding 'from_the_future'") as e:
        _open(tmp_path, assemble(header, data, minor=0))
    assert e.value.tensor == "a.csr" and e.value.field == "encoding"


def test_unknown_encoding_in_newer_minor_fails_only_that_tensor(sample_file, tmp_path):
    header, data = _with_future_encoding(sample_file)
    with _open(tmp_path, assemble(header, data, minor=7)) as f:
        assert f.version == (1, 7)
        assert f.decode("b.seeded").shape == (6, 40)  # the rest of the file stays readable
        with pytest.raises(EncodingError, match="newer than this reader") as e:
            f.decode("a.csr")
        assert e.value.tensor == "a.csr"


@pytest.mark.parametrize("tensor,key,value", [
    ("a.csr", "zero", 16), ("a.csr", "zero", -1), ("b.seeded", "zero", 8), ("a.csr", "seed", 2**32),
    ("a.csr", "offsets", [0.0, -4.0, -8.0, -12.0]),
])
def test_non_canonical_quantizer_params_rejected(sample_file, tmp_path, tensor, key, value):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    next(e for e in header["tensors"] if e["name"] == tensor)["params"][key] = value
    with pytest.raises(EncodingError) as e:
        _open(tmp_path, assemble(header, data))
    assert e.value.tensor == tensor and e.value.field == f"params.{key}"
