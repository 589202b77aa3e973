"""A .ddq file as per-layer deltas for one tensor-parallel rank, built in host memory (no vLLM import).

`build(ddq, targets, base)` walks every entry of the file, asks `targets(name)` where vLLM applies that
checkpoint tensor (the list of wrapped layers, which output slice, which rows/columns this rank holds) and
returns {module: ModuleDelta} plus the resident bytes. Anything the engine cannot apply per request is
refused with an error naming the file and the tensor: a changed tensor no layer takes, a changed shape,
a tensor the fine-tune adds or removes, an encoding without a kernel (but the low-rank ones, kept as their
factors).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ... import encodings
from ...errors import BindingError, UsageError
from ...kernels import supports
from ...spec import KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED, KIND_REPLACE, KIND_SAME, KIND_TIED
from .deltas import DenseDelta, LowRankDelta, nbytes
from .shard import shard_compressed, shard_dense

LINEAR, EMBEDDING, LM_HEAD, NORM = "linear", "embedding", "lm_head", "norm"
SKIP = "skip"  # a checkpoint tensor the engine does not load (its delta is ignored likewise)


@dataclass(frozen=True)
class Target:
    """Where vLLM applies one checkpoint tensor on this rank."""
    module: str  # the wrapped module's name in vLLM's LoRA manager
    role: str  # LINEAR, EMBEDDING, LM_HEAD or NORM
    leaf: str = "weight"  # "weight" or "bias"
    slice: int = 0  # output slice of a packed layer (q/k/v of qkv_proj, gate/up of gate_up_proj)
    rows: tuple | None = None  # this rank's rows of the full tensor as ((start, stop), ...) runs (None: all)
    cols: tuple | None = None  # this rank's input columns [c0, c1) (None: all)


@dataclass
class ModuleDelta:
    weights: dict = field(default_factory=dict)  # slice -> delta (LINEAR, LM_HEAD)
    bias: dict = field(default_factory=dict)  # slice -> float32 vector
    row: object = None  # EMBEDDING: delta [V_local, H]; NORM: float32 delta of the weight
    names: list = field(default_factory=list)  # the checkpoint tensors it comes from (for errors)

    def parts(self) -> list:
        return list(self.weights.values()) + list(self.bias.values()) + ([self.row] if self.row is not None else [])


def check_entries(ddq, base) -> None:
    """Refuse, naming the tensor, what no per-request engine can serve: a tensor the fine-tune removes,
    adds or reshapes, a compressed encoding without a kernel. Reads only the header."""
    for name, e in ddq.entries.items():
        kind = e["kind"]
        if kind == KIND_REMOVED:
            raise BindingError("the fine-tune removes this tensor; one engine cannot serve that per request "
                               "(materialize the fine-tune instead)", path=ddq.path, tensor=name)
        if kind == KIND_REPLACE and (name not in base.shards or
                                     list(base.shards[name].info(name)[1]) != list(e["shape"])):
            raise BindingError("the fine-tune changes this tensor's shape (or adds it); one engine cannot serve "
                               "that per request (materialize the fine-tune instead)", path=ddq.path, tensor=name)
        if kind == KIND_COMPRESSED and not supports(e) and not factored(e):
            raise UsageError(f"encoding {e.get('encoding')!r} has no kernel that keeps it compressed on the "
                             "device; convert with --encoding seeded, seeded_rans or csr_parts (or --target-ratio), "
                             "or materialize it", path=ddq.path, tensor=name, field="encoding")


def factored(entry) -> bool:
    """A low-rank entry, served as its factors (LowRankDelta) rather than by a kernel."""
    enc = encodings.get(entry.get("encoding"))
    return enc is not None and enc.has_factors


def build(ddq, targets, base) -> tuple[dict[str, ModuleDelta], int]:
    """({module: ModuleDelta}, resident bytes) of every tensor the delta changes, for this rank."""
    check_entries(ddq, base)
    out: dict[str, ModuleDelta] = {}
    memo: dict = {}  # (source entry, rows, cols) -> delta: tied tensors share one copy
    for name, e in ddq.entries.items():
        kind = e["kind"]
        if kind == KIND_SAME:
            continue
        src = e["tied_to"] if kind == KIND_TIED else name
        if kind == KIND_TIED and ddq.entries[src]["kind"] == KIND_SAME:
            continue
        found = targets(name)
        if not found:
            raise UsageError("the delta changes this tensor, but no layer of the engine applies it per request "
                             "(vLLM's LoRA does not wrap it: is --lora-target-modules restricting the layers?)",
                             path=ddq.path, tensor=name)
        for t in found:
            if t.role == SKIP:
                continue
            key = (src, t.rows, t.cols, t.role == NORM or t.leaf == "bias")
            if key not in memo:
                memo[key] = _delta(ddq, src, t, base)
            m = out.setdefault(t.module, ModuleDelta())
            m.names.append(name)
            d, row = memo[key], t.role in (EMBEDDING, NORM)
            table = None if row else m.bias if t.leaf == "bias" else m.weights
            prev = m.row if row else table.get(t.slice)
            if prev is not None and prev is not d:
                raise UsageError(f"the engine holds this tensor and {m.names[0]!r} as one tensor (tied weights), "
                                 "but the delta changes them differently", path=ddq.path, tensor=name)
            if row:
                m.row = d
            else:
                table[t.slice] = d
    # one resident copy per distinct delta object, even when tied tensors share it
    resident = {id(p): nbytes(p) for m in out.values() for p in m.parts()}
    return out, sum(resident.values())


def _delta(ddq, name: str, t: Target, base):
    """The rank's delta for entry `name`: a kernel-encoded delta (or its shard, or a shard.RowRuns), a
    DenseDelta, or a float32 vector (biases, norms)."""
    e = ddq.entries[name]
    vector = t.role == NORM or t.leaf == "bias"
    if e["kind"] == KIND_COMPRESSED and not vector and not supports(e):
        u, v = encodings.get(e["encoding"]).factors(e, ddq.buffers(name))  # CRC-32 verified
        return LowRankDelta(shard_dense(torch.from_numpy(np.ascontiguousarray(u, np.float32)), row_index(t.rows)),
                            shard_dense(torch.from_numpy(np.ascontiguousarray(v, np.float32)), None, t.cols), name)
    if e["kind"] == KIND_COMPRESSED and not vector:
        return _compressed(ddq, name, e, t)
    if e["kind"] == KIND_REPLACE:  # same shape as the base (check_entries)
        full = torch.from_numpy(np.ascontiguousarray(ddq.decode(name), np.float32) - base.values(name))
    elif e["kind"] in (KIND_DENSE, KIND_COMPRESSED):
        full = torch.from_numpy(np.ascontiguousarray(ddq.decode(name), np.float32))
    else:
        raise UsageError(f"kind {e['kind']!r} cannot be served per request", path=ddq.path, tensor=name)
    if vector:
        return shard_dense(full.reshape(-1), row_index(t.rows)).clone()
    return DenseDelta(shard_dense(full, row_index(t.rows), t.cols), name)


def _compressed(ddq, name, e, t: Target):
    """A kernel-encoded entry (seeded_rans re-laid as seeded codes by the kernels, seeded_rans_split per column
    class), this rank's shard."""
    return shard_compressed(e, ddq.buffers(name), row_index(t.rows), t.cols, path=ddq.path)  # CRC-32 verified


def row_index(rows: tuple | None) -> np.ndarray | None:
    """((start, stop), ...) runs -> int64 row indices (None: all rows)."""
    if rows is None:
        return None
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in rows]) if rows else np.zeros(0, np.int64)
