"""Fused base + delta linear, grouped multi-delta (SGMV) products and their token segments, against float64
products with the numpy reader's dense deltas (tolerances in kernel_builders)."""
from __future__ import annotations

import pytest
import torch

from kernel_builders import DEVICE, HALF_TOL, MATMUL_TOL, write_cases

from ddq_format.errors import UsageError
from ddq_format.kernels import (CompressedDelta, delta_linear, delta_segments, multi_delta_matmul,
                               multi_delta_matmul_sliced)
from ddq_format.kernels import dispatch
from ddq_format.kernels.segments import reference_tiles

LIN_CASES = [
    (24, 256, dict(encoding="seeded", alpha=8, group_size=128, bits=4)),  # groups aligned to the column steps
    (19, 300, dict(encoding="seeded", alpha=4, group_size=24, bits=3)),  # unaligned, cycle-walking, tail
    (6, 300, dict(encoding="seeded", alpha=2, group_size=300, bits=2)),  # 150 kept > 64: several passes
    (13, 300, dict(encoding="csr_parts", alpha=4, group_size=24, bits=4, parts=2)),
    (11, 96, dict(encoding="seeded_rans", alpha=4, group_size=32, bits=4, rows_per_stream=3)),
    (11, 96, dict(encoding="seeded_rans_split", alpha=8, group_size=32, bits=4, rows_per_stream=3,
                  hot=(10, 2, 10))),  # the hot class fused with the base, the rest added by the delta kernel
]
LIN_IDS = [f"{kw['encoding']}-{r}x{c}-g{kw['group_size']}" for r, c, kw in LIN_CASES]


def _deltas(tmp_path, rng, cases, device=DEVICE):
    f, names = write_cases(tmp_path, rng, cases)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), device) for n in names]
    return ds, [torch.from_numpy(f.decode(n)).double() for n in names]


def _rel(y, ref):
    return float((y.double().cpu() - ref).norm() / ref.norm())


@pytest.mark.parametrize("case", LIN_CASES, ids=LIN_IDS)
@pytest.mark.parametrize("batch", [1, 6])
def test_fused_linear(tmp_path, rng, case, batch, triton_kernels):
    """x·Wᵀ + b + x·ΔŴᵀ in one kernel: float32 within MATMUL_TOL, float16 within HALF_TOL, with and
    without bias; the rule picks the fused kernel for <= 16 tokens."""
    (d,), (dense,) = _deltas(tmp_path, rng, [case])
    w = torch.from_numpy(rng.standard_normal(d.shape)) * 0.05
    b = torch.from_numpy(rng.standard_normal(d.shape[0]))
    x = torch.from_numpy(rng.standard_normal((batch, d.shape[1])))
    assert dispatch.select("linear", d.encoding, "triton", batch) == "triton fused_linear"
    for bias in (b, None):
        ref = x @ (w + dense).T + (bias if bias is not None else 0)
        y = delta_linear(x.float().to(DEVICE), w.float().to(DEVICE), None if bias is None else bias.float().to(DEVICE),
                         d, backend="triton")
        assert y.dtype == torch.float32 and y.shape == (batch, d.shape[0]) and _rel(y, ref) <= MATMUL_TOL
    yh = delta_linear(x.half().to(DEVICE), w.half().to(DEVICE), b.half().to(DEVICE), d, backend="triton")
    assert yh.dtype == torch.float16 and _rel(yh, x @ (w + dense).T + b) <= HALF_TOL


def test_fused_linear_base_only_variant(tmp_path, rng, triton_kernels):
    """The benchmark's own-GEMV baseline (kind 0: the fused kernel with no delta) is x·Wᵀ + b."""
    from ddq_format.kernels import triton_linear
    (d,), _ = _deltas(tmp_path, rng, [LIN_CASES[0]])
    w = torch.randn(d.shape, dtype=torch.float32)
    b = torch.randn(d.shape[0])
    for B in (1, 3):
        x = torch.randn(B, d.shape[1])
        y = triton_linear.fused_linear(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), 0, dispatch.table(d), {})
        assert torch.allclose(y.cpu(), x @ w.T + b, rtol=1e-5, atol=1e-4)


def test_linear_falls_back_where_the_rule_says(tmp_path, rng, triton_kernels):
    """Above 16 tokens, or for inputs the fused kernel does not take (dtype mismatch), F.linear + delta."""
    (d,), (dense,) = _deltas(tmp_path, rng, [LIN_CASES[0]])
    w = torch.randn(d.shape, dtype=torch.float64) * 0.05
    assert dispatch.select("linear", d.encoding, "triton", 17) == "F.linear + delta matmul"
    x = torch.from_numpy(rng.standard_normal((17, d.shape[1])))
    y = delta_linear(x.float().to(DEVICE), w.float().to(DEVICE), None, d, backend="triton")
    assert _rel(y, x @ (w + dense).T) <= MATMUL_TOL
    y = delta_linear(x[:2].double().to(DEVICE), w.to(DEVICE), None, d, backend="triton")  # float64: not fused
    assert y.dtype == torch.float64 and _rel(y, x[:2] @ (w + dense).T) <= MATMUL_TOL
    with pytest.raises(UsageError, match="weight"):
        delta_linear(x, w[:, :-1], None, d)


@pytest.mark.parametrize("n,block", [(4, None), (5, 1), (3, 4), (6, 16), (1, 2)])
def test_segments_match_reference(rng, n, block):
    """Tokens sorted by delta, cut into tiles of at most block_b; -1 and out-of-range tokens in no tile;
    tiles past the real count are empty."""
    for B in (0, 1, 7, 33):
        index = torch.from_numpy(rng.integers(-1, n + 1, B))
        seg = delta_segments(index, n, block_b=block)
        bb = seg.block_b
        got = [(int(dl), sorted(seg.order[int(s):int(s) + int(c)].tolist())) for dl, s, c in seg.tiles.tolist() if c]
        assert got == reference_tiles(index.tolist(), n, bb)
        assert seg.tiles.shape[0] == -(-B // bb) + min(n, B) and seg.tiles.dtype == torch.int32
        assert sorted(seg.order.tolist()) == list(range(B))


def test_segments_default_block():
    from ddq_format.kernels.segments import default_block
    assert [default_block(16, 16), default_block(64, 16), default_block(16, 1), default_block(3, 8)] == [1, 4, 16, 1]
    with pytest.raises(ValueError, match="power of two"):
        delta_segments(torch.zeros(3, dtype=torch.long), 2, block_b=3)


MULTI = [(16, 96, dict(encoding="seeded", alpha=4, group_size=32, bits=4)),
         (16, 96, dict(encoding="csr_parts", alpha=4, group_size=32, bits=4, parts=4)),
         (16, 96, dict(encoding="seeded_rans", alpha=2, group_size=24, bits=3, rows_per_stream=5)),
         (16, 96, dict(encoding="csr_parts", alpha=8, group_size=96, bits=4, parts=8)),
         (16, 96, dict(encoding="seeded_rans_split", alpha=8, group_size=32, bits=4, rows_per_stream=5,
                       hot=(12, 2, 12)))]


@pytest.mark.parametrize("backend", ["torch", "triton", "numpy"])
def test_multi_delta_matmul(tmp_path, rng, backend, triton_kernels):
    """Mixed encodings and group sizes in one batch (a split delta's classes in launches of their own, adding
    to the same rows); rows without a delta (-1) or whose slot is None get none; products added to add_to (a
    column slice of a wider output, as a packed layer's); segments built once and reused give the same
    result."""
    dev = "cpu" if backend == "numpy" else DEVICE
    deltas, dense = _deltas(tmp_path, rng, MULTI, dev)
    index = torch.tensor([2, -1, 0, 3, 1, 4, 1, 2, -1, 4, 0, 2, 2, 2, 4])
    x = torch.from_numpy(rng.standard_normal((len(index), 96)))
    ref = torch.stack([x[b] @ dense[i].T if i >= 0 else torch.zeros(16, dtype=torch.float64)
                       for b, i in enumerate(index.tolist())])
    xd, idx = x.float().to(dev), index.to(dev)
    out = multi_delta_matmul(xd, deltas, idx, backend=backend)
    assert out.shape == (len(index), 16) and out.dtype == torch.float32
    assert torch.all(out[index == -1] == 0) and _rel(out, ref) <= MATMUL_TOL
    for bb in (1, 4, 16):
        seg = delta_segments(idx, len(deltas), block_b=bb)
        base = torch.from_numpy(rng.standard_normal((len(index), 16)))
        wide = torch.zeros(len(index), 24, device=dev)
        y = wide[:, 5:21]
        y += base.float().to(dev)
        got = multi_delta_matmul(xd, deltas, idx, backend=backend, segments=seg, add_to=y, check_index=False)
        assert got is y and _rel(y, base + ref) <= MATMUL_TOL, bb
        assert not wide[:, :5].any() and not wide[:, 21:].any()
    slots = [deltas[0], None, deltas[2], None, deltas[4]]  # slots 1 and 3 leave these rows alone
    out2 = multi_delta_matmul(xd, slots, idx, backend=backend)
    keep = (index == 0) | (index == 2) | (index == 4)
    assert torch.all(out2[~keep] == 0) and _rel(out2[keep], ref[keep]) <= MATMUL_TOL
    sliced = torch.zeros(len(index), 33, device=dev)  # a packed layer: two output slices, a gap column between
    got = multi_delta_matmul_sliced(xd, [(0, deltas), (17, slots)], idx, add_to=sliced, backend=backend)
    assert got is sliced and _rel(sliced[:, :16], ref) <= MATMUL_TOL and not sliced[:, 16].any()
    assert torch.all(sliced[~keep, 17:] == 0) and _rel(sliced[keep, 17:], ref[keep]) <= MATMUL_TOL
    xh = multi_delta_matmul(x.half().to(dev), deltas, idx, backend=backend)
    assert xh.dtype == torch.float16 and _rel(xh, ref) <= HALF_TOL


def test_multi_delta_usage_errors(tmp_path, rng):
    deltas, _ = _deltas(tmp_path, rng, MULTI[:2])
    x, idx = torch.zeros(3, 96), torch.tensor([0, 1, 0])
    with pytest.raises(UsageError, match="segments"):
        multi_delta_matmul(x, deltas, idx, segments=delta_segments(idx, 3))
    with pytest.raises(UsageError, match="add_to"):
        multi_delta_matmul(x, deltas, idx, add_to=torch.zeros(3, 15))
    with pytest.raises(UsageError, match="at least one"):
        multi_delta_matmul(x, [None, None], idx)


def test_numpy_backend_large_products_take_torch_matmul(tmp_path, rng, monkeypatch):
    """Above host.SMALL_PRODUCT multiply-adds the numpy backend's products go to torch's matmul: same
    results within the tolerance."""
    from ddq_format.kernels import host
    deltas, dense = _deltas(tmp_path, rng, MULTI[:2], "cpu")
    index = torch.tensor([1, 0, -1, 1])
    x = torch.from_numpy(rng.standard_normal((4, 96)))
    ref = torch.stack([x[b] @ dense[i].T if i >= 0 else torch.zeros(16, dtype=torch.float64)
                       for b, i in enumerate(index.tolist())])
    small = multi_delta_matmul(x.float(), deltas, index, backend="numpy")
    monkeypatch.setattr(host, "SMALL_PRODUCT", 0)
    large = multi_delta_matmul(x.float(), deltas, index, backend="numpy")
    assert _rel(small, ref) <= MATMUL_TOL and _rel(large, ref) <= MATMUL_TOL
    assert _rel(deltas[0].matmul(x.float()), x @ dense[0].T) <= MATMUL_TOL
