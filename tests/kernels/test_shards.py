"""Tensor-parallel shards (CompressedDelta.from_entry(rows=, cols=)): a column-parallel rank keeps a run of
output rows, a row-parallel rank a range of input columns. Seeded shards keep their codes and key the mask
by the global row and group index; every backend decodes a shard to exactly its slice of the reader's
decode, and the products of the ranks recombine to the whole product."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_builders import DEVICE, MATMUL_TOL, write_cases

from ddq_format.errors import UsageError
from ddq_format.kernels import CompressedDelta, delta_linear, delta_segments, multi_delta_matmul

# 40 columns = 2 groups of 16 + a tail of 8; 24 columns of cycle-walking groups of 12; one group per row
CASES = [
    (12, 40, dict(encoding="seeded", alpha=4, group_size=16, bits=4)),
    (10, 48, dict(encoding="seeded", alpha=4, group_size=12, bits=3)),
    (9, 32, dict(encoding="seeded_rans", alpha=2, group_size=32, bits=4, rows_per_stream=2)),
    (12, 40, dict(encoding="csr_parts", alpha=4, group_size=16, bits=4, parts=2)),
    (12, 40, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=2,
                  hot=(6, 2, 6))),  # per class: the run of its columns inside the shard (none, at some cuts)
    (12, 40, dict(encoding="seeded_rans_split", alpha=4, group_size=16, bits=4, rows_per_stream=2,
                  hot=(6, 2, 6))),  # the same, its rest class reading the hot list's complement
]
SPLIT_COLUMNS = {4: "direct", 5: "complement"}  # $DDQ_SPLIT_COLUMNS at the load of each split case
IDS = [f"{kw['encoding']}-{r}x{c}-g{kw['group_size']}" for r, c, kw in CASES]
# (rows, cols) as fractions of the shape: whole-group splits, cuts inside groups, the tail alone, rows
SPLITS = [((0, 1), (0, .5)), ((0, 1), (.5, 1)), ((0, 1), (.3, .7)), ((0, 1), (.85, 1)), ((0, .5), None),
          ((.5, 1), None), ((.25, .75), (.1, .6))]


def _cut(frac, n):
    return None if frac is None else (int(round(frac[0] * n)), int(round(frac[1] * n)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from seeding import stable_rng
    f, names = write_cases(tmp_path_factory.mktemp("shards"), stable_rng("shards"), CASES)
    return f, names


@pytest.fixture
def columns_mode(monkeypatch):
    def use(i):
        monkeypatch.setenv("DDQ_SPLIT_COLUMNS", SPLIT_COLUMNS.get(i, "auto"))
    return use


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_shard_decodes_to_its_slice_on_every_backend(files, i, triton_kernels, columns_mode):
    columns_mode(i)
    f, names = files
    e, b = f.entry(names[i]), f.buffers(names[i])
    full = f.decode(names[i])
    R, C = full.shape
    for rows_f, cols_f in SPLITS:
        rows, cols = _cut(rows_f, R), _cut(cols_f, C)
        s = CompressedDelta.from_entry(e, b, DEVICE, rows=rows, cols=cols)
        want = full[rows[0]:rows[1]][:, slice(*cols) if cols else slice(None)]
        assert s.shape == want.shape
        for backend in (None, "torch", "triton"):
            if backend is None and DEVICE != "cpu":
                continue
            got = s.to_dense(backend=backend).cpu().numpy()
            assert np.array_equal(got, want), (rows, cols, backend)  # bit-exact, like every decode
        pick = torch.tensor([s.shape[0] - 1, 0], device=DEVICE)
        for backend in ((None, "torch") if DEVICE == "cpu" else ("torch",)):
            assert np.array_equal(s.rows(pick, backend=backend).cpu().numpy(), want[[s.shape[0] - 1, 0]])
        for p in s.parts if e["encoding"] != "csr_parts" else ():  # the codes of the shard's rows and groups only
            assert p.nbytes <= -(-p.shape[0] * p.kept_per_row * p.params["bits"] // 8)
            assert p.kept_per_row <= full.shape[1]
            assert p.columns is None or (p.layout.column_index(p).min() >= 0 and p.layout.column_index(p).max() < s.shape[1])
            assert p.complement == (SPLIT_COLUMNS.get(i) == "complement" and p.columns is not None
                                    and p.name.endswith("(rest columns)"))


@pytest.mark.parametrize("i", [0, 1, 3, 4, 5], ids=[IDS[j] for j in (0, 1, 3, 4, 5)])
def test_tp2_ranks_recombine_to_the_whole_product(files, i, triton_kernels, columns_mode):
    """Column-parallel ranks concatenate their outputs; row-parallel ranks' partial sums add up (the
    all-reduce); on the delta-only, fused and grouped kernels alike."""
    columns_mode(i)
    f, names = files
    e, b = f.entry(names[i]), f.buffers(names[i])
    full = torch.from_numpy(f.decode(names[i])).double()
    R, C = full.shape
    x = torch.randn(3, C, dtype=torch.float64)
    want = x @ full.T
    half_r, half_c = R // 2, C // 2 + 3  # the column cut falls inside a group
    col = [CompressedDelta.from_entry(e, b, DEVICE, rows=r) for r in ((0, half_r), (half_r, R))]
    row = [CompressedDelta.from_entry(e, b, DEVICE, cols=c) for c in ((0, half_c), (half_c, C))]
    xs = [x[:, :half_c], x[:, half_c:]]
    for backend in ("torch", "triton", None):
        got = torch.cat([s.matmul(x.float().to(DEVICE), backend=backend).cpu() for s in col], 1)
        assert float((got.double() - want).norm() / want.norm()) <= MATMUL_TOL, backend
        got = sum(s.matmul(xx.float().to(DEVICE), backend=backend).cpu().double() for s, xx in zip(row, xs))
        assert float((got - want).norm() / want.norm()) <= MATMUL_TOL, backend
    w = torch.randn(R, half_c, dtype=torch.float64) * 0.05
    y = delta_linear(xs[0].float().to(DEVICE), w.float().to(DEVICE), None, row[0], backend="triton").cpu()
    ref = xs[0] @ (w + full[:, :half_c]).T
    assert float((y.double() - ref).norm() / ref.norm()) <= MATMUL_TOL
    # the two row-parallel shards as two slots of one grouped (SGMV) launch
    idx = torch.tensor([0, 1, 1, -1, 0], device=DEVICE)
    xg = torch.randn(5, half_c)
    other = CompressedDelta.from_entry(e, b, DEVICE, cols=(C - half_c, C))
    ref = torch.stack([xg[t].double() @ (full[:, :half_c] if k == 0 else full[:, C - half_c:]).T if k >= 0 else
                       torch.zeros(R, dtype=torch.float64) for t, k in enumerate(idx.tolist())])
    for backend in ("torch", "triton", None):
        got = multi_delta_matmul(xg.to(DEVICE), [row[0], other], idx, backend=backend,
                                 segments=delta_segments(idx, 2)).cpu()
        assert float((got.double() - ref).norm() / ref.norm()) <= MATMUL_TOL, backend


def test_shard_bounds_and_bytes(files):
    f, names = files
    e, b = f.entry(names[0]), f.buffers(names[0])
    with pytest.raises(UsageError, match="outside the tensor"):
        CompressedDelta.from_entry(e, b, rows=(0, 13))
    whole = CompressedDelta.from_entry(e, b, rows=(0, 12), cols=(0, 40))
    assert not whole.sharded and whole.nbytes == whole.encoded_nbytes == e["buffers"]["codes"]["length"]
    halves = [CompressedDelta.from_entry(e, b, cols=c) for c in ((0, 20), (20, 40))]
    # the group cut at column 20 is kept by both ranks: at most one group per row more than the whole
    assert sum(h.nbytes for h in halves) <= whole.nbytes + 12 * 4 * 4 // 8 + 2
    assert all(0 < h.encoded_nbytes < whole.encoded_nbytes for h in halves)


def test_split_shard_without_hot_columns(files, triton_kernels):
    """A row-parallel rank whose columns hold no hot column keeps the rest class alone, and still decodes to
    its slice and multiplies on every backend."""
    f, names = files
    e, b = f.entry(names[4]), f.buffers(names[4])
    hot = e["params"]["hot_columns"]
    gaps = [(a + 1, z) for a, z in zip([-1] + hot, hot + [40]) if z - a > 2]  # runs of rest columns
    c0, c1 = max(gaps, key=lambda g: g[1] - g[0])
    s = CompressedDelta.from_entry(e, b, DEVICE, cols=(c0, c1))
    assert len(s.parts) == 1 and s.parts[0].shape == (12, c1 - c0) and s.params["hot_columns"] == []
    want = f.decode(names[4])[:, c0:c1]
    x = torch.randn(2, c1 - c0)
    for backend in ("torch", "triton", None):
        assert np.array_equal(s.to_dense(backend=backend).cpu().numpy(), want), backend
        y = s.matmul(x.to(DEVICE), backend=backend).cpu().double()
        ref = x.double() @ torch.from_numpy(want).double().T
        assert float((y - ref).norm() / ref.norm()) <= MATMUL_TOL, backend
