"""`raw`: a dense tensor in its own dtype (dense deltas, replacements)."""
from __future__ import annotations

import math

import numpy as np

from ..spec import ENC_RAW, FLOAT_DTYPES
from . import Encoded
from ._common import buffer, nbytes, view

ID = ENC_RAW
ROLES = {"data": "dense"}


def encode(array: np.ndarray, dtype: str) -> Encoded:
    """Store `array` (float32, or uint16 bit patterns when dtype is BF16) as `dtype`."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"raw dtype {dtype} not one of {FLOAT_DTYPES}")
    if dtype == "BF16":
        data = to_bf16_bits(array) if array.dtype != np.uint16 else array
    else:
        data = np.asarray(array, np.float32 if dtype == "F32" else np.float16)
    return Encoded(ENC_RAW, {}, {"data": (dtype, np.ascontiguousarray(data).reshape(-1).view(np.uint8))})


def check(entry, ctx):
    b = buffer(entry, "data", ctx, FLOAT_DTYPES)
    need = nbytes(b["dtype"], math.prod(entry["shape"]))
    if b["length"] != need:
        raise ctx.fail(f"length {b['length']} but shape {entry['shape']} needs {need}", "buffers.data.length")


def decode(entry, bufs) -> np.ndarray:
    dtype = entry["buffers"]["data"]["dtype"]
    raw = view(bufs["data"], dtype)
    out = bf16_bits_to_f32(raw) if dtype == "BF16" else raw.astype(np.float32)
    return out.reshape(entry["shape"])


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (NaN stays NaN)."""
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded = np.where(nan, np.uint16(0x7FC0), rounded)
    return rounded


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
