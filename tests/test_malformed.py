"""Malformed input: each case is a clear ddq_format error naming the field, never a crash, hang or big allocation.

Crafted files are rebuilt from a (corrupted) header dict and data section with a correct footer and header
CRC (conftest.assemble), so each test reaches exactly the check it targets.
"""
from __future__ import annotations

import copy
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from ddq_testing import assemble, packb, split_file, write_sample
from ddq_format import ChecksumError, DDQError, DDQFile, EncodingError, FormatError, VersionError, Writer
from ddq_format.encodings import raw
from ddq_format.spec import FOOTER_SIZE, MAX_DECODED_BYTES, MAX_DIM, MAX_HEADER_BYTES, PREAMBLE_SIZE
from ddq_format.writer import footer, preamble

ALLOC_CAP = 8 * 2**20  # no malformed file below may make the reader allocate more than this


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    path = write_sample(tmp_path_factory.mktemp("m") / "sample.ddq")
    header, data = split_file(path)
    return path, header, data


def open_all(path):
    """Open and touch everything: every tensor decoded, parts read, aux files read."""
    with DDQFile(path) as f:
        for name, e in f.entries.items():
            f.decode(name)
            if e.get("encoding") in ("csr_parts", "seeded"):
                f.parts(name)
        for name in f.files:
            f.file(name)


def expect(tmp_path, blob: bytes, exc=DDQError, field: str | None = None, match: str | None = None,
           name="bad.ddq"):
    """The file must fail with `exc` whose message names `field`, within the allocation cap."""
    path = tmp_path / name
    path.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(exc) as info:
            open_all(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = info.value
    assert isinstance(err, DDQError)
    assert str(path) in str(err)  # names the file
    if field is not None:
        assert err.field == field, (err.field, str(err))
        assert repr(field) in str(err)
    if match is not None:
        assert match in str(err), str(err)
    assert peak < ALLOC_CAP, peak
    return err


def crafted(sample, edit):
    """assemble() of the sample after edit(header, data), which may return new data bytes."""
    _, header, data = sample
    h = copy.deepcopy(header)
    d = bytearray(data)
    out = edit(h, d)
    return assemble(h, bytes(out if isinstance(out, (bytes, bytearray)) else d))


def entry(h, name):
    return next(e for e in h["tensors"] if e["name"] == name)


def put_buffer(h, d, name, role, new: bytes):
    """Overwrite a buffer's bytes (same length) and fix its CRC, so only the content check can fire."""
    b = entry(h, name)["buffers"][role]
    assert len(new) == b["length"]
    d[b["offset"]: b["offset"] + b["length"]] = new
    b["crc32"] = zlib.crc32(new)


def test_sample_is_sound(sample):
    path, header, data = sample
    open_all(path)
    assert assemble(header, data) == path.read_bytes()  # the crafting helper reproduces the writer exactly


# ---- preamble, footer, layout -------------------------------------------------------------------------------
def test_bad_magic(tmp_path, sample):
    blob = bytearray(sample[0].read_bytes())
    blob[1] ^= 0xFF
    expect(tmp_path, bytes(blob), FormatError, "magic")
    expect(tmp_path, b"", FormatError, "magic")
    expect(tmp_path, b"PK\x03\x04" + bytes(200), FormatError, "magic")


def test_unknown_major_version(tmp_path, sample):
    _, header, data = sample
    expect(tmp_path, assemble(header, data, major=3), VersionError, "version", match="3.0")
    expect(tmp_path, assemble(header, data, major=0), VersionError, "version")


def test_unknown_minor_is_readable(tmp_path, sample):
    _, header, data = sample
    h = copy.deepcopy(header)
    h["future_key"] = {"ignored": True}  # minor additions are ignorable
    path = tmp_path / "minor.ddq"
    path.write_bytes(assemble(h, data, minor=7))
    with DDQFile(path) as f:
        assert f.version == (1, 7)
        open_all(path)


def test_footer_version_differs(tmp_path, sample):
    _, header, data = sample
    blob = bytearray(assemble(header, data))
    struct.pack_into("<H", blob, len(blob) - 12, 2)
    expect(tmp_path, bytes(blob), FormatError, "footer.version")


def test_truncated_at_every_offset(tmp_path):
    """Every prefix of a real file (all regions: preamble, buffers, header, footer) is refused."""
    path = write_sample(tmp_path / "full.ddq")
    blob = path.read_bytes()
    bad = tmp_path / "cut.ddq"
    for n in range(len(blob)):
        bad.write_bytes(blob[:n])
        with pytest.raises(DDQError):
            open_all(bad)


def test_truncated_error_names_region(tmp_path, sample):
    blob = sample[0].read_bytes()
    expect(tmp_path, blob[:PREAMBLE_SIZE + 10], FormatError, match="truncated")
    expect(tmp_path, blob[:-1], FormatError, "footer")
    expect(tmp_path, blob[:-FOOTER_SIZE], FormatError, "footer")


def test_extra_bytes_after_footer(tmp_path, sample):
    expect(tmp_path, sample[0].read_bytes() + b"\0", FormatError, "footer")


def _with_footer(header_raw: bytes, data: bytes, header_offset: int, header_len: int, crc=None) -> bytes:
    foot = struct.pack("<QQIHH", header_offset, header_len, zlib.crc32(header_raw) if crc is None else crc, 1, 0)
    return preamble() + data + header_raw + foot + b"DDQFOOT\x00"


def test_header_length_past_eof(tmp_path, sample):
    _, header, data = sample
    h = packb(header)
    off = PREAMBLE_SIZE + len(data)
    expect(tmp_path, _with_footer(h, data, off, len(h) + 1), FormatError, "footer.header_offset")
    expect(tmp_path, _with_footer(h, data, off, 2**40), FormatError, "footer.header_length")
    expect(tmp_path, _with_footer(h, data, 2**63, len(h)), FormatError, "footer.header_offset")
    expect(tmp_path, _with_footer(h, data, 3, len(h)), FormatError, "footer.header_offset")


def test_header_over_cap(tmp_path, sample):
    _, header, data = sample
    h = packb(header)
    expect(tmp_path, _with_footer(h, data, PREAMBLE_SIZE + len(data), MAX_HEADER_BYTES + 1), FormatError,
           "footer.header_length", match="cap")


def test_header_checksum_mismatch(tmp_path, sample):
    _, header, data = sample
    h = packb(header)
    expect(tmp_path, _with_footer(h, data, PREAMBLE_SIZE + len(data), len(h), crc=zlib.crc32(h) ^ 1),
           ChecksumError, "footer.header_crc32")
    blob = bytearray(sample[0].read_bytes())
    blob[PREAMBLE_SIZE + len(data) + 5] ^= 0x20  # a byte inside the header
    expect(tmp_path, bytes(blob), ChecksumError, "footer.header_crc32")


@pytest.mark.parametrize("raw_header", [
    b"\xc1", b"\x91\xc1", b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\x81\x01\x02",  # integer map key
    b"\x93\x01\x02\x03",  # a list, not a map
    b"\xc7\x01\x05\x00",  # an ext type
    b"", b"\x85",
])
def test_msgpack_garbage(tmp_path, sample, raw_header):
    _, header, data = sample
    expect(tmp_path, assemble(header, data, raw_header=raw_header), FormatError, "header")


def test_header_with_trailing_bytes(tmp_path, sample):
    _, header, data = sample
    expect(tmp_path, assemble(header, data, raw_header=packb(header) + b"\x00"), FormatError, "header")


# ---- header keys ----------------------------------------------------------------------------------------------
def _set(key, value):
    def edit(h, d):
        if value is KeyError:
            del h[key]
        else:
            h[key] = value
    return edit


@pytest.mark.parametrize("key,value,field", [
    ("alignment", 32, "alignment"), ("alignment", 96, "alignment"), ("alignment", "64", "alignment"),
    ("alignment", KeyError, "alignment"), ("alignment", True, "alignment"),
    ("checksum", "xxh64", "checksum"), ("checksum", KeyError, "checksum"),
    ("metadata", [], "metadata"), ("metadata", {"a": 1}, "metadata"), ("base", "x", "base"),
    ("algorithm", 3, "algorithm"), ("files", {}, "files"), ("tensors", KeyError, "tensors"),
    ("tensors", {"a": 1}, "tensors"),
])
def test_bad_top_level_keys(tmp_path, sample, key, value, field):
    expect(tmp_path, crafted(sample, _set(key, value)), FormatError, field)


def _entry_set(name, key, value):
    def edit(h, d):
        e = entry(h, name)
        if value is KeyError:
            del e[key]
        else:
            e[key] = value
    return edit


@pytest.mark.parametrize("name,key,value,field,exc", [
    ("c.dense", "kind", "bogus", "kind", FormatError),
    ("c.dense", "kind", ["dense"], "kind", FormatError),
    ("c.dense", "kind", KeyError, "kind", FormatError),
    ("e.same", "shape", [-1, 3], "shape", FormatError),
    ("e.same", "shape", [3.0, 3], "shape", FormatError),
    ("e.same", "shape", [MAX_DIM + 1], "shape", FormatError),
    ("e.same", "shape", [1] * 9, "shape", FormatError),
    ("e.same", "shape", "3x3", "shape", FormatError),
    ("e.same", "shape", [MAX_DIM] * 8, "shape", FormatError),  # huge: decodes past the cap
    ("g.removed", "shape", [2**17, 2**17 + 1], "shape", FormatError),  # 2^34 + 2^17 elements x 4 bytes
    ("e.same", "dtype", "F64", "dtype", FormatError),
    ("e.same", "dtype", KeyError, "dtype", FormatError),
    ("e.same", "buffers", {"data": {"offset": 0, "length": 0, "crc32": 0, "dtype": "F32"}}, "buffers",
     FormatError),
    ("c.dense", "encoding", "zstd_magic_v9", "encoding", EncodingError),
    ("c.dense", "encoding", KeyError, "encoding", EncodingError),
    ("c.dense", "encoding", "seeded", "encoding", EncodingError),  # not allowed for kind dense
    ("a.csr", "encoding", "raw", "encoding", EncodingError),
    ("c.dense", "params", [1], "params", FormatError),
    ("c.dense", "buffers", [], "buffers", FormatError),
    ("c.dense", "base", "x", "base", FormatError),
    ("c.dense", "base", {"shape": [5], "dtype": "F16"}, "base", FormatError),
    ("c.dense", "base", {"shape": "5", "dtype": "F16", "fingerprint": "x"}, "base.shape", FormatError),
    ("f.tied", "tied_to", "nope", "tied_to", FormatError),
    ("f.tied", "tied_to", "f.tied", "tied_to", FormatError),
    ("f.tied", "tied_to", ["d.replace"], "tied_to", FormatError),  # unhashable: must not be a TypeError
    ("f.tied", "tied_to", {"a": 1}, "tied_to", FormatError),
    ("f.tied", "tied_to", KeyError, "tied_to", FormatError),
    ("f.tied", "shape", [3, 2], "shape", FormatError),
])
def test_bad_entry_fields(tmp_path, sample, name, key, value, field, exc):
    err = expect(tmp_path, crafted(sample, _entry_set(name, key, value)), exc, field)
    assert err.tensor == name


def test_bad_entry_names(tmp_path, sample):
    for bad in ("", 3, None, "x" * 1025):
        err = expect(tmp_path, crafted(sample, _entry_set("e.same", "name", bad)), FormatError)
        assert err.field.endswith(".name")
    err = expect(tmp_path, crafted(sample, lambda h, d: h["tensors"].append(dict(entry(h, "e.same")))),
                 FormatError, "name", match="duplicate")
    assert err.tensor == "e.same"
    expect(tmp_path, crafted(sample, lambda h, d: h["tensors"].append(7)), FormatError, "tensors[7]")


def test_bad_files(tmp_path, sample):
    expect(tmp_path, crafted(sample, lambda h, d: h["files"].append(dict(h["files"][0]))), FormatError,
           "files[1].name", match="duplicate")
    expect(tmp_path, crafted(sample, lambda h, d: h["files"][0].pop("name")), FormatError, "files[0].name")
    expect(tmp_path, crafted(sample, lambda h, d: h["files"][0].update(crc32=-1)), FormatError,
           "files[0].crc32")
    expect(tmp_path, crafted(sample, lambda h, d: h["files"][0].update(crc32=2**32)), FormatError,
           "files[0].crc32")


# ---- buffer table ---------------------------------------------------------------------------------------------
def _buf(name, role, **kw):
    def edit(h, d):
        entry(h, name)["buffers"][role].update(kw)
    return edit


def test_overlapping_buffers(tmp_path, sample):
    def edit(h, d):
        a = entry(h, "a.csr")["buffers"]
        a["col_indices"]["offset"] = a["row_offsets"]["offset"]
    expect(tmp_path, crafted(sample, edit), FormatError, "buffers", match="overlaps")

    def edit2(h, d):  # two tensors sharing one buffer
        entry(h, "d.replace")["buffers"]["data"] = dict(entry(h, "c.dense")["buffers"]["data"])
        entry(h, "d.replace")["buffers"]["data"]["length"] = 12
    expect(tmp_path, crafted(sample, edit2), FormatError, "buffers")


@pytest.mark.parametrize("kw,field", [
    (dict(offset=2**40), "buffers.data"), (dict(offset=2**64 - 64), "buffers.data"),
    (dict(length=2**40), "buffers.data"), (dict(offset=-64), "buffers.data.offset"),
    (dict(offset=1), "buffers.data.offset"), (dict(offset="0"), "buffers.data.offset"),
    (dict(length=None), "buffers.data.length"), (dict(crc32=1.5), "buffers.data.crc32"),
    (dict(dtype=3), "buffers.data.dtype"),
])
def test_out_of_range_buffers(tmp_path, sample, kw, field):
    err = expect(tmp_path, crafted(sample, _buf("c.dense", "data", **kw)), FormatError, field)
    assert err.tensor == "c.dense"


def test_out_of_range_buffer_at_data_end(tmp_path, sample):
    def edit(h, d):
        b = entry(h, "c.dense")["buffers"]["data"]
        b["offset"] = len(d) - 64 + 64  # starts exactly at the end, runs past it
    expect(tmp_path, crafted(sample, edit), FormatError, "buffers.data")


def test_buffer_not_a_map(tmp_path, sample):
    def edit(h, d):
        entry(h, "c.dense")["buffers"]["data"] = 5
    expect(tmp_path, crafted(sample, edit), FormatError, "buffers.data")


def test_holes(tmp_path, sample):
    def shift(h, d):  # 128 unused bytes at the start of the data section
        for e in h["tensors"]:
            for b in e.get("buffers", {}).values():
                b["offset"] += 128
        for f in h["files"]:
            f["offset"] += 128
        return bytes(128) + bytes(d)
    expect(tmp_path, crafted(sample, shift), FormatError, "buffers", match="hole")
    expect(tmp_path, crafted(sample, lambda h, d: bytes(d) + bytes(64)), FormatError, "buffers", match="unused")

    def drop_file(h, d):  # the aux file's bytes are left behind unreferenced
        h["files"].clear()
    expect(tmp_path, crafted(sample, drop_file), FormatError, "buffers")


def test_buffer_length_mismatch_with_shape(tmp_path, sample):
    # shape x width: a raw buffer must hold exactly prod(shape) elements of its dtype
    expect(tmp_path, crafted(sample, _entry_set("c.dense", "shape", [6])), EncodingError, "buffers.data.length")
    expect(tmp_path, crafted(sample, _entry_set("c.dense", "shape", [2**31 - 1, 2**31 - 1])), FormatError,
           "shape")
    expect(tmp_path, crafted(sample, _buf("c.dense", "data", dtype="F32")), EncodingError, "buffers.data.length")
    expect(tmp_path, crafted(sample, _buf("c.dense", "data", dtype="U8")), EncodingError, "buffers.data.dtype")


def test_huge_shapes_rejected_before_allocation(tmp_path):
    assert MAX_DECODED_BYTES < 2**40
    header = {"alignment": 64, "checksum": "crc32", "tensors": [
        {"name": "big", "kind": "same", "shape": [2**20, 2**20], "dtype": "F32"}]}  # 4 TiB of zeros
    expect(tmp_path, assemble(header, b""), FormatError, "shape")  # refused at open, nothing allocated


def test_writer_refuses_what_the_reader_rejects(tmp_path):
    path = tmp_path / "h.ddq"
    with pytest.raises(FormatError, match="shape"):
        with Writer(path) as w:
            w.add("big", "same", [2**20, 2**20], "F32")
    assert list(tmp_path.iterdir()) == []  # nothing published, no temp file left


# ---- encoding parameters --------------------------------------------------------------------------------------
def _param(name, key, value):
    def edit(h, d):
        p = entry(h, name)["params"]
        if value is KeyError:
            del p[key]
        else:
            p[key] = value
    return edit


@pytest.mark.parametrize("name,key,value,field", [
    ("a.csr", "group_size", 18, "params.group_size"),  # alpha 4 does not divide 18
    ("b.seeded", "group_size", 14, "params.group_size"),
    ("a.csr", "group_size", 44, "params.group_size"),  # larger than the row
    ("a.csr", "alpha", 0, "params.alpha"),
    ("b.seeded", "alpha", 2**20, "params.alpha"),
    ("a.csr", "alpha", KeyError, "params.alpha"),
    ("a.csr", "parts", 3, "params.parts"),  # not a power of two
    ("a.csr", "parts", 32, "params.parts"),  # more than 2^k
    ("a.csr", "parts", 0, "params.parts"),
    ("a.csr", "bits", 9, "params.bits"),
    ("b.seeded", "bits", 0, "params.bits"),
    ("b.seeded", "bits", 2.0, "params.bits"),
    ("a.csr", "offsets", [0, -4, -8, -11], "params.offsets"),
    ("a.csr", "offsets", [0, 4, 8, 12], "params.offsets"),
    ("a.csr", "offsets", KeyError, "params.offsets"),
    ("a.csr", "scale", 0.1, "params.scale"),  # not exactly binary32
    ("a.csr", "scale", -1.0, "params.scale"),
    ("a.csr", "scale", float("nan"), "params.scale"),
    ("b.seeded", "scale", float("inf"), "params.scale"),
    ("b.seeded", "scale", "1", "params.scale"),
    ("b.seeded", "zero", 1.5, "params.zero"),
    ("b.seeded", "zero", 8, "params.zero"),  # k = 3: z must lie in 0..7
    ("a.csr", "zero", -(2**31), "params.zero"),
    ("b.seeded", "seed", -1, "params.seed"),
    ("b.seeded", "seed", 2**32, "params.seed"),
    ("b.seeded", "seed", True, "params.seed"),
    ("a.csr", "nnz", 61, "buffers.col_indices.length"),
    ("a.csr", "nnz", 6 * 40 + 1, "params.nnz"),
    ("a.csr", "nnz", -1, "params.nnz"),
])
def test_bad_params(tmp_path, sample, name, key, value, field):
    err = expect(tmp_path, crafted(sample, _param(name, key, value)), EncodingError, field)
    assert err.tensor == name


@pytest.mark.parametrize("name,role,kw,field", [
    ("a.csr", "row_offsets", dict(dtype="U16"), "buffers.row_offsets.dtype"),
    ("a.csr", "row_offsets", dict(length=108), "buffers.row_offsets.length"),
    ("a.csr", "col_indices", dict(dtype="U16"), "buffers.col_indices.length"),
    ("a.csr", "col_indices", dict(dtype="F16"), "buffers.col_indices.dtype"),
    ("a.csr", "values", dict(dtype="U8"), "buffers.values.dtype"),
    ("a.csr", "values", dict(length=14), "buffers.values.length"),
    ("b.seeded", "codes", dict(length=1), "buffers.codes.length"),
])
def test_bad_compressed_buffers(tmp_path, sample, name, role, kw, field):
    expect(tmp_path, crafted(sample, _buf(name, role, **kw)), EncodingError, field)


def test_missing_buffer(tmp_path, sample):
    expect(tmp_path, crafted(sample, lambda h, d: entry(h, "a.csr")["buffers"].pop("values")),
           EncodingError, "buffers.values")


def test_column_index_dtype_too_narrow(tmp_path):
    # 300 columns need U16 indices; a file claiming U8 is refused
    from ddq_format.converters.dropout import groupwise_dropout
    from ddq_format.encodings import csr_parts
    d = np.ones((1, 300), np.float32)
    cols, vals = groupwise_dropout(d, 100, 300, 0)
    path = tmp_path / "n.ddq"
    with Writer(path) as w:
        w.add("w", "compressed", d.shape, "F32", csr_parts.encode(d.shape, [0] * 3, cols[0], vals[0], bits=2,
                                                                  parts=1, alpha=100, group_size=300))
    header, data = split_file(path)
    b = entry(header, "w")["buffers"]["col_indices"]
    assert b["dtype"] == "U16"
    b["dtype"], b["length"] = "U8", 3
    header["tensors"][0]["params"]["nnz"] = 3
    expect(tmp_path, assemble(header, data), FormatError)


# ---- buffer contents (checked at decode) ----------------------------------------------------------------------
def test_buffer_checksum_mismatch(tmp_path, sample):
    _, header, data = sample
    for name, role in [("a.csr", "values"), ("a.csr", "col_indices"), ("b.seeded", "codes"), ("c.dense", "data")]:
        d = bytearray(data)
        d[entry(header, name)["buffers"][role]["offset"]] ^= 0x01
        path = tmp_path / "crc.ddq"
        path.write_bytes(assemble(header, bytes(d)))
        with DDQFile(path) as f:  # opening reads no buffer
            with pytest.raises(ChecksumError) as info:
                f.decode(name)
            assert info.value.field == f"buffers.{role}" and info.value.tensor == name
            with DDQFile(path, verify_checksums=False) as g:
                g.decode(name)  # structurally fine, only the checksum catches it
    d = bytearray(data)
    d[header["files"][0]["offset"]] ^= 0x01
    path = tmp_path / "crc_file.ddq"
    path.write_bytes(assemble(header, bytes(d)))
    with DDQFile(path) as f, pytest.raises(ChecksumError, match="config.json"):
        f.file("config.json")


def _row_offsets(h, data):
    b = entry(h, "a.csr")["buffers"]["row_offsets"]
    return np.frombuffer(bytes(data[b["offset"]: b["offset"] + b["length"]]), "<u4").reshape(4, 7).copy()


def test_row_offsets_decreasing(tmp_path, sample):
    def edit(h, d):
        ro = _row_offsets(h, d)
        ro[0, 1], ro[0, 2] = ro[0, 2], ro[0, 1] - 1 if ro[0, 1] else 0
        ro[0, 2] = ro[0, 1] - 1  # strictly below the previous offset
        put_buffer(h, d, "a.csr", "row_offsets", ro.astype("<u4").tobytes())
    expect(tmp_path, crafted(sample, edit), EncodingError, "buffers.row_offsets", match="never decrease")


def test_row_offsets_not_starting_at_zero(tmp_path, sample):
    def edit(h, d):
        ro = _row_offsets(h, d)
        ro[1, 0] = 1
        put_buffer(h, d, "a.csr", "row_offsets", ro.astype("<u4").tobytes())
    expect(tmp_path, crafted(sample, edit), EncodingError, "buffers.row_offsets")


def test_row_offsets_disagree_with_nnz(tmp_path, sample):
    def edit(h, d):
        ro = _row_offsets(h, d)
        ro[3, -1] += 1
        put_buffer(h, d, "a.csr", "row_offsets", ro.astype("<u4").tobytes())
    expect(tmp_path, crafted(sample, edit), EncodingError, "buffers.row_offsets", match="nnz")


def test_row_offsets_huge_values(tmp_path, sample):
    def edit(h, d):
        ro = _row_offsets(h, d)
        ro[:, -1] = 2**32 - 1  # sums wrap in 32 bits; must still be refused
        ro[:, 1:-1] = 0
        put_buffer(h, d, "a.csr", "row_offsets", ro.astype("<u4").tobytes())
    expect(tmp_path, crafted(sample, edit), EncodingError, "buffers.row_offsets")


def test_column_index_out_of_range(tmp_path, sample):
    def edit(h, d):
        b = entry(h, "a.csr")["buffers"]["col_indices"]
        ci = bytearray(d[b["offset"]: b["offset"] + b["length"]])
        ci[7] = 40  # the matrix has 40 columns: valid indices are 0..39
        put_buffer(h, d, "a.csr", "col_indices", bytes(ci))
    expect(tmp_path, crafted(sample, edit), EncodingError, "buffers.col_indices", match="out of range")


def test_row_offsets_sum_wrapping_in_64_bits(tmp_path):
    """U64 part lengths of 2^62 each add up to 2^64 + nnz: a wrapping sum must not pass for nnz (it would
    make the decoder allocate exabytes)."""
    from ddq_format import bitpack
    from ddq_format.encodings import Encoded
    ends = np.array([2**62, 2**62, 2**62, 2**62 + 60], np.uint64)
    ro = np.zeros((4, 2), "<u8")
    ro[:, 1] = ends
    enc = Encoded("csr_parts", {"alpha": 1, "group_size": 64, "bits": 4, "parts": 4, "scale": 0.5, "zero": 0,
                                "offsets": [0, -4, -8, -12], "nnz": 60, "seed": 0},
                  {"row_offsets": ("U64", ro.view(np.uint8).reshape(-1)),
                   "col_indices": ("U8", np.arange(60, dtype=np.uint8)),
                   "values": ("PACKED", bitpack.pack(np.zeros(60, np.uint8), 2))})
    path = tmp_path / "wrap.ddq"
    with Writer(path) as w:
        w.add("w", "compressed", [1, 64], "F32", enc)
    expect(tmp_path, path.read_bytes(), EncodingError, "buffers.row_offsets")


# ---- issue 12: bounded work and memory for small legal files -------------------------------------------------
def _peak(fn):
    """(result, peak bytes traced) of fn()."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_entry_file(tmp_path, name, kind, shape, enc=None, dtype="F16"):
    path = tmp_path / name
    with Writer(path) as w:
        w.add("w", kind, shape, dtype, enc)
    return path


def _lowrank_bomb(tmp_path, n=16384):
    from ddq_format.encodings import lowrank
    ones = np.ones((n, 1), np.float16)
    return _one_entry_file(tmp_path, "lowrank.ddq", "compressed", [n, n], lowrank.encode(ones, ones.T.copy()))


def _seeded_bomb(tmp_path, rows=16384, cols=32768, alpha=1024):
    from ddq_format import bitpack
    from ddq_format.encodings import Encoded
    codes = bitpack.pack(np.ones(rows * (cols // alpha), np.uint8), 1)
    enc = Encoded("seeded", {"alpha": alpha, "group_size": alpha, "bits": 1, "scale": 0.5, "zero": 0, "seed": 1},
                  {"codes": ("PACKED", codes)})
    return _one_entry_file(tmp_path, "seeded.ddq", "compressed", [rows, cols], enc)


@pytest.mark.parametrize("make", [_lowrank_bomb, _seeded_bomb])
def test_amplifying_decodes_refused_by_default(tmp_path, make):
    """A 66 KB lowrank (1 GiB out) or seeded k=1 alpha=1024 (2 GiB out) file: refused before allocating by the
    default budget; with max_decoded_bytes the caller decides."""
    from ddq_format.errors import LimitError
    path = make(tmp_path)
    assert path.stat().st_size < 70_000
    with DDQFile(path) as f:
        tracemalloc.start()
        try:
            with pytest.raises(LimitError, match="decode budget") as e:
                f.decode("w")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < ALLOC_CAP, peak
        assert e.value.field == "shape" and e.value.tensor == "w" and str(path) in str(e.value)
        with pytest.raises(LimitError):
            f.decode("w", max_decoded_bytes=2**20)
    from ddq_format.verify import verify
    faults, peak = _peak(lambda: verify(path))
    assert len(faults) == 1 and "decode budget" in faults[0] and peak < ALLOC_CAP


@pytest.mark.parametrize("make,kw", [(_lowrank_bomb, dict(n=2048)), (_seeded_bomb, dict(rows=2048, cols=8192))])
def test_allowed_decodes_stay_near_their_output_size(tmp_path, make, kw):
    """Bounded: when a budget allows a decode, it allocates about its float32 output, not a multiple."""
    path = make(tmp_path, **kw)
    with DDQFile(path, max_decoded_bytes=2**30) as f:
        out, peak = _peak(lambda: f.decode("w"))
        assert peak <= 2 * out.nbytes + 8 * 2**20, (peak, out.nbytes)


def test_verifying_same_and_removed_entries_allocates_nothing(tmp_path):
    """A spec-legal `same` entry of 2^17 x 2^17 made verify allocate 64 GiB (MemoryError)."""
    from ddq_format.verify import verify
    header = {"alignment": 64, "checksum": "crc32", "tensors": [
        {"name": "s", "kind": "same", "shape": [2**17, 2**17], "dtype": "F32"},
        {"name": "r", "kind": "removed", "shape": [2**17, 2**17], "dtype": "BF16"},
        {"name": "t", "kind": "tied", "shape": [2**17, 2**17], "dtype": "F32", "tied_to": "s"}]}
    path = tmp_path / "same.ddq"
    path.write_bytes(assemble(header, b""))
    faults, peak = _peak(lambda: verify(path))
    assert faults == [] and peak < ALLOC_CAP, (faults, peak)


def test_rans_stream_symbol_cap(tmp_path):
    """A 561-byte seeded_rans file with one stream of 16.7 M symbols decoded for minutes; such a stream is
    now refused at open (SPEC §9.5: rows_per_stream x K <= RANS_MAX_STREAM_SYMBOLS)."""
    from ddq_format.spec import RANS_MAX_STREAM_SYMBOLS
    n_rows, n_cols = 2**14, 2**10  # alpha 1: K = 1024 codes per row, all 16 384 rows in one stream
    streams = np.frombuffer(np.uint32(2**16).tobytes(), np.uint8)  # one stream: just the final state L
    header = {"alignment": 64, "checksum": "crc32", "tensors": [{
        "name": "r", "kind": "compressed", "shape": [n_rows, n_cols], "dtype": "F16", "encoding": "seeded_rans",
        "params": {"alpha": 1, "group_size": 1, "bits": 1, "scale": 0.5, "zero": 0, "seed": 0,
                   "rows_per_stream": n_rows, "freqs": [4096, 0]},
        "buffers": {"streams": {"dtype": "U8", "offset": 0, "length": 4, "crc32": zlib.crc32(streams)},
                    "stream_offsets": {"dtype": "U32", "offset": 64, "length": 8,
                                       "crc32": zlib.crc32(np.array([0, 4], "<u4").tobytes())}}}]}
    data = streams.tobytes() + bytes(60) + np.array([0, 4], "<u4").tobytes() + bytes(56)
    blob = assemble(header, data, minor=1)
    assert len(blob) < 1024
    path = tmp_path / "rans.ddq"
    path.write_bytes(blob)
    with pytest.raises(EncodingError, match=str(RANS_MAX_STREAM_SYMBOLS)) as e:
        DDQFile(path).close()  # refused at open: nothing is decoded
    assert e.value.tensor == "r" and e.value.field == "params.rows_per_stream"
