"""Golden files (SPEC.md test vectors): committed bytes decode to committed arrays, and regenerate identically."""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from ddq_format import DDQFile
from ddq_testing import without_offsets
from tests import make_golden

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = sorted(p.stem for p in DATA.glob("*.ddq"))


def test_golden_set_is_complete_and_small():
    assert GOLDEN == sorted(list(make_golden.COMPRESSED) + ["mixed", "mixed_v2"])
    total = sum(p.stat().st_size for p in DATA.iterdir())
    assert total < 200_000, total


@pytest.mark.parametrize("name", GOLDEN)
def test_decode_matches_committed_arrays(name):
    with DDQFile(DATA / f"{name}.ddq") as f:
        expected = {p.name[len(name) + 2: -4] for p in DATA.glob(f"{name}__*.npy")}
        assert expected == set(f.names)
        for t in f.names:
            want = np.load(DATA / f"{name}__{t}.npy", allow_pickle=False)
            got = f.decode(t)
            assert got.dtype == want.dtype == np.float32
            assert got.shape == want.shape
            assert got.tobytes() == want.tobytes()


def test_regenerate_twice_gives_identical_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    man_a, man_b = make_golden.build(a), make_golden.build(b)
    assert man_a == man_b
    for name in GOLDEN:
        blob = (a / f"{name}.ddq").read_bytes()
        assert blob == (b / f"{name}.ddq").read_bytes()
        assert blob == (DATA / f"{name}.ddq").read_bytes(), f"{name}.ddq differs from the committed golden file"
    for npy in DATA.glob("*.npy"):
        want = np.load(npy, allow_pickle=False)
        got = np.load(a / npy.name, allow_pickle=False)
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    # the README (hashes, test vectors) is generated too, and must be current
    assert make_golden.readme(man_a) == (DATA / "README.md").read_text()


def test_readme_crc32_matches_files():
    text = (DATA / "README.md").read_text()
    for name in GOLDEN:
        blob = (DATA / f"{name}.ddq").read_bytes()
        row = re.search(rf"\| `{name}\.ddq` \|.*\| (\d+) \| `([0-9a-f]{{8}})` \|", text)
        assert row, name
        assert int(row.group(1)) == len(blob) and int(row.group(2), 16) == zlib.crc32(blob)


def test_csr_and_seeded_agree_on_shared_input():
    """csr_k4_m8 and seeded_k4: same input, mask and k-bit quantizer, so the same decoded matrix."""
    with DDQFile(DATA / "csr_k4_m8.ddq") as c, DDQFile(DATA / "seeded_k4.ddq") as s:
        assert c.decode("w").tobytes() == s.decode("w").tobytes()
        assert c.entries["w"]["params"]["scale"] == s.entries["w"]["params"]["scale"]
        assert c.file_size > s.file_size


def test_mixed_contents():
    with DDQFile(DATA / "mixed.ddq") as f:
        kinds = {n: e["kind"] for n, e in f.entries.items()}
        assert kinds == {"norm.weight": "dense", "embed.weight": "replace", "lm_head.weight": "tied",
                         "layers.0.same.weight": "same", "old.bias": "removed"}
        assert f.entries["norm.weight"]["buffers"]["data"]["dtype"] == "F16"
        assert f.entries["embed.weight"]["buffers"]["data"]["dtype"] == "BF16"
        assert f.entries["embed.weight"]["base"]["shape"] == [3, 8]
        assert f.file("config.json") == make_golden.CONFIG_JSON
        assert f.decode("lm_head.weight").tobytes() == f.decode("embed.weight").tobytes()
        # the tail group: seeded_k2 has 19 columns, groups of 8, so columns 16..18 keep exactly 2
    with DDQFile(DATA / "seeded_k2.ddq") as g:
        w = g.decode("w")
        kept_tail = (g.parts("w") >= 0).shape[1] - 2 * 4  # kept per row minus the two full groups
        assert kept_tail == 2
        assert (np.count_nonzero(w[:, 16:], axis=1) <= 2).all()


def test_lowrank_decode_is_within_the_spec_bound_even_under_cancellation(tmp_path):
    """SPEC §9.4.3: |decoded - exact| <= gamma_r * sum_t |u[i,t] v[t,j]|, gamma_r = r u / (1 - r u), u = 2^-24.
    The bound is relative to the sum of magnitudes, so it holds where the terms cancel to ~0 (a bound
    relative to |exact| fails there by ~1e5 ulp)."""
    import math
    from ddq_format import Writer
    from ddq_format.encodings import lowrank
    rng = np.random.default_rng(5)
    r = 8
    u = rng.standard_normal((16, r)).astype(np.float16)
    v = rng.standard_normal((r, 24)).astype(np.float16)
    v[r // 2:] = -v[: r // 2] * np.float16(1.0009765625)  # pairs of terms that nearly cancel
    u[:, r // 2:] = u[:, : r // 2]
    path = tmp_path / "lr.ddq"
    with Writer(path) as w:
        w.add("w", "compressed", [16, 24], "F16", lowrank.encode(u, v))
    with DDQFile(path) as f:
        got = f.decode("w").astype(np.float64)
    p = u.astype(np.float64)[:, :, None] * v.astype(np.float64)[None, :, :]  # exact: f16 products fit in f64
    exact = np.array([[math.fsum(p[i, :, j]) for j in range(24)] for i in range(16)])
    gamma = r * 2.0**-24 / (1 - r * 2.0**-24)
    bound = gamma * np.abs(p).sum(axis=1)
    assert (np.abs(got - exact) <= bound).all()
    assert (np.abs(exact) < 1e-3 * np.abs(p).sum(axis=1)).any()  # the case really cancels


def test_compact_golden_holds_the_mixed_file_in_a_compressed_header():
    """mixed_v2.ddq (format 2.0): the same entries, buffer bytes and files as mixed.ddq, buffers aligned to 16
    instead of 64, and a header stored as a zlib stream that inflates to the same msgpack but for the
    offsets and the alignment."""
    two = (DATA / "mixed_v2.ddq").read_bytes()
    with DDQFile(DATA / "mixed.ddq") as a, DDQFile(DATA / "mixed_v2.ddq") as b:
        assert (a.version, b.version) == ((1, 0), (2, 0))
        assert (a.header["alignment"], b.header["alignment"]) == (64, 16) and b.data_length < a.data_length

        assert without_offsets(a.header) == without_offsets(b.header)
        for name in a.names:
            assert a.buffers(name).keys() == b.buffers(name).keys()
            assert all(bytes(a.buffer(name, r)) == bytes(b.buffer(name, r)) for r in a.buffers(name))
        assert a.file("config.json") == b.file("config.json")
        stored = two[b.header_offset: b.header_offset + b.header_length]
        assert len(zlib.decompress(stored)) == b.header_plain_length > len(stored)
