"""Tokens grouped by delta (SGMV segments), built once per forward pass and shared by every layer.

`delta_segments(index, n)` sorts the tokens by delta and cuts each delta's run into tiles of at most
`block_b` tokens. Everything stays on the index's device and no value comes back to the host (CUDA-graph
safe): the number of tiles has the host-side bound ceil(B / block_b) + min(n, B), and tiles past the real
count have zero tokens (their programs exit at once). Tokens whose index is -1 (or outside 0..n-1) are in
no tile: they get no delta.

vLLM's punica metadata (tokens sorted by slot, tokens per slot) describes the same grouping; passing the
token-to-slot index here keeps one code path for every caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_BLOCK_B = 16


@dataclass(frozen=True)
class DeltaSegments:
    order: torch.Tensor  # int64 [B]: token ids sorted by delta (no-delta tokens last)
    tiles: torch.Tensor  # int32 [T, 3]: (delta, first position in `order`, token count <= block_b)
    block_b: int
    n_deltas: int
    batch: int
    counts: torch.Tensor | None = None  # int64 [n_deltas]: tokens per delta (their run in `order` is
    starts: torch.Tensor | None = None  # int64 [n_deltas]: ... order[starts[d]:starts[d] + counts[d]])
    _host: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def device(self) -> torch.device:
        return self.order.device

    def runs(self) -> list[tuple[int, int, int]]:
        """(delta, first position in `order`, token count) of every delta some token uses, on the host:
        ONE device-to-host copy (a sync on a GPU), made on the first call and kept. For the paths that
        loop over deltas on the host (the CPU backend, dense deltas, embedding rows); the kernels need none."""
        if "runs" not in self._host:
            both = torch.stack([self.starts, self.counts]).tolist()
            self._host["runs"] = [(d, s, c) for d, (s, c) in enumerate(zip(*both)) if c]
        return self._host["runs"]

    def rows(self, delta: int) -> torch.Tensor | None:
        """Token ids of `delta` (None when no token uses it), from runs()."""
        rows = self._host.get("rows")
        if rows is None:
            rows = self._host["rows"] = {d: self.order[s:s + c] for d, s, c in self.runs()}
        return rows.get(delta)


def default_block(batch: int, n_deltas: int) -> int:
    """Tokens per tile: the expected tokens per delta (batch / deltas), rounded up to a power of two, at most
    MAX_BLOCK_B. One token per delta wastes no lanes; many tokens per delta share each mask computation."""
    per = -(-batch // max(1, min(n_deltas, batch))) if batch else 1
    return min(MAX_BLOCK_B, 1 << (per - 1).bit_length())


def delta_segments(index: torch.Tensor, n_deltas: int, *, block_b: int | None = None) -> DeltaSegments:
    """Segments of a per-token delta index [B] (values 0..n_deltas-1; -1 = no delta)."""
    B = int(index.numel())
    bb = block_b or default_block(B, n_deltas)
    if bb < 1 or bb > MAX_BLOCK_B or bb & (bb - 1):
        raise ValueError(f"block_b must be a power of two in 1..{MAX_BLOCK_B}, got {bb}")
    dev = index.device
    idx = index.reshape(-1).to(torch.int64)
    key = torch.where((idx >= 0) & (idx < n_deltas), idx, n_deltas)  # no delta: sorts last, counted apart
    order = torch.argsort(key, stable=True)
    counts = torch.zeros(n_deltas + 1, dtype=torch.int64, device=dev).scatter_add_(0, key, torch.ones_like(key))
    counts = counts[:n_deltas]
    starts = torch.cumsum(counts, 0) - counts
    per = (counts + bb - 1) // bb
    ends = torch.cumsum(per, 0)
    n_tiles = -(-B // bb) + min(n_deltas, B)
    t = torch.arange(n_tiles, dtype=torch.int64, device=dev)
    d = torch.searchsorted(ends, t, right=True)
    dc = d.clamp(max=max(n_deltas - 1, 0))
    local = t - (ends[dc] - per[dc])
    first = starts[dc] + local * bb
    count = torch.where(d < n_deltas, (counts[dc] - local * bb).clamp(0, bb), 0)
    tiles = torch.stack([dc, first, count], 1).to(torch.int32)
    return DeltaSegments(order, tiles.contiguous(), bb, n_deltas, B, counts, starts)


def reference_tiles(index, n_deltas: int, block_b: int) -> list[tuple[int, list[int]]]:
    """(delta, token ids) per non-empty tile, by plain Python: the oracle of delta_segments."""
    out = []
    idx = [int(v) for v in index]
    for dlt in range(n_deltas):
        toks = [t for t, v in enumerate(idx) if v == dlt]
        out += [(dlt, toks[i:i + block_b]) for i in range(0, len(toks), block_b)]
    return out
