"""The CPU grouped product of a decode step in ONE compiled call (accel: numba's seeded_products_multi).

host.multi used to loop over a step's deltas in Python: per delta and per column class a gather of its
tokens, a transpose, the column list mapped and a kernel call, 30-50 µs each beside a few µs of work at
decode sizes, so 16 deltas cost more in dispatch than in products. Here every seeded-layout part of a
layer's deltas is described once, in a table kept while those deltas live (keyed by the deltas' ids,
dropped when any of them is collected), and one call runs every eligible run of the step: its tokens
gathered once, each mask regenerated once for every part that has it (deltas of one base converted at one
run seed share them) and each part's codes read in place (no copy, no dense scratch). A table covers every
output slice of a packed layer (q, k, v; gate, up): each part writes its own columns of the layer's output
(P_OUT), so such a layer costs one call per step, not one per slice. A step with enough work
(THREAD_MIN_WORK) runs on torch's thread count (the engine's): thread k takes every nt-th block of rows of
every part, so the bits do not depend on the thread count (accel._threads says where threads may run).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .. import accel
from . import registry

# A step's work (kept elements x (tokens + 2)) below which its grouped call stays on one thread.
# `python benchmarks/bench_kernels.py --sections cpu`, table "the grouped call on 1 thread vs 2" (2-core VM,
# OpenMP layer, paired), 1 thread / 2 threads: 0.95 at 6,144, 1.09 at 16,896, 1.20 at 32,768, 1.4-1.9 from
# ~0.1 M up (benchmarks/results/kernels-issue10.md).
THREAD_MIN_WORK = 1 << 15


@dataclass(frozen=True)
class Table:
    arrays: object  # numba typed List of uint8 arrays: the parts' packed codes and raw column lists
    parts: np.ndarray  # int64 [P, P_FIELDS]: one row per part (columns accel._kernels.P_*)
    scales: np.ndarray  # float64 [P]
    slot_parts: np.ndarray  # int64 [n + 1]: slot s owns parts[slot_parts[s]:slot_parts[s + 1]] (every slice's)
    ok: np.ndarray  # bool [n]: every part of the slot's deltas (in every slice) multiplies from its codes here
    single: np.ndarray  # bool [n]: each of the slot's deltas is one part (no split classes to sum first)


_TABLES: dict[tuple, Table] = {}


def eligible(p) -> bool:
    """A part this call can multiply: the seeded layout, whole (a shard's mask keys are global)."""
    return p.layout is registry.SEEDED and not p.sharded


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).view(torch.uint8).numpy()


def _row(k, p, arrays: list, masks: dict, out0: int) -> list:
    prm = p.params
    row = [0] * k.P_FIELDS
    row[k.P_OUT] = out0
    row[k.P_CODES] = len(arrays)
    arrays.append(_raw(p.buffers["codes"]))
    row[k.P_LIST] = -1
    if p.columns is not None:
        row[k.P_LIST] = len(arrays)
        arrays.append(_raw(p.columns))
        row[k.P_LIST_BYTES], row[k.P_LIST_LEN] = p.columns.element_size(), p.columns.numel()
        row[k.P_COMPLEMENT] = int(bool(p.complement))
    row[k.P_BITS], row[k.P_ZERO], row[k.P_SEED] = prm["bits"], prm["zero"], prm["seed"] & 0xFFFFFFFF
    row[k.P_ROWS], row[k.P_COLS] = p.shape
    row[k.P_GROUP], row[k.P_ALPHA] = prm["group_size"], prm["alpha"]
    geometry = (row[k.P_SEED], row[k.P_ROWS], row[k.P_COLS], row[k.P_GROUP], row[k.P_ALPHA])
    row[k.P_MASK] = masks.setdefault(geometry, len(masks))
    return row


def _build(slices, k) -> Table:
    from ..accel import _kernels as kk
    arrays, rows, scales, slot_parts, ok, single, masks = [], [], [], [0], [], [], {}
    for s in range(len(slices[0][1])):
        held = [(off, deltas[s]) for off, deltas in slices if deltas[s] is not None]
        good = all(eligible(p) for _, d in held for p in d.parts)
        ok.append(good and bool(held))
        single.append(all(len(d.parts) == 1 for _, d in held))
        for off, d in held if good else ():
            for p in d.parts:
                rows.append(_row(kk, p, arrays, masks, off))
                scales.append(float(p.params["scale"]))
        slot_parts.append(len(rows))
    parts = np.array(rows, np.int64).reshape(len(rows), kk.P_FIELDS)
    return Table(k.product_table(arrays), parts, np.array(scales, np.float64), np.array(slot_parts, np.int64),
                 np.array(ok, bool), np.array(single, bool))


def table(slices) -> Table | None:
    """The table of a layer's slices [(output column offset, [delta or None per slot])], all slices over the
    same slots (built on first use), or None without the compiled kernels."""
    k = accel.kernels()
    if k is None:
        return None
    key = tuple((off, tuple(map(id, deltas))) for off, deltas in slices)
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = _build(slices, k)
        alive = {id(d): d for _, deltas in slices for d in deltas if d is not None}
        for d in alive.values():  # an id is reused only once d is gone
            weakref.finalize(d, _TABLES.pop, key, None)
    return hit


def products(tab: Table, runs: list, order: np.ndarray, x: np.ndarray, y: np.ndarray, nt: int | None = None) -> int:
    """y[t, slice] += x[t] · ΔŴ_{slot, slice}ᵀ for the tokens of these runs ((slot, start, count), each slot ok
    in tab; order[start:start + count] its token ids). x float32 [B, in], y float32 [B, layer out]. On nt
    threads (None: torch's count, what the engine was given) when the step's work repays a parallel launch
    (THREAD_MIN_WORK); any number gives the same bits. Returns the work."""
    return accel.kernels().seeded_products_multi(tab.arrays, tab.parts, tab.scales, tab.slot_parts,
                                                 np.array(runs, np.int64).reshape(-1, 3), order, x, y,
                                                 torch.get_num_threads() if nt is None else nt, THREAD_MIN_WORK)
