"""The numpy backend's batched seeded decode (host.seeded_dense): many deltas of one mask geometry in one
hash pass, the seed folded into the row key. Bit-exact against the reader's decode of each, one by one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_builders import write_cases

from ddq_format.kernels import CompressedDelta, delta_segments, host, multi_delta_matmul

# one geometry, different seeds (random per entry), bits, scales; then a tail + cycle-walking geometry
ALIKE = [(9, 40, dict(encoding="seeded", alpha=4, group_size=16, bits=b)) for b in (4, 3, 8, 4)]
WALK = [(7, 30, dict(encoding="seeded", alpha=4, group_size=12, bits=4)) for _ in range(3)]
OTHER = [(9, 40, dict(encoding="csr_parts", alpha=4, group_size=16, bits=4, parts=2)),
         (9, 40, dict(encoding="seeded_rans", alpha=4, group_size=16, bits=4, rows_per_stream=4))]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from seeding import stable_rng
    f, names = write_cases(tmp_path_factory.mktemp("host"), stable_rng("host"), ALIKE + WALK + OTHER)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    return f, names, ds


def test_seed_keys_turn_seed_zero_into_each_seed():
    """positions(0, row ^ key(seed)) == positions(seed, row): the identity the batched hash rests on."""
    for seed in (0, 1, 12345, 2**32 - 1, 2**40 + 7):
        key = host._seed_keys([seed])[0]
        rows = (np.arange(5, dtype=np.uint32)[:, None, None])
        direct = host.np_positions(seed, rows, np.arange(3, dtype=np.uint32)[None, :, None],
                                   np.arange(4, dtype=np.uint32), 16)
        folded = host.np_positions(0, rows ^ key, np.arange(3, dtype=np.uint32)[None, :, None],
                                   np.arange(4, dtype=np.uint32), 16)
        assert np.array_equal(direct, folded), seed


def test_seeded_dense_many_seeds_in_one_pass(cases):
    f, names, ds = cases
    alike = ds[:len(ALIKE)]
    assert len({d.params["seed"] for d in alike}) == len(alike)  # distinct masks
    assert len({host.geometry(d) for d in alike}) == 1
    got = host.seeded_dense(alike)
    for i, d in enumerate(alike):
        assert np.array_equal(got[i], f.decode(names[i])), i
    walk = ds[len(ALIKE):len(ALIKE) + len(WALK)]
    got = host.seeded_dense(walk)
    for i, d in enumerate(walk):
        assert np.array_equal(got[i], f.decode(names[len(ALIKE) + i])), i


@pytest.mark.parametrize("reader", ["numpy", "numba"])
def test_dense_all_groups_by_geometry(cases, reader):
    """Mixed geometries and layouts in one call, with the reader's decoder compiled or not: each delta
    exactly its reader decode, in input order."""
    from ddq_format import accel
    if reader == "numba" and not accel.available():
        pytest.skip("numba is not installed")
    f, names, ds = cases
    order = [8, 0, 5, 1, 7, 6, 2]  # seeded_rans, seeded, walk, seeded, csr_parts, walk, seeded
    with accel.use(reader):
        assert host.batched(ds[0]) == (reader == "numpy")
        got = host.dense_all([ds[i] for i in order])
    for i, w in zip(order, got):
        assert np.array_equal(w, f.decode(names[i])), names[i]


def test_shards_batched_with_the_global_keys(cases):
    """Shards of one geometry (same rows and columns cut from different deltas) decode together."""
    f, names, _ = cases
    for rows, cols in (((2, 7), (5, 29)), ((0, 9), (16, 40)), ((3, 4), (0, 16))):
        shards = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu", rows=rows, cols=cols)
                  for n in names[:len(ALIKE)]]
        got = host.seeded_dense(shards)
        for i, n in enumerate(names[:len(ALIKE)]):
            assert np.array_equal(got[i], f.decode(n)[rows[0]:rows[1], cols[0]:cols[1]]), (n, rows, cols)


def test_grouped_product_uses_one_hash_pass(cases, monkeypatch):
    """Without the compiled reader, a step over several deltas of one geometry hashes them in one
    positions() call (per block)."""
    from ddq_format import accel
    monkeypatch.setattr(accel, "kernels", lambda: None)
    f, names, ds = cases
    calls = []
    real = host.np_positions
    monkeypatch.setattr(host, "np_positions", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    alike = ds[:len(ALIKE)]
    idx = torch.tensor([0, 1, 2, 3, 3, 1, -1])
    x = torch.randn(len(idx), 40)
    y = multi_delta_matmul(x, alike, idx, backend="numpy", segments=delta_segments(idx, len(alike)))
    assert calls == [len(alike)] * 2  # the full groups, then the tail: all four deltas in each
    ref = torch.stack([x[t].double() @ torch.from_numpy(f.decode(names[i])).double().T if i >= 0 else
                       torch.zeros(9, dtype=torch.float64) for t, i in enumerate(idx.tolist())])
    assert float((y.double() - ref).norm() / ref.norm()) <= 1e-5


SPLIT = [(9, 40, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=4,
                      hot=(6, 2, 6)))]


@pytest.mark.parametrize("columns", ["direct", "complement"])
def test_products_straight_from_the_codes(tmp_path, rng, monkeypatch, columns):
    """With numba, products of up to DIRECT_MAX_TOKENS tokens with a seeded-layout delta (a split delta's
    classes, either column form, included) run from its codes with no dense scratch (host.direct), more
    tokens through the dense decode; the grouped product mixes both; all within the stated tolerance of the
    reader's decode, and the same without numba."""
    from ddq_format import accel
    from kernel_builders import MATMUL_TOL
    if not accel.available():
        pytest.skip("numba is not installed")
    monkeypatch.setenv("DDQ_SPLIT_COLUMNS", columns)
    f, names = write_cases(tmp_path, rng, ALIKE[:2] + WALK[:1] + OTHER + SPLIT)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    full = [torch.from_numpy(f.decode(n)).double() for n in names]
    scratch = []
    real = host.dense_all
    monkeypatch.setattr(host, "dense_all", lambda parts: scratch.extend(parts) or real(parts))
    n = host.DIRECT_MAX_TOKENS
    for d, w in zip(ds, full):
        for tokens in (1, n, n + 1):
            x = torch.randn(tokens, d.shape[1])
            ref = x.double() @ w.T
            straight = d.encoding != "csr_parts" and tokens <= n
            for mode in ("numba", "numpy"):
                scratch.clear()
                with accel.use(mode):
                    got = d.matmul(x, backend="numpy")
                    assert [host.direct(p, tokens) for p in d.parts] == [straight and mode == "numba"] * len(d.parts)
                assert float((got.double() - ref).norm() / ref.norm()) <= MATMUL_TOL, (d.name, tokens, mode)
                assert len(scratch) == (0 if straight and mode == "numba" else len(d.parts)), (d.name, tokens, mode)
    # one grouped step: delta 0 with n + 1 tokens (dense), the others with a few (direct), some with none
    slots = [0, 1, 3, 4, 5]  # the 9 x 40 deltas: seeded, seeded, csr_parts, seeded_rans, split
    idx = torch.tensor([0] * (n + 1) + [4, 2, 4, 3, -1, 2, 4])
    x = torch.randn(len(idx), 40)
    ref = torch.stack([x[t].double() @ full[slots[i]].T if i >= 0 else torch.zeros(9, dtype=torch.float64)
                       for t, i in enumerate(idx.tolist())])
    for mode in ("numba", "numpy"):
        with accel.use(mode):
            y = multi_delta_matmul(x, [ds[i] for i in slots], idx, backend="numpy",
                                   segments=delta_segments(idx, len(slots)))
        assert float((y.double() - ref).norm() / ref.norm()) <= MATMUL_TOL, mode
