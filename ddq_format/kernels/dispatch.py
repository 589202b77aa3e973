"""The dispatch: which kernel serves which operation, file encoding, device and batch, in one table (RULES).

Backends: `triton` for CUDA tensors (or CPU tensors under TRITON_INTERPRET=1, how CI checks the kernels),
`numpy` for CPU tensors (host.py: per call, one mask hash pass for all seeded deltas of a geometry, the
reader's decoder for csr_parts, a dense scratch per product), `torch`
(the pure-torch reference and oracle, any device). The default is triton on CUDA, numpy on CPU, torch
elsewhere; `backend="triton"|"torch"|"numpy"` (or env DDQ_KERNEL_BACKEND) forces one. The first rule whose
operation, encoding, backend and batch bound match is used; `describe()` prints the table (README, results).
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from . import host, reference, registry
from .common import NF

BACKENDS = ("triton", "torch", "numpy")
DELTA_MAX_BATCH = 64  # delta-only kernel up to here; above, decode once and use the dense library matmul
FUSED_MAX_BATCH = 16  # fused base + delta kernel up to here (one batch tile); above, cuBLAS base + delta
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

SEEDED_ENCODINGS = tuple(e for e, k in registry.ENCODINGS.items() if k.layout is registry.SEEDED)
CSR_ENCODINGS = tuple(e for e, k in registry.ENCODINGS.items() if k.layout is registry.CSR)
SPLIT_ENCODINGS = tuple(e for e, k in registry.ENCODINGS.items() if k.layout is registry.SPLIT)
ALL = registry.KERNEL_ENCODINGS
STORED = tuple(e for e, k in registry.ENCODINGS.items() if type(k) is registry.StoredAsIs)
RELAID = tuple(e for e, k in registry.ENCODINGS.items() if type(k) is registry.RansToSeeded)
PER_CLASS = "each column class by its seeded rule, columns put back"


@dataclass(frozen=True)
class Rule:
    op: str  # load | decode | decode_entry | rows | matmul | linear | multi
    encodings: tuple
    backend: str  # triton | torch | numpy | any
    max_batch: int | None  # tokens; None: any
    kernel: str


RULES = (
    Rule("load", STORED, "any", None, "upload as stored"),
    Rule("load", RELAID, "triton", None, "triton rans_lanes -> packed seeded codes"),
    Rule("load", RELAID, "any", None, "numpy rANS decode -> packed seeded codes"),
    Rule("load", SPLIT_ENCODINGS, "any", None,
         "each column class as seeded_rans, + U16 (U32) column lists (or the hot list's complement)"),
    Rule("decode", SPLIT_ENCODINGS, "triton", None, PER_CLASS),
    Rule("decode", SPLIT_ENCODINGS, "torch", None, PER_CLASS),  # numpy: the reader's, into each class's columns
    Rule("decode", SEEDED_ENCODINGS, "triton", None, "triton seeded_rows"),
    Rule("decode", CSR_ENCODINGS, "triton", None, "triton csr_scatter"),
    Rule("decode", ALL, "numpy", None, "numpy reader decode"),  # seeded: the reader's hash, batched
    Rule("decode", ALL, "torch", None, "torch reference decode"),
    Rule("decode_entry", ALL, "numpy", None, "numpy reader decode"),
    Rule("decode_entry", RELAID, "triton", None, "triton rans_lanes -> seeded_rows (8-bit codes)"),
    Rule("decode_entry", ALL, "any", None, "load, then decode"),
    Rule("rows", SPLIT_ENCODINGS, "any", None, PER_CLASS),
    Rule("rows", ALL, "numpy", None, "numpy mask of those rows"),
    Rule("rows", ALL, "any", None, "torch reference rows"),
    Rule("matmul", ALL, "triton", DELTA_MAX_BATCH, "triton delta_matmul"),
    Rule("matmul", ALL, "triton", None, "decode, then dense matmul"),
    Rule("matmul", ALL, "numpy", None, "numpy decode, then dense matmul"),
    Rule("matmul", ALL, "torch", None, "torch reference matmul"),
    Rule("linear", ALL, "triton", FUSED_MAX_BATCH, "triton fused_linear"),
    Rule("linear", ALL, "any", None, "F.linear + delta matmul"),
    Rule("multi", ALL, "triton", None, "triton sgmv"),
    Rule("multi", ALL, "numpy", None, "numpy decode (one hash pass per mask geometry), dense matmul per delta"),
    Rule("multi", ALL, "torch", None, "torch reference multi"),
)


# A split delta's column classes (CompressedDelta.parts) are seeded deltas that read x through their column
# lists: the delta-only, fused and grouped kernels run both classes in one launch (two table rows per delta;
# multi_tables); the numpy rules multiply class by class and the torch reference decodes the whole delta
# (each class put back at its columns).


def select(op: str, encoding: str, backend: str, batch: int | None = None) -> str:
    for r in RULES:
        if r.op == op and encoding in r.encodings and r.backend in (backend, "any") and \
                (r.max_batch is None or batch is None or batch <= r.max_batch):
            return r.kernel
    raise UsageError(f"no kernel for {op} of encoding {encoding!r} on backend {backend}", field="encoding")


def describe() -> list[dict]:
    """The dispatch table as rows (operation, encodings, backend/device, batch bound, kernel)."""
    device = {"triton": "cuda (CPU: TRITON_INTERPRET=1)", "torch": "any (reference)", "numpy": "cpu",
              "any": "any"}
    return [{"op": r.op, "encodings": ", ".join(r.encodings), "device": device[r.backend],
             "batch": "any" if r.max_batch is None else f"<= {r.max_batch}", "kernel": r.kernel} for r in RULES]


# -- backend choice -----------------------------------------------------------------------------------
def unforced(backend: str | None) -> bool:
    """No backend asked for, by argument or environment."""
    return not (backend or os.environ.get("DDQ_KERNEL_BACKEND"))


def choose(device: torch.device, backend: str | None) -> str:
    backend = backend or os.environ.get("DDQ_KERNEL_BACKEND") or None
    if backend is None:
        if device.type == "cpu":
            return "numpy"
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend not in BACKENDS:
        raise UsageError(f"unknown kernel backend {backend!r}; one of {BACKENDS}", field="backend")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)", field="backend")
    if backend == "numpy" and device.type != "cpu":
        raise UsageError(f"the numpy backend needs CPU tensors, not {device.type}", field="backend")
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _same_device(d, x):
    if x.device != d.device:
        raise UsageError(f"input on {x.device}, delta on {d.device}", tensor=d.name, field="device")


# -- parameter tables for the Triton kernels ----------------------------------------------------------------
def table(d) -> torch.Tensor:
    """The delta's parameter table, one row per class it runs as (d.parts; built once; it holds the buffers'
    addresses)."""
    if d._table is None:
        d._table = torch.tensor([registry.table_row(p) for p in d.parts] or [[0] * NF], dtype=torch.int64,
                                device=d.device)
    return d._table


def launch_args(d) -> tuple[int, torch.Tensor, dict]:
    """(layout kind, table, Triton constants) of one delta's products: a split delta's column classes run in
    the same launch, one table row each (CLASSES)."""
    if d.layout is registry.SPLIT:
        return registry.SEEDED.kind, table(d), {**registry.SEEDED.consts(list(d.parts)), "CLASSES": len(d.parts)}
    return d.layout.kind, table(d), d.layout.consts([d])


_MULTI_CACHE: dict = {}
_MULTI_CACHE_SIZE = 4096  # one entry per layer and slot set: a 7B model with every linear patched needs 224


def multi_tables(deltas):
    """(table over all slots, [(kind, consts) per layout present]) for a delta list (None = empty slot).
    Each slot takes CLASSES rows of NF fields: its delta's classes (d.parts; a split delta's two column
    classes run in the same launch and steps, as in launch_args), zero rows where it has fewer (a zero row
    does no work). Cached by the deltas' ids while they all live: an entry is dropped when any of them is
    collected (so the table's buffer addresses never outlive their buffers, and the cache never keeps an
    evicted adapter's device memory)."""
    key = tuple(id(d) for d in deltas)
    hit = _MULTI_CACHE.get(key)
    if hit is not None:
        return hit
    present = [d for d in deltas if d is not None]
    classes = max(1, *(len(d.parts) for d in present))
    rows = []
    for d in deltas:
        own = [registry.table_row(p) for p in d.parts] if d is not None else []
        rows += own + [[0] * NF] * (classes - len(own))
    tab = torch.tensor(rows, dtype=torch.int64, device=present[0].device)
    parts = [p for d in present for p in d.parts]
    launches = []
    for layout in registry.LAYOUTS.values():
        members = [p for p in parts if p.layout is layout]
        if members:
            launches.append((layout.kind, {**layout.consts(members), "CLASSES": classes}))
    if len(_MULTI_CACHE) >= _MULTI_CACHE_SIZE:
        _MULTI_CACHE.pop(next(iter(_MULTI_CACHE)))
    hit = _MULTI_CACHE[key] = (tab, launches)
    for d in {id(d): d for d in present}.values():  # an id is reused only once d is gone
        weakref.finalize(d, _MULTI_CACHE.pop, key, None)
    return hit


# -- kernels by name -----------------------------------------------------------------------------------
def _triton_decode(which):
    def run(d, dtype):
        from . import triton_decode
        return triton_decode.run(getattr(triton_decode, which), table(d), d.shape, dtype, d.device,
                                 d.layout.consts([d]))
    return run


DECODERS = {
    "triton seeded_rows": _triton_decode("seeded_rows"),
    "triton seeded_scatter": _triton_decode("seeded_scatter"),  # the previous kernel, for the benchmark
    "triton csr_scatter": _triton_decode("csr_scatter"),
    "torch reference decode": lambda d, dtype: reference.decode(d).to(dtype),
    "numpy reader decode": lambda d, dtype: torch.from_numpy(host.dense(d)).to(dtype),
}


def decode(d, dtype, backend, kernel: str | None = None):
    name = kernel or select("decode", d.encoding, choose(d.device, backend))
    if name == PER_CLASS:
        return registry.SPLIT.assemble(d, lambda p: decode(p, dtype, backend), d.shape[0], dtype)
    return DECODERS[name](d, dtype)


def decode_entry_kernel(entry, device, backend) -> str:
    """The rule for decoding an entry straight to dense on `device` (CPU: the numpy reader unless forced)."""
    return select("decode_entry", entry.get("encoding"), choose(torch.device(device), backend))


def rows(d, index, dtype, backend):
    """Dense rows `index` (int64, the delta's device) of a delta: only their mask and codes are read."""
    _same_device(d, index)
    name = select("rows", d.encoding, choose(d.device, backend))
    if name == PER_CLASS:
        return registry.SPLIT.assemble(d, lambda p: rows(p, index, dtype, backend), index.numel(), dtype)
    if name == "numpy mask of those rows":
        return host.rows(d, index).to(dtype)
    return reference.decode_rows(d, index).to(dtype)


def matmul(d, x, backend):
    _same_device(d, x)
    name = select("matmul", d.encoding, choose(d.device, backend), x.shape[0])
    if name == "triton delta_matmul":
        from . import triton_linear
        if not d.parts:  # a split shard holding no column
            return x.new_zeros((x.shape[0], d.shape[0]))
        return triton_linear.delta_matmul(x, *launch_args(d), d.shape[0])
    if name == "decode, then dense matmul":  # prefill: one decode, then the library matmul
        w = decode(d, torch.float32 if x.dtype == torch.float32 else x.dtype, backend)
        return (x @ w.T).to(x.dtype)
    if name == "numpy decode, then dense matmul":
        return host.matmul(d, x)
    return reference.matmul(d, x)


def fused_ok(x, weight, bias) -> bool:
    return (x.dtype == weight.dtype and weight.dtype in FUSED_DTYPES and weight.dim() == 2
            and weight.stride(1) == 1 and (bias is None or (bias.dtype == weight.dtype and bias.is_contiguous())))


def linear(x, weight, bias, d, backend):
    """x [B, in] -> x · Wᵀ + bias + x · ΔŴᵀ."""
    _same_device(d, x)
    be = choose(d.device, backend)
    name = select("linear", d.encoding, be, x.shape[0])
    if name == "triton fused_linear" and fused_ok(x, weight, bias) and d.parts:
        from . import triton_linear
        return triton_linear.fused_linear(x.contiguous(), weight, bias, *launch_args(d))
    return F.linear(x, weight, bias) + matmul(d, x, backend).to(x.dtype)


def multi(x, slices, index, segments, out, backend):
    """out[:, off:off + rows] += the products of each slice's deltas (see delta.multi_delta_matmul_sliced)."""
    present = [d for _, deltas in slices for d in deltas if d is not None]
    for d in present:
        _same_device(d, x)
    name = select("multi", present[0].encoding, choose(x.device, backend))
    if name == "torch reference multi":
        for off, deltas in slices:
            reference.multi_matmul(x, deltas, index, out[:, off:off + _rows(deltas)])
        return out
    from .segments import delta_segments
    seg = segments if segments is not None else delta_segments(index.to(x.device), len(slices[0][1]))
    if name != "triton sgmv":
        return host.multi(x, slices, seg, out)  # every slice in one compiled call
    from . import triton_linear
    xc = x.contiguous()
    for off, deltas in slices:
        tab, kinds = multi_tables(deltas)
        triton_linear.multi_matmul(xc, out[:, off:off + _rows(deltas)], [(k, tab, c) for k, c in kinds], seg)
    return out


def _rows(deltas) -> int:
    return next(d for d in deltas if d is not None).shape[0]


def load(entry, buffers, device, backend):
    """(params, resident device buffers, dtypes) of a validated entry."""
    return registry.for_entry(entry).resident(entry, buffers, device, backend)
