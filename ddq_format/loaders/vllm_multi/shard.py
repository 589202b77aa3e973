"""Tensor-parallel shards of one delta: the rows and columns a rank's slice of the base layer has.

A column-parallel layer keeps some output rows of the full weight (`rows`, in the rank's order: vLLM's own
slice_lora_b says which), a row-parallel layer a range of input columns (`cols`), a vocab-parallel
embedding or lm_head a range of vocabulary rows. Each rank keeps only its shard:

- csr_parts: re-encoded as a csr_parts entry of the shard (same quantizer, codes repacked): the kernels
  serve it as any other file entry; bytes scale with the shard's kept elements.
- seeded: the mask is a hash of the ABSOLUTE (row, group) indices, which the kernels do not take an
  offset for, so a shard is a `SeededShard`: the shard's codes only (1/tp of the bytes), the mask
  regenerated with the absolute indices (numpy, on the host) at each use. Exact; slow (TP > 1 only).
- dense: sliced.
Every shard decodes to exactly decode(full)[rows][:, c0:c1] (tests/test_vllm_multi_shard.py).
"""
from __future__ import annotations

import numpy as np
import torch

from ... import bitpack
from ...encodings import csr_parts, seeded
from ...encodings._common import NP_DTYPES, Ctx
from ...kernels import CompressedDelta
from ...quantize import check_parts, dequantize
from ...seeded_mask import group_layout, positions
from ...spec import ENC_CSR_PARTS, ENC_SEEDED, PACKED, index_dtype_for

U32 = np.uint32


def _typed_bytes(a: np.ndarray, dtype: str) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).astype(np.dtype(NP_DTYPES[dtype]))).reshape(-1).view(np.uint8)


def shard_compressed(entry: dict, buffers: dict, rows=None, cols=None, *, path=None, device="cpu"):
    """The (rows, cols) shard of a compressed csr_parts/seeded entry, resident on `device`.

    rows: None (all) or int64 row indices of the full tensor, in the order the shard keeps them;
    cols: None (all) or (c0, c1)."""
    n_rows, n_cols = entry["shape"]
    if rows is not None and np.array_equal(rows, np.arange(n_rows)):
        rows = None
    if cols is not None and tuple(cols) == (0, n_cols):
        cols = None
    if rows is None and cols is None:
        return CompressedDelta.from_entry(entry, buffers, device, path=path)
    rows = np.arange(n_rows, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    c0, c1 = (0, n_cols) if cols is None else (int(cols[0]), int(cols[1]))
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows) or not 0 <= c0 <= c1 <= n_cols:
        raise ValueError(f"shard rows/cols outside the tensor {entry['shape']}")
    build = SHARDERS.get(entry["encoding"])
    if build is None:
        raise ValueError(f"no shard for encoding {entry['encoding']!r}")
    return build(entry, buffers, rows, c0, c1, path=path, device=device)


def _csr_sharded(entry, buffers, rows, c0, c1, *, path, device):
    sub, bufs = csr_shard(entry, buffers, rows, c0, c1, path=path)
    return CompressedDelta.from_entry(sub, bufs, device, path=path)


def shard_dense(t: torch.Tensor, rows=None, cols=None) -> torch.Tensor:
    if rows is not None:
        t = t[torch.as_tensor(np.asarray(rows, np.int64))]
    if cols is not None:
        t = t[..., cols[0]:cols[1]]
    return t.contiguous()


# -- csr_parts ------------------------------------------------------------------------------------------
def csr_shard(entry, buffers, rows: np.ndarray, c0: int, c1: int, *, path=None) -> tuple[dict, dict]:
    """(entry, buffers) of a csr_parts entry restricted to `rows` x [c0, c1), a valid csr_parts entry."""
    p = entry["params"]
    name = entry.get("name")
    parts = csr_parts.parts_of(entry, buffers, Ctx(path, name))
    r = rows.size
    offsets = np.zeros((len(parts), r + 1), np.int64)
    cols_out, codes_out = [], []
    for j, part in enumerate(parts):
        ro = part.row_offsets.astype(np.int64)
        starts, counts = ro[rows], ro[rows + 1] - ro[rows]
        # element positions of the selected rows, in shard row order: start_i + 0..count_i-1
        pos = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        ci = part.col_indices[pos].astype(np.int64)
        keep = (ci >= c0) & (ci < c1)
        row_of = np.repeat(np.arange(r), counts)[keep]
        np.cumsum(np.bincount(row_of, minlength=r), out=offsets[j, 1:])
        cols_out.append(ci[keep] - c0)
        codes_out.append(part.codes[pos][keep])
    ci, codes = np.concatenate(cols_out), np.concatenate(codes_out)
    nnz = int(ci.size)
    off_dtype = "U32" if nnz < 2**32 else "U64"
    idx_dtype = index_dtype_for(max(c1 - c0 - 1, 0))
    bufs = {"row_offsets": _typed_bytes(offsets, off_dtype), "col_indices": _typed_bytes(ci, idx_dtype),
            "values": bitpack.pack(codes.astype(np.uint8), check_parts(p["bits"], p["parts"]))}
    dtypes = {"row_offsets": off_dtype, "col_indices": idx_dtype, "values": PACKED}
    params = {**p, "nnz": nnz}
    if p["group_size"] > max(c1 - c0, 1):  # descriptive for csr_parts (the kept set is explicit): keep it valid
        params.update(alpha=1, group_size=max(c1 - c0, 1))
    sub = {**entry, "name": name, "shape": [r, c1 - c0], "params": params,
           "buffers": {k: {"dtype": dtypes[k], "length": int(v.size)} for k, v in bufs.items()}}
    return sub, bufs


# -- seeded ---------------------------------------------------------------------------------------------
def seeded_kept(p: dict, n_cols: int, rows: np.ndarray, c0: int, c1: int):
    """For the groups that overlap [c0, c1): (columns [r, K] int64, their position in the row's kept order
    [K], in-range mask [r, K]). Columns are absolute; the hash takes the absolute row and group index."""
    g, alpha = p["group_size"], p["alpha"]
    full, keep, tail, keep_tail = group_layout(n_cols, g, alpha)
    lo, hi = c0 // g, (c1 - 1) // g if c1 > c0 else -1
    cols, kept = [], []
    r = rows.astype(U32)
    groups = np.arange(lo, min(hi, full - 1) + 1, dtype=U32)
    if groups.size and keep:
        pos = positions(p["seed"], r[:, None, None], groups[None, :, None], np.arange(keep, dtype=U32), g)
        cols.append((pos.astype(np.int64) + groups.astype(np.int64)[None, :, None] * g).reshape(r.size, -1))
        kept.append((groups.astype(np.int64)[:, None] * keep + np.arange(keep)).reshape(-1))
    if keep_tail and hi >= full:
        pos = positions(p["seed"], r[:, None], np.full((1, 1), full, U32), np.arange(keep_tail, dtype=U32), tail)
        cols.append(pos.astype(np.int64) + full * g)
        kept.append(full * keep + np.arange(keep_tail))
    if not cols:
        return np.zeros((r.size, 0), np.int64), np.zeros(0, np.int64), np.zeros((r.size, 0), bool)
    cols = np.concatenate(cols, axis=1)
    return cols, np.concatenate(kept), (cols >= c0) & (cols < c1)


class SeededShard:
    """rows x [c0, c1) of a `seeded` delta: holds the codes of the shard's kept elements (row-major, kept
    order) and regenerates their columns from the seed. Same interface as CompressedDelta's compute."""

    def __init__(self, params, n_cols, rows, c0, c1, codes: torch.Tensor, count: int, name=None):
        self.params, self.n_cols = dict(params), int(n_cols)
        self.rows, self.c0, self.c1 = np.asarray(rows, np.int64), int(c0), int(c1)
        self.codes, self.count, self.name = codes, int(count), name
        self.shape = (self.rows.size, self.c1 - self.c0)

    @classmethod
    def build(cls, entry, buffers, rows, c0, c1, *, path=None, device="cpu") -> "SeededShard":
        seeded.check(entry, Ctx(path, entry.get("name")))
        full_codes = seeded.codes_of(entry, buffers)  # [rows, kept_per_row] uint8
        _, kept, inside = seeded_kept(entry["params"], entry["shape"][1], rows, c0, c1)
        sel = full_codes[rows][:, kept][inside]
        packed = torch.from_numpy(bitpack.pack(sel, entry["params"]["bits"]).copy()).to(device)
        return cls(entry["params"], entry["shape"][1], rows, c0, c1, packed, sel.size, entry.get("name"))

    @property
    def nbytes(self) -> int:
        return self.codes.numel()

    @property
    def device(self):
        return self.codes.device

    def to(self, device) -> "SeededShard":
        return SeededShard(self.params, self.n_cols, self.rows, self.c0, self.c1, self.codes.to(device),
                           self.count, self.name)

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        p = self.params
        cols, _, inside = seeded_kept(p, self.n_cols, self.rows, self.c0, self.c1)
        codes = bitpack.unpack(self.codes.cpu().numpy(), p["bits"], self.count)
        out = np.zeros(self.shape, np.float32)
        r_idx = np.nonzero(inside)[0]
        out[r_idx, cols[inside] - self.c0] = dequantize(codes, p["scale"], p["zero"])
        return torch.from_numpy(out).to(device=self.device, dtype=dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) @ self.to_dense().T).to(x.dtype)


# Encoding id -> builder of a (rows, cols) shard: the sharding registry.
SHARDERS = {ENC_CSR_PARTS: _csr_sharded, ENC_SEEDED: lambda *a, **k: SeededShard.build(*a, **k)}
