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


# ---- issue 12: caps enforced while parsing, decided rules -----------------------------------------------------
def _top(**extra) -> dict:
    return {"alignment": 64, "checksum": "crc32", "tensors": [], **extra}


def _nested(depth: int, kind: str):
    """A value of exactly `depth` nested containers: arrays ("l"), maps ("m") or both alternating ("x")."""
    v = [] if kind == "l" else {}
    for i in range(depth - 1):
        v = [v] if kind == "l" or (kind == "x" and i % 2) else {"k": v}
    return v


@pytest.mark.parametrize("kind", ["l", "m", "x"])
@pytest.mark.parametrize("where", ["algorithm", "entry"])
def test_nesting_depth_cap_is_exact(tmp_path, kind, where):
    """SPEC §3.3: depth <= MAX_DEPTH (the top-level map is depth 1); one more level is refused."""
    from ddq_format.spec import MAX_DEPTH

    def header(depth):  # the whole header nests exactly `depth` levels
        if where == "algorithm":
            return _top(algorithm={"deep": _nested(depth - 2, kind)})
        return _top(tensors=[{"name": "a", "kind": "same", "shape": [1], "dtype": "F32",
                              "x": _nested(depth - 3, kind)}])
    _open(tmp_path, assemble(header(MAX_DEPTH), b"")).close()
    with pytest.raises(FormatError, match=f"deeper than {MAX_DEPTH}") as e:
        _open(tmp_path, assemble(header(MAX_DEPTH + 1), b""))
    assert e.value.field == "header"


def test_tensor_count_refused_before_any_entry_is_built(tmp_path):
    """1 M `same` entries used to take 9 s and 0.7 GB to open; the count is checked from the array header."""
    import time
    import tracemalloc
    from ddq_format.spec import MAX_TENSORS
    one = msgpack.packb({"name": "t", "kind": "same", "shape": [1], "dtype": "F32"})
    n = 1_000_000
    raw = _raw_map([("alignment", 64), ("checksum", "crc32")])
    raw = bytes([raw[0] + 1]) + raw[1:] + msgpack.packb("tensors") + b"\xdd" + n.to_bytes(4, "big") + one * n
    blob = assemble(None, b"", raw_header=raw)
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(FormatError, match=f"at most {MAX_TENSORS} entries") as e:
            _open(tmp_path, blob)
        seconds, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.field == "tensors"
    assert peak < 2 * len(raw) + 8 * 2**20, peak  # the parser's copy of the header, nothing per entry
    assert seconds < 5, seconds


def test_header_of_empty_arrays_refused_without_building_it(tmp_path):
    """A header of tiny objects (it used to take 47 s and 4.9 GB at 64 MiB) is counted before it is built."""
    import tracemalloc
    from ddq_format.spec import MAX_SECTION_OBJECTS
    inner = b"\xdc" + (1000).to_bytes(2, "big") + b"\x90" * 1000  # an array of 1000 empty arrays
    junk = b"\xdc" + (4000).to_bytes(2, "big") + inner * 4000  # 4 M empty arrays, 4 MB
    raw = _raw_map([("alignment", 64), ("checksum", "crc32"), ("tensors", [])])
    raw = bytes([raw[0] + 1]) + raw[1:] + msgpack.packb("junk") + junk
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match=f"more than {MAX_SECTION_OBJECTS} objects") as e:
            _open(tmp_path, assemble(None, b"", raw_header=raw))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.value.field == "header"
    assert peak < 2 * len(raw) + 8 * 2**20, peak


def test_total_object_cap(tmp_path, monkeypatch):
    """MAX_HEADER_OBJECTS counts every value, entries included (lowered here so the test stays small)."""
    from ddq_format import header_parse
    entries = [{"name": f"t{i}", "kind": "same", "shape": [1], "dtype": "F32"} for i in range(100)]
    # 1 top map + 2*3 keys/values + 100 entries + 100 * (8 keys/values + 1 dim) = 1007 values
    monkeypatch.setattr(header_parse, "MAX_HEADER_OBJECTS", 1007)
    _open(tmp_path, assemble(_top(tensors=entries), b"")).close()
    monkeypatch.setattr(header_parse, "MAX_HEADER_OBJECTS", 1006)
    with pytest.raises(FormatError, match="more than 1006 objects"):
        _open(tmp_path, assemble(_top(tensors=entries), b""))


def test_entry_size_and_top_level_key_caps(tmp_path):
    from ddq_format.spec import MAX_ENTRY_BYTES, MAX_TOP_KEYS
    big = {"name": "a", "kind": "same", "shape": [1], "dtype": "F32", "note": "x" * MAX_ENTRY_BYTES}
    with pytest.raises(FormatError, match="exceeds the cap") as e:
        _open(tmp_path, assemble(_top(tensors=[big]), b""))
    assert e.value.field == "tensors[0]"
    many = _top(**{f"k{i}": 0 for i in range(MAX_TOP_KEYS)})
    with pytest.raises(FormatError, match=f"more than {MAX_TOP_KEYS}"):
        _open(tmp_path, assemble(many, b""))


def test_trailing_bytes_after_the_header_map(tmp_path):
    raw = msgpack.packb(_top()) + b"\xc0"
    with pytest.raises(FormatError, match="1 trailing bytes after the header map"):
        _open(tmp_path, assemble(None, b"", raw_header=raw))


@pytest.mark.parametrize("kind", ["same", "removed", "tied"])
def test_nil_buffers_on_kinds_without_data_are_rejected(tmp_path, kind):
    """Decided (SPEC §5.1): `buffers`, when present, is a map; nil is rejected at open. It used to be accepted
    and then crash inspect and verify with AttributeError."""
    from ddq_format.verify import verify
    e = {"name": "x", "kind": kind, "shape": [2], "dtype": "F32", "buffers": None}
    tensors = [{"name": "t", "kind": "same", "shape": [2], "dtype": "F32"}, e]
    if kind == "tied":
        e["tied_to"] = "t"
    blob = assemble(_top(tensors=tensors), b"")
    with pytest.raises(FormatError, match="absent or an empty map") as err:
        _open(tmp_path, blob)
    assert err.value.field == "buffers" and err.value.tensor == "x"
    faults = verify(tmp_path / "x.ddq")
    assert len(faults) == 1 and "absent or an empty map" in faults[0]
    e["buffers"] = {}  # an empty map is fine
    _open(tmp_path, assemble(_top(tensors=tensors), b"")).close()


@pytest.mark.parametrize("shape", [[0, 2**31 - 1, 2**31 - 1], [2**31 - 1, 0, 2**31 - 1, 3], [0] + [2**31 - 1] * 7])
def test_zero_dimension_beside_huge_ones_is_a_format_error(tmp_path, shape):
    """SPEC §5.1: zero dims are skipped in the size product, so no intermediate size overflows (numpy used to
    raise a bare ValueError on decode)."""
    e = {"name": "z", "kind": "same", "shape": shape, "dtype": "F32"}
    with pytest.raises(FormatError, match="non-zero dimensions multiply") as err:
        _open(tmp_path, assemble(_top(tensors=[e]), b""))
    assert err.value.field == "shape"


def test_zero_dimension_shapes_within_the_cap_decode_to_empty_arrays(tmp_path):
    e = {"name": "z", "kind": "same", "shape": [0, 2**31 - 1, 8], "dtype": "F32"}
    with _open(tmp_path, assemble(_top(tensors=[e]), b"")) as f:
        assert f.decode("z").shape == (0, 2**31 - 1, 8)


@pytest.mark.parametrize("drop", ["shape", "dtype", "fingerprint"])
def test_base_binding_keys_are_required(tmp_path, drop):
    base = {"shape": [2], "dtype": "F32", "fingerprint": "sample4096-crc32:00000000"}
    del base[drop]
    e = {"name": "t", "kind": "same", "shape": [2], "dtype": "F32", "base": base}
    with pytest.raises(FormatError) as err:
        _open(tmp_path, assemble(_top(tensors=[e]), b""))
    assert err.value.field.startswith("base")


def test_bin_values_are_accepted_and_reported_as_hex(tmp_path):
    """Fault 4: bin values in params, algorithm and base are legal msgpack; the report is JSON data."""
    import json
    from ddq_format.accounting import report
    e = {"name": "t", "kind": "same", "shape": [2], "dtype": "F32", "encoding": b"\x01"}
    h = _top(tensors=[e], algorithm={"blob": b"\x00\xff", "nan": float("nan"), "inf": float("-inf")},
             base={"id": b"\xde\xad"}, metadata={"k": "v"})
    with _open(tmp_path, assemble(h, b"")) as f:
        rep = report(f)
    text = json.dumps(rep, allow_nan=False)
    assert rep["algorithm"] == {"blob": {"hex": "00ff"}, "nan": None, "inf": None}
    assert rep["base"] == {"id": {"hex": "dead"}} and rep["tensors"][0]["encoding"] is None
    assert json.loads(text) == rep


def test_rans_in_a_file_labelled_1_0_reads_but_does_not_verify(tmp_path):
    """SPEC §2: the label must cover the features used. A reader that knows seeded_rans decodes it anyway (a
    1.0 reader would reject the file at open); `verify` reports the wrong label (exit 1)."""
    from pathlib import Path
    from ddq_format.verify import verify
    golden = Path(__file__).resolve().parent / "data" / "seeded_rans_k4.ddq"
    header, data = split_file(golden)
    with _open(tmp_path, assemble(header, data, minor=0)) as f:
        assert f.version == (1, 0) and f.decode("w").shape == (8, 40)
    faults = verify(tmp_path / "x.ddq")
    assert len(faults) == 1 and "field 'version'" in faults[0] and "labelled 1.0" in faults[0]
    assert verify(golden) == []


def test_unknown_encoding_in_newer_minor_is_a_verify_fault_and_reports(sample_file, tmp_path):
    """SPEC §2: the file opens, other tensors decode, inspect reports it; verify cannot check that entry and
    says so (exit 1)."""
    import json
    from ddq_format.accounting import report
    from ddq_format.verify import verify
    header, data = _with_future_encoding(sample_file)
    with _open(tmp_path, assemble(header, data, minor=9)) as f:
        rep = report(f)
    json.dumps(rep, allow_nan=False)
    t = {x["name"]: x for x in rep["tensors"]}["a.csr"]
    assert t["encoding"] == "from_the_future" and t["nominal_ratio"] is None and t["components"]["dense"] > 0
    faults = verify(tmp_path / "x.ddq")
    assert len(faults) == 1 and "a.csr" in faults[0] and "newer than this reader" in faults[0]


def test_accounting_measures_entries_on_the_wire(sample_file, tmp_path):
    """Header bytes per entry come from the file's own msgpack (float32 scales, wide ints), not a re-encoding."""
    from ddq_format.accounting import report
    header, data = split_file(sample_file)
    raw = msgpack.packb(header, use_bin_type=True, use_single_float=True)  # scales as float 32: 4 bytes fewer
    with _open(tmp_path, assemble(None, data, raw_header=raw)) as f:
        rep = report(f)
        e = f.entries["a.csr"]
    t = {x["name"]: x for x in rep["tensors"]}["a.csr"]
    assert t["components"]["scalars"] == len(msgpack.packb(e["params"], use_single_float=True))
    assert t["components"]["header"] + t["components"]["scalars"] == len(msgpack.packb(e, use_single_float=True))
    assert sum(rep["totals"]["components"].values()) == rep["file_bytes"]
