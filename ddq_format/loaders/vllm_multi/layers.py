"""The layers that apply deltas per request inside vLLM's LoRA-wrapped model (imports vLLM).

vLLM's LoRA manager has already wrapped every linear layer (BaseLinearLayerWithLoRA subclasses), the
input embedding (VocabParallelEmbeddingWithLoRA) and the logits processor (LogitsProcessorWithLoRA, under
the name "lm_head"), and keeps each row's slot in its punica wrapper. `ModelPlan` gives each of those
modules, and each RMSNorm, a delta table (deltas.py) by swapping its class for a subclass that adds the
delta of each row's slot after vLLM's own computation (base, then LoRA):

- linear: in `apply`, on the rank-local input and output, i.e. before a row-parallel layer's all-reduce;
- embedding: after the lookup, this rank's vocabulary range only, all-reduced like the base lookup;
- lm_head: in `_get_logits`, this rank's vocabulary rows, gathered like the base logits;
- norm: the rows of a slot whose delta changes the norm weight are recomputed with the fine-tuned weight.

Each step's rows are grouped by slot once (deltas.StepIndex, one per punica wrapper, reset when vLLM
updates the wrapper's indices) and shared by every layer: the linear layers and lm_head run the grouped
kernels without a host sync, norms select per row without one; embedding rows and dense deltas cost one
device-to-host copy per step.

`ModelPlan(manager)` also maps every checkpoint tensor name to where it is applied on this rank (payload.
Target), with the rows/columns of the rank's shard taken from vLLM's own LoRA slicing (slice_lora_b for
column-parallel output rows, the rank's input range for row-parallel layers, the vocab shard indices).
"""
from __future__ import annotations

import numpy as np
import torch

from .deltas import LinearSlots, NormSlots, PeftSlots, RowSlots, StepIndex, fit_index
from .payload import EMBEDDING, LINEAR, LM_HEAD, NORM, SKIP, Target

_CLASSES: dict = {}


def swap_class(module, mixin) -> None:
    """Give `module` the behaviour of `mixin` on top of its own class (same name, same isinstance)."""
    cls = type(module)
    if issubclass(cls, mixin):
        return
    new = _CLASSES.get((cls, mixin))
    if new is None:
        new = type(cls.__name__, (mixin, cls), {"__module__": cls.__module__,
                                                "__qualname__": f"{cls.__qualname__}[ddq]"})
        _CLASSES[(cls, mixin)] = new
    module.__class__ = new


def ranges(index: torch.Tensor) -> tuple:
    """Sorted-or-not int indices as a tuple of (start, stop) runs (compact, hashable)."""
    idx = index.reshape(-1).to(torch.int64).tolist()
    out = []
    for i in idx:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return tuple((a, b) for a, b in out)


def step_index(punica, n_slots: int) -> StepIndex:
    """The StepIndex of a punica wrapper, reset whenever vLLM updates the wrapper's per-row slot indices
    (update_metadata, once per step whose batch changed)."""
    step = punica.__dict__.get("ddq_step")
    if step is None:
        step = punica.ddq_step = StepIndex(n_slots)
        update = punica.update_metadata

        def update_metadata(*args, **kwargs):
            try:
                return update(*args, **kwargs)
            finally:
                step.bump()
        punica.update_metadata = update_metadata
    return step


def _rows(punica, n: int, n_slots: int, kind: str = "tokens"):
    """(slot per row fitted to n rows, the step's segments of it)."""
    idx = fit_index(punica.token_lora_indices if kind == "tokens" else punica.sampler_indices, n)
    return idx, step_index(punica, n_slots).segments(idx, kind)


# -- the mixins -----------------------------------------------------------------------------------------
class LinearDeltas:
    """y = (vLLM's base + LoRA) + x·ΔWᵀ of each row's slot, rank-local."""

    def apply(self, x, bias=None):
        if self.ddq_peft.active:
            out = super().apply(x, bias)
        else:  # every LoRA slot is zero: the base layer alone (what vLLM's LoRA path computes first)
            out = self.base_layer.quant_method.apply(self.base_layer, x, bias)
        slots = self.ddq_slots
        if slots.empty:
            return out
        x2, y2 = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
        idx, seg = _rows(self.punica_wrapper, x2.shape[0], slots.n)
        # a row-parallel layer adds its bias on rank 0 only, before the all-reduce: so does the bias delta
        y2 = slots.apply(x2, y2, idx, with_bias=self.ddq_bias_here, segments=seg)
        return y2.reshape(out.shape)


class EmbeddingDeltas:
    def forward(self, x):
        wrapped = getattr(self, "base_layer", None)  # vLLM's LoRA embedding, or the plain one (Qwen2)
        out = super().forward(x) if wrapped is None or self.ddq_peft.active else wrapped.forward(x)
        slots = self.ddq_slots
        if slots.empty:
            return out
        tokens = x.reshape(-1)
        idx, seg = _rows(self.ddq_punica, tokens.numel(), slots.n)
        add = slots.embedding_add(tokens, idx, out.shape[-1], self.ddq_vocab_start, segments=seg)
        if add is None:  # the same on every rank: they all see the same batch
            return out
        if self.ddq_tp > 1:
            from vllm.distributed import tensor_model_parallel_all_reduce
            add = tensor_model_parallel_all_reduce(add)
        return (out.reshape(-1, out.shape[-1]) + add.to(out.dtype)).view_as(out)


class LogitsDeltas:
    """On vLLM's LogitsProcessorWithLoRA, or on the plain LogitsProcessor when LoRA leaves lm_head alone."""

    def _get_logits(self, hidden_states, lm_head, *args, **kwargs):
        base = getattr(self, "base_layer", None)
        if base is None or self.ddq_peft.active or self.ddq_tp > 1:
            logits = super()._get_logits(hidden_states, lm_head, *args, **kwargs)
        else:  # no LoRA weight in any slot: the base processor's logits (TP > 1 keeps vLLM's vocab mapping)
            logits = base._get_logits(hidden_states, getattr(lm_head, "base_layer", lm_head), *args, **kwargs)
        slots = self.ddq_slots
        if slots.empty:
            return logits
        h = hidden_states.reshape(-1, hidden_states.shape[-1])
        idx, seg = _rows(self.ddq_punica, h.shape[0], slots.n, "sampler")
        local = torch.zeros(h.shape[0], self.ddq_local_width, dtype=torch.float32, device=h.device)
        slots.apply(h, local[:, :slots.out_features], idx, segments=seg)
        if kwargs.get("skip_gather", args[1] if len(args) > 1 else False):  # the caller gathers
            return logits + local.to(logits.dtype)
        # gathered like the base logits (None on ranks > 0 when vLLM gathers to rank 0)
        full = getattr(self, "base_layer", self)._gather_logits(local) if self.ddq_tp > 1 else local
        if logits is None or full is None:
            return logits
        mapping = getattr(self, "sharded_to_full_mapping_gpu", None)
        if mapping is not None:
            full = full[:, mapping]
        return logits + full[:, : logits.shape[-1]].to(logits.dtype)


def rms_rows(module, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """RMSNorm of rows h with another weight, as vLLM's native path computes it."""
    hf = h.to(torch.float32)
    n = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    if module.ddq_gemma:  # GemmaRMSNorm: x * (1 + w), multiplied in float32
        return (n * (1.0 + weight.to(torch.float32))).to(h.dtype)
    return n.to(h.dtype) * weight


def native_rms(module, x: torch.Tensor, residual, weight: torch.Tensor):
    """vLLM's native (fused add +) RMSNorm, the one vLLM's CPU build runs, with a weight per row: rows whose
    weight is the base's get exactly vLLM's output (tests/test_vllm_multi.py checks it on the engine)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    if residual is not None:
        h = h + residual.to(torch.float32)
    n = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
    y = (n.to(weight.dtype) * weight).to(dtype)
    return y if residual is None else (y, h.to(dtype))


class NormDeltas:
    """Rows of a slot whose delta changes this norm's weight get the norm with the fine-tuned weight. On CPU
    (RMSNorm, whose vLLM path there is the native formula) every row is normalized once with its slot's
    weight (NormSlots.table; the base's for the others). Elsewhere vLLM's output is kept and every row is
    normalized again with its slot's weight and selected where its slot has one: an elementwise pass, no
    host sync, and other rows keep vLLM's output exactly."""

    def forward(self, x, residual=None):
        slots = self.ddq_slots
        if slots.empty:
            return super().forward(x, residual)
        idx = step_index(self.ddq_punica, slots.n).table_rows(fit_index(self.ddq_punica.token_lora_indices,
                                                                        x.shape[0]))
        if x.device.type == "cpu" and not self.ddq_gemma:
            return native_rms(self, x, residual, slots.table[idx])
        h = x.clone() if residual is None else None  # fused kernels may write in place
        out = super().forward(x, residual)
        y = out if residual is None else out[0]
        h = h if residual is None else out[1]  # x + residual: the fused path's normalized input
        y.copy_(torch.where(slots.has[idx][:, None], rms_rows(self, h, slots.table[idx]), y))
        return out


# -- the plan: which module takes which checkpoint tensor, and this rank's shard of it ------------------
class ModelPlan:
    """Delta tables for every wrapped module of one LoRA manager, and checkpoint name -> [Target]."""

    def __init__(self, manager):
        self.n = manager.lora_slots
        self.peft = PeftSlots()  # shared by every wrapped module
        self.layers: dict[str, torch.nn.Module] = {}
        self.role: dict[str, str] = {}
        self.targets: dict[str, list[Target]] = {}
        self.embedding = self.lm_head = None
        mapper = getattr(manager.model, "hf_to_vllm_mapper", None)
        self.mapper = mapper.get_rename_mapper() if hasattr(mapper, "get_rename_mapper") else mapper
        wrapped = self._wrapped(manager)
        self._unwrapped(manager, wrapped)
        self._tie_lm_head()

    def _wrapped(self, manager) -> set:
        """The modules vLLM's LoRA wrapped: linear layers, and the embedding and lm_head where the model
        declares them LoRA embedding modules. Returns the ids of the layers they wrap."""
        from vllm.lora.layers import LogitsProcessorWithLoRA, VocabParallelEmbeddingWithLoRA
        from vllm.lora.layers.base_linear import BaseLinearLayerWithLoRA
        wrapped = set()
        for name, module in manager.modules.items():
            wrapped.add(id(getattr(module, "base_layer", module)))
            punica = manager._get_punica_wrapper(name)
            if isinstance(module, BaseLinearLayerWithLoRA):
                self._linear(manager, name, module)
            elif isinstance(module, VocabParallelEmbeddingWithLoRA):
                self._embedding(name, module, module.base_layer, punica)
            elif isinstance(module, LogitsProcessorWithLoRA):
                self._lm_head(name, module, manager.model.get_submodule(name), punica)
        return wrapped

    def _unwrapped(self, manager, wrapped: set) -> None:
        """What LoRA leaves alone: RMSNorms always; the embedding and lm_head of models without LoRA
        embedding modules (Qwen2, ...). Modules of a multimodal tower LoRA does not serve are skipped."""
        from vllm.model_executor.layers.layernorm import GemmaRMSNorm, RMSNorm
        from vllm.model_executor.layers.logits_processor import LogitsProcessor
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
        model = manager.model
        for name, module in model.named_modules():
            punica = manager._get_punica_wrapper(name) if id(module) not in wrapped else None
            if punica is None:
                continue
            if isinstance(module, (RMSNorm, GemmaRMSNorm)) and isinstance(getattr(module, "weight", None),
                                                                       torch.nn.Parameter) \
                    and getattr(module, "variance_size_override", None) is None:
                swap_class(module, NormDeltas)
                module.ddq_slots, module.ddq_punica = NormSlots(self.n, module.weight), punica
                module.ddq_gemma = isinstance(module, GemmaRMSNorm)
                self._add(name, module, name + ".weight", Target(name, NORM))
            elif isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead) \
                    and self.embedding is None:
                self._embedding(name, module, module, punica)
        head, proc = getattr(model, "lm_head", None), getattr(model, "logits_processor", None)
        punica = manager._get_punica_wrapper("lm_head")
        if self.lm_head is None and isinstance(head, ParallelLMHead) and isinstance(proc, LogitsProcessor) \
                and punica is not None:
            self._lm_head("lm_head", proc, head, punica)

    def _add(self, module_name, module, tensor: str, target: Target) -> None:
        module.ddq_peft = self.peft
        self.layers[module_name] = module
        self.role[module_name] = target.role
        self.targets.setdefault(tensor, []).append(target)

    def __call__(self, name: str) -> list[Target]:
        """Where checkpoint tensor `name` is applied on this rank ([] if nowhere)."""
        if self.mapper is not None:
            mapped = self.mapper._map_name(name)
            if mapped is None:  # vLLM drops this checkpoint tensor: so does the delta
                return [Target("", SKIP)]
            name = mapped
        return self.targets.get(name, [])

    def _linear(self, manager, name, module) -> None:
        from vllm.model_executor.layers.linear import ColumnParallelLinear, RowParallelLinear
        base = module.base_layer
        # a row-parallel layer's rank-local output is the full output (partial sums), whatever LoRA slices
        sizes = [base.output_size] if isinstance(base, RowParallelLinear) else list(module.output_slices)
        offsets = np.cumsum([0] + sizes[:-1]).tolist()
        subs = manager.packed_modules.get(name, [name])
        if len(subs) != len(sizes):  # a packed layer whose adapter groups do not map 1:1 to slices
            return
        tp, rank = getattr(module, "tp_size", 1), getattr(module, "tp_rank", 0)
        swap_class(module, LinearDeltas)
        module.ddq_slots = LinearSlots(self.n, list(zip(offsets, sizes)), module.input_size)
        module.ddq_bias_here = not (isinstance(base, RowParallelLinear) and rank > 0)
        rows = [None] * len(subs)
        cols = None
        if tp > 1 and isinstance(base, RowParallelLinear):
            cols = (rank * module.input_size, (rank + 1) * module.input_size)
        elif tp > 1 and isinstance(base, ColumnParallelLinear):
            rows = column_rows(module, len(subs))
        for i, sub in enumerate(subs):
            self._add(name, module, sub + ".weight", Target(name, LINEAR, "weight", i, rows[i], cols))
            self._add(name, module, sub + ".bias", Target(name, LINEAR, "bias", i, rows[i]))

    def _embedding(self, name, module, base, punica) -> None:
        swap_class(module, EmbeddingDeltas)
        module.ddq_slots, module.ddq_punica = RowSlots(self.n), punica
        module.ddq_tp = getattr(base, "tp_size", 1)
        si = base.shard_indices
        module.ddq_vocab_start = si.org_vocab_start_index
        module.ddq_rows = si.org_vocab_end_index - si.org_vocab_start_index
        rows = ((si.org_vocab_start_index, si.org_vocab_end_index),) if module.ddq_tp > 1 else None
        self._add(name, module, name + ".weight", Target(name, EMBEDDING, rows=rows))
        self.embedding = (name, base)

    def _lm_head(self, name, proc, head, punica) -> None:
        """proc: the logits processor (LoRA-wrapped or not) that projects with `head` (a ParallelLMHead)."""
        si = head.shard_indices
        swap_class(proc, LogitsDeltas)
        proc.ddq_slots = LinearSlots(self.n, [(0, si.org_vocab_end_index - si.org_vocab_start_index)],
                                     head.embedding_dim)
        proc.ddq_punica, proc.ddq_tp = punica, getattr(head, "tp_size", 1)
        proc.ddq_local_width = head.num_embeddings_per_partition
        rows = ((si.org_vocab_start_index, si.org_vocab_end_index),) if proc.ddq_tp > 1 else None
        self._add(name, proc, name + ".weight", Target(name, LM_HEAD, rows=rows))
        self.lm_head = (name, head, rows)

    def _tie_lm_head(self) -> None:
        """A model whose lm_head shares the input embedding's weight gets the embedding's delta in the
        logits too (its checkpoint has no lm_head tensor, or one tied to the embedding)."""
        if self.embedding is None or self.lm_head is None:
            return
        (emb, emb_module), (name, head, rows) = self.embedding, self.lm_head
        if head is emb_module or getattr(head, "weight", None) is getattr(emb_module, "weight", 0):
            self.targets[emb + ".weight"].append(Target(name, LM_HEAD, rows=rows))


def column_rows(module, n_slices: int) -> list[tuple]:
    """The rows of each slice's full weight this rank keeps, read off vLLM's own LoRA-B slicing."""
    if n_slices > 1:
        full = list(module.base_layer.output_sizes)
        index = [torch.arange(s, dtype=torch.float64)[:, None] for s in full]
        return [ranges(t) for t in module.slice_lora_b(index)]
    full = module.base_layer.output_size
    return [ranges(module.slice_lora_b(torch.arange(full, dtype=torch.float64)[:, None]))]
