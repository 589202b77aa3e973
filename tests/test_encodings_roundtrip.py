"""groupwise_dropout → encode → Writer → DDQFile → decode equals an independent numpy reference, bit for bit."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ddq_testing import small_delta
from ddq_format import DDQFile, Writer, bitpack
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, raw, seeded


# ---- the reference: quantization math written out here, not taken from the library -------------------
def ref_fit(values: np.ndarray, k: int) -> tuple[float, int]:
    lo = min(float(values.min()), 0.0) if values.size else 0.0
    hi = max(float(values.max()), 0.0) if values.size else 0.0
    s = float(np.float32((hi - lo) / (2**k - 1)))
    if s == 0.0:
        return 0.0, 0
    return s, int(min(max(round(-lo / s), 0), 2**k - 1))  # Python round: half to even, like rint


def ref_codes(values: np.ndarray, s: float, z: int, k: int) -> np.ndarray:
    if s == 0.0:
        return np.full(values.shape, z, np.int64)
    q = np.rint(values.astype(np.float32) / np.float32(s)).astype(np.int64) + z
    return np.clip(q, 0, 2**k - 1)


def ref_dense(shape, cols: np.ndarray, values: np.ndarray, k: int, entry: dict) -> np.ndarray:
    """Dense matrix s·(Q − z) (one binary32 multiply) at the kept columns, zeros elsewhere."""
    s, z = ref_fit(values, k)
    assert (entry["params"]["scale"], entry["params"]["zero"]) == (s, z)
    q = ref_codes(values, s, z, k)
    out = np.zeros(shape, np.float32)
    for r in range(shape[0]):
        for e in range(cols.shape[1]):
            out[r, cols[r, e]] = np.float32(s) * np.float32(q[r, e] - z)
    return out


def same_bits(a, b) -> bool:
    return a.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@st.composite
def configs(draw):
    wide = draw(st.integers(0, 9)) == 0  # sometimes more than 65535 columns: U32 column indices
    if wide:
        rows, cols = 1, draw(st.integers(65537, 66000))
        alpha = draw(st.sampled_from([64, 128, 256]))
    else:
        rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 90))
        alpha = draw(st.integers(1, min(cols, 8)))
    group = alpha * draw(st.integers(1, cols // alpha))
    if draw(st.booleans()) and cols % alpha == 0:
        group = cols  # one group per row
    k = draw(st.integers(1, 8))
    m = 1 << draw(st.integers(0, k))
    seed = draw(st.integers(0, 2**32 - 1))
    data_seed = draw(st.integers(0, 2**16))
    return rows, cols, alpha, group, k, m, seed, data_seed


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
@example((1, 70000, 128, 70000 // 128 * 128, 4, 8, 7, 1))  # U32 column indices, with a tail group
@example((1, 1, 1, 1, 8, 256, 0, 2))  # 1x1, m = 2^k: zero-bit parts
@example((3, 13, 4, 8, 3, 2, 2**32 - 1, 3))  # tail group of 5 keeping 2
def test_round_trip_both_encodings(cfg):
    rows, cols, alpha, group, k, m, seed, data_seed = cfg
    delta = small_delta(rows, cols, data_seed)
    kept, vals = groupwise_dropout(delta, alpha, group, seed)
    r = np.repeat(np.arange(rows), kept.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.ddq"
        with Writer(path) as w:
            w.add("csr", "compressed", (rows, cols), "F16",
                  csr_parts.encode((rows, cols), r, kept.reshape(-1), vals.reshape(-1), bits=k, parts=m,
                                   alpha=alpha, group_size=group, seed=seed))
            w.add("seeded", "compressed", (rows, cols), "BF16",
                  seeded.encode((rows, cols), vals, bits=k, alpha=alpha, group_size=group, seed=seed))
        with DDQFile(path) as f:
            for name in ("csr", "seeded"):
                entry = f.entries[name]
                ref = ref_dense((rows, cols), kept, vals, k, entry)
                got = f.decode(name)
                assert same_bits(got, ref), name
            # csr_parts layout: narrowest column index type, offsets, packed (k - log2 m)-bit values
            e = f.entries["csr"]
            want_idx = "U8" if cols <= 256 else "U16" if cols <= 65536 else "U32"
            assert e["buffers"]["col_indices"]["dtype"] == want_idx
            assert e["params"]["offsets"] == [-j * (2**k // m) for j in range(m)]
            nnz = rows * kept.shape[1]
            b = k - int(math.log2(m))
            assert e["params"]["nnz"] == nnz
            assert e["buffers"]["values"]["length"] == (nnz * b + 7) // 8
            parts = f.parts("csr")
            assert len(parts) == m and sum(p.codes.size for p in parts) == nnz
            # Σ over parts of the scattered dequantized values equals the decoded matrix
            total = np.zeros((rows, cols), np.float32)
            s, z = e["params"]["scale"], e["params"]["zero"]
            for p in parts:
                assert (p.codes < 2**b).all()
                rr = np.repeat(np.arange(rows), np.diff(p.row_offsets))
                part_dense = np.zeros((rows, cols), np.float32)
                part_dense[rr, p.col_indices.astype(np.int64)] = (
                    np.float32(s) * (p.codes.astype(np.int64) - z - p.offset).astype(np.float32))
                total += part_dense
            assert same_bits(total, f.decode("csr"))
            # seeded: only the codes are stored, k bits each, in kept order
            e = f.entries["seeded"]
            assert e["buffers"]["codes"]["length"] == (nnz * k + 7) // 8
            s, z = ref_fit(vals, k)
            assert np.array_equal(f.parts("seeded"), ref_codes(vals, s, z, k))


def test_one_by_one_and_all_zero():
    for value in (0.0, 0.5, -0.25):
        d = np.full((1, 1), value, np.float32)
        kept, vals = groupwise_dropout(d, 1, 1, 0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "t.ddq"
            with Writer(path) as w:
                w.add("c", "compressed", (1, 1), "F32",
                      csr_parts.encode((1, 1), [0], kept.reshape(-1), vals.reshape(-1), bits=1, parts=2,
                                       alpha=1, group_size=1))
                w.add("s", "compressed", (1, 1), "F32", seeded.encode((1, 1), vals, bits=8, alpha=1,
                                                                      group_size=1, seed=0))
            with DDQFile(path) as f:
                for name, k in (("c", 1), ("s", 8)):
                    assert same_bits(f.decode(name), ref_dense((1, 1), kept, vals, k, f.entries[name]))


RAW_CASES = [
    ("F32", np.array([[1.5, -0.0, 3.25e-7], [np.inf, -np.inf, 1e38]], np.float32)),
    ("F16", np.array([0.1, -2.5, 65504.0, 6e-8, -0.0], np.float32)),
    ("BF16", np.array([[0.1, -2.5], [3.0e38, 1e-30]], np.float32)),
]


def test_raw_round_trip(tmp_path):
    path = tmp_path / "r.ddq"
    with Writer(path) as w:
        for i, (dt, arr) in enumerate(RAW_CASES):
            w.add(f"dense.{dt}", "dense", arr.shape, dt, raw.encode(arr, dt))
            w.add(f"replace.{dt}", "replace", arr.shape, dt, raw.encode(arr, dt))
        w.add("scalar", "dense", [], "F32", raw.encode(np.array(2.0, np.float32), "F32"))
    with DDQFile(path) as f:
        for dt, arr in RAW_CASES:
            if dt == "F32":
                expect = arr
            elif dt == "F16":
                expect = arr.astype(np.float16).astype(np.float32)
            else:  # bf16 round to nearest even, written out: keep the top 16 bits after rounding
                b = arr.view(np.uint32).astype(np.uint64)
                b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
                expect = b.astype(np.uint32).view(np.float32)
            for kind in ("dense", "replace"):
                got = f.decode(f"{kind}.{dt}")
                assert same_bits(got, expect), (kind, dt)
                assert f.entries[f"{kind}.{dt}"]["buffers"]["data"]["length"] == arr.size * (4 if dt == "F32" else 2)
        assert f.decode("scalar").shape == () and float(f.decode("scalar")) == 2.0


def test_bf16_nan_stays_nan():
    bits = raw.to_bf16_bits(np.array([np.nan, 1.0], np.float32))
    assert np.isnan(raw.bf16_bits_to_f32(bits)[0]) and raw.bf16_bits_to_f32(bits)[1] == 1.0


def test_kinds_without_data_and_aux_files(tmp_path):
    path = tmp_path / "k.ddq"
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    with Writer(path) as w:
        w.add("emb", "replace", emb.shape, "F32", raw.encode(emb, "F32"))
        w.add("head", "tied", emb.shape, "F32", tied_to="emb")
        w.add("norm", "same", [7], "F16")
        w.add("gone", "removed", [2, 2], "BF16")
        w.add_file("config.json", b'{"a": 1}')
        w.add_file("tokenizer.json", bytes(range(256)) * 3)
        w.add_file("empty.txt", b"")
    with DDQFile(path) as f:
        assert same_bits(f.decode("head"), emb)
        assert f.entries["head"]["tied_to"] == "emb"
        assert same_bits(f.decode("norm"), np.zeros(7, np.float32))
        assert same_bits(f.decode("gone"), np.zeros((2, 2), np.float32))
        assert f.buffers("norm") == {}
        assert f.file("config.json") == b'{"a": 1}'
        assert f.file("tokenizer.json") == bytes(range(256)) * 3
        assert f.file("empty.txt") == b""
        assert f.names == ["emb", "head", "norm", "gone"]


def test_every_buffer_aligned(sample_file):
    with DDQFile(sample_file) as f:
        for e in f.entries.values():
            for b in e.get("buffers", {}).values():
                assert b["offset"] % 64 == 0
        for fe in f.header["files"]:
            assert fe["offset"] % 64 == 0
        assert (f.data_length + 64) % 64 == 0


def test_packed_helper_counts():
    assert bitpack.packed_nbytes(0, 5) == 0 and bitpack.packed_nbytes(3, 3) == 2

