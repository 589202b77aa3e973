"""The pieces of multi-delta serving that need no engine: tensor-parallel shards of a delta, the per-slot
delta tables, and the rows each rank keeps as read off vLLM's own LoRA slicing (TP=2 without GPUs)."""
from __future__ import annotations

import importlib.util
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ddq_format.converters.dropout import groupwise_dropout  # noqa: E402
from ddq_format import encodings  # noqa: E402
from ddq_format.encodings import csr_parts, seeded, seeded_rans, seeded_rans_split  # noqa: E402
from ddq_format.kernels import CompressedDelta  # noqa: E402
from ddq_format.loaders.vllm_multi.deltas import DenseDelta, LinearSlots, NormSlots, RowSlots, StepIndex  # noqa: E402
from ddq_format.loaders.vllm_multi.shard import RowRuns, row_runs, shard_compressed, shard_dense  # noqa: E402
from ddq_testing import small_delta  # noqa: E402


def entry(shape, enc, name="w") -> tuple[dict, dict]:
    """A file entry (header dict + buffers) from an encoder's output, as DDQFile hands them out."""
    bufs = {r: np.ascontiguousarray(b).reshape(-1).view(np.uint8) for r, (_, b) in enc.buffers.items()}
    e = {"name": name, "kind": "compressed", "encoding": enc.encoding, "shape": list(shape), "dtype": "F32",
         "params": enc.params, "buffers": {r: {"dtype": dt, "length": int(bufs[r].size)} for r, (dt, _) in
                                           enc.buffers.items()}}
    return e, bufs


def encoded(encoding, shape, alpha, group, seed=3):
    d = small_delta(*shape, seed=seed)
    if encoding == "seeded_rans_split":  # 4 hot columns at alpha 2, the rest as the other cases
        hot = np.array([1, 9, 10, shape[1] - 2])
        rest = np.setdiff1d(np.arange(shape[1]), hot)
        classes = []
        for cols_c, a, g, sd in ((hot, 2, 4, seed ^ 1), (rest, alpha, min(group, rest.size), seed)):
            vals = groupwise_dropout(np.ascontiguousarray(d[:, cols_c]), a, g, seed=sd)[1]
            classes.append(seeded_rans.encode((shape[0], cols_c.size), vals, bits=4, alpha=a, group_size=g,
                                              seed=sd, rows_per_stream=2))
        return entry(shape, seeded_rans_split.encode(shape, hot, *classes))
    cols, vals = groupwise_dropout(d, alpha, group, seed=seed)
    if encoding == "seeded":
        return entry(shape, seeded.encode(shape, vals, bits=4, alpha=alpha, group_size=group, seed=seed))
    rows = np.repeat(np.arange(shape[0]), cols.shape[1])
    return entry(shape, csr_parts.encode(shape, rows, cols.reshape(-1), vals.reshape(-1), bits=4, parts=4,
                                         alpha=alpha, group_size=group, seed=seed))


def full_dense(e, bufs) -> np.ndarray:
    return encodings.get(e["encoding"]).decode(e, bufs)


# shapes with a tail group (40 = 2*16 + 8), one group per row (group = cols), cuts inside groups
CASES = [((12, 40), 4, 16), ((9, 32), 2, 32), ((16, 24), 4, 8)]
SHARDS = [
    (None, (0, 20)), (None, (20, 40)), (None, (5, 13)),  # row-parallel: input columns, cut anywhere
    (np.arange(0, 6), None), (np.arange(6, 9), None),  # column-parallel: output rows
    (np.array([7, 0, 3, 8]), None),  # merged layers keep several runs, in their own order
    (np.array([1, 2]), (3, 17)),
]


@pytest.mark.parametrize("encoding", ["csr_parts", "seeded", "seeded_rans_split"])
@pytest.mark.parametrize("shape, alpha, group", CASES)
@pytest.mark.parametrize("rows, cols", SHARDS)
def test_a_shard_decodes_to_exactly_its_slice_of_the_delta(encoding, shape, alpha, group, rows, cols):
    e, bufs = encoded(encoding, shape, alpha, group)
    cols = None if cols is None else (min(cols[0], shape[1]), min(cols[1], shape[1]))
    s = shard_compressed(e, bufs, rows, cols)
    want = full_dense(e, bufs)
    want = want if rows is None else want[rows]
    want = want if cols is None else want[:, cols[0]:cols[1]]
    assert tuple(s.shape) == want.shape
    np.testing.assert_array_equal(s.to_dense().numpy(), want)  # bit-exact, like every decode
    # one run of rows: a delta the kernels serve (seeded: the shard's codes, its mask keyed by global
    # rows and groups; csr_parts: re-encoded); several runs: one such shard per run
    runs = row_runs(rows) if rows is not None else [(0, shape[0])]
    assert isinstance(s, CompressedDelta if len(runs) == 1 else RowRuns)
    whole = CompressedDelta.from_entry(e, bufs).nbytes  # the entry's own bytes, but split: seeded codes + lists
    lists = 2 * want.shape[1] if encoding == "seeded_rans_split" else 0  # repeated in each run
    assert s.nbytes <= whole + (4 + lists) * (len(runs) - 1)  # byte padding per run (and class)
    x = torch.randn(3, want.shape[1])
    torch.testing.assert_close(s.matmul(x), x @ torch.from_numpy(want).T, rtol=1e-5, atol=1e-6)


def test_no_shard_is_the_file_entry_itself():
    e, bufs = encoded("seeded", (8, 32), 4, 16)
    s = shard_compressed(e, bufs, np.arange(8), (0, 32))
    assert isinstance(s, CompressedDelta) and s.nbytes == sum(b.size for b in bufs.values())


@pytest.mark.parametrize("encoding", ["csr_parts", "seeded"])
def test_tp2_shards_recombine_to_the_full_product(encoding):
    """Column-parallel ranks concatenate their rows; row-parallel ranks' partial sums add up (the all-reduce)."""
    e, bufs = encoded(encoding, (12, 40), 4, 16)
    x = torch.randn(5, 40, dtype=torch.float64).float()
    full = x @ torch.from_numpy(full_dense(e, bufs)).T
    col = [shard_compressed(e, bufs, np.arange(6 * r, 6 * r + 6), None).matmul(x) for r in range(2)]
    torch.testing.assert_close(torch.cat(col, dim=1), full, rtol=1e-5, atol=1e-6)
    row = [shard_compressed(e, bufs, None, (20 * r, 20 * r + 20)).matmul(x[:, 20 * r:20 * r + 20]) for r in range(2)]
    torch.testing.assert_close(row[0] + row[1], full, rtol=1e-5, atol=1e-6)
    # each rank holds its share of the kept elements; csr_parts repeats its row offsets per rank, seeded
    # the codes of the group the cut at column 20 falls in (12 rows x 4 kept x 4 bits)
    repeated = bufs["row_offsets"].size if encoding == "csr_parts" else 12 * 4 * 4 // 8
    assert sum(shard_compressed(e, bufs, None, (20 * r, 20 * r + 20)).nbytes for r in range(2)) <= \
        sum(b.size for b in bufs.values()) + repeated + 2


def test_row_runs():
    assert row_runs(np.array([7, 0, 1, 2, 8, 9])) == [(7, 8), (0, 3), (8, 10)] and row_runs(np.zeros(0)) == []


def test_dense_shard():
    t = torch.arange(24.0).reshape(4, 6)
    assert torch.equal(shard_dense(t, np.array([3, 1]), (2, 5)), t[[3, 1]][:, 2:5])


# -- the per-slot tables ---------------------------------------------------------------------------------
def test_linear_slots_add_each_rows_delta_and_nothing_to_the_base_rows():
    """A packed layer (2 output slices), 3 slots: kernel-encoded and dense deltas, one bias; rows of slot
    -1 are untouched, every other row gets its own slot's delta."""
    e1, b1 = encoded("seeded", (12, 40), 4, 16, seed=1)
    e2, b2 = encoded("csr_parts", (12, 40), 4, 16, seed=2)
    e3, b3 = encoded("seeded", (8, 40), 4, 16, seed=4)
    d = {0: {0: CompressedDelta.from_entry(e1, b1), 1: CompressedDelta.from_entry(e3, b3)},
         2: {0: CompressedDelta.from_entry(e2, b2), 1: DenseDelta(torch.randn(8, 40))}}
    bias = {2: {1: torch.randn(8)}}
    slots = LinearSlots(3, [(0, 12), (12, 8)], 40)
    for s in d:
        slots.set(s, d[s], bias.get(s))
    assert not slots.empty and slots.nbytes(1) == 0 and slots.nbytes(2) > slots.nbytes(0) > 0
    x = torch.randn(7, 40)
    idx = torch.tensor([0, -1, 2, 2, 1, 0, -1])
    y0 = torch.randn(7, 20)
    got = slots.apply(x, y0.clone(), idx)
    for t in range(7):
        want = y0[t].clone()
        s = int(idx[t])
        for i, (off, size) in enumerate(slots.slices):
            if s in d and i in d[s]:
                want[off:off + size] += (x[t:t + 1] @ d[s][i].to_dense().T)[0]
        if s in bias:
            want[12:] += bias[s][1]
        torch.testing.assert_close(got[t], want, rtol=1e-5, atol=1e-5)
    slots.clear(0)
    slots.clear(2)
    assert slots.empty
    with pytest.raises(ValueError, match="slice 1"):
        slots.set(0, {1: DenseDelta(torch.zeros(9, 40))})


def test_linear_slots_serve_multi_run_shards_and_reuse_the_steps_segments():
    """A slot holding a RowRuns (a merged tensor split per rank) beside a whole delta in another slot; the
    step's segments, passed in, give what segments built from the index give."""
    e1, b1 = encoded("seeded", (12, 40), 4, 16, seed=1)
    e2, b2 = encoded("csr_parts", (12, 40), 4, 16, seed=2)
    rows = np.array([6, 7, 8, 0, 1, 2])
    runs = {0: shard_compressed(e1, b1, rows, None), 1: shard_compressed(e2, b2, rows, None),
            2: shard_compressed(e1, b1, np.arange(3, 9), None)}
    assert isinstance(runs[0], RowRuns) and isinstance(runs[2], CompressedDelta)
    slots = LinearSlots(3, [(0, 6)], 40)
    for s, d in runs.items():
        slots.set(s, {0: d})
    x, idx = torch.randn(6, 40), torch.tensor([1, 0, -1, 2, 0, 1])
    step = StepIndex(3)
    got = slots.apply(x, torch.zeros(6, 6), idx, segments=step.segments(idx))
    assert step.segments(idx) is step.segments(idx)  # one grouping per step
    for t, s in enumerate(idx.tolist()):
        want = torch.zeros(6) if s < 0 else (x[t:t + 1] @ runs[s].to_dense().T)[0]
        torch.testing.assert_close(got[t], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slots.apply(x, torch.zeros(6, 6), idx), got)


def test_step_index_is_rebuilt_after_the_indices_change():
    step = StepIndex(2)
    idx = torch.tensor([0, 1, 1])
    seg = step.segments(idx)
    assert step.segments(idx) is seg and seg.runs() == [(0, 0, 1), (1, 1, 2)]
    idx[:] = torch.tensor([1, 1, -1])  # vLLM updates its index tensors in place
    step.bump()
    assert step.segments(idx).runs() == [(1, 0, 2)]
    assert step.segments(idx, "sampler") is not step.segments(idx)


def test_norm_slots_table():
    base = torch.arange(4.0)
    n = NormSlots(3, base)
    assert n.empty
    n.set(1, torch.ones(4))
    assert torch.equal(n.table[2], torch.ones(4)) and n.has.tolist() == [False, False, True, False]
    assert torch.equal(n.table[1], base) and n.nbytes(1) == 16 and n.nbytes(0) == 0
    n.clear(1)
    assert n.empty and torch.equal(n.table[2], base) and not n.has.any()
    fresh = NormSlots(3, base)
    with torch.inference_mode():  # vLLM activates adapters inside its steps, removes them outside
        fresh.set(2, torch.ones(4) * 2)
    fresh.clear(2)
    assert fresh.empty and torch.equal(fresh.table[3], base)


def test_compressed_embedding_rows_decode_only_the_tokens():
    e, b = encoded("seeded", (12, 40), 4, 16, seed=5)
    d = CompressedDelta.from_entry(e, b)
    slots = RowSlots(2)
    slots.set(0, d)
    tokens, idx = torch.tensor([3, 11, 3, 0]), torch.tensor([0, -1, 0, 0])
    got = slots.embedding_add(tokens, idx, 40)
    want = torch.from_numpy(full_dense(e, b))[tokens] * (idx >= 0)[:, None]
    assert torch.equal(got, want)


def test_embedding_rows_per_vocab_shard_sum_to_the_full_lookup():
    d = torch.randn(10, 4)
    tokens = torch.tensor([0, 9, 4, 5, 2])
    idx = torch.tensor([1, 1, -1, 1, 0])
    full = RowSlots(2)
    full.set(1, DenseDelta(d))
    want = full.embedding_add(tokens, idx, 4)
    torch.testing.assert_close(want[[0, 1, 3]], d[[0, 9, 5]])
    assert torch.count_nonzero(want[[2, 4]]) == 0
    halves = []
    for start in (0, 5):  # two ranks, each with its vocabulary half
        r = RowSlots(2)
        r.set(1, DenseDelta(d[start:start + 5]))
        halves.append(r.embedding_add(tokens, idx, 4, vocab_start=start))
    torch.testing.assert_close(halves[0] + halves[1], want)
    assert full.embedding_add(tokens, torch.full((5,), -1), 4) is None


# -- the rows each rank keeps, from vLLM's own LoRA-B slicing ---------------------------------------------
vllm_needed = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


def fake(cls, **attrs):
    """An object with the attributes a LoRA layer's slice_lora_b reads, and that method bound to it."""
    ns = types.SimpleNamespace(**attrs)
    ns.slice_lora_b = types.MethodType(cls.slice_lora_b, ns)
    return ns


@vllm_needed
@pytest.mark.parametrize("rank", [0, 1])
def test_qkv_rows_per_rank_with_replicated_kv_heads(rank):
    """TP=2, 4 query heads and 1 kv head (replicated on both ranks), head size 8."""
    from vllm.lora.layers import MergedQKVParallelLinearWithLoRA

    from ddq_format.loaders.vllm_multi.layers import column_rows
    m = fake(MergedQKVParallelLinearWithLoRA, n_slices=3, output_slices=(16, 8, 8), output_ids=(rank, 0, 0),
             base_layer=types.SimpleNamespace(output_sizes=[32, 16, 16]))
    assert column_rows(m, 3) == [((16 * rank, 16 * rank + 16),), ((0, 8),), ((0, 8),)]


@vllm_needed
@pytest.mark.parametrize("rank", [0, 1])
def test_merged_gate_up_in_one_tensor_keeps_two_runs(rank):
    from vllm.lora.layers import ColumnParallelLinearWithLoRA

    from ddq_format.loaders.vllm_multi.layers import column_rows
    m = fake(ColumnParallelLinearWithLoRA, is_merged_col_linear=True, output_size=8, tp_rank=rank,
             base_layer=types.SimpleNamespace(output_size=16))
    assert column_rows(m, 1) == [((4 * rank, 4 * rank + 4), (8 + 4 * rank, 8 + 4 * rank + 4))]


# -- what no per-request engine can serve: refused, naming the tensor, before the file reaches an engine ----
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    pytest.importorskip("transformers")
    from vllm_testing import save_llama
    root = tmp_path_factory.mktemp("refusals")
    return root, save_llama(root / "base", seed=0)


def converted(root, base, name, ft, **opts):
    from ddq_format.converters import convert
    from vllm_testing import save_finetune
    save_finetune(root / name, root / "base", ft)
    convert(root / "base", root / name, root / f"{name}.ddq", quiet=True, progress=False, **opts)
    return root / f"{name}.ddq"


@pytest.mark.parametrize("case, error, match, tensor", [
    ("signs", "UsageError", "encoding 'sign_scale' has no kernel", None),
    ("removed", "BindingError", "removes this tensor", "model.layers.1.mlp.up_proj.weight"),
    ("reshaped", "BindingError", "changes this tensor's shape", "lm_head.weight"),
])
def test_unservable_deltas_are_refused_by_name(tiny_base, case, error, match, tensor):
    from ddq_format import errors
    from ddq_format.loaders.vllm_multi.base import BaseCheckpoint
    from ddq_format.loaders.vllm_multi.frontend import check_file
    root, base = tiny_base
    ft = {k: v + np.float32(0.1) for k, v in base.items()}
    opts = dict(encoding="seeded", alpha=2, bits=8, group_size=8)
    if case == "signs":
        opts = dict(method="bitdelta", alpha=1)
    elif case == "removed":
        del ft[tensor]
    else:
        ft[tensor] = np.concatenate([ft[tensor], ft[tensor][:1]])  # one more vocabulary row
    path = converted(root, base, case, ft, **opts)
    with pytest.raises(getattr(errors, error), match=match) as e:
        check_file(str(path), BaseCheckpoint(root / "base"))
    assert e.value.path == str(path)
    from ddq_format.reader import DDQFile
    with DDQFile(path) as f:  # signs: the first sign_scale entry is named
        assert e.value.tensor == tensor or case == "signs" and f.entries[e.value.tensor]["encoding"] == "sign_scale"


def test_low_rank_deltas_pass_the_request_check_and_shard_as_factors(tiny_base):
    """lowrank (and lowrank_q) entries have no kernel but are served as their factors: the check at the
    request's entry into the engine accepts them, and a rank's shard (rows of u, columns of v) is exactly
    that slice of the decoded delta."""
    from ddq_format.loaders.vllm_multi.base import BaseCheckpoint
    from ddq_format.loaders.vllm_multi.deltas import LowRankDelta
    from ddq_format.loaders.vllm_multi.frontend import check_file
    from ddq_format.loaders.vllm_multi.payload import LINEAR, Target, _delta
    from ddq_format.reader import DDQFile
    root, base = tiny_base
    rng = np.random.default_rng(4)
    path = converted(root, base, "lowrank_ok", {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32)
                                                for k, v in base.items()}, method="lowrank", rank=2)
    check_file(str(path), BaseCheckpoint(root / "base"))
    name = "model.layers.0.mlp.down_proj.weight"
    with DDQFile(path) as f:
        full = f.decode(name)
        d = _delta(f, name, Target("m", LINEAR, rows=((3, 9), (20, 25)), cols=(16, 40)), None)
    assert isinstance(d, LowRankDelta) and d.shape == (11, 24)
    want = np.concatenate([full[3:9], full[20:25]])[:, 16:40]
    np.testing.assert_allclose(d.to_dense().numpy(), want, rtol=1e-5, atol=1e-6)
    x = torch.from_numpy(rng.standard_normal((4, 24)).astype(np.float32))
    torch.testing.assert_close(d.matmul(x), x @ torch.from_numpy(want).T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d.rows(torch.tensor([0, 10])), torch.from_numpy(want[[0, 10]]), rtol=1e-5, atol=1e-6)
