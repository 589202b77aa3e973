"""`lowrank`: a delta as the product of two dense fp16 factors (truncated SVD baseline; SPEC.md §lowrank).

Params: rank r >= 1. Buffers: u F16 [rows, r] row-major (left singular vectors times the singular values),
v F16 [r, cols] row-major (right singular vectors). Decodes to float32(u) @ float32(v) accumulated in
float32 (or wider); the summation order is not specified, so decodes agree to float32 rounding, not bitwise.
"""
from __future__ import annotations

import numpy as np

from ..spec import ENC_LOWRANK
from . import Encoded
from ._common import buffer, matrix_shape, nbytes, param, view

ID = ENC_LOWRANK
ROLES = {"u": "dense", "v": "dense"}  # dense factors: no positions, no codes


def encode(u: np.ndarray, v: np.ndarray) -> Encoded:
    u = np.ascontiguousarray(u, "<f2")
    v = np.ascontiguousarray(v, "<f2")
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
        raise ValueError(f"factors {u.shape} and {v.shape} do not multiply")
    return Encoded(ENC_LOWRANK, {"rank": int(u.shape[1])},
                   {"u": ("F16", u.reshape(-1).view(np.uint8)), "v": ("F16", v.reshape(-1).view(np.uint8))})


def check(entry, ctx):
    n_rows, n_cols = matrix_shape(entry, ctx)
    r = param(entry, "rank", ctx, int, 1, max(1, min(n_rows, n_cols)))
    buffer(entry, "u", ctx, ("F16",), nbytes("F16", n_rows * r))
    buffer(entry, "v", ctx, ("F16",), nbytes("F16", r * n_cols))


def factors(entry, bufs):
    n_rows, n_cols = entry["shape"]
    r = entry["params"]["rank"]
    return view(bufs["u"], "F16").reshape(n_rows, r), view(bufs["v"], "F16").reshape(r, n_cols)


def decode(entry, bufs) -> np.ndarray:
    u, v = factors(entry, bufs)
    return u.astype(np.float32) @ v.astype(np.float32)
