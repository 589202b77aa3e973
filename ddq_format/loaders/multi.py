"""Many deltas on one base (Punica/S-LoRA style): each request of a batch names its delta, or none.

attach_deltas(model, [a.ddq, b.ddq, ...]) turns every nn.Linear that some delta changes into a
MultiDeltaLinear (base weight shared, compressed deltas resident) and gives every other changed module a
per-row override; set_delta_index(model, LongTensor[B]) (or `with use_deltas(model, index):`) says which
delta each batch row uses (-1 = the base model). One forward pass then serves the mixed batch.

Decisions (documented in the report and README):
- Linear weights: compressed deltas (every entry kernels.supports, seeded_rans included) are applied by
  kernels.multi_delta_matmul: one base matmul, then one grouped (SGMV) delta pass added into its output.
  The tokens' grouping by delta (kernels.delta_segments) is built once per forward pass, when the first
  layer asks, and shared by every layer. Dense/replace deltas of a linear weight are kept as dense fp32
  [out, in] and applied to their rows only. Linear biases: a per-delta bias-delta table, gathered per row.
- Other tensors that differ between deltas (norm weights, embeddings, non-linear biases): the module runs
  once on all rows with base weights, then once per delta present in the batch on that delta's rows with
  the fine-tuned parameters (torch.func.functional_call). Allowed for nn.Embedding and for modules whose
  own parameters are all 1-D (RMSNorm, LayerNorm...): they map batch row b of the input to batch row b of
  the output. Their fine-tuned values are resident per delta (tiny for norms; an embedding costs a full
  copy per delta that changes it, which the resident-bytes count shows).
- Refused with an error naming the tensors: shape changes, tensors only in a fine-tune or removed by it,
  and changed parameters of any other module type.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BindingError, UsageError
from ..spec import KIND_REMOVED, KIND_SAME, KIND_TIED
from .apply import finetuned_tensor, open_file
from .inplace import alias_groups, named_tensors, plan
from .separate import compressed_delta, kept_compressed, linear_owner, set_module


class DeltaState:
    """Shared by every patched module of one model: the number of deltas and the current row index."""

    def __init__(self, n: int, paths):
        self.n = n
        self.paths = [str(p) for p in paths]
        self._index: torch.Tensor | None = None
        self._segments = None  # (key, DeltaSegments) of the current index, built by the first layer asking

    @property
    def index(self) -> torch.Tensor | None:
        return self._index

    @index.setter
    def index(self, value) -> None:
        self._index = value
        self._segments = None

    def segments(self, idx: torch.Tensor, lead) -> object:
        """kernels.delta_segments of the per-token index `idx` (from rows()), cached for the forward pass:
        every layer with the same leading dims shares it."""
        key = (tuple(lead), idx.device)
        if self._segments is None or self._segments[0] != key:
            from ..kernels import delta_segments
            self._segments = (key, delta_segments(idx, self.n))
        return self._segments[1]

    def rows(self, x: torch.Tensor, batch_dims: int) -> torch.Tensor | None:
        """Per-row delta index flattened over the first `batch_dims` dims of x (None: no delta)."""
        idx = self.index
        if idx is None:
            return None
        lead = x.shape[:batch_dims]
        if idx.shape[0] == lead[0]:
            idx = idx.to(x.device).view(-1, *[1] * (len(lead) - 1)).expand(lead)
        elif idx.numel() != lead.numel():
            raise UsageError(f"delta index has {idx.shape[0]} rows; the input's leading dims are {tuple(lead)}")
        return idx.to(x.device).reshape(-1)


class MultiDeltaLinear(nn.Linear):
    """nn.Linear sharing the base weight; slot i holds delta i's change to it (None when unchanged)."""

    def __init__(self, base: nn.Linear, state: DeltaState, compressed: dict, dense: dict, bias: dict):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.state = state
        self.compressed = dict(compressed)  # slot -> CompressedDelta
        self.dense = {}  # slot -> fp32 [out, in]: registered as buffers so .to() moves them
        for s, d in dense.items():
            self.register_buffer(f"dense_delta_{s}", d, persistent=False)
            self.dense[s] = f"dense_delta_{s}"
        table = None
        if bias:  # row 0: no delta; row s + 1: delta s
            table = torch.zeros(state.n + 1, self.out_features, dtype=torch.float32, device=base.weight.device)
            for s, b in bias.items():
                table[s + 1] = b
        self.register_buffer("bias_delta", table, persistent=False)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        idx = self.state.rows(x, x.dim() - 1)
        if idx is None:
            return y
        x2, y2 = x.reshape(-1, self.in_features), y.reshape(-1, self.out_features)
        if self.compressed:
            from ..kernels import multi_delta_matmul
            slots = [self.compressed.get(s) for s in range(self.state.n)]  # None: this slot leaves W alone
            seg = self.state.segments(idx, x.shape[:-1])
            # set_delta_index checked the range; y2 is F.linear's fresh output, updated in place
            multi_delta_matmul(x2.contiguous(), slots, idx, segments=seg, add_to=y2, check_index=False)
        for s, buf in self.dense.items():
            rows = (idx == s).nonzero().squeeze(1)
            if rows.numel():
                d = getattr(self, buf)
                y2 = y2.index_add(0, rows, (x2[rows].to(torch.float32) @ d.T).to(y2.dtype))
        if self.bias_delta is not None:
            y2 = y2 + self.bias_delta[idx + 1].to(y2.dtype)
        return y2.reshape(y.shape)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.compressed = {s: d.map_buffers(fn) for s, d in self.compressed.items()}
        return self

    @property
    def delta_nbytes(self) -> int:
        n = sum(d.nbytes for d in self.compressed.values())
        n += sum(getattr(self, b).numel() * 4 for b in self.dense.values())
        return n + (self.bias_delta.numel() * 4 if self.bias_delta is not None else 0)


class RowOverride:
    """Forward hook: rows whose delta changes this module's parameters are recomputed with those values."""

    def __init__(self, module: nn.Module, state: DeltaState, overrides: dict):
        self.state = state
        self.overrides = overrides  # slot -> {param leaf name: tensor}
        self.busy = False  # functional_call runs the module again, hook included
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, out):
        if self.busy or self.state.index is None:
            return out
        idx = self.state.rows(args[0], 1)
        out = out.clone()
        self.busy = True
        try:
            for s, params in self.overrides.items():
                rows = (idx == s).nonzero().squeeze(1)
                if rows.numel():
                    params = {k: v.to(out.device) for k, v in params.items()}
                    out[rows] = torch.func.functional_call(module, params, (args[0][rows],) + tuple(args[1:]))
        finally:
            self.busy = False
        return out

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for p in self.overrides.values() for v in p.values())


def _row_safe(module: nn.Module) -> bool:
    own = list(module.parameters(recurse=False))
    return isinstance(module, nn.Embedding) or (own and all(p.dim() == 1 for p in own))


@torch.no_grad()
def attach_deltas(model: nn.Module, paths, *, device=None) -> DeltaState:
    """Attach N .ddq files (paths or DDQFiles) to one base model; slot i is paths[i]. Returns the shared
    DeltaState (its `index` is what set_delta_index sets). Every file's binding is checked first."""
    if getattr(model, "_ddq_delta_state", None) is not None:
        raise UsageError("deltas are already attached to this model")
    files = [open_file(p) for p in paths]
    if not files:
        raise UsageError("attach_deltas needs at least one .ddq file")
    tensors = named_tensors(model)
    groups = {n: g for g in alias_groups(tensors) for n in g}
    state = DeltaState(len(files), [f.path for f in files])
    lin = {}  # module path -> {"linear", "compressed", "dense", "bias"}
    other = {}  # module path -> slot -> {leaf: tensor}
    refused = []
    for slot, f in enumerate(files):
        compute, _ = plan(f, tensors, allow_new=False)
        for n in compute:
            e = f.entries[n]
            if e["kind"] == KIND_REMOVED or e["kind"] == KIND_SAME and _same_dtype(e, tensors[n]):
                continue  # removed ones are refused below
            t = tensors[n]
            dev = device if device is not None else t.device
            mod_path = n.rpartition(".")[0]
            owners = [linear_owner(model, a) for a in groups[n]]
            if kept_compressed(e) and owners[0][1] is not None and len(groups[n]) == 1:
                rec = lin.setdefault(mod_path, {"linear": owners[0][1], "compressed": {}, "dense": {}, "bias": {}})
                rec["compressed"][slot] = compressed_delta(f, n, dev)
                continue
            ft = finetuned_tensor(f, n, t, dev, check=False)
            if ft.shape != t.shape:
                refused.append(f"{n} (slot {slot}: shape {list(t.shape)} -> {list(ft.shape)})")
                continue
            for alias in groups[n]:  # a tied weight: the Linear side and the other side each get their share
                a_path, _, a_leaf = alias.rpartition(".")
                a_mod = model.get_submodule(a_path) if a_path else model
                if isinstance(a_mod, nn.Linear) and a_leaf in ("weight", "bias"):
                    rec = lin.setdefault(a_path, {"linear": a_mod, "compressed": {}, "dense": {}, "bias": {}})
                    rec["dense" if a_leaf == "weight" else "bias"][slot] = ft.float() - t.to(ft.device).float()
                elif _row_safe(a_mod):
                    other.setdefault(a_path, {}).setdefault(slot, {})[a_leaf] = ft.to(t.dtype)
                else:
                    refused.append(f"{alias} (slot {slot}: parameter of {type(a_mod).__name__}, not per-row)")
        for n, e in f.entries.items():
            if n not in tensors and e["kind"] != KIND_TIED:
                refused.append(f"{n} (slot {slot}: kind {e['kind']}, not in the base model)")
            elif n in tensors and e["kind"] == KIND_REMOVED:
                refused.append(f"{n} (slot {slot}: removed by the fine-tune)")
    if refused:
        raise BindingError("these tensors cannot be served per row from one base model (materialize those "
                           "fine-tunes instead):\n  " + "\n  ".join(refused))
    for mod_path, rec in lin.items():
        set_module(model, mod_path, MultiDeltaLinear(rec["linear"], state, rec["compressed"], rec["dense"],
                                                     rec["bias"]))
    hooks = [RowOverride(model.get_submodule(p), state, ov) for p, ov in other.items()]
    model._ddq_delta_state = state
    model._ddq_row_overrides = hooks
    return state


def _same_dtype(entry, t) -> bool:
    from .apply import TORCH_DTYPES
    return TORCH_DTYPES[entry["dtype"]] == t.dtype


def set_delta_index(model: nn.Module, index) -> None:
    """Which delta each batch row uses: LongTensor [B] (or one per token), -1 = base; None = all base."""
    state = getattr(model, "_ddq_delta_state", None)
    if state is None:
        raise UsageError("no deltas attached to this model (call attach_deltas first)")
    if index is not None:
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or (index.numel() and (int(index.min()) < -1 or int(index.max()) >= state.n)):
            raise UsageError(f"delta index must be 1-D with values in -1..{state.n - 1}, got {index.tolist()}")
    state.index = index


@contextlib.contextmanager
def use_deltas(model: nn.Module, index):
    """with use_deltas(model, [0, -1, 2]): out = model(ids)  — the index is cleared on exit."""
    set_delta_index(model, index)
    try:
        yield model
    finally:
        set_delta_index(model, None)


def resident_delta_bytes(model: nn.Module) -> int:
    """Bytes the attached deltas keep resident (compressed buffers, dense linear deltas, bias tables,
    per-row parameter overrides)."""
    n = sum(m.delta_nbytes for m in model.modules() if isinstance(m, MultiDeltaLinear))
    return n + sum(h.nbytes for h in getattr(model, "_ddq_row_overrides", []))
