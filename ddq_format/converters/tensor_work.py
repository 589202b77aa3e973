"""Stage 3 of a conversion: one tensor's work (read, delta, compress), run by the worker threads."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import accel
from ..binding import binding
from ..encodings import raw
from ..errors import UsageError
from ..spec import (DTYPES, KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED, KIND_REPLACE, KIND_SAME,
                    KIND_TIED)
from .checkpoint import Checkpoint, to_f32
from .methods import NonFinite, Options, compress, compress_bits, tensor_group_size
from .plan import Task
from .seeds import tensor_seed


@dataclass
class Result:
    name: str
    kind: str
    shape: tuple
    dtype: str
    encoded: object = None
    base: dict | None = None
    tied_to: str | None = None
    group_size: int | None = None


def process(task: Task, base: Checkpoint, ft: Checkpoint, opts: Options, group_size, seed: int,
             choose_seed=None, digest: bool = False, encode_hook=None) -> Result:
    """digest=True: each base binding also records the SHA-256 of every element (format 1.2, `verify --full`).
    encode_hook(name, float32 delta) -> (kind, Encoded): a planned conversion's own choice (planned.py)."""
    n = task.name
    if task.kind == KIND_TIED:
        return Result(n, KIND_TIED, task.shape, task.dtype, tied_to=task.tied_to)
    if task.kind == KIND_REMOVED:
        bb = base.read(n)
        return Result(n, KIND_REMOVED, task.shape, task.dtype, base=binding(bb, task.shape, task.dtype, digest=digest))
    fb = ft.read(n)
    bind = None
    if n in base.tensors:
        bi = base.tensors[n]
        bb = base.read(n)
        bind = binding(bb, bi.shape, bi.dtype, digest=digest)
    if task.kind == KIND_REPLACE:
        arr = fb.view(np.float16) if task.dtype == "F16" else fb
        return Result(n, KIND_REPLACE, task.shape, task.dtype, raw.encode(arr, task.dtype), base=bind)
    if base.tensors[n].dtype == task.dtype and _equal(fb, bb):
        return Result(n, KIND_SAME, task.shape, task.dtype, base=bind)
    if encode_hook is not None and task.kind in (KIND_COMPRESSED, KIND_DENSE):  # planned conversions (planned.py)
        kind, enc = encode_hook(n, delta_blocks(fb, task.dtype, bb, base.tensors[n].dtype, "F32"))
        return Result(n, kind, task.shape, task.dtype, enc, base=bind)
    gt = None
    if task.kind == KIND_COMPRESSED and opts.uses_groups:
        gt = tensor_group_size(group_size, task.shape[1], opts.alpha)
    if task.kind == KIND_DENSE or opts.uses_groups and gt is None:
        enc = dense_delta(fb, task.dtype, bb, base.tensors[n].dtype)
        return Result(n, KIND_DENSE, task.shape, task.dtype, enc, base=bind)
    bdtype = base.tensors[n].dtype
    try:
        enc = None
        if choose_seed is None:  # fused: the kept elements' delta only, straight from the bit patterns
            enc = compress_bits(fb, task.dtype, bb, bdtype, opts, tensor_seed(seed, n), gt)
        if enc is None:
            arrays = [fb, bb]
            del fb, bb  # the list holds the only references: the delta replaces them, then compress frees it
            arrays = [_delta_from(arrays, task.dtype, bdtype)]  # still the only reference, for compress
            s = tensor_seed(seed, n) if choose_seed is None else choose_seed(n, arrays[0], gt)
            enc = compress(arrays.pop(), opts, s, gt)
    except NonFinite as e:
        raise _nonfinite_error(e.flags, n, ft, base) from None
    return Result(n, KIND_COMPRESSED, task.shape, task.dtype, enc, base=bind, group_size=gt)


def dense_delta(fb, fdtype: str, bb, bdtype: str):
    """A dense delta never wider than its fp16 size (issue 11): in the fine-tune's dtype when that is 16-bit,
    else binary16 (bfloat16 where binary16 would overflow). Norms and biases too: raw keeps default files
    readable by every 1.1 reader and their values as the fine-tune's own 16 bits (dense_q, 1.3, is the
    planner's choice under a byte budget, not a default)."""
    dtype = fdtype if DTYPES[fdtype].size <= 2 else "F16"
    with np.errstate(over="ignore"):
        delta = delta_blocks(fb, fdtype, bb, bdtype, dtype)
    if dtype == "F16" and not np.isfinite(delta).all():
        dtype, delta = "BF16", delta_blocks(fb, fdtype, bb, bdtype, "BF16")
    return raw.encode(delta, dtype)


def _nonfinite_error(flags: int, name: str, ft: Checkpoint, base: Checkpoint) -> UsageError:
    """The error for NaN/inf met in a linear layer; flags 0 (the numpy path) = find out which weight holds it."""
    if not flags:
        flags = (NonFinite.FT * _has_nonfinite(ft, name)) | (NonFinite.BASE * _has_nonfinite(base, name))
    where = base if flags & NonFinite.BASE and not flags & NonFinite.FT else ft
    what = (f"in the {'base' if where is base else 'fine-tuned'} weight" if flags & (NonFinite.FT | NonFinite.BASE)
            else "in the fine-tune minus the base (float32 overflow)")
    return UsageError(f"non-finite values (NaN or inf) {what}: a linear layer's delta must be finite",
                      path=where.tensors[name].source, tensor=name, field="values")


def _has_nonfinite(ck: Checkpoint, name: str) -> bool:
    """Error path only: read the weight again (the delta may have overwritten it) and look for NaN/inf."""
    return not _finite(to_f32(ck.read(name), ck.tensors[name].dtype))


def _delta_from(arrays: list, fdtype: str, bdtype: str) -> np.ndarray:
    """Pops [fine-tune bits, base bits] and returns the float32 delta (in place over the fine-tune when F32).
    Raises NonFinite when an element of the delta is NaN or inf."""
    bb, fb = arrays.pop(), arrays.pop()
    in_place = fdtype == "F32" and fb.flags.writeable
    k = accel.kernels()
    if k is not None:
        flags, d = k.delta(fb, fdtype, bb, bdtype, "F32", in_place=in_place)
        if flags:
            raise NonFinite(flags)
        return d
    if in_place:
        fb -= to_f32(bb, bdtype)
        d = fb
    else:
        d = delta_blocks(fb, fdtype, bb, bdtype, "F32")
    if not _finite(d):
        raise NonFinite(0)
    return d


def _finite(a: np.ndarray, block=1 << 20) -> bool:
    """Every element finite, in cache-sized blocks (no full-size boolean temporary)."""
    f = a.reshape(-1)
    return all(np.isfinite(f[i:i + block]).all() for i in range(0, f.size, block))


def _equal(a: np.ndarray, b: np.ndarray, block=1 << 22) -> bool:
    """Bitwise equality without a full-size boolean temporary."""
    a, b = a.reshape(-1), b.reshape(-1)
    return a.size == b.size and all(np.array_equal(a[i:i + block], b[i:i + block]) for i in range(0, a.size, block))


def delta_blocks(fb, fdtype, bb, bdtype, out_dtype, block=1 << 20):
    """fine-tune - base in float32, stored as out_dtype (F32 float32, F16 float16, BF16 uint16 bit patterns),
    computed in blocks of `block` elements: no full-size float32 temporaries, cache-sized passes."""
    from ..encodings.raw import to_bf16_bits
    k = accel.kernels()
    if k is not None and out_dtype in ("F32", "BF16"):
        return k.delta(fb, fdtype, bb, bdtype, out_dtype)[1]
    f, b = fb.reshape(-1), bb.reshape(-1)
    out = np.empty(f.size, {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[out_dtype])
    for i in range(0, f.size, block):
        d = to_f32(f[i:i + block], fdtype) - to_f32(b[i:i + block], bdtype)
        out[i:i + block] = to_bf16_bits(d) if out_dtype == "BF16" else d
    return out.reshape(fb.shape)
