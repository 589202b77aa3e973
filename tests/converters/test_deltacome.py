"""Delta-CoMe's allocation, DeltaMix's exact knapsack, and the lowrank_q files they write."""
from __future__ import annotations

import itertools

import numpy as np

from ddq_format import Writer, open_ddq
from ddq_format.converters import deltacome, obs


def _lowrankish(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    s = 0.5 ** np.arange(min(rows, cols))  # a long-tailed spectrum, as fine-tune deltas have
    U, _ = np.linalg.qr(rng.standard_normal((rows, min(rows, cols))))
    V, _ = np.linalg.qr(rng.standard_normal((cols, min(rows, cols))))
    return ((U * s) @ V.T).astype(np.float32)


def test_paper_bands_follow_the_recipe_and_fit_the_budget():
    # the paper's 16x on a 4096-wide matrix: 2 vectors at 8 bits, 32 at 3, the rest at 2
    budget = 2 * 4096 * 4096 / 16
    bands = deltacome.paper_bands(4096, 4096, budget)
    assert [b for _, b in bands] == [8, 3, 2] and bands[0][0] == 2 and bands[1][0] == 32
    used = sum(r * deltacome.vector_bytes(4096, 4096, b) for r, b in bands)
    assert used <= budget and budget - used < deltacome.vector_bytes(4096, 4096, 2)
    small = deltacome.paper_bands(64, 48, 2 * 64 * 48 / 16)  # small budgets still get one 8-bit vector
    assert small[0] == (1, 8)


def test_ilp_is_exact_on_a_small_instance():
    D = _lowrankish(12, 10, 1)
    U, S, Vt = deltacome.svd(D, 4)
    budget = 3 * deltacome.vector_bytes(12, 10, 3)
    bits = deltacome.ilp_bits(U, S, Vt, budget)
    err = lambda bb: sum(S[i] ** 2 * deltacome.rtn_error(U[:, i], Vt[i], b) for i, b in enumerate(bb))  # noqa
    cost = lambda bb: sum(int(np.ceil(deltacome.vector_bytes(12, 10, b))) for b in bb)  # noqa
    feasible = [bb for bb in itertools.product(deltacome.ILP_BITS, repeat=4) if cost(bb) <= budget]
    assert cost(bits) <= budget
    assert err(bits) <= min(err(bb) for bb in feasible) + 1e-12


def test_ilp_objective_never_worse_than_the_paper_allocation():
    D = _lowrankish(96, 80, 2)
    budget = 2 * D.size / 16
    U, S, Vt = deltacome.svd(D, 80)
    paper = np.zeros(80, int)
    i = 0
    for r, b in deltacome.paper_bands(96, 80, budget):
        paper[i:i + r] = b
        i += r
    ilp = deltacome.ilp_bits(U, S, Vt, budget)
    err = lambda bb: sum(S[i] ** 2 * deltacome.rtn_error(U[:, i], Vt[i], b) for i, b in enumerate(bb))  # noqa
    assert err(ilp) <= err(paper) + 1e-9


def test_compress_writes_a_file_within_budget_that_approximates_the_delta(tmp_path):
    D = _lowrankish(64, 48, 3) + 0.01 * np.random.default_rng(3).standard_normal((64, 48)).astype(np.float32)
    x = np.random.default_rng(4).standard_normal((300, 48))
    H = x.T @ x
    for alloc in ("paper", "ilp"):
        enc = deltacome.compress(D, 8, H, allocation=alloc)
        assert sum(a.size for _, a in enc.buffers.values()) <= 2 * D.size / 8
        p = tmp_path / f"{alloc}.ddq"
        with Writer(p) as w:
            w.add("t", "compressed", D.shape, "F32", enc)
        got = open_ddq(p).decode("t")
        assert obs.output_error(D - got, H) < 0.2 * obs.output_error(D, H)
