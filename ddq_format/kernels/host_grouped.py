"""The CPU grouped product of a decode step in ONE compiled call (accel: numba's seeded_products_multi).

host.multi used to loop over a step's deltas in Python: per delta and per column class a gather of its
tokens, a transpose, the column list mapped and a kernel call, 30-50 µs each beside a few µs of work at
decode sizes, so 16 deltas cost more in dispatch than in products. Here every seeded-layout part of a
layer's deltas is described once, in a table kept while those deltas live (keyed by the deltas' ids,
dropped when any of them is collected), and one call runs every eligible run of the step: its tokens
gathered once, each mask regenerated once for every part that has it (deltas of one base converted at one
run seed share them) and each part's codes read in place (no copy, no dense scratch).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .. import accel
from . import registry


@dataclass(frozen=True)
class Table:
    arrays: object  # numba typed List of uint8 arrays: the parts' packed codes and raw column lists
    parts: np.ndarray  # int64 [P, P_FIELDS]: one row per part (columns accel._kernels.P_*)
    scales: np.ndarray  # float64 [P]
    slot_parts: np.ndarray  # int64 [n + 1]: slot s owns parts[slot_parts[s]:slot_parts[s + 1]]
    ok: np.ndarray  # bool [n]: every part of the slot's delta multiplies from its codes here


_TABLES: dict[tuple, Table] = {}


def eligible(p) -> bool:
    """A part this call can multiply: the seeded layout, whole (a shard's mask keys are global)."""
    return p.layout is registry.SEEDED and not p.sharded


def _raw(t: torch.Tensor) -> np.ndarray:
    return t.detach().reshape(-1).view(torch.uint8).numpy()


def _row(k, p, arrays: list, masks: dict) -> list:
    prm = p.params
    row = [0] * k.P_FIELDS
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


def _build(deltas, k) -> Table:
    from ..accel import _kernels as kk
    arrays, rows, scales, slot_parts, ok, masks = [], [], [], [0], [], {}
    for d in deltas:
        good = d is not None and all(eligible(p) for p in d.parts)
        ok.append(good)
        for p in d.parts if good else ():
            rows.append(_row(kk, p, arrays, masks))
            scales.append(float(p.params["scale"]))
        slot_parts.append(len(rows))
    parts = np.array(rows, np.int64).reshape(len(rows), kk.P_FIELDS)
    return Table(k.product_table(arrays), parts, np.array(scales, np.float64), np.array(slot_parts, np.int64),
                 np.array(ok, bool))


def table(deltas) -> Table | None:
    """The table of these deltas (built on first use), or None without the compiled kernels."""
    k = accel.kernels()
    if k is None:
        return None
    key = tuple(map(id, deltas))
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = _build(deltas, k)
        for d in {id(d): d for d in deltas if d is not None}.values():  # an id is reused only once d is gone
            weakref.finalize(d, _TABLES.pop, key, None)
    return hit


def products(tab: Table, runs: list, order: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """y[t] += x[t] · ΔŴ_{slot}ᵀ for the tokens of these runs ((slot, start, count), each slot ok in tab;
    order[start:start + count] its token ids). x float32 [B, in], y float32 [B, out]."""
    accel.kernels().seeded_products_multi(tab.arrays, tab.parts, tab.scales, tab.slot_parts,
                                          np.array(runs, np.int64).reshape(-1, 3), order, x, y)
