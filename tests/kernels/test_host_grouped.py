"""The CPU grouped product in one compiled call (host_grouped): bit-identical to the per-delta loop it
replaces, one call per step, and a table that follows its deltas' lifetimes."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from kernel_builders import MATMUL_TOL, write_cases

from ddq_format import accel
from ddq_format.errors import UsageError
from ddq_format.kernels import (CompressedDelta, delta_segments, host, host_grouped, multi_delta_matmul,
                                multi_delta_matmul_sliced)

pytestmark = pytest.mark.skipif(not accel.available(), reason="numba is not installed")

SEEDED = [(9, 40, dict(encoding="seeded", alpha=4, group_size=16, bits=b)) for b in (4, 3)]
WALK = [(9, 40, dict(encoding="seeded", alpha=4, group_size=12, bits=8))]  # a tail group, cycle walking
OTHER = [(9, 40, dict(encoding="csr_parts", alpha=4, group_size=16, bits=4, parts=2)),
         (9, 40, dict(encoding="seeded_rans", alpha=4, group_size=16, bits=4, rows_per_stream=4))]
SPLIT = [(9, 40, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=4,
                      hot=(6, 2, 6)))]
CASES = SEEDED + WALK + OTHER + SPLIT  # slot 3 (csr_parts) is never grouped


@pytest.fixture(params=["direct", "complement"])
def deltas(request, tmp_path, rng, monkeypatch):
    monkeypatch.setenv("DDQ_SPLIT_COLUMNS", request.param)
    f, names = write_cases(tmp_path, rng, CASES)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    shard = CompressedDelta.from_entry(f.entry(names[0]), f.buffers(names[0]), "cpu", rows=(2, 7))
    return f, names, ds, shard


def _looped(x, ds, idx, out, monkeypatch):
    """multi_delta_matmul through the per-delta loop (no grouped table)."""
    with monkeypatch.context() as m:
        m.setattr(host_grouped, "table", lambda slices: None)
        return multi_delta_matmul(x, ds, idx, backend="numpy", segments=delta_segments(idx, len(ds)), add_to=out)


def _index(rng, counts):
    idx = np.concatenate([np.full(c, s) for s, c in enumerate(counts)] + [np.full(2, -1)])
    return torch.from_numpy(rng.permutation(idx))


@pytest.mark.parametrize("counts", [(1, 2, 3, 1, 2, 65), (3, 0, 1, 2, 1, 2), (0, 0, 0, 0, 0, 1)])
def test_grouped_equals_the_loop_bit_for_bit(deltas, rng, monkeypatch, counts):
    """Every token count (1, 2, 3: the kernel's own accumulators; 65: past DIRECT_MAX_TOKENS, decoded), every
    layout (csr_parts: not grouped), float32 out into a column slice of a wider buffer: the same
    bits as the loop, and within MATMUL_TOL of the reader's decode."""
    f, names, ds, _ = deltas
    idx = _index(rng, counts)
    x = torch.randn(len(idx), 40)
    wide = torch.randn(len(idx), 20)
    got = wide.clone()
    multi_delta_matmul(x, ds, idx, backend="numpy", segments=delta_segments(idx, len(ds)), add_to=got[:, 5:14])
    want = wide.clone()
    _looped(x, ds, idx, want[:, 5:14], monkeypatch)
    assert torch.equal(got, want)
    full = [torch.from_numpy(f.decode(n)).double() for n in names]
    ref = wide.double().clone()
    for t, s in enumerate(idx.tolist()):
        if s >= 0:
            ref[t, 5:14] += x[t].double() @ full[s].T
    assert float((got.double() - ref).norm() / ref.norm()) <= MATMUL_TOL


def test_grouped_rounds_each_sum_once_in_half_precision(deltas, rng, monkeypatch):
    f, names, ds, _ = deltas
    idx = _index(rng, (2, 1, 3, 1, 2, 2))
    x = torch.randn(len(idx), 40, dtype=torch.bfloat16)
    base = torch.randn(len(idx), 9, dtype=torch.bfloat16)
    got = multi_delta_matmul(x, ds, idx, backend="numpy", segments=delta_segments(idx, len(ds)), add_to=base.clone())
    assert torch.equal(got, _looped(x, ds, idx, base.clone(), monkeypatch))


def test_unsplit_deltas_add_straight_into_a_float32_output(tmp_path, rng, monkeypatch):
    """Every grouped delta one part (no split classes): the compiled call adds into out itself (a column
    slice of a wider buffer, no scratch), bit for bit what the loop gives; in bfloat16, or with a split delta
    in the step, it goes through a scratch."""
    f, names = write_cases(tmp_path, rng, SEEDED + WALK + SPLIT)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    seen, real = [], host_grouped.products
    monkeypatch.setattr(host_grouped, "products", lambda tab, runs, order, x, y: seen.append(y) or
                        real(tab, runs, order, x, y))
    for idx, dtype, straight in ((torch.tensor([1, 0, -1, 2, 0, 1, 1]), torch.float32, True),
                                 (torch.tensor([1, 0, -1, 2, 0, 3, 1]), torch.float32, False),
                                 (torch.tensor([1, 0, -1, 2, 0, 1, 1]), torch.bfloat16, False)):
        x = torch.randn(len(idx), 40, dtype=dtype)
        wide = torch.randn(len(idx), 14, dtype=dtype)
        got = wide.clone()
        seen.clear()
        multi_delta_matmul(x, ds, idx, backend="numpy", segments=delta_segments(idx, 4), add_to=got[:, 3:12])
        assert len(seen) == 1 and np.shares_memory(seen[0], got.view(torch.int16 if dtype == torch.bfloat16
                                                                            else dtype).numpy()) == straight
        want = wide.clone()
        _looped(x, ds, idx, want[:, 3:12], monkeypatch)
        assert torch.equal(got, want) and torch.equal(got[idx == -1], wide[idx == -1])
        assert torch.equal(got[:, :3], wide[:, :3]) and torch.equal(got[:, 12:], wide[:, 12:])


def test_one_call_per_step(deltas, rng, monkeypatch):
    """Every grouped run of a step goes through one seeded_products_multi call; none through the one-delta
    kernel; the csr_parts slot and the 65-token run still take the loop."""
    _, _, ds, _ = deltas
    k = accel.kernels()
    calls = {"multi": 0, "one": 0, "dense": []}
    real_multi, real_one, real_dense = k.seeded_products_multi, k.seeded_products, host.dense_all
    monkeypatch.setattr(k, "seeded_products_multi", lambda *a: calls.__setitem__("multi", calls["multi"] + 1)
                        or real_multi(*a))
    monkeypatch.setattr(k, "seeded_products", lambda *a: calls.__setitem__("one", calls["one"] + 1) or real_one(*a))
    monkeypatch.setattr(host, "dense_all", lambda parts: calls["dense"].extend(p.encoding for p in parts)
                        or real_dense(parts))
    idx = _index(rng, (2, 1, 65, 1, 2, 2))
    multi_delta_matmul(torch.randn(len(idx), 40), ds, idx, backend="numpy", segments=delta_segments(idx, len(ds)))
    assert calls["multi"] == 1 and calls["one"] == 0
    assert sorted(calls["dense"]) == ["csr_parts", "seeded"]  # slot 3, and slot 2's 65 tokens


def test_table_follows_its_deltas(deltas):
    """One table per list of deltas, reused while they live, dropped when any of them is collected; a shard
    (its mask keys are global rows) is never grouped."""
    _, _, ds, shard = deltas
    first = host_grouped.table([(0, ds)])
    assert host_grouped.table([(0, ds)]) is first
    assert list(first.ok) == [True, True, True, False, True, True]
    assert list(np.diff(first.slot_parts)) == [1, 1, 1, 0, 1, 2]  # the split delta: two column classes
    assert host_grouped.table([(0, [ds[0], shard])]).ok.tolist() == [True, False]
    key = ((0, tuple(map(id, ds))),)
    assert key in host_grouped._TABLES
    del first
    ds[4] = None
    gc.collect()
    assert key not in host_grouped._TABLES
    assert host_grouped.table([(0, ds)]).ok.tolist() == [True, True, True, False, False, True]


def test_four_byte_column_lists(tmp_path, rng, monkeypatch):
    """A split delta wider than 65536 columns keeps U32 lists: the kernel reads them as 4-byte elements."""
    monkeypatch.setenv("DDQ_SPLIT_COLUMNS", "direct")
    spec = [(2, 70_000, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=2,
                             hot=([3, 65_600, 65_601, 69_999], 2, 4)))]
    f, names = write_cases(tmp_path, rng, spec)
    d = CompressedDelta.from_entry(f.entry(names[0]), f.buffers(names[0]), "cpu")
    assert {p.columns.element_size() for p in d.parts} == {4}
    idx = torch.tensor([0, 0, -1])
    x = torch.randn(3, 70_000)
    got = multi_delta_matmul(x, [d], idx, backend="numpy", segments=delta_segments(idx, 1))
    assert torch.equal(got, _looped(x, [d], idx, None, monkeypatch))
    assert got[2].abs().max() == 0 and got[:2].abs().max() > 0


# Deltas sharing their masks (one run seed): 70 rows = two full blocks of the kernel's mask and a partial one.
SHARED = [(70, 52, dict(encoding="seeded", alpha=4, group_size=12, bits=b, seed=5)) for b in (4, 4, 3)] + \
    [(70, 52, dict(encoding="seeded", alpha=4, group_size=12, bits=4, seed=6))] + \
    [(70, 52, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=8, seed=9,
                   hot=(6, 2, 6))) for _ in range(2)]


@pytest.mark.parametrize("counts", [(1, 2, 3, 1, 2, 2), (2, 0, 2, 2, 1, 4)])
def test_deltas_sharing_masks_equal_the_loop(tmp_path, rng, monkeypatch, counts):
    """Parts of equal seed and geometry are one mask in the table (generated once per block of rows for all
    of them): the products are still each delta's own, bit for bit those of the per-delta loop."""
    f, names = write_cases(tmp_path, rng, SHARED)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    from ddq_format.accel import _kernels
    masks = host_grouped.table([(0, ds)]).parts[:, _kernels.P_MASK].tolist()
    assert masks[0] == masks[1] == masks[2] != masks[3]  # seed 5 three times, seed 6 once
    assert masks[4:6] == masks[6:8] and len(set(masks[4:6])) == 2  # the split pair: a mask per class
    idx = _index(rng, counts)
    x = torch.randn(len(idx), 52)
    got = multi_delta_matmul(x, ds, idx, backend="numpy", segments=delta_segments(idx, len(ds)))
    assert torch.equal(got, _looped(x, ds, idx, None, monkeypatch))
    full = [torch.from_numpy(f.decode(n)).double() for n in names]
    ref = torch.zeros_like(got, dtype=torch.float64)
    for t, s in enumerate(idx.tolist()):
        if s >= 0:
            ref[t] = x[t].double() @ full[s].T
    assert float((got.double() - ref).norm() / ref.norm()) <= MATMUL_TOL


# A packed layer (q, k, v): three output slices over the same 5 slots and input. Slot 1 has no k delta, slots 2
# and 3 are csr_parts in v (so the loop takes all their slices), slot 4 holds nothing.
LAYER = {"q": [(9, 40, dict(encoding="seeded", alpha=4, group_size=16, bits=4))] * 4,
         "k": [(5, 40, dict(encoding="seeded", alpha=4, group_size=12, bits=3))] * 4,
         "v": [(9, 40, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=4,
                            hot=(6, 2, 6)))] * 2 + [(9, 40, dict(encoding="csr_parts", alpha=4, group_size=16,
                                                                 bits=4, parts=2))] * 2}


def _layer(tmp_path, rng):
    f, names = write_cases(tmp_path, rng, [c for cases in LAYER.values() for c in cases])
    ds = iter(CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names)
    slices = {k: [next(ds) for _ in cases] + [None] for k, cases in LAYER.items()}
    slices["k"][1] = None
    offsets = {"q": 0, "k": 9, "v": 14}
    return [(offsets[k], slices[k]) for k in LAYER], 23


@pytest.mark.parametrize("counts", [(2, 1, 3, 1, 2), (1, 2, 65, 66, 1)])
def test_layer_slices_in_one_call_equal_slice_by_slice(tmp_path, rng, monkeypatch, counts):
    """multi_delta_matmul_sliced: every slice of a packed layer in ONE compiled call, bit for bit the same as
    one multi_delta_matmul per slice (and the per-delta loop), into a column range of a wider output; the
    csr_parts slots and the 65-token runs take the loop; the torch reference agrees within MATMUL_TOL."""
    slices, width = _layer(tmp_path, rng)
    idx = _index(rng, counts)
    x = torch.randn(len(idx), 40)
    seg = delta_segments(idx, 5)
    wide = torch.randn(len(idx), width + 4)
    k = accel.kernels()
    calls, real = [], k.seeded_products_multi
    monkeypatch.setattr(k, "seeded_products_multi", lambda *a: calls.append(a[4].copy()) or real(*a))
    got = wide.clone()
    multi_delta_matmul_sliced(x, slices, idx, add_to=got[:, 3:3 + width], segments=seg, backend="numpy")
    assert len(calls) == 1 and sorted(calls[0][:, 0].tolist()) == [s for s, c in enumerate(counts[:2]) if c <= 64]
    per_slice = wide.clone()
    for off, deltas in slices:
        rows = next(d for d in deltas if d is not None).shape[0]
        multi_delta_matmul(x, deltas, idx, add_to=per_slice[:, 3 + off:3 + off + rows], segments=seg,
                           backend="numpy")
    assert torch.equal(got, per_slice)
    looped = wide.clone()
    for off, deltas in slices:
        rows = next(d for d in deltas if d is not None).shape[0]
        _looped(x, deltas, idx, looped[:, 3 + off:3 + off + rows], monkeypatch)
    assert torch.equal(got, looped)
    ref = multi_delta_matmul_sliced(x, slices, idx, add_to=wide.clone()[:, 3:3 + width], backend="torch")
    base = wide[:, 3:3 + width]
    assert float((got[:, 3:3 + width] - ref).norm() / (ref - base).norm()) <= MATMUL_TOL
    assert torch.equal(got[:, :3], wide[:, :3]) and torch.equal(got[:, -1:], wide[:, -1:])
    assert torch.equal(got[idx == 4], wide[idx == 4]) and torch.equal(got[idx == -1], wide[idx == -1])


def test_layer_slices_checked(tmp_path, rng):
    slices, width = _layer(tmp_path, rng)
    x, idx = torch.randn(3, 40), torch.tensor([0, 1, -1])
    with pytest.raises(UsageError, match="one entry per slot"):
        multi_delta_matmul_sliced(x, [slices[0], (9, slices[1][1][:3])], idx, add_to=torch.zeros(3, width))
    with pytest.raises(UsageError, match="does not fit"):
        multi_delta_matmul_sliced(x, slices, idx, add_to=torch.zeros(3, width - 1))
    with pytest.raises(UsageError, match="at least one slice"):
        multi_delta_matmul_sliced(x, [], idx, add_to=torch.zeros(3, width))


def test_threads_give_the_same_bits(tmp_path, rng, monkeypatch):
    """seeded_products_multi on nt threads: thread k takes row blocks k, k + nt, ... of every part, so 2 and 3
    threads (more than the pool) give one thread's bits: shared masks, a split delta, two output slices
    of one layer, 70 rows (two full blocks of rows and a partial one), into a y that does not start zero."""
    from ddq_format.accel import _kernels, _threads
    from ddq_format.seeded_mask import kept_per_row
    threaded = _threads.usable(2) > 1  # first: the policy starts the layer (and its fork guard)
    f, names = write_cases(tmp_path, rng, SHARED)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    slices = [(0, ds), (70, ds[::-1])]
    tab = host_grouped.table(slices)
    idx = _index(rng, (1, 2, 3, 1, 2, 4))
    seg = delta_segments(idx, len(ds))
    runs, order = np.array(seg.runs(), np.int64), seg.order.numpy()
    x = rng.standard_normal((len(idx), 52)).astype(np.float32)
    y0 = rng.standard_normal((len(idx), 140)).astype(np.float32)
    want = y0.copy()
    work = _kernels.seeded_products_multi(tab.arrays, tab.parts, tab.scales, tab.slot_parts, runs, order, x, want,
                                          1, 0)
    assert not np.array_equal(want, y0)
    assert work == sum(p.shape[0] * kept_per_row(p.shape[1], p.params["group_size"], p.params["alpha"]) * (c + 2)
                       for _, deltas in slices for s, _, c in runs for p in deltas[s].parts)
    for nt in (2, 3):
        got = y0.copy()
        _kernels.seeded_products_multi(tab.arrays, tab.parts, tab.scales, tab.slot_parts, runs, order, x, got, nt, 0)
        assert np.array_equal(got, want)
    # through host_grouped: torch's thread count and THREAD_MIN_WORK passed on
    if not threaded:
        pytest.skip(f"numba's threading layer here ({_threads._layer()}) is kept single-threaded")
    seen, real = [], _kernels.seeded_products_multi
    monkeypatch.setattr(_kernels, "seeded_products_multi", lambda *a: seen.append(a[-2:]) or real(*a))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for min_work in (1, 1 << 40):
        monkeypatch.setattr(host_grouped, "THREAD_MIN_WORK", min_work)
        seen.clear()
        got = y0.copy()
        assert host_grouped.products(tab, seg.runs(), order, x, got) == work
        assert np.array_equal(got, want) and seen == [(2, min_work)]
