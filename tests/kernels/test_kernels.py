"""Decode and delta products of every kernel encoding against the numpy reader: decode bit-exact, products
within MATMUL_TOL (float32) or HALF_TOL (float16) of a float64 product with the reader's dense delta.

Without CUDA the Triton kernels run in the interpreter on small shapes; with CUDA on the GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_builders import CUDA, DEVICE, HALF_TOL, MATMUL_TOL, stable_rng, write_cases

from ddq_format.errors import EncodingError, UsageError
from ddq_format.kernels import CompressedDelta, decode_dense, multi_delta_matmul
from ddq_format.kernels import dispatch

# (rows, cols, encoding kwargs): every bit width 1..8, tail groups, non-power-of-two groups (cycle-walking)
CASES = [
    (24, 256, dict(encoding="seeded", alpha=8, group_size=128, bits=4)),
    (19, 300, dict(encoding="seeded", alpha=4, group_size=24, bits=3)),  # tail group of 12, L=24 walks
    (7, 200, dict(encoding="seeded", alpha=3, group_size=39, bits=5)),  # tail 5 keeps ceil(5/3)=2
    (9, 64, dict(encoding="seeded", alpha=2, group_size=64, bits=1)),
    (6, 80, dict(encoding="seeded", alpha=2, group_size=10, bits=7)),
    (5, 70, dict(encoding="seeded", alpha=1, group_size=70, bits=8)),
    (4, 300, dict(encoding="seeded", alpha=2, group_size=300, bits=2)),  # 150 kept per group > 64: the KP loop
    (3, 1100, dict(encoding="seeded", alpha=4, group_size=1100, bits=4)),  # a group wider than 512 columns
    (24, 256, dict(encoding="csr_parts", alpha=8, group_size=128, bits=4, parts=8)),  # 1-bit part codes
    (13, 300, dict(encoding="csr_parts", alpha=4, group_size=24, bits=4, parts=2)),  # 3-bit codes straddle
    (8, 96, dict(encoding="csr_parts", alpha=2, group_size=32, bits=8, parts=4)),  # 6-bit codes
    (10, 70, dict(encoding="csr_parts", alpha=2, group_size=14, bits=2, parts=1)),  # U8 column indices
    (4, 90, dict(encoding="csr_parts", alpha=3, group_size=30, bits=7, parts=4)),  # 5-bit codes
    (11, 96, dict(encoding="seeded_rans", alpha=4, group_size=32, bits=4, rows_per_stream=3)),  # short last stream
    (6, 300, dict(encoding="seeded_rans", alpha=4, group_size=24, bits=3, rows_per_stream=1)),  # walks, tails
    (5, 576, dict(encoding="seeded_rans", alpha=24, group_size=504, bits=4, rows_per_stream=2)),  # --target-ratio's
    # ladder: alpha between powers of two, h_g 504 and a tail of 72
    (24, 96, dict(encoding="seeded_rans_split", alpha=8, group_size=32, bits=4, rows_per_stream=3,
                  hot=(10, 2, 10))),  # 10 hot columns at alpha 2 in one walking group, the rest at 8: its own list
    (6, 300, dict(encoding="seeded_rans_split", alpha=16, group_size=64, bits=3, rows_per_stream=1,
                  hot=(30, 3, 12))),  # tails in both classes; the rest class reads the hot list's complement
    (9, 129, dict(encoding="seeded", alpha=8, group_size=128, bits=4)),  # a tail of ONE column (2^w = 2 > L):
    # its permutation on 1 bit may give 1, so it walks (the spec's rotation folds it back to 0)
]
IDS = [f"{kw['encoding']}-{r}x{c}-k{kw['bits']}-a{kw['alpha']}-g{kw['group_size']}" for r, c, kw in CASES]


def _rel(y, ref):
    return float((y.double().cpu() - ref).norm() / ref.norm())


def test_rng_is_stable_across_processes():
    """The inputs of a test do not depend on Python's per-process hash salt (issue 12)."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, 'tests/kernels'); from seeding import stable_rng; "
            "print(stable_rng('test_x[case]').integers(0, 2**32))")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(s), "PATH": ""}).stdout for s in (1, 2)}
    assert len(runs) == 1 and runs.pop().strip() == str(stable_rng("test_x[case]").integers(0, 2**32))


def _device(backend):
    return "cpu" if backend == "numpy" else DEVICE  # the numpy backend serves CPU tensors


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["torch", "triton", "numpy"])
def test_decode_bit_exact(tmp_path, rng, case, backend, triton_kernels):
    f, (name,) = write_cases(tmp_path, rng, [case])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), _device(backend), backend=backend)
    ref = torch.from_numpy(f.decode(name))
    dense = d.to_dense(backend=backend)
    assert dense.dtype == torch.float32 and dense.shape == ref.shape
    assert torch.equal(dense.cpu(), ref)
    half = d.to_dense(torch.float16, backend=backend)
    assert torch.equal(half.cpu(), ref.to(torch.float16))
    pick = torch.tensor([d.shape[0] - 1, 0, d.shape[0] // 2], device=d.device)  # rows alone (embeddings)
    assert torch.equal(d.rows(pick, backend=None if backend == "triton" else backend).cpu(), ref[pick.cpu()])


@pytest.mark.parametrize("case", [c for c in CASES if c[2]["encoding"] != "csr_parts"][:3],
                         ids=[i for i, c in zip(IDS, CASES) if c[2]["encoding"] != "csr_parts"][:3])
def test_previous_scatter_decode_still_exact(tmp_path, rng, case, triton_kernels):
    """The zero-fill + scatter seeded decode stays available (the benchmark measures it beside seeded_rows)."""
    f, (name,) = write_cases(tmp_path, rng, [case])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), DEVICE)
    out = dispatch.decode(d, torch.float32, "triton", kernel="triton seeded_scatter")
    assert torch.equal(out.cpu(), torch.from_numpy(f.decode(name)))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", [None, "torch", "triton"])
def test_decode_dense_is_the_readers_decode(tmp_path, rng, case, backend, monkeypatch, triton_kernels):
    """decode_dense: on CPU the numpy decoder by default, else the rule's kernels (seeded_rans: its lanes'
    8-bit codes read directly by the seeded decode); all exact."""
    monkeypatch.delenv("DDQ_KERNEL_BACKEND", raising=False)
    f, (name,) = write_cases(tmp_path, rng, [case])
    ref = torch.from_numpy(f.decode(name))
    dev = "cpu" if backend is None else DEVICE
    out = decode_dense(f.entry(name), f.buffers(name), dev, backend=backend)
    assert out.dtype == torch.float32 and torch.equal(out.cpu(), ref)
    if backend is None:
        assert torch.equal(decode_dense(f.entry(name), f.buffers(name), "cpu", torch.float16), ref.to(torch.float16))


def test_decode_overwrites_poisoned_memory(tmp_path, rng, triton_kernels, monkeypatch):
    """The kernels write every element (zeros included): poison the allocator's memory first."""
    f, names = write_cases(tmp_path, rng, [CASES[1], CASES[9], CASES[13], CASES[17]])
    real_empty = torch.empty

    def poisoned(*a, **kw):
        t = real_empty(*a, **kw)
        return t.fill_(float("nan") if t.is_floating_point() else 0x55)
    monkeypatch.setattr(torch, "empty", poisoned)
    for n in names:
        d = CompressedDelta.from_entry(f.entry(n), f.buffers(n), DEVICE, backend="triton")
        assert torch.equal(d.to_dense(backend="triton").cpu(), torch.from_numpy(f.decode(n)))


MM_CASES = [CASES[i] for i in (0, 1, 2, 6, 8, 9, 10, 13, 16, 17, 18)]
MM_IDS = [IDS[i] for i in (0, 1, 2, 6, 8, 9, 10, 13, 16, 17, 18)]


@pytest.mark.parametrize("case", MM_CASES, ids=MM_IDS)
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("backend", ["torch", "triton", "numpy"])
def test_matmul(tmp_path, rng, case, batch, backend, triton_kernels):
    f, (name,) = write_cases(tmp_path, rng, [case])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), _device(backend))
    x = torch.from_numpy(rng.standard_normal((batch, d.shape[1])))
    ref = x @ torch.from_numpy(f.decode(name)).double().T
    y = d.matmul(x.to(torch.float32).to(d.device), backend=backend)
    assert y.dtype == torch.float32 and y.shape == (batch, d.shape[0])
    assert torch.isfinite(y).all()
    assert _rel(y, ref) <= MATMUL_TOL
    y3 = d.matmul(x.to(torch.float32).reshape(batch, 1, -1).to(d.device), backend=backend)  # leading dims
    assert y3.shape == (batch, 1, d.shape[0]) and torch.allclose(y3.reshape(y.shape), y, rtol=1e-5, atol=1e-6)


def test_matmul_batch_chunks_and_half(tmp_path, rng, triton_kernels):
    """Batches above one launch's 16 rows are chunked; fp16 inputs give fp16 results near the fp64 ref."""
    f, (name,) = write_cases(tmp_path, rng, [(8, 64, dict(encoding="seeded", alpha=4, group_size=32, bits=4))])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), DEVICE)
    x = torch.from_numpy(rng.standard_normal((21, 64)))
    ref = x @ torch.from_numpy(f.decode(name)).double().T
    assert _rel(d.matmul(x.float().to(DEVICE), backend="triton"), ref) <= MATMUL_TOL
    yh = d.matmul(x.half().to(DEVICE), backend="triton")
    assert yh.dtype == torch.float16 and _rel(yh, ref) <= HALF_TOL


def test_properties_and_resident_bytes(tmp_path, rng):
    """Stored encodings are resident as stored; seeded_rans is resident as seeded's packed codes,
    seeded_rans_split as each class's packed codes and U16 column lists, and both keep their file bytes in
    encoded_nbytes; all move between devices and through Module._apply functions."""
    f, names = write_cases(tmp_path, rng, [CASES[0], CASES[8], CASES[13], CASES[16]])
    for n in names:
        e = f.entry(n)
        d = CompressedDelta.from_entry(e, f.buffers(n))
        stored = sum(b["length"] for b in e["buffers"].values())
        assert d.encoded_nbytes == stored and d.shape == tuple(e["shape"]) and d.device.type == "cpu"
        if e["encoding"] == "seeded_rans":
            assert set(d.buffers) == {"codes"} and d.layout.name == "seeded"
            assert d.nbytes == -(-d.shape[0] * d.kept_per_row * e["params"]["bits"] // 8)
        elif e["encoding"] == "seeded_rans_split":
            assert d.layout.name == "split" and [p.shape[1] for p in d.parts] == [10, 86]
            assert [p.layout.column_index(p).tolist() for p in d.parts] == [e["params"]["hot_columns"], sorted(
                set(range(96)) - set(e["params"]["hot_columns"]))]
            assert [p.complement for p in d.parts] == [False, False]  # 1.3x the file's bytes with both lists
            codes = sum(-(-p.shape[0] * p.kept_per_row * p.params["bits"] // 8) for p in d.parts)
            assert d.nbytes == codes + 2 * d.shape[1]  # U16 lists
        else:
            assert d.nbytes == stored
        moved = d.map_buffers(lambda t: t.clone())
        assert moved.nbytes == d.nbytes and moved.encoded_nbytes == d.encoded_nbytes
        assert all(p.columns is None or p.columns.data_ptr() != q.columns.data_ptr()
                   for p, q in zip(moved.parts, d.parts))  # the classes' lists moved too
        assert torch.equal(moved.to_dense(), d.to_dense()) and torch.equal(d.to("cpu").to_dense(), d.to_dense())
        assert n in repr(d)


@pytest.mark.parametrize("backend", ["triton", "numpy", "torch"])
def test_split_column_lists_u16_and_u32(tmp_path, rng, backend, triton_kernels):
    """Column lists are U16 up to 2^16 input columns (column 40000 reads back unsigned) and U32 past them;
    both serve the same products and decodes."""
    from ddq_format.kernels import registry
    t, dt = registry.column_list(np.array([3, 40000, 65535]), 1 << 16, "cpu")
    assert dt == "U16" and t.dtype == torch.int16 and t.numel() == 3
    assert registry.column_list(np.array([70000]), 70001, "cpu")[1] == "U32"
    f, (name,) = write_cases(tmp_path, rng, [CASES[17]])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), _device(backend))
    hot = d.parts[0].layout.column_index(d.parts[0])
    wide = {**d.buffers, "hot_columns": hot.to(torch.int32)}
    d32 = CompressedDelta(d.encoding, d.shape, d.params, wide, {**d.dtypes, "hot_columns": "U32"}, name)
    assert {p.columns.element_size() for p in d32.parts} == {4} and d32.nbytes == d.nbytes + 2 * hot.numel()
    assert torch.equal(d32.parts[1].layout.column_index(d32.parts[1]), d.parts[1].layout.column_index(d.parts[1]))
    x = torch.from_numpy(rng.standard_normal((3, d.shape[1]))).float().to(d.device)
    ref = torch.from_numpy(f.decode(name))
    assert torch.equal(d32.to_dense(backend=backend).cpu(), ref)
    assert _rel(d32.matmul(x, backend=backend), x.double().cpu() @ ref.double().T) <= MATMUL_TOL
    with pytest.raises(UsageError, match="column-list dtype"):
        multi_delta_matmul(x, [d, d32], torch.tensor([0, 1, 0], device=d.device), backend="triton")


def test_seeded_rans_resident_within_twice_its_bytes(tmp_path, rng):
    """A quantized Gaussian delta (peaked codes) at alpha 8, k 4: resident seeded codes 1x..2x the file's
    rANS bytes (the issue's limit for a device layout)."""
    f, (name,) = write_cases(tmp_path, rng, [(64, 1024, dict(encoding="seeded_rans", alpha=8, group_size=128, bits=4))])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name))
    assert 1.0 < d.nbytes / d.encoded_nbytes <= 2.0


def test_usage_errors(tmp_path, rng):
    f, names = write_cases(tmp_path, rng, [CASES[0]])
    d = CompressedDelta.from_entry(f.entry(names[0]), f.buffers(names[0]))
    with pytest.raises(UsageError, match="features"):
        d.matmul(torch.zeros(2, 3))
    with pytest.raises(UsageError, match="index values"):
        multi_delta_matmul(torch.zeros(2, 256), [d], torch.tensor([0, 1]))
    with pytest.raises(UsageError, match="backend"):
        d.to_dense(backend="cuda-magic")
    with pytest.raises(UsageError, match="kind"):
        CompressedDelta.from_entry({**f.entry(names[0]), "kind": "dense"}, f.buffers(names[0]))
    with pytest.raises(UsageError, match="encoding"):
        CompressedDelta.from_entry({**f.entry(names[0]), "encoding": "csr_f16"}, f.buffers(names[0]))


def test_corrupt_column_index_rejected_before_upload(tmp_path, rng):
    """Kernels index memory by column: an out-of-range column must fail at load, not corrupt memory."""
    f, (name,) = write_cases(tmp_path, rng, [CASES[9]])  # 300 columns: U16 indices
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
    f, (name,) = write_cases(tmp_path, rng, [CASES[0]])
    d = CompressedDelta.from_entry(f.entry(name), f.buffers(name), "cuda")
    assert choose(d.device, None) == "triton"
    assert torch.equal(d.to_dense().cpu(), torch.from_numpy(f.decode(name)))
