"""seeded_rans_split's column lists on the device: the rest class keeps its own list where the resident bytes
stay within KERNEL_RESIDENT_LIMIT x the file's, else it reads the complement of the hot list (a binary search
in the products). Both serve the same decodes and products; $DDQ_SPLIT_COLUMNS forces either."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kernel_builders import DEVICE, MATMUL_TOL, write_cases
from test_kernels import CASES

from ddq_format.errors import UsageError
from ddq_format.kernels import CompressedDelta, delta_linear, delta_segments, multi_delta_matmul
from ddq_format.spec import KERNEL_RESIDENT_LIMIT

ENV = "DDQ_SPLIT_COLUMNS"
SPLIT = dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=2)
# hot lists on 64 columns: at the edges, in runs, and at lengths on both sides of powers of two (search steps)
HOT_LISTS = [[0], [63], [31, 32], list(range(7)), list(range(8)), list(range(56, 64)),
             [1, 2, 3, 20, 40, 41, 62, 63], list(range(0, 64, 4)), list(range(1, 64, 2))]


def _load(f, name, monkeypatch, mode):
    monkeypatch.setenv(ENV, mode)
    return CompressedDelta.from_entry(f.entry(name), f.buffers(name), DEVICE)


def _rel(y, ref):
    return float((y.double().cpu() - ref).norm() / ref.norm())


def test_rest_list_kept_only_within_the_resident_limit(tmp_path, rng, monkeypatch):
    """auto keeps the rest list where it fits (CASES[16]: 1.3x) and reads the complement where it would not
    (CASES[17]: 4.7x with it); forcing either changes the bytes by exactly the rest list, nothing else."""
    f, (a, b) = write_cases(tmp_path, rng, [CASES[16], CASES[17]])
    for name, auto_direct in ((a, True), (b, False)):
        d = {m: _load(f, name, monkeypatch, m) for m in ("auto", "direct", "complement")}
        rest_width = d["direct"].parts[1].shape[1]
        assert [p.complement for p in d["auto"].parts] == [False, not auto_direct]
        assert d["direct"].nbytes - d["complement"].nbytes == 2 * rest_width  # U16 lists
        assert d["auto"].nbytes == d["direct" if auto_direct else "complement"].nbytes
        assert d["auto"].nbytes <= KERNEL_RESIDENT_LIMIT * d["auto"].encoded_nbytes
        assert (d["direct"].nbytes <= KERNEL_RESIDENT_LIMIT * d["direct"].encoded_nbytes) == auto_direct
        want = f.decode(name)
        for m, delta in d.items():
            assert set(delta.buffers) == {"hot_codes", "rest_codes", "hot_columns"} | (
                {"rest_columns"} if delta.nbytes == d["direct"].nbytes else set()), m
            assert np.array_equal(delta.to_dense().cpu().numpy(), want), m
            assert torch.equal(delta.parts[1].layout.column_index(delta.parts[1]),
                               d["direct"].parts[1].layout.column_index(d["direct"].parts[1]))


def test_bad_mode_is_named(tmp_path, rng, monkeypatch):
    f, (name,) = write_cases(tmp_path, rng, [CASES[16]])
    with pytest.raises(UsageError, match=ENV):
        _load(f, name, monkeypatch, "fast")


@pytest.mark.parametrize("hot", HOT_LISTS, ids=[f"n{len(h)}-{h[0]}" for h in HOT_LISTS])
def test_complement_search_maps_every_column(tmp_path, rng, monkeypatch, hot, triton_kernels):
    """The products read x through the complement on every backend and kernel (delta-only at 1 and 5 tokens,
    fused base + delta) within the stated tolerance of the reader's decode."""
    a = 1 if len(hot) % 2 else 2  # the hot class: one group of its width (at most 8), a multiple of alpha
    f, (name,) = write_cases(tmp_path, rng, [(6, 64, {**SPLIT, "hot": (hot, a, min(8, len(hot)) // a * a)})])
    d = _load(f, name, monkeypatch, "complement")
    assert d.parts[1].complement and d.parts[1].shape[1] == 64 - len(hot)
    full = torch.from_numpy(f.decode(name)).double()
    for tokens in (1, 5):
        x = torch.from_numpy(rng.standard_normal((tokens, 64)))
        for backend in ("triton", "torch", "numpy"):
            assert _rel(d.matmul(x.float().to(DEVICE), backend=backend), x @ full.T) <= MATMUL_TOL, (backend, tokens)
    w = torch.from_numpy(rng.standard_normal((6, 64)) * 0.05)
    x = torch.from_numpy(rng.standard_normal((1, 64)))
    y = delta_linear(x.float().to(DEVICE), w.float().to(DEVICE), None, d, backend="triton")
    assert _rel(y, x @ (w + full).T) <= MATMUL_TOL


def test_grouped_launch_mixes_both_list_forms(tmp_path, rng, monkeypatch, triton_kernels):
    """One SGMV batch over a split delta with its own rest list, one reading the complement, and a seeded
    delta: each token gets its own delta's product."""
    f, names = write_cases(tmp_path, rng, [(6, 64, {**SPLIT, "hot": (10, 2, 10)}), (6, 64, {**SPLIT, "hot": (6, 2, 6)}),
                                           (6, 64, dict(encoding="seeded", alpha=4, group_size=16, bits=4))])
    deltas = [_load(f, names[0], monkeypatch, "direct"), _load(f, names[1], monkeypatch, "complement"),
              _load(f, names[2], monkeypatch, "auto")]
    assert [p.complement for p in deltas[0].parts + deltas[1].parts] == [False, False, False, True]
    full = [torch.from_numpy(f.decode(n)).double() for n in names]
    idx = torch.tensor([1, 0, 2, 1, -1, 0, 1])
    x = torch.from_numpy(rng.standard_normal((7, 64)))
    ref = torch.stack([x[t] @ full[k].T if k >= 0 else torch.zeros(6, dtype=torch.float64)
                       for t, k in enumerate(idx.tolist())])
    for backend in ("triton", "torch", "numpy"):
        got = multi_delta_matmul(x.float().to(DEVICE), deltas, idx.to(DEVICE), backend=backend,
                                 segments=delta_segments(idx.to(DEVICE), 3))
        assert _rel(got, ref) <= MATMUL_TOL, backend


@pytest.mark.parametrize("mode", ["auto", "direct"])
def test_resident_bytes_script_counts_what_loads(tmp_path, rng, monkeypatch, mode):
    """benchmarks/resident_bytes.py (the README's figures) prints the loaded deltas' own byte counts."""
    f, (name,) = write_cases(tmp_path, rng, [CASES[17]])
    d = _load(f, name, monkeypatch, mode)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "resident_bytes.py"
    out = subprocess.run([sys.executable, str(script), str(f.path)], capture_output=True, text=True, check=True,
                         env={**os.environ, ENV: mode}).stdout
    row = [c.strip() for c in out.strip().splitlines()[-1].strip("|").split("|")]
    assert row[1:5] == ["seeded_rans_split", "1", str(d.encoded_nbytes), str(d.nbytes)]
    assert row[5].startswith(f"{d.list_nbytes} ") and row[6] == row[7] == f"{d.nbytes / d.encoded_nbytes:.2f}"
