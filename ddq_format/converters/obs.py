"""Hessian-aware rounding and pruning (the OBS family: GPTQ, SparseGPT) on a delta, in numpy.

For a linear layer y = x W^T with calibration inputs X, the output error of replacing the delta D by D^ is
||X (D - D^)^T||^2 = sum_r (d_r - d^_r) H (d_r - d^_r)^T with H = X^T X. Columns are fixed one at a time
(left to right, or in a given order); the error a fixed column leaves is spread over the columns not yet fixed
with the inverse-Hessian row, which is what Optimal Brain Surgeon prescribes (Frantar & Alistarh: GPTQ for
rounding, SparseGPT for pruning). `solve` takes a `fix(col, w, state) -> q` callback, so one loop serves every
encoding here: a fixed mask (seeded dropout: entries off the mask become 0), an n:m mask chosen on the way
(SparseGPT), a per-tensor uniform grid, per-row scales, sign x scale.

Everything is float32 except the Hessian factorisation (float64). H is damped by `damp` x mean(diag H), as
GPTQ does (1%); inputs whose diagonal is 0 (never active) get H_jj = 1 and their column of D is dropped.
"""
from __future__ import annotations

import numpy as np

DEFAULT_DAMP = 0.01
BLOCK = 128  # columns per lazy batch update (GPTQ's block)


def inverse_factor(H: np.ndarray, damp: float = DEFAULT_DAMP) -> tuple[np.ndarray, np.ndarray]:
    """(U, dead): U upper-triangular with (H + damp)^-1 = U^T U (GPTQ's Cholesky trick); dead: inputs never seen."""
    H = np.array(H, np.float64, copy=True)
    n = H.shape[0]
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    mean = float(np.mean(np.diag(H))) if n else 1.0
    H[np.diag_indices(n)] += damp * mean
    for attempt in range(6):  # a near-singular H (few tokens, collinear inputs) gets more damping
        try:
            L = np.linalg.cholesky(H)
            Linv = np.linalg.inv(L)
            U = np.linalg.cholesky(Linv.T @ Linv).T
            if np.all(np.isfinite(U)):
                return U.astype(np.float32), dead
        except np.linalg.LinAlgError:
            pass
        H[np.diag_indices(n)] += damp * mean * 10 ** attempt
    raise np.linalg.LinAlgError("Hessian is not positive definite even with damping")


def solve(W: np.ndarray, U: np.ndarray, fix, *, block: int = BLOCK, order: np.ndarray | None = None) -> np.ndarray:
    """Fix the columns of W (float32 [rows, cols], modified in place) one by one with fix(j, w, start) -> q,
    j the column index in W, w its current (error-updated) values, `start` True at the first column of a
    block (fix may decide a block's worth at once, e.g. an n:m mask, via its own state). Returns Q, the fixed
    matrix. `order`: the columns' processing order (U must then be the factor of the permuted H)."""
    rows, cols = W.shape
    if order is not None:
        W = W[:, order]
    Q = np.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2]  # a view: updates land in W
        E1 = np.empty((rows, i2 - i1), np.float32)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i if order is None else int(order[i1 + i])
            w = W1[:, i]
            q = fix(j, w, i1 + i)
            Q[:, i1 + i] = q
            e = (w - q) / U1[i, i]
            if i + 1 < i2 - i1:
                W1[:, i + 1:] -= np.outer(e, U1[i, i + 1:])
            E1[:, i] = e
        if i2 < cols:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    if order is not None:
        out = np.empty_like(Q)
        out[:, order] = Q
        return out
    return Q


def permuted_factor(H: np.ndarray, damp: float = DEFAULT_DAMP):
    """GPTQ's act-order: columns by decreasing H_jj. Returns (order, U of the permuted H, dead)."""
    order = np.argsort(-np.diag(H), kind="stable")
    U, dead = inverse_factor(H[np.ix_(order, order)], damp)
    return order, U, dead[np.argsort(order)]


def output_error(D: np.ndarray, H: np.ndarray, row_weight: np.ndarray | None = None, block: int = 1 << 22) -> float:
    """sum_r w_r d_r H d_r^T (float64 accumulation), D [rows, cols]; w = 1 when row_weight is None."""
    rows, cols = D.shape
    step = max(1, block // max(cols, 1))
    total = 0.0
    H = np.asarray(H, np.float32)
    for r0 in range(0, rows, step):
        d = D[r0:r0 + step]
        per_row = np.einsum("ij,ij->i", d @ H, d, dtype=np.float64)
        total += float(per_row.sum() if row_weight is None else per_row @ row_weight[r0:r0 + step])
    return total


# -- column fixers ---------------------------------------------------------------------------------------------
def uniform_fixer(scale: float, zero: int, bits: int, keep: np.ndarray | None = None):
    """Per-tensor grid s*(Q - z), Q in 0..2^k-1 (seeded's codes). keep: bool [rows, cols], False -> 0."""
    s = np.float32(scale)
    top = (1 << bits) - 1

    def fix(j, w, _):
        if s == 0:
            q = np.zeros_like(w)
        else:
            q = s * (np.clip(np.rint(w / s) + zero, 0, top) - zero).astype(np.float32)
        return q if keep is None else np.where(keep[:, j], q, np.float32(0))
    return fix


def sign_fixer(scale: float, keep: np.ndarray | None = None):
    """+-scale (BitDelta's 1 bit); keep as in uniform_fixer."""
    s = np.float32(scale)

    def fix(j, w, _):
        q = np.where(w >= 0, s, -s).astype(np.float32)
        return q if keep is None else np.where(keep[:, j], q, np.float32(0))
    return fix


def nm_fixer(n: int, m: int, scales: np.ndarray, zero: int, bits: int, W: np.ndarray, U: np.ndarray,
             keep_out: np.ndarray):
    """SparseGPT's n:m pruning fused with per-row uniform rounding: at the first column of each group of m the
    n entries per row with the largest w^2 / U_jj^2 (OBS saliency, on the error-updated W) are kept; keep_out
    [rows, cols] bool records the mask. W is the matrix `solve` is updating (for the look-ahead)."""
    s = np.asarray(scales, np.float32)
    top = (1 << bits) - 1
    safe = np.where(s > 0, s, np.float32(1))
    cols = W.shape[1]

    def fix(j, w, _):
        if j % m == 0:
            g1 = min(j + m, cols)
            sal = W[:, j:g1] ** 2 / (np.diag(U)[j:g1] ** 2)[None, :]
            k = min(n, g1 - j)
            idx = np.argsort(-sal, axis=1, kind="stable")[:, :k]
            blk = np.zeros((W.shape[0], g1 - j), bool)
            np.put_along_axis(blk, idx, True, axis=1)
            keep_out[:, j:g1] = blk
        q = (safe * (np.clip(np.rint(w / safe) + zero, 0, top) - zero)).astype(np.float32)
        q = np.where(s > 0, q, np.float32(0))
        return np.where(keep_out[:, j], q, np.float32(0))
    return fix
