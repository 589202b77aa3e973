"""Triton kernels and torch reference against the numpy decoder (bit-exact) and a float64 matmul.

Without CUDA the Triton kernels run in the interpreter on small shapes; with CUDA on the GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_builders import CUDA, DEVICE, write_file

from ddq_format.errors import UsageError
from ddq_format.kernels import CompressedDelta, decode_dense, multi_delta_matmul

MATMUL_TOL = 1e-5  # relative Frobenius error of a float32 result vs float64

# (rows, cols, encoding kwargs): every bit width 1..8, tail groups, non-power-of-two groups (cycle-walking)
CASES = [
    (24, 256, dict(encoding="seeded", alpha=8, group_size=128, bits=4)),
    (19, 300, dict(encoding="seeded", alpha=4, group_size=24, bits=3)),  # tail group of 12, L=24 walks
    (7, 200, dict(encoding="seeded", alpha=3, group_size=39, bits=5)),  # tail 5 keeps ceil(5/3)=2
    (9, 64, dict(encoding="seeded", alpha=2, group_size=64, bits=1)),
    (6, 80, dict(encoding="seeded", alpha=2, group_size=10, bits=7)),
    (5, 70, dict(encoding="seeded", alpha=1, group_size=70, bits=8)),
    (24, 256, dict(encoding="csr_parts", alpha=8, group_size=128, bits=4, parts=8)),  # 1-bit part codes
    (13, 300, dict(encoding="csr_parts", alpha=4, group_size=24, bits=4, parts=2)),  # 3-bit codes straddle
    (8, 96, dict(encoding="csr_parts", alpha=2, group_size=32, bits=8, parts=4)),  # 6-bit codes
    (10, 70, dict(encoding="csr_parts", alpha=2, group_size=14, bits=2, parts=1)),  # U8 column indices
    (4, 90, dict(encoding="csr_parts", alpha=3, group_size=30, bits=7, parts=4)),  # 5-bit codes
]
IDS = [f"{kw['encoding']}-{r}x{c}-k{kw['bits']}-a{kw['alpha']}-g{kw['group_size']}" for r, c, kw in CASES]


@pytest.fixture
def rng(request):
    return np.random.default_rng(abs(hash(request.node.name)) % 2**32)


def _file(tmp_path, rng, cases):
    specs = [(f"t{i}", r, c, kw) for i, (r, c, kw) in enumerate(cases)]
    return write_file(tmp_path / "d.ddq", specs, rng), [s[0] for s in specs]


def _rel(y, ref):
    return float((y.double().cpu() - ref).norm() / ref.norm())


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_decode_bit_exact(tmp_path, rng, case, backend, triton_kernels):
    f, (name,) = _file(tmp_path, rng, [case])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), DEVICE)
    ref = torch.from_numpy(f.decode(name))
    dense = d.to_dense(backend=backend)
    assert dense.dtype == torch.float32 and dense.shape == ref.shape
    assert torch.equal(dense.cpu(), ref)
    half = d.to_dense(torch.float16, backend=backend)
    assert torch.equal(half.cpu(), ref.to(torch.float16))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", [None, "torch"])
def test_decode_dense_on_cpu_is_the_readers_decode(tmp_path, rng, case, backend, monkeypatch):
    """decode_dense on CPU: the numpy decoder by default, the torch reference when forced; both exact."""
    monkeypatch.delenv("DDQ_KERNEL_BACKEND", raising=False)
    f, (name,) = _file(tmp_path, rng, [case])
    ref = torch.from_numpy(f.decode(name))
    out = decode_dense(f.entry(name), f.buffers(name), "cpu", backend=backend)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    assert torch.equal(decode_dense(f.entry(name), f.buffers(name), "cpu", torch.float16, backend=backend),
                       ref.to(torch.float16))


def test_decode_overwrites_poisoned_memory(tmp_path, rng, triton_kernels, monkeypatch):
    """The kernel writes every element (zeros included): poison the allocator's memory first."""
    f, names = _file(tmp_path, rng, [CASES[1], CASES[7]])
    real_empty = torch.empty

    def poisoned(*a, **kw):
        return real_empty(*a, **kw).fill_(float("nan"))
    monkeypatch.setattr(torch, "empty", poisoned)
    for n in names:
        d = CompressedDelta.from_entry(f.entry(n), f.buffers(n), DEVICE)
        assert torch.equal(triton_kernels.decode(d).cpu(), torch.from_numpy(f.decode(n)))


@pytest.mark.parametrize("case", CASES[:3] + CASES[6:9], ids=IDS[:3] + IDS[6:9])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matmul(tmp_path, rng, case, batch, backend, triton_kernels):
    f, (name,) = _file(tmp_path, rng, [case])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), DEVICE)
    x = torch.from_numpy(rng.standard_normal((batch, d.shape[1])))
    ref = x @ torch.from_numpy(f.decode(name)).double().T
    y = d.matmul(x.to(torch.float32).to(DEVICE), backend=backend)
    assert y.dtype == torch.float32 and y.shape == (batch, d.shape[0])
    assert torch.isfinite(y).all()
    assert _rel(y, ref) <= MATMUL_TOL
    # leading dims and half inputs: result in x.dtype
    y3 = d.matmul(x.to(torch.float32).reshape(batch, 1, -1).to(DEVICE), backend=backend)
    assert y3.shape == (batch, 1, d.shape[0]) and torch.allclose(y3.reshape(y.shape), y, rtol=1e-5, atol=1e-6)


def test_matmul_batch_chunks_and_half(tmp_path, rng, triton_kernels):
    """Batches above one launch's 16 rows are chunked; fp16 inputs give fp16 results near the fp64 ref."""
    f, (name,) = _file(tmp_path, rng, [(8, 64, dict(encoding="seeded", alpha=4, group_size=32, bits=4))])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), DEVICE)
    x = torch.from_numpy(rng.standard_normal((21, 64)))
    ref = x @ torch.from_numpy(f.decode(name)).double().T
    y = d.matmul(x.float().to(DEVICE), backend="triton")
    assert _rel(y, ref) <= MATMUL_TOL
    yh = d.matmul(x.half().to(DEVICE), backend="triton")
    assert yh.dtype == torch.float16 and _rel(yh, ref) <= 2e-3


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_multi_delta_matmul(tmp_path, rng, backend, triton_kernels):
    """Mixed encodings and group sizes in one batch, rows without a delta (-1) are zero."""
    cases = [(16, 96, dict(encoding="seeded", alpha=4, group_size=32, bits=4)),
             (16, 96, dict(encoding="csr_parts", alpha=4, group_size=32, bits=4, parts=4)),
             (16, 96, dict(encoding="seeded", alpha=2, group_size=24, bits=3)),
             (16, 96, dict(encoding="csr_parts", alpha=8, group_size=96, bits=4, parts=8))]
    f, names = _file(tmp_path, rng, cases)
    deltas = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), DEVICE) for n in names]
    dense = [torch.from_numpy(f.decode(n)).double() for n in names]
    index = torch.tensor([2, -1, 0, 3, 1, 1, 2, -1, 0])
    x = torch.from_numpy(rng.standard_normal((len(index), 96)))
    ref = torch.stack([x[b] @ dense[i].T if i >= 0 else torch.zeros(16, dtype=torch.float64)
                       for b, i in enumerate(index.tolist())])
    out = multi_delta_matmul(x.float().to(DEVICE), deltas, index.to(DEVICE), backend=backend)
    assert out.shape == (len(index), 16) and out.dtype == torch.float32
    assert torch.all(out[index == -1] == 0)
    assert _rel(out, ref) <= MATMUL_TOL
    # one encoding only (the single-table fast path), fresh inputs
    x2 = torch.from_numpy(rng.standard_normal((3, 96)))
    idx2 = torch.tensor([1, 0, 1])
    out2 = multi_delta_matmul(x2.float().to(DEVICE), [deltas[0], deltas[2]], idx2.to(DEVICE), backend=backend)
    ref2 = torch.stack([x2[0] @ dense[2].T, x2[1] @ dense[0].T, x2[2] @ dense[2].T])
    assert _rel(out2, ref2) <= MATMUL_TOL


def test_reference_mask_matches_numpy(rng):
    from ddq_format.kernels import reference
    from ddq_format.seeded_mask import mask_columns
    for rows, cols, g, a in [(5, 300, 24, 4), (3, 1000, 999, 3), (4, 77, 77, 7), (2, 4096, 128, 8)]:
        seed = int(rng.integers(0, 2**32))
        assert np.array_equal(reference.mask_columns(seed, rows, cols, g, a).numpy(),
                              mask_columns(seed, rows, cols, g, a))


def test_decode_dense_and_properties(tmp_path, rng):
    f, names = _file(tmp_path, rng, [CASES[0], CASES[6]])
    for n in names:
        d = CompressedDelta.from_entry(f.entry(n), f.buffers(n))
        assert d.nbytes == sum(b["length"] for b in f.entry(n)["buffers"].values())
        assert d.shape == tuple(f.entry(n)["shape"]) and d.device.type == "cpu"
        assert torch.equal(decode_dense(f.entry(n), f.buffers(n)), torch.from_numpy(f.decode(n)))


def test_usage_errors(tmp_path, rng):
    f, names = _file(tmp_path, rng, [CASES[0]])
    d = CompressedDelta.from_entry(f.entry(names[0]), f.buffers(names[0]))
    with pytest.raises(UsageError, match="features"):
        d.matmul(torch.zeros(2, 3))
    with pytest.raises(UsageError, match="index values"):
        multi_delta_matmul(torch.zeros(2, 256), [d], torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="backend"):
        d.to_dense(backend="cuda-magic")
    with pytest.raises(UsageError, match="kind"):
        CompressedDelta.from_entry({**f.entry(names[0]), "kind": "dense"}, f.buffers(names[0]))


def test_corrupt_column_index_rejected_before_upload(tmp_path, rng):
    """Kernels index memory by column: an out-of-range column must fail at load, not corrupt memory."""
    from ddq_format.errors import EncodingError
    f, (name,) = _file(tmp_path, rng, [CASES[7]])  # 300 columns: U16 indices
    bufs = dict(f.buffers(name))
    assert f.entry(name)["buffers"]["col_indices"]["dtype"] == "U16"
    ci = np.array(bufs["col_indices"]).view("<u2").copy()
    ci[3] = 300
    bufs["col_indices"] = ci.view(np.uint8)
    with pytest.raises(EncodingError, match="column index"):
        CompressedDelta.from_entry(f.entry(name), bufs)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_dispatch_picks_triton(tmp_path, rng):
    from ddq_format.kernels import choose
    f, (name,) = _file(tmp_path, rng, [CASES[0]])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), "cuda")
    assert choose(d.device, None) == "triton"
    assert torch.equal(d.to_dense().cpu(), torch.from_numpy(f.decode(name)))

