"""Regenerate the crafted-file corpus in tests/attacks/ byte for byte (issue 12, SPEC.md §11).

    python -m tests.attacks.make_attacks      # or: python tests/attacks/make_attacks.py [OUT_DIR]

Every file is one small crafted .ddq (or not-quite-.ddq) and one line of manifest.json saying what the
reference reader must do with it: the stage where it fails (open, decode of one tensor, or verify), the error
class, the field and a fragment of the message; or that it is accepted ("ok"). tests/attacks/test_attacks.py
replays them all, and checks that this script reproduces the committed bytes. Inputs are integer arithmetic
and the reference writer, so the same code always writes the same bytes.
"""
from __future__ import annotations

import copy
import json
import struct
import sys
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402

from ddq_format import Writer  # noqa: E402
from ddq_format import bitpack  # noqa: E402
from ddq_format.encodings import (Encoded, csr_f16, csr_parts, lowrank, raw, seeded, seeded_rans,  # noqa: E402
                                  sign_scale)
from ddq_format.spec import (MAX_ARRAY, MAX_DEPTH, MAX_HEADER_BYTES, MAX_TENSORS, MAX_TOP_KEYS,  # noqa: E402
                             RANS_MAX_STREAM_SYMBOLS)
from ddq_testing import assemble, split_file  # noqa: E402
from make_golden import det_matrix  # noqa: E402

HERE = Path(__file__).resolve().parent
NAME_ORDER = ("c", "s", "r", "f", "b", "l", "d", "p", "e", "t", "x")
MINOR = 1  # the base file's label: its seeded_rans entry needs 1.1


def base_file(path: Path) -> Path:
    """One entry of every encoding and kind, plus an aux file: what the attacks corrupt."""
    d = det_matrix(4, 16, 11)
    kept = np.array([[(r + 3 * i) % 16 for i in range(4)] for r in range(4)])  # 4 distinct columns per row
    kept.sort(axis=1)
    vals = np.take_along_axis(d, kept, axis=1)
    rows = np.repeat(np.arange(4), 4)
    with Writer(path, metadata={"attack": "base"}, algorithm={"method": "deltadq"}) as w:
        w.add("c", "compressed", [4, 16], "F16", csr_parts.encode([4, 16], rows, kept.reshape(-1), vals.reshape(-1),
                                                                  bits=3, parts=2, alpha=4, group_size=16, seed=1))
        w.add("s", "compressed", [4, 16], "F16", seeded.encode([4, 16], vals, bits=2, alpha=4, group_size=16, seed=1))
        w.add("r", "compressed", [4, 16], "F16", seeded_rans.encode([4, 16], vals, bits=2, alpha=4, group_size=16,
                                                                    seed=1, rows_per_stream=2))
        w.add("f", "compressed", [4, 16], "F16", csr_f16.encode([4, 16], rows, kept.reshape(-1), vals.reshape(-1),
                                                                method="dare", alpha=4, seed=1))
        w.add("b", "compressed", [4, 16], "F16", sign_scale.encode([4, 16], vals, alpha=4, group_size=16, seed=1))
        w.add("l", "compressed", [4, 16], "F16", lowrank.encode(d[:, :1].astype(np.float16),
                                                                d[:1].astype(np.float16)))
        w.add("d", "dense", [16], "F16", raw.encode(d[0], "F16"))
        w.add("p", "replace", [2, 8], "BF16", raw.encode(d[1].reshape(2, 8), "BF16"))
        w.add("e", "same", [3, 3], "F32")
        w.add("t", "tied", [2, 8], "BF16", tied_to="p")
        w.add("x", "removed", [4], "F32")
        w.add_file("config.json", b'{"model_type": "toy"}')
    return path


def _entry(h, name):
    return next(e for e in h["tensors"] if e["name"] == name)


def _packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _raw_map(pairs) -> bytes:
    """A msgpack map written pair by pair (duplicate or non-string keys allowed)."""
    out = bytearray(b"\xdf" + struct.pack(">I", len(pairs)))
    for k, v in pairs:
        out += _packb(k) + _packb(v)
    return bytes(out)


def _with_key(header_raw: bytes, key: str, value_bytes: bytes) -> bytes:
    """A map32 header with one more key whose value is given as raw msgpack bytes."""
    body = msgpack.Unpacker(raw=False)
    body.feed(header_raw)
    n = body.read_map_header()
    rest = header_raw[body.tell():]
    return b"\xdf" + struct.pack(">I", n + 1) + rest + _packb(key) + value_bytes


class Corpus:
    """Builds attacks from the base file's header and data; records each file and its expectation."""

    def __init__(self, out: Path):
        self.out = out
        self.header, self.data = split_file(base_file(out / "_base.ddq"))
        (out / "_base.ddq").unlink()
        self.blob = assemble(self.header, self.data, minor=MINOR)
        self.manifest = []

    def add(self, name, blob: bytes, stage, error=None, field=None, match=None, tensor=None, note=""):
        (self.out / f"{name}.ddq").write_bytes(blob)
        rec = {"file": f"{name}.ddq", "stage": stage, "error": error, "field": field, "match": match,
               "tensor": tensor, "note": note, "bytes": len(blob), "crc32": f"{zlib.crc32(blob):08x}"}
        self.manifest.append({k: v for k, v in rec.items() if v is not None})

    def edit(self, fn, minor=MINOR):
        """The base file after fn(header, data) (which may return new data bytes), footer and CRC correct."""
        h = copy.deepcopy(self.header)
        d = bytearray(self.data)
        new = fn(h, d)
        return assemble(h, bytes(new if isinstance(new, (bytes, bytearray)) else d), minor=minor)

    def raw_header(self, raw: bytes, data: bytes = b""):
        return assemble(None, data, raw_header=raw, minor=MINOR)


def _set(path, value):
    """An edit setting header[path...] = value (KeyError as value deletes the key)."""
    def fn(h, d):
        node = h
        for k in path[:-1]:
            node = _entry(h, k) if node is h and k in NAME_ORDER else node[k]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return fn


def _put_buffer(h, d, name, role, new: bytes):
    b = _entry(h, name)["buffers"][role]
    assert len(new) == b["length"]
    d[b["offset"]: b["offset"] + b["length"]] = new
    b["crc32"] = zlib.crc32(new)


def _layout_attacks(c: Corpus):
    blob = c.blob
    c.add("magic_bad", b"PK\x03\x04" + blob[4:], "open", "FormatError", "magic", "bad magic")
    c.add("truncated_short", blob[:80], "open", "FormatError", None, "truncated")
    c.add("truncated_footer", blob[:-1], "open", "FormatError", "footer", "footer magic")
    major = bytearray(blob)
    struct.pack_into("<H", major, 8, 3)
    c.add("major_3", bytes(major), "open", "VersionError", "version", "version 3.1")
    fv = bytearray(blob)
    struct.pack_into("<H", fv, len(fv) - 10, 3)
    c.add("footer_version_differs", bytes(fv), "open", "FormatError", "footer.version")
    big = bytearray(blob)
    struct.pack_into("<Q", big, len(big) - 24, 2**27)
    c.add("header_length_over_cap", bytes(big), "open", "FormatError", "footer.header_length", "cap")
    crc = bytearray(blob)
    crc[len(crc) - 40] ^= 1  # a byte of the header
    c.add("header_crc_mismatch", bytes(crc), "open", "ChecksumError", "footer.header_crc32")
    c.add("buffers_overlap", c.edit(lambda h, d: _entry(h, "c")["buffers"]["col_indices"].update(
        offset=_entry(h, "c")["buffers"]["row_offsets"]["offset"])), "open", "FormatError", "buffers", "overlaps")
    c.add("data_hole", c.edit(lambda h, d: bytes(d) + bytes(64)), "open", "FormatError", "buffers", "unused bytes")
    c.add("buffer_past_end", c.edit(_set(("d", "buffers", "data", "offset"), 2**40)), "open", "FormatError",
          "buffers.data", "runs past", tensor="d")
    c.add("buffer_unaligned", c.edit(_set(("d", "buffers", "data", "offset"), 65)), "open", "FormatError",
          "buffers.data.offset", "not aligned", tensor="d")
    c.add("buffer_crc_33_bits", c.edit(_set(("d", "buffers", "data", "crc32"), 2**32)), "open", "FormatError",
          "buffers.data.crc32", tensor="d")
    c.add("buffer_crc_mismatch", c.edit(lambda h, d: d.__setitem__(_entry(h, "d")["buffers"]["data"]["offset"], 0x55)),
          "decode", "ChecksumError", "buffers.data", "CRC-32", tensor="d")
    pad = lambda h, d: d.__setitem__(_entry(h, "d")["buffers"]["data"]["offset"] + 32, 1)  # noqa: E731
    c.add("padding_not_zero", c.edit(pad), "verify", match="non-zero padding")


def _msgpack_attacks(c: Corpus):
    h = c.header
    base = _packb(h)
    c.add("msgpack_ext_type", c.raw_header(_with_key(base, "x", b"\xd4\x05\x00"), c.data), "open", "FormatError",
          "header", "ext type")
    c.add("msgpack_invalid_utf8", c.raw_header(_with_key(base, "x", b"\xa2\xff\xfe"), c.data), "open",
          "FormatError", "header", "not valid msgpack")
    pairs = list(h.items())
    c.add("msgpack_duplicate_key", c.raw_header(_raw_map(pairs + [("alignment", 64)]), c.data), "open",
          "FormatError", "header", "duplicate map key 'alignment'")
    c.add("msgpack_bin_key", c.raw_header(_raw_map(pairs + [(b"k", 1)]), c.data), "open", "FormatError", "header",
          "not a string")
    c.add("msgpack_int_key", c.raw_header(_with_key(base, "y", b"\x81\x01\x02"), c.data), "open", "FormatError",
          "header", "not a string")
    c.add("msgpack_trailing_bytes", c.raw_header(base + b"\xc0", c.data), "open", "FormatError", "header",
          "trailing bytes after the header map")
    c.add("msgpack_top_not_map", c.raw_header(_packb([1, 2]), c.data), "open", "FormatError", "header",
          "must be a map")
    deep = b"\x91" * (MAX_DEPTH - 1) + b"\x90"  # MAX_DEPTH levels under the top-level map: one too many
    c.add("msgpack_depth_33", c.raw_header(_with_key(base, "x", deep), c.data), "open", "FormatError", "header",
          f"deeper than {MAX_DEPTH}")
    ok_deep = b"\x91" * (MAX_DEPTH - 2) + b"\x90"
    c.add("msgpack_depth_32_ok", c.raw_header(_with_key(base, "x", ok_deep), c.data), "ok",
          note="exactly MAX_DEPTH levels: accepted")
    claim = b"\xdd" + struct.pack(">I", MAX_ARRAY + 1)  # an array claiming more elements than the cap, then EOF
    c.add("msgpack_array_claims_too_many", c.raw_header(_with_key(base, "x", claim), c.data), "open",
          "FormatError", "header", "not valid msgpack", note="skipped without building anything")
    tensors = _packb({k: v for k, v in h.items() if k != "tensors"})
    many = _with_key(tensors, "tensors", b"\xdd" + struct.pack(">I", MAX_TENSORS + 1))
    c.add("tensors_count_over_cap", c.raw_header(many, c.data), "open", "FormatError", "tensors",
          f"at most {MAX_TENSORS} entries", note="refused from the array header, before any entry is built")
    keys = _packb({**h, **{f"k{i}": 0 for i in range(MAX_TOP_KEYS)}})
    c.add("top_level_keys_over_cap", c.raw_header(keys, c.data), "open", "FormatError", "header",
          f"more than {MAX_TOP_KEYS}")


def _key_attacks(c: Corpus):
    c.add("alignment_32", c.edit(_set(("alignment",), 32)), "open", "FormatError", "alignment")
    c.add("checksum_xxh64", c.edit(_set(("checksum",), "xxh64")), "open", "FormatError", "checksum")
    c.add("metadata_int_value", c.edit(_set(("metadata", "n"), 1)), "open", "FormatError", "metadata")
    c.add("file_name_traversal", c.edit(lambda h, d: h["files"][0].update(name="../../etc/passwd")), "open",
          "FormatError", "files[0].name")
    c.add("tensors_not_a_list", c.edit(_set(("tensors",), {"a": 1})), "open", "FormatError", "tensors")
    c.add("kind_unknown", c.edit(_set(("d", "kind"), "delta")), "open", "FormatError", "kind", tensor="d")
    c.add("shape_too_large", c.edit(_set(("e", "shape"), [2**20, 2**20])), "open", "FormatError", "shape",
          "multiply", tensor="e")
    c.add("shape_zero_beside_huge", c.edit(_set(("e", "shape"), [0, 2**31 - 1, 2**31 - 1])), "open", "FormatError",
          "shape", "non-zero dimensions multiply", tensor="e")
    c.add("dtype_f64", c.edit(_set(("e", "dtype"), "F64")), "open", "FormatError", "dtype", tensor="e")
    for kind, name in (("same", "e"), ("removed", "x"), ("tied", "t")):
        c.add(f"buffers_nil_{kind}", c.edit(_set((name, "buffers"), None)), "open", "FormatError", "buffers",
              "absent or an empty map", tensor=name)
    c.add("tied_to_missing", c.edit(_set(("t", "tied_to"), "nope")), "open", "FormatError", "tied_to", tensor="t")
    c.add("tied_shape_differs", c.edit(_set(("t", "shape"), [8, 2])), "open", "FormatError", "shape", tensor="t")
    c.add("base_without_fingerprint", c.edit(_set(("e", "base"), {"shape": [3, 3], "dtype": "F32"})), "open",
          "FormatError", "base", tensor="e")
    c.add("base_digest_not_str", c.edit(_set(("e", "base"), {"shape": [3, 3], "dtype": "F32", "fingerprint": "x",
                                                          "digest": 5})), "open", "FormatError", "base.digest",
          tensor="e")
    c.add("encoding_unknown_same_minor", c.edit(_set(("c", "encoding"), "zstd9")), "open", "EncodingError",
          "encoding", "unknown encoding", tensor="c")
    c.add("encoding_unknown_newer_minor", c.edit(_set(("c", "encoding"), "zstd9"), minor=99), "decode",
          "EncodingError", "encoding", "newer than this reader", tensor="c")
    c.add("encoding_not_for_kind", c.edit(_set(("d", "encoding"), "seeded")), "open", "EncodingError", "encoding",
          "not allowed", tensor="d")
    c.add("rans_in_file_labelled_1_0", c.edit(lambda h, d: None, minor=0), "verify", match="field 'version'",
          note="the reader decodes it; verify flags the label")


def _param_attacks(c: Corpus):
    cases = [
        ("c", "offsets", [0, -3], "params.offsets"), ("c", "parts", 3, "params.parts"),
        ("c", "bits", 9, "params.bits"), ("c", "scale", 0.1, "params.scale"), ("c", "zero", 8, "params.zero"),
        ("s", "seed", 2**32, "params.seed"), ("s", "group_size", 6, "params.group_size"),
        ("f", "method", KeyError, "params.method"), ("f", "seed", KeyError, "params.seed"),
        ("b", "group_size", 0, "params.group_size"), ("l", "rank", 0, "params.rank"), ("l", "rank", 5, "params.rank"),
        ("r", "freqs", [4096, 0, 0, 1], "params.freqs"), ("r", "rows_per_stream", 5, "params.rows_per_stream"),
    ]
    for name, key, value, field in cases:
        label = "missing" if value is KeyError else str(value).replace(" ", "").replace(",", "_").strip("[]")
        c.add(f"param_{name}_{key}_{label}", c.edit(_set((name, "params", key), value)), "open", "EncodingError",
              field, tensor=name)
    c.add("buffer_length_wrong", c.edit(_set(("s", "buffers", "codes", "length"), 3)), "open", "EncodingError",
          "buffers.codes.length", tensor="s")
    c.add("rans_streams_odd_length", c.edit(_set(("r", "buffers", "streams", "length"), 9)), "open",
          "EncodingError", "buffers.streams.length", tensor="r")


def _rans_stream_cap(c: Corpus):
    """One stream of 2^14 rows x 1024 codes: refused at open (it decoded for minutes)."""
    state = struct.pack("<I", 2**16)
    offsets = struct.pack("<II", 0, 4)
    entry = {"name": "r", "kind": "compressed", "shape": [2**14, 2**10], "dtype": "F16", "encoding": "seeded_rans",
             "params": {"alpha": 1, "group_size": 1, "bits": 1, "scale": 0.5, "zero": 0, "seed": 0,
                        "rows_per_stream": 2**14, "freqs": [4096, 0]},
             "buffers": {"streams": {"dtype": "U8", "offset": 0, "length": 4, "crc32": zlib.crc32(state)},
                         "stream_offsets": {"dtype": "U32", "offset": 64, "length": 8, "crc32": zlib.crc32(offsets)}}}
    data = state + bytes(60) + offsets + bytes(56)
    c.add("rans_one_stream_16M_symbols", assemble({"alignment": 64, "checksum": "crc32", "tensors": [entry]}, data,
                                                  minor=1), "open", "EncodingError", "params.rows_per_stream",
          str(RANS_MAX_STREAM_SYMBOLS), tensor="r")


def _content_attacks(c: Corpus):
    def ro_decreasing(h, d):
        b = _entry(h, "c")["buffers"]["row_offsets"]
        ro = np.frombuffer(bytes(d[b["offset"]: b["offset"] + b["length"]]), "<u4").copy()
        ro[1], ro[2] = ro[2] + 1, ro[1]
        _put_buffer(h, d, "c", "row_offsets", ro.tobytes())
    c.add("csr_row_offsets_decreasing", c.edit(ro_decreasing), "decode", "EncodingError", "buffers.row_offsets",
          tensor="c")

    def col_out_of_range(h, d):
        b = _entry(h, "f")["buffers"]["col_indices"]
        ci = bytearray(d[b["offset"]: b["offset"] + b["length"]])
        ci[0] = 16
        _put_buffer(h, d, "f", "col_indices", bytes(ci))
    c.add("csr_f16_column_out_of_range", c.edit(col_out_of_range), "decode", "EncodingError",
          "buffers.col_indices", "out of range", tensor="f")

    def rans_corrupt(h, d):
        b = _entry(h, "r")["buffers"]["streams"]
        s = bytearray(d[b["offset"]: b["offset"] + b["length"]])
        s[0] ^= 0x5A
        _put_buffer(h, d, "r", "streams", bytes(s))
    c.add("rans_stream_corrupt", c.edit(rans_corrupt), "decode", "EncodingError", "buffers.streams", tensor="r")


def _resource_attacks(c: Corpus):
    top = {"alignment": 64, "checksum": "crc32"}
    huge_same = {**top, "tensors": [{"name": "s", "kind": "same", "shape": [2**17, 2**17], "dtype": "F32"},
                                    {"name": "t", "kind": "tied", "shape": [2**17, 2**17], "dtype": "F32",
                                     "tied_to": "s"}]}
    c.add("same_2p17_squared", assemble(huge_same, b""), "ok", note="verify allocates nothing (it needed 64 GiB)")
    rows, cols, alpha = 8192, 65536, 65536  # one kept code per row: 1 KB of codes decodes to 2 GiB
    codes = bitpack.pack(np.ones(rows, np.uint8), 1)
    enc = Encoded("seeded", {"alpha": alpha, "group_size": alpha, "bits": 1, "scale": 0.5, "zero": 0, "seed": 1},
                  {"codes": ("PACKED", codes)})
    path = c.out / "_bomb.ddq"
    with Writer(path) as w:
        w.add("w", "compressed", [rows, cols], "F16", enc)
    blob = path.read_bytes()
    path.unlink()
    c.add("seeded_decode_bomb", blob, "decode", "LimitError", "shape", "decode budget", tensor="w",
          note="1 KB of codes -> 2 GiB: refused by the default decode budget, before allocating")


def _accepted(c: Corpus):
    odd = lambda h, d: (h["algorithm"].update(blob=b"\x00\xff", nan=float("nan"), inf=float("inf"),  # noqa: E731
                                              nested={"errors": ["x", None], "candidates": 8}),
                        h["base"].update(id=b"\xde\xad"), _entry(h, "e").update(encoding=b"\x01", params=[1]))
    c.add("bin_and_nonfinite_values", c.edit(odd), "ok", note="inspect --json must render it (bin -> hex)")
    c.add("zero_dim_within_cap", c.edit(_set(("e", "shape"), [0, 2**31 - 1, 8])), "ok")
    c.add("base_sound", c.blob, "ok")


def _compact_attacks(c: Corpus):
    """Format 2.x: the header stored as a zlib stream (SPEC.md §3.3)."""
    plain = _packb(c.header)
    z = zlib.compress(plain, 9)
    c.add("v2_sound", assemble(c.header, c.data, major=2), "ok")
    c.add("v2_header_not_zlib", assemble(None, c.data, raw_header=plain, major=2), "open", "FormatError", "header",
          "not a valid zlib stream", note="a 1.x (plain msgpack) header under a 2.0 label")
    c.add("v2_header_truncated", assemble(None, c.data, raw_header=z[:-6], major=2), "open", "FormatError", "header",
          "truncated")
    c.add("v2_after_stream", assemble(None, c.data, raw_header=z + b"\x00", major=2), "open", "FormatError",
          "header", "after the header's zlib stream")
    h8 = dict(copy.deepcopy(c.header), alignment=8)
    c.add("v2_alignment_8", assemble(h8, c.data, major=2), "open", "FormatError", "alignment", ">= 16 (format 2.x)")
    h16 = dict(copy.deepcopy(c.header), alignment=16)
    c.add("v1_alignment_16", assemble(h16, c.data, minor=MINOR), "open", "FormatError", "alignment",
          ">= 64 (format 1.x)", note="16 is a 2.x alignment only")
    bomb = zlib.compress(bytes(MAX_HEADER_BYTES + 1), 9)  # 65 KB inflating past the cap
    c.add("v2_header_bomb", assemble(None, c.data, raw_header=bomb, major=2), "open", "FormatError", "header",
          "inflates past the cap", note="inflation stops one byte past the 64 MiB cap: bounded, never more")


def _split_attacks(c: Corpus):
    """seeded_rans_split (1.4): a sound file of one such entry, and its column list and classes corrupted."""
    from ddq_format.converters import budget
    d = det_matrix(4, 20, 13)
    enc = budget.split_encode(budget.Config("split", alpha=4), d, 1, np.arange(1, 21, dtype=np.float64) ** 2)
    tmp = c.out / "_split.ddq"
    with Writer(tmp, algorithm={"method": "deltadq"}) as w:
        w.add("q", "compressed", [4, 20], "F16", enc)
    header, data = split_file(tmp)
    tmp.unlink()

    def edit(path, value):
        h = copy.deepcopy(header)
        node = h["tensors"][0]
        for k in path[:-1]:
            node = node[k]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return assemble(h, data, minor=4)

    c.add("split_sound", assemble(header, data, minor=4), "ok")
    for label, path, value, field in [
            ("descending", ("params", "hot_columns"), [19, 18], "params.hot_columns"),
            ("past_cols", ("params", "hot_columns"), [3, 20], "params.hot_columns"),
            ("bool", ("params", "hot_columns"), [True], "params.hot_columns"),
            ("every_column", ("params", "hot_columns"), list(range(20)), "params.hot_columns"),
            ("rest_missing", ("params", "rest"), KeyError, "params.rest"),
            ("hot_freqs", ("params", "hot", "freqs"), [4096, 0], "params.hot.freqs"),
            ("rest_streams_odd", ("buffers", "rest_streams", "length"), 9, "buffers.rest_streams.length")]:
        c.add(f"split_{label}", edit(path, value), "open", "EncodingError", field, tensor="q")


def build(out: Path = HERE) -> list[dict]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = Corpus(out)
    for fn in (_layout_attacks, _msgpack_attacks, _key_attacks, _param_attacks, _rans_stream_cap,
               _content_attacks, _resource_attacks, _accepted, _compact_attacks, _split_attacks):
        fn(c)
    (out / "manifest.json").write_text(json.dumps(c.manifest, indent=1) + "\n")
    return c.manifest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    manifest = build(Path(argv[0]) if argv else HERE)
    print(f"{len(manifest)} files, {sum(m['bytes'] for m in manifest)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
