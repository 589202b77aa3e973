"""Per-slot delta tables of one layer, and their per-token application (torch only; no vLLM import).

vLLM's LoRA manager gives every batch row (token, or logits row) a slot index, -1 for the base model
(the punica wrapper's `token_lora_indices` / `sampler_indices`). Each wrapped layer holds one table here:
slot s -> the rank-local delta of the adapter in slot s, or nothing. Forward passes add, per row, the
delta of that row's slot; the kernel-encoded deltas of all slots go through ONE batched call
(kernels.multi_delta_matmul), everything else (dense deltas, tensor-parallel shards of seeded deltas) is
applied slot by slot to its rows.
"""
from __future__ import annotations

import torch

from ...kernels import CompressedDelta, multi_delta_matmul


class DenseDelta:
    """A delta held decoded (float32): entries the file stores dense, and dense biases' matrices."""

    def __init__(self, t: torch.Tensor, name: str | None = None):
        self.t = t
        self.shape = tuple(t.shape)
        self.name = name

    @property
    def nbytes(self) -> int:
        return self.t.numel() * self.t.element_size()

    def to(self, device) -> "DenseDelta":
        return DenseDelta(self.t.to(device), self.name)

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        return self.t.to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) @ self.t.T).to(x.dtype)


def nbytes(d) -> int:
    return d.nbytes if not isinstance(d, torch.Tensor) else d.numel() * d.element_size()


def to_device(d, device):
    return d.to(device)


def gather_rows(d, rows: torch.Tensor) -> torch.Tensor:
    """float32 rows of a [V, H] delta (an embedding): dense ones index, compressed ones decode first."""
    if isinstance(d, DenseDelta):
        return d.t[rows].to(torch.float32)
    return d.to_dense(torch.float32)[rows]


def rows_of(idx: torch.Tensor, slot: int) -> torch.Tensor:
    return (idx == slot).nonzero().reshape(-1)


def fit_index(idx: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The slot index for n rows: vLLM may pad a batch beyond the mapping (padded rows are the base)."""
    if idx is None:
        return None
    if idx.numel() == n:
        return idx
    if idx.numel() > n:
        return idx[:n]
    return torch.cat([idx, idx.new_full((n - idx.numel(),), -1)])


class LinearSlots:
    """Deltas of one (possibly packed) linear layer: output slice i of the rank-local output is
    y[:, off_i:off_i + size_i]; slot s holds per slice a delta [size_i, in] (or nothing), and optionally a
    bias delta [out_local]."""

    def __init__(self, n_slots: int, slices: list[tuple[int, int]], in_features: int):
        self.n = n_slots
        self.slices = list(slices)
        self.in_features = in_features
        self.out_features = sum(s for _, s in self.slices)
        self.weights: list[dict[int, object]] = [{} for _ in self.slices]  # slice -> slot -> delta
        self.bias: dict[int, torch.Tensor] = {}  # slot -> [out_local] float32
        self._plans = None  # per slice: (kernel deltas, slot->position table, [(slot, other delta)])
        self._bias_table = None

    @property
    def empty(self) -> bool:
        return not self.bias and not any(self.weights)

    def check(self, weights: dict[int, object], bias: dict[int, torch.Tensor]) -> None:
        """ValueError unless every slice delta has the shape of that slice (rank-local)."""
        for i, d in weights.items():
            want = (self.slices[i][1], self.in_features)
            if tuple(d.shape) != want:
                raise ValueError(f"has shape {tuple(d.shape)} on this rank, the layer's slice {i} needs {want}")
        for i, b in bias.items():
            if tuple(b.shape) != (self.slices[i][1],):
                raise ValueError(f"bias has shape {tuple(b.shape)}, the layer's slice {i} needs ({self.slices[i][1]},)")

    def set(self, slot: int, weights: dict[int, object], bias: dict[int, torch.Tensor] | None = None) -> None:
        """Slot `slot` gets a delta per output slice and optional bias deltas per slice."""
        bias = bias or {}
        self.check(weights, bias)
        self.clear(slot)
        for i, d in weights.items():
            self.weights[i][slot] = d
        if bias:
            full = torch.zeros(self.out_features, dtype=torch.float32, device=next(iter(bias.values())).device)
            for i, b in bias.items():
                off, size = self.slices[i]
                full[off:off + size] = b.to(torch.float32)
            self.bias[slot] = full
        self._plans = None

    def clear(self, slot: int) -> None:
        for w in self.weights:
            w.pop(slot, None)
        self.bias.pop(slot, None)
        self._plans = None

    def nbytes(self, slot: int) -> int:
        n = sum(nbytes(w[slot]) for w in self.weights if slot in w)
        return n + (nbytes(self.bias[slot]) if slot in self.bias else 0)

    def _plan(self, device):
        plans = []
        for w in self.weights:
            kern = sorted(s for s, d in w.items() if isinstance(d, CompressedDelta))
            table = None
            if kern:
                table = torch.full((self.n + 1,), -1, dtype=torch.long, device=device)
                table[torch.tensor(kern, device=device) + 1] = torch.arange(len(kern), device=device)
            plans.append(([w[s] for s in kern], table, [(s, d) for s, d in w.items() if s not in kern]))
        self._bias_table = None
        if self.bias:
            self._bias_table = torch.zeros(self.n + 1, self.out_features, dtype=torch.float32, device=device)
            for s, b in self.bias.items():
                self._bias_table[s + 1] = b.to(device)
        self._plans = plans

    def apply(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, *, with_bias: bool = True) -> torch.Tensor:
        """y [T, out_local] + each row's delta of x [T, in] (slot idx[t], -1 = none); returns y."""
        if self._plans is None:
            self._plan(x.device)
        for (off, size), (kern, table, others) in zip(self.slices, self._plans):
            if kern:
                y[:, off:off + size] += multi_delta_matmul(x, kern, table[idx + 1], check_index=False).to(y.dtype)
            for s, d in others:
                rows = rows_of(idx, s)
                if rows.numel():
                    y[rows, off:off + size] += d.matmul(x[rows]).to(y.dtype)
        if with_bias and self._bias_table is not None:
            y += self._bias_table[idx + 1].to(y.dtype)
        return y


class RowSlots:
    """Per-slot deltas applied row-wise: embeddings (slot s -> delta [V_local, H], rows looked up by token)
    and norms (slot s -> the fine-tuned weight vector)."""

    def __init__(self, n_slots: int):
        self.n = n_slots
        self.deltas: dict[int, object] = {}

    @property
    def empty(self) -> bool:
        return not self.deltas

    def set(self, slot: int, delta) -> None:
        self.deltas[slot] = delta

    def clear(self, slot: int) -> None:
        self.deltas.pop(slot, None)

    def nbytes(self, slot: int) -> int:
        return nbytes(self.deltas[slot]) if slot in self.deltas else 0

    def present(self, idx: torch.Tensor):
        """(slot, rows, delta) for every slot with a delta that some row of idx uses."""
        for s, d in self.deltas.items():
            rows = rows_of(idx, s)
            if rows.numel():
                yield s, rows, d

    def embedding_add(self, tokens: torch.Tensor, idx: torch.Tensor, hidden: int, vocab_start: int = 0):
        """[T, H] float32: each row's embedding delta for its token (zero for rows outside this rank's
        vocabulary range [vocab_start, vocab_start + V_local)), or None when no row has one."""
        add = None
        for _, rows, d in self.present(idx):
            local = tokens[rows].to(torch.long) - vocab_start
            inside = (local >= 0) & (local < d.shape[0])
            got = gather_rows(d, local.clamp(0, d.shape[0] - 1)) * inside[:, None]
            if add is None:
                add = torch.zeros(tokens.shape[0], hidden, dtype=torch.float32, device=tokens.device)
            add[rows] = got
        return add
