"""The OBS solver behind GPTQ/SparseGPT (converters/obs.py): exactness limits and that error feedback helps."""
from __future__ import annotations

import numpy as np

from ddq_format.converters import obs


def _correlated(n, t=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((t, n)) @ rng.standard_normal((n, n))  # strongly correlated inputs
    return x.T @ x


def test_inverse_factor_is_the_damped_inverse():
    H = _correlated(12)
    U, dead = obs.inverse_factor(H, damp=0.01)
    Hd = H + 0.01 * np.mean(np.diag(H)) * np.eye(12)
    np.testing.assert_allclose(U.T.astype(np.float64) @ U, np.linalg.inv(Hd), rtol=2e-3, atol=1e-9)
    assert not dead.any() and np.allclose(U, np.triu(U))


def test_identity_hessian_is_round_to_nearest():
    W = np.random.default_rng(1).standard_normal((5, 9)).astype(np.float32)
    fix = obs.uniform_fixer(0.25, 8, 4)
    Q = obs.solve(W.copy(), np.eye(9, dtype=np.float32), fix)
    np.testing.assert_array_equal(Q, np.stack([fix(j, W[:, j].copy(), j) for j in range(9)], 1))


def test_error_feedback_beats_rounding_and_mask_is_respected():
    rng = np.random.default_rng(2)
    H = _correlated(32)
    D = rng.standard_normal((16, 32)).astype(np.float32)
    keep = rng.random((16, 32)) < 0.5
    U, _ = obs.inverse_factor(H)
    fix = obs.uniform_fixer(0.5, 8, 4, keep)
    rtn = np.stack([fix(j, D[:, j], j) for j in range(32)], 1)
    Q = obs.solve(D.copy(), U, fix)
    assert np.all(Q[~keep] == 0)
    assert obs.output_error(D - Q, H) < 0.9 * obs.output_error(D - rtn, H)
    order, Up, _ = obs.permuted_factor(H)  # act-order gives the same kind of result
    Qp = obs.solve(D.copy(), Up, fix, order=order)
    assert np.all(Qp[~keep] == 0) and obs.output_error(D - Qp, H) < obs.output_error(D - rtn, H)


def test_nm_fixer_keeps_n_of_every_m():
    rng = np.random.default_rng(3)
    D = rng.standard_normal((6, 20)).astype(np.float32)
    U, _ = obs.inverse_factor(_correlated(20))
    keep = np.zeros(D.shape, bool)
    W = D.copy()
    obs.solve(W, U, obs.nm_fixer(2, 4, np.full(6, 0.3, np.float32), 8, 4, W, U, keep), block=4)
    assert np.all(keep.reshape(6, 5, 4).sum(-1) == 2)
