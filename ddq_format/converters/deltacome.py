"""Delta-CoMe (Ping et al., NeurIPS 2024) and DeltaMix's allocation (Xiong et al., 2025): mixed-precision
low rank, stored as `lowrank_q` (SPEC.md §9.6).

What the papers do. Delta-CoMe: SVD of each linear delta, D = U S V^T; the singular vectors of the largest
singular values get more bits (its run.sh for a 4096-wide Llama at 16x: 2 vectors at 8 bits, 32 at 3 bits,
968 (MLP: 1428) at 2 bits, the rest dropped); each band is quantized with GPTQ (asymmetric, groups of 128,
1% damping, 128 x 2048 calibration tokens of C4): V^T as a linear layer on the inputs X, then U on X V^ S.
DeltaMix: the same representation, but the bit width of every singular vector is chosen by a 0/1 integer
program minimising the quantization error in SVD space under the bit budget, plus a "reconstruction target
correction" that re-targets U after V is quantized.

What is implemented. Budget: each matrix gets 16 * rows * cols / R bits for a ratio R, and the allocation
fills it counting every stored byte (codes, fp16 group scales, 8-bit zeros). Delta-CoMe's allocation keeps
the paper's proportions of the budget: the share the 7B recipe spends on 8-bit vectors (16/2048 of it) and on
3-bit vectors (96/2048), at least one 8-bit vector, the rest 2-bit. The ILP allocation (DeltaMix,
allocation="ilp") chooses b_i in {0, 2, 3, 4, 8} per singular vector minimising sum_i sigma_i^2 * eps_i(b_i),
eps_i(b) the measured relative round-to-nearest error of vector pair i at b bits (eps(0) = 1), under the
byte budget: a multiple-choice knapsack solved exactly by dynamic programming over the budget in bytes
(no ILP solver needed), then the reconstruction target correction U* = argmin ||X (D - U V^)^T||.
GPTQ: V^T per band with H = X^T X, then U with H_U = V^ H V^T (S folded into U; the paper keeps S apart, which
quantizes the same since the grid is per vector).
Simplifications, all stated in SPEC.md and the results: (1) U is quantized per singular vector (groups of 128
along the vector) where Delta-CoMe's GPTQ groups U along its rank axis per output row; on this 576-wide model
per-row scales would cost rows x bands x 3 B per matrix, the whole budget at 128x; (2) no act-order; (3) bands
are quantized against the fine-tune's own inputs, not sequentially through the partially compressed model;
(4) calibration is the converter's calibration text, not C4; (5) the embedding and lm_head follow the same
procedure when compressed (the papers leave them uncompressed).
"""
from __future__ import annotations

import math

import numpy as np

from ..encodings import Encoded, lowrank_q
from . import obs

GROUP = 128
PAPER_BUDGET = 2048  # vector-bits of the paper's 16x recipe on a 4096-wide matrix: 2*8 + 32*3 + 968*2
PAPER_SHARE = {8: 16 / PAPER_BUDGET, 3: 96 / PAPER_BUDGET}
ILP_BITS = (0, 2, 3, 4, 8)
DP_CELLS = 20000


def vector_bytes(rows: int, cols: int, bits: int, group: int = GROUP) -> float:
    """Stored bytes of one (u, v) pair at `bits`: codes plus an F16 scale and U8 zero per group."""
    if bits == 0:
        return 0.0
    groups = lowrank_q.n_groups(rows, group) + lowrank_q.n_groups(cols, group)
    return bits * (rows + cols) / 8 + 3 * groups


def paper_bands(rows: int, cols: int, budget_bytes: float, group: int = GROUP) -> list[tuple[int, int]]:
    """Delta-CoMe's allocation: [(rank, bits)] at 8, 3 and 2 bits. The 8- and 3-bit counts keep the paper's
    shares of the code bits (2 and 32 vectors of its 2048 vector-bits at 16x), at least one 8-bit vector; the
    2-bit vectors fill what the true budget (codes, scales and zeros) has left."""
    rmax = min(rows, cols)
    vec_bits = budget_bytes * 8 / (rows + cols)  # the budget in the paper's units: code bits per vector slot
    out, left, used = [], budget_bytes, 0
    for bits in (8, 3, 2):
        cost = vector_bytes(rows, cols, bits, group)
        n = int(left // cost) if bits == 2 else int(round(vec_bits * PAPER_SHARE[bits] / bits))
        if bits == 8:
            n = max(n, 1)
        n = min(n, rmax - used, int(left // cost))
        if n > 0:
            out.append((n, bits))
            used += n
            left -= n * cost
    return out


def rtn_error(u: np.ndarray, v: np.ndarray, bits: int, group: int = GROUP) -> float:
    """Relative error of the rank-1 term u v^T (unit u, v) when both are rounded to `bits` per group."""
    if bits == 0:
        return 1.0
    uq = lowrank_q.dequantize_groups(*lowrank_q.quantize_groups(u, bits, group), group)
    vq = lowrank_q.dequantize_groups(*lowrank_q.quantize_groups(v, bits, group), group)
    # ||u v^T - uq vq^T||_F^2 = |u|^2|v|^2 - 2 (u.uq)(v.vq) + |uq|^2 |vq|^2
    return float(u @ u * (v @ v) - 2 * (u @ uq) * (v @ vq) + (uq @ uq) * (vq @ vq))


def ilp_bits(U: np.ndarray, S: np.ndarray, Vt: np.ndarray, budget_bytes: float, group: int = GROUP) -> np.ndarray:
    """DeltaMix: bits per singular vector minimising sum sigma_i^2 eps_i(b_i) within the byte budget, exactly
    (multiple-choice knapsack by dynamic programming over the budget in cells of at least one byte, at
    most DP_CELLS cells; costs round up, so the choice never exceeds the budget)."""
    rows, cols = U.shape[0], Vt.shape[1]
    n = S.size
    unit = max(1, math.ceil(budget_bytes / DP_CELLS))  # budget cells of `unit` bytes bound the table
    costs = np.array([math.ceil(vector_bytes(rows, cols, b, group) / unit) for b in ILP_BITS], np.int64)
    cap = int(budget_bytes // unit)
    err = np.array([[S[i] ** 2 * rtn_error(U[:, i], Vt[i], b, group) for b in ILP_BITS] for i in range(n)])
    best = np.zeros(cap + 1)  # best[c]: least error of vectors so far with at most c bytes
    choice = np.zeros((n, cap + 1), np.int8)
    for i in range(n):
        cand = np.full((len(ILP_BITS), cap + 1), np.inf)
        for j, c in enumerate(costs):
            if c <= cap:
                cand[j, c:] = best[: cap + 1 - c] + err[i, j]
        choice[i] = np.argmin(cand, axis=0)
        best = cand[choice[i], np.arange(cap + 1)]
    bits, c = np.zeros(n, np.int64), cap
    for i in range(n - 1, -1, -1):
        j = int(choice[i, c])
        bits[i] = ILP_BITS[j]
        c -= costs[j]
    return bits


def _group_fixer(bits: int, group: int, W: np.ndarray):
    """GPTQ's grid with groups along the columns: a group's params are fit, on the error-updated W, when its
    first column comes up. Records codes/scales/zeros per row for the stored entry."""
    rows, cols = W.shape
    G = lowrank_q.n_groups(cols, group)
    top = (1 << bits) - 1
    rec = {"codes": np.zeros((rows, cols), np.uint8), "scales": np.zeros((rows, G), np.float16),
           "zeros": np.zeros((rows, G), np.uint8)}
    state = {}

    def fix(j, w, _):
        g = j // group
        if j % group == 0:
            blk = W[:, j:j + group]
            lo, hi = np.minimum(blk.min(1), 0), np.maximum(blk.max(1), 0)
            s = ((hi - lo) / top).astype(np.float16)
            s32 = s.astype(np.float32)
            safe = np.where(s32 > 0, s32, 1)
            z = np.where(s32 > 0, np.clip(np.rint(-lo / safe), 0, top), 0).astype(np.uint8)
            rec["scales"][:, g], rec["zeros"][:, g] = s, z
            state["s"], state["z"], state["safe"] = s32, z.astype(np.float32), safe
        q = np.clip(np.rint(w / state["safe"]) + state["z"], 0, top)
        rec["codes"][:, j] = q.astype(np.uint8)
        return (state["s"] * (q - state["z"])).astype(np.float32)
    return fix, rec


def _vector_fixer(bits: int, group: int, rows: int, r: int):
    """Columns are whole vectors (U's singular vectors): each column gets its own grid per group of rows."""
    rec = {"codes": np.zeros((r, rows), np.uint8), "scales": np.zeros((r, lowrank_q.n_groups(rows, group)), np.float16),
           "zeros": np.zeros((r, lowrank_q.n_groups(rows, group)), np.uint8)}

    def fix(j, w, _):
        q, s, z = lowrank_q.quantize_groups(w, bits, group)
        rec["codes"][j], rec["scales"][j], rec["zeros"][j] = q, s, z
        return lowrank_q.dequantize_groups(q, s, z, group)
    return fix, rec


def gptq_band(D: np.ndarray, u: np.ndarray, vt: np.ndarray, bits: int, H: np.ndarray | None, group: int,
              correct_target: bool):
    """Quantize one band (u = U S [rows, r], vt = V^T [r, cols]) with GPTQ: V^T on H, then U on V^ H V^T.
    H None: round to nearest (no calibration). correct_target: DeltaMix's U* = D H V^T (V^ H V^T)^-1."""
    rows, cols = D.shape
    r = vt.shape[0]
    Hx = np.eye(cols, dtype=np.float64) if H is None else np.asarray(H, np.float64)
    Uv, _ = obs.inverse_factor(Hx) if H is not None else (np.eye(cols, dtype=np.float32), None)
    W = np.array(vt, np.float32)
    fix, rec_v = _group_fixer(bits, group, W)
    vq = obs.solve(W, Uv, fix, block=group)
    Hu = vq.astype(np.float64) @ Hx @ vq.T.astype(np.float64)
    target = u
    if correct_target:
        reg = 1e-6 * max(float(np.trace(Hu)) / max(r, 1), 1e-30)
        target = (D.astype(np.float64) @ Hx @ vq.T.astype(np.float64)) @ np.linalg.inv(Hu + reg * np.eye(r))
    Wu = np.array(target, np.float32)
    if H is None:
        Uu = np.eye(r, dtype=np.float32)
    else:
        Uu, _ = obs.inverse_factor(Hu)
    fix_u, rec_u = _vector_fixer(bits, group, rows, r)
    uq = obs.solve(Wu, Uu, fix_u, block=group)
    band = (bits, rec_u["codes"], rec_u["scales"], rec_u["zeros"], rec_v["codes"], rec_v["scales"], rec_v["zeros"])
    return band, uq, vq


def svd(delta: np.ndarray, rank: int):
    """Leading `rank` singular triplets (exact SVD, float64)."""
    U, S, Vt = np.linalg.svd(np.asarray(delta, np.float64), full_matrices=False)
    return U[:, :rank], S[:rank], Vt[:rank]


def compress(delta: np.ndarray, ratio: float, H: np.ndarray | None, *, allocation: str = "paper",
             group: int = GROUP) -> Encoded:
    """delta [rows, cols] -> lowrank_q at about `ratio` (fp16 bytes / stored bytes of the buffers)."""
    rows, cols = delta.shape
    budget = 2 * rows * cols / ratio
    if allocation == "paper":
        bands = paper_bands(rows, cols, budget, group)
        rank = sum(r for r, _ in bands)
        U, S, Vt = svd(delta, max(rank, 1))
        plan, start = [], 0
        for r, b in bands:
            plan.append((b, np.arange(start, start + r)))
            start += r
    elif allocation == "ilp":
        rmax = min(rows, cols, int(budget // vector_bytes(rows, cols, 2, group)) + 1)
        U, S, Vt = svd(delta, max(rmax, 1))
        bits = ilp_bits(U, S, Vt, budget, group)
        plan = [(int(b), np.flatnonzero(bits == b)) for b in sorted(set(bits.tolist()), reverse=True) if b > 0]
    else:
        raise ValueError(f"unknown allocation {allocation!r} (paper, ilp)")
    out, residual = [], np.array(delta, np.float32)
    for b, idx in plan:
        if idx.size == 0:
            continue
        u = (U[:, idx] * S[idx]).astype(np.float32)
        band, uq, vq = gptq_band(residual if allocation == "ilp" else delta, u, Vt[idx].astype(np.float32), b, H,
                                 group, correct_target=allocation == "ilp")
        if allocation == "ilp":
            residual -= uq @ vq  # the next band's target correction sees what this band left
        out.append(band)
    return lowrank_q.encode((rows, cols), out, group_size=group)
