"""Tensor-parallel shards of one delta: the rows and columns a rank's slice of the base layer has.

A column-parallel layer keeps some output rows of the full weight (`rows`, in the rank's order: vLLM's own
slice_lora_b says which), a row-parallel layer a range of input columns (`cols`), a vocab-parallel
embedding or lm_head a range of vocabulary rows. Each rank keeps only its shard, served by the normal
kernels (kernels.CompressedDelta.from_entry(..., rows=, cols=)): a seeded shard keeps its codes and keys
its mask by the global row and group index; a csr_parts shard is re-encoded. Rows in several runs (a
merged tensor split per rank) become a `RowRuns`: one shard per run, each a grouped launch of its own.
Every shard decodes to exactly decode(full)[rows][:, c0:c1] (tests/test_vllm_multi_shard.py).
"""
from __future__ import annotations

import numpy as np
import torch

from ...kernels import CompressedDelta


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Row indices -> [(start, stop)] runs of consecutive rows, in order."""
    rows = np.asarray(rows, np.int64)
    if not rows.size:
        return []
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, rows.size]
    return [(int(rows[a]), int(rows[b - 1]) + 1) for a, b in zip(starts, ends)]


class RowRuns:
    """A delta whose rank keeps several runs of rows: `row_runs` [(first local row, shard)], stacked."""

    def __init__(self, row_runs: list, name=None):
        self.row_runs = row_runs
        self.name = name
        self.shape = (sum(d.shape[0] for _, d in row_runs), row_runs[0][1].shape[1])

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for _, d in self.row_runs)

    @property
    def encoded_nbytes(self) -> int:
        return sum(d.encoded_nbytes for _, d in self.row_runs)

    def to(self, device) -> "RowRuns":
        return RowRuns([(s, d.to(device)) for s, d in self.row_runs], self.name)

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        return torch.cat([d.to_dense(dtype) for _, d in self.row_runs])

    def rows(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return self.to_dense(dtype)[index]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([d.matmul(x) for _, d in self.row_runs], dim=-1)


def shard_compressed(entry: dict, buffers: dict, rows=None, cols=None, *, path=None, device="cpu"):
    """The (rows, cols) shard of a compressed kernel-encoded entry, resident on `device`: a CompressedDelta
    (one run of rows, or all), else a RowRuns. rows: None (all) or int64 row indices of the full tensor, in
    the order the shard keeps them; cols: None (all) or (c0, c1)."""
    n_rows = entry["shape"][0]
    runs = [(0, n_rows)] if rows is None else row_runs(rows)
    shards = [CompressedDelta.from_entry(entry, buffers, device, path=path, rows=r, cols=cols) for r in runs or [(0, 0)]]
    if len(shards) == 1:
        return shards[0]
    starts = np.cumsum([0] + [b - a for a, b in runs[:-1]]).tolist()
    return RowRuns(list(zip(starts, shards)), entry.get("name"))


def shard_dense(t: torch.Tensor, rows=None, cols=None) -> torch.Tensor:
    if rows is not None:
        t = t[torch.as_tensor(np.asarray(rows, np.int64))]
    if cols is not None:
        t = t[..., cols[0]:cols[1]]
    return t.contiguous()
