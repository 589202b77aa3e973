""".ddq files as vLLM LoRA adapters: the worker-side adapter manager subclasses (imports vLLM).

vLLM keeps its LoRA bookkeeping: adapter ids, `max_loras` device slots, `max_cpu_loras` host cache, LRU
order, pinning, add/remove through its API. The subclasses change four things:

- `_load_adapter`: a LoRARequest whose path ends in .ddq becomes a `DDQAdapter` (an empty LoRAModel that
  carries the delta, built in host memory for this rank) instead of a PEFT folder;
- `_add_adapter`: a DDQAdapter skips LoRA's weight packing;
- `activate_adapter` / `_deactivate_adapter`: when vLLM gives an adapter a device slot, or takes it away,
  the delta is moved into, or dropped from, that slot of every layer's delta table (layers.py). Its LoRA
  slot is zero (vLLM resets LoRA weights the adapter does not have), so only the delta acts.
"""
from __future__ import annotations

import functools
import logging
import os

from ...errors import DDQError, UsageError
from ...reader import DDQFile
from . import compat
from .base import BaseCheckpoint, local_folder
from .layers import ModelPlan
from .payload import EMBEDDING, NORM, build

logger = logging.getLogger("vllm.ddq")

EAGER_MESSAGE = ("serving .ddq deltas per request needs eager execution (LLM(..., enforce_eager=True) or "
                 "--enforce-eager): a captured CUDA graph or compiled model would not apply them")


def require_eager(model_config) -> None:
    if not getattr(model_config, "enforce_eager", False):
        raise UsageError(EAGER_MESSAGE)


class ModelDeltas:
    """The delta side of one LoRA model manager: the plan, the base checkpoint, loading and slotting."""

    def __init__(self, manager, vllm_config):
        self.vllm_config = vllm_config
        self.plan = ModelPlan(manager)
        self.device = manager.device
        self._base = None
        self.resident: dict[int, int] = {}  # slot -> resident device bytes of the delta in it

    @property
    def base(self) -> BaseCheckpoint:
        if self._base is None:
            mc = self.vllm_config.model_config
            self._base = BaseCheckpoint(local_folder(mc.model, getattr(mc, "revision", None)))
        return self._base

    def load(self, lora_request, adapter_cls):
        """The DDQAdapter of a LoRARequest naming a .ddq file, in host memory; errors name file and tensor."""
        compat.require_supported()
        require_eager(self.vllm_config.model_config)
        path = os.path.abspath(os.path.expanduser(lora_request.lora_path))
        if not os.path.isfile(path):
            from vllm.exceptions import LoRAAdapterNotFoundError
            raise LoRAAdapterNotFoundError(lora_request.lora_name, lora_request.lora_path)
        with DDQFile(path) as ddq:
            self.base.check(ddq)
            deltas, nbytes = build(ddq, self.plan, self.base)
        self.check_shapes(path, deltas)
        logger.info("ddq: loaded %s (%s, LoRA id %d): %d layers, %d resident bytes per device slot (file %d "
                    "bytes)", lora_request.lora_name, path, lora_request.lora_int_id, len(deltas), nbytes,
                    os.path.getsize(path))
        return adapter_cls(lora_request.lora_int_id, lora_request.lora_name, path, deltas, nbytes)

    def check_shapes(self, path, deltas) -> None:
        for module_name, m in deltas.items():
            slots = self.plan.layers[module_name].ddq_slots
            try:
                if hasattr(slots, "check"):
                    slots.check(m.weights, m.bias)
                elif m.row is not None and tuple(m.row.shape)[0] != self._row_count(module_name):
                    raise ValueError(f"has {tuple(m.row.shape)[0]} rows on this rank, the layer "
                                     f"{self._row_count(module_name)}")
            except ValueError as e:
                raise UsageError(f"does not fit the engine's layer {module_name}: {e}", path=path,
                                 tensor=m.names[0]) from None

    def _row_count(self, module_name) -> int:
        layer = self.plan.layers[module_name]
        return getattr(layer, "ddq_rows", None) or layer.weight.numel()  # embedding: its vocab rows; norm

    def put(self, slot: int, adapter) -> None:
        """Move the adapter's deltas into device slot `slot` of every layer (None: a PEFT adapter)."""
        self.clear(slot)
        if adapter is None:
            self.plan.peft.slots.add(slot)
            return
        moved: dict[int, object] = {}

        def dev(d):  # one device copy per host object: tied tensors stay shared
            if id(d) not in moved:
                moved[id(d)] = d.to(self.device)
            return moved[id(d)]

        for module_name, m in adapter.deltas.items():
            layer = self.plan.layers[module_name]
            role = self.plan.role[module_name]
            if role == EMBEDDING:
                layer.ddq_slots.set(slot, dev(m.row))
            elif role == NORM:
                w = layer.weight  # the fine-tuned weight, computed as materialize does: fp32, then cast
                layer.ddq_slots.set(slot, (w.float() + dev(m.row).to(w.device)).to(w.dtype))
            else:
                layer.ddq_slots.set(slot, {i: dev(d) for i, d in m.weights.items()},
                                    {i: dev(b) for i, b in m.bias.items()})
        self.resident[slot] = adapter.nbytes

    def clear(self, slot: int) -> None:
        for layer in self.plan.layers.values():
            layer.ddq_slots.clear(slot)
        self.resident.pop(slot, None)
        self.plan.peft.slots.discard(slot)

    def clear_all(self) -> None:
        for slot in range(self.plan.n):
            self.clear(slot)


@functools.cache
def classes():
    """(DDQAdapter, DDQLoRAModelManager, DDQWorkerLoRAManager), built on first use (imports vLLM)."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.model_manager import LRUCacheLoRAModelManager
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager

    class DDQAdapter(LoRAModel):
        """A .ddq delta registered as a LoRA adapter: no LoRA weights, the deltas for this rank."""

        def __init__(self, lora_id: int, name: str, path: str, deltas: dict, nbytes: int):
            super().__init__(lora_id, rank=1, loras={})
            self.name, self.path, self.deltas, self.nbytes = name, path, deltas, nbytes

        def clone(self, lora_model_id: int):
            return DDQAdapter(lora_model_id, self.name, self.path, self.deltas, self.nbytes)

    class DDQLoRAModelManager(LRUCacheLoRAModelManager):
        def __init__(self, *args, **kwargs):
            self._ddq_vllm_config = kwargs.get("vllm_config")
            super().__init__(*args, **kwargs)

        def _create_lora_modules(self):
            super()._create_lora_modules()
            self.ddq = ModelDeltas(self, self._ddq_vllm_config)

        def _add_adapter(self, lora):
            if isinstance(lora, DDQAdapter):
                self._registered_adapters[lora.id] = lora
            else:
                super()._add_adapter(lora)

        def activate_adapter(self, lora_id: int) -> bool:
            changed = super().activate_adapter(lora_id)
            if changed:
                adapter = self.get_adapter(lora_id)
                self.ddq.put(self.lora_index_to_id.index(lora_id),
                             adapter if isinstance(adapter, DDQAdapter) else None)
            return changed

        def _deactivate_adapter(self, lora_id: int):
            if lora_id in self.lora_index_to_id:
                self.ddq.clear(self.lora_index_to_id.index(lora_id))
            super()._deactivate_adapter(lora_id)

        def remove_all_adapters(self):
            super().remove_all_adapters()
            self.ddq.clear_all()

    class DDQWorkerLoRAManager(LRUCacheWorkerLoRAManager):
        _manager_cls = DDQLoRAModelManager

        def _load_adapter(self, lora_request):
            if compat.is_ddq_path(lora_request.lora_path):
                return self._adapter_manager.ddq.load(lora_request, DDQAdapter)
            return super()._load_adapter(lora_request)

    return DDQAdapter, DDQLoRAModelManager, DDQWorkerLoRAManager


def resident_bytes(worker) -> dict:
    """{slot: resident delta bytes} on one worker (for tests and the benchmark, via collective_rpc)."""
    manager = getattr(getattr(worker, "model_runner", None), "lora_manager", None)
    am = getattr(manager, "_adapter_manager", None)
    if am is None or not hasattr(am, "ddq"):
        raise DDQError("this worker has no ddq LoRA manager (start vLLM with enable_lora=True)")
    return {"slots": dict(am.ddq.resident), "ids": list(am.lora_index_to_id)}
