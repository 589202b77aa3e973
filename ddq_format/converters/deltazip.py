"""DeltaZip (Yao et al., "DeltaZip: efficient serving of multiple full-model-tuned LLMs"): SparseGPT-style
Optimal Brain Surgeon pruning of the delta with a calibration Hessian, fused with GPTQ rounding to 4 bits;
stored as `nm_q` (SPEC.md §9.7).

What the paper does (its compress.py/sparsegpt.py): per linear layer of the delta D, H = X^T X from the
calibration inputs (its default: the fine-tune's chat data), 1% damping; a per-row symmetric 4-bit grid fitted
on the whole delta row before pruning (scale = 2 max|d_r| / 15, zero 8); columns processed left to right in
blocks of 128, at the first column of every group of m the n entries with the largest w^2 / [H^-1]_jj^2 kept
(2:4 by default), each kept entry rounded, the error spread over the later columns (OBS). Embeddings, norms
and lm_head stay uncompressed; a lossless pass (GDeflate) follows.

What is implemented: exactly that loop (ddq_format/converters/obs.py), for any n:m (2:4 is the paper's; 1:m
reaches the high ratios of the benchmark) and any k. Simplifications: no GDeflate pass (the true bytes are the
n:m codes, positions and scales as stored); layers are pruned against the fine-tune's own inputs, not
sequentially through the partially pruned model; the calibration text is the converter's; when the embedding
is compressed it gets the same procedure with the tied lm_head's Hessian (identity when it has none).
"""
from __future__ import annotations

import numpy as np

from ..encodings import Encoded, nm_q
from . import obs

PAPER = (2, 4, 4)  # n kept of m, bits


def row_scales(delta: np.ndarray, bits: int) -> np.ndarray:
    """GPTQ's symmetric per-row grid: scale = 2 max|d| / (2^k - 1), stored as binary16."""
    xmax = np.abs(delta).max(axis=1)
    return (2 * xmax / ((1 << bits) - 1)).astype(np.float16)


def compress(delta: np.ndarray, H: np.ndarray | None, *, n: int = 2, m: int = 4, bits: int = 4,
             damp: float = obs.DEFAULT_DAMP) -> Encoded:
    rows, cols = delta.shape
    zero = 1 << (bits - 1)
    scales = row_scales(delta, bits)
    if H is None:
        U = np.eye(cols, dtype=np.float32)  # no calibration: magnitude n:m and round to nearest
    else:
        U, dead = obs.inverse_factor(H, damp)
        delta = np.array(delta, np.float32)
        delta[:, dead] = 0
    W = np.array(delta, np.float32)
    keep = np.zeros((rows, cols), bool)
    fix = obs.nm_fixer(n, m, scales.astype(np.float32), zero, bits, W, U, keep)
    block = m * max(1, obs.BLOCK // m)  # a group of m never straddles a block (its look-ahead is current)
    Q = obs.solve(W, U, fix, block=block)
    s = scales.astype(np.float32)
    safe = np.where(s > 0, s, 1)
    codes = np.clip(np.rint(Q / safe[:, None]) + zero, 0, (1 << bits) - 1).astype(np.uint8)
    return nm_q.encode((rows, cols), keep, codes, scales, n=n, m=m, bits=bits, zero=zero)
