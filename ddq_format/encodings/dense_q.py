"""`dense_q` (kind `dense`, since 1.3): a small dense delta (a norm, a bias) as k-bit uniform codes with one
scale and zero (SPEC.md §9.8). Its raw binary16 form plus the header entry would be larger than the tensor's
fp16 delta; 8-bit codes keep it below.

Params: `bits` k (1..8), `scale` s (binary32 >= 0), `zero` z (0..2^k - 1). Buffer `codes`: PACKED, numel
codes of k bits in row-major order. Element i decodes to float32(s) * float32(Q_i - z) (SPEC.md §8.1).
"""
from __future__ import annotations

import math

import numpy as np

from .. import bitpack
from ..quantize import Quantizer, dequantize, fit, quantize
from ..spec import ENC_DENSE_Q, PACKED
from . import Encoded
from ._common import buffer, param

ID = ENC_DENSE_Q
ROLES = {"codes": "dense"}  # a dense tensor as k-bit codes


def encode(array: np.ndarray, bits: int = 8, quantizer: Quantizer | None = None) -> Encoded:
    v = np.asarray(array, np.float32).reshape(-1)
    qz = quantizer or fit(v, bits)
    params = {"bits": int(bits), "scale": qz.scale, "zero": qz.zero}
    return Encoded(ENC_DENSE_Q, params, {"codes": (PACKED, bitpack.pack(quantize(v, qz), bits))})


def check(entry, ctx):
    bits = param(entry, "bits", ctx, int, 1, 8)
    param(entry, "scale", ctx, float, 0.0)
    param(entry, "zero", ctx, int, 0, (1 << bits) - 1)
    buffer(entry, "codes", ctx, (PACKED,), bitpack.packed_nbytes(math.prod(entry["shape"]), bits))


def decode(entry, bufs) -> np.ndarray:
    p = entry["params"]
    n = math.prod(entry["shape"])
    return dequantize(bitpack.unpack(bufs["codes"], p["bits"], n), p["scale"], p["zero"]).reshape(entry["shape"])


def nominal_ratio(entry) -> float:
    return 16 / entry["params"]["bits"]
