"""Helpers shared by the encodings' header checks."""
from __future__ import annotations

import math

import numpy as np

from ..errors import EncodingError
from ..spec import DTYPE_SIZES, MAX_ALPHA, NP_DTYPES, dtype_max


class Ctx:
    """Where an entry lives, for error messages."""

    def __init__(self, path, name):
        self.path, self.name = path, name

    def fail(self, msg, field=None):
        return EncodingError(msg, path=self.path, tensor=self.name, field=field)


def param(entry, key, ctx, kind=int, lo=None, hi=None):
    params = entry.get("params", {})
    if key not in params:
        raise ctx.fail("missing parameter", f"params.{key}")
    v = params[key]
    if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
        raise ctx.fail(f"must be an integer, got {type(v).__name__}", f"params.{key}")
    if kind is float:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ctx.fail("must be a finite number", f"params.{key}")
        with np.errstate(over="ignore"):  # a float beyond binary32's range rounds to inf: not exact, refused below
            exact = float(np.float32(v)) == float(v)
        if not exact:
            raise ctx.fail("must be exactly representable in binary32", f"params.{key}")
        v = float(v)
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ctx.fail(f"value {v} outside {lo}..{hi}", f"params.{key}")
    return v


def buffer(entry, role, ctx, dtypes, length=None, *, count=None, holds=None, what="value"):
    """The buffer record of `role`, checked: dtype in `dtypes`; byte length == `length`, or == `count`
    elements of its dtype; an integer dtype wide enough for `holds` (the largest `what` it must store)."""
    bufs = entry.get("buffers", {})
    if role not in bufs:
        raise ctx.fail("missing buffer", f"buffers.{role}")
    b = bufs[role]
    if b["dtype"] not in dtypes:
        raise ctx.fail(f"dtype {b['dtype']} not one of {dtypes}", f"buffers.{role}.dtype")
    if holds is not None and holds > dtype_max(b["dtype"]):
        raise ctx.fail(f"{b['dtype']} cannot hold {what} {holds}", f"buffers.{role}.dtype")
    if count is not None:
        length = nbytes(b["dtype"], count)
    if length is not None and b["length"] != length:
        raise ctx.fail(f"length {b['length']} but the shape and params need {length}", f"buffers.{role}.length")
    return b


def matrix_shape(entry, ctx):
    shape = entry["shape"]
    if len(shape) != 2:
        raise ctx.fail(f"compressed entries are 2-D, got shape {shape}", "shape")
    return shape


def alpha_group(entry, ctx, cols):
    alpha = param(entry, "alpha", ctx, int, 1, MAX_ALPHA)
    group = param(entry, "group_size", ctx, int, 1, max(cols, 1))
    if group % alpha:
        raise ctx.fail(f"group_size {group} is not a multiple of alpha {alpha}", "params.group_size")
    return alpha, group


def view(buf, dtype):
    """A little-endian typed view of a uint8 buffer."""
    return np.frombuffer(buf, dtype=np.dtype(NP_DTYPES[dtype]))


def as_bytes(a: np.ndarray, dtype: str) -> np.ndarray:
    """`a` cast to the spec dtype's little-endian storage type, as a flat uint8 view (what the writer takes)."""
    return np.ascontiguousarray(np.asarray(a).astype(NP_DTYPES[dtype], copy=False)).reshape(-1).view(np.uint8)


def nbytes(dtype, count):
    return DTYPE_SIZES[dtype] * count
