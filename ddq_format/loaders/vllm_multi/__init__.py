"""Many .ddq deltas over one base in one vLLM engine, selected per request with vLLM's multi-LoRA interface.

    llm = LLM(model=BASE, enable_lora=True, max_loras=4, enforce_eager=True)
    llm.generate(prompts, params, lora_request=[LoRARequest("math", 1, "/p/math.ddq"), None, ...])
    python -m vllm.entrypoints.openai.api_server --model BASE --enable-lora --enforce-eager \
        --lora-modules math=/p/math.ddq code=/p/code.ddq      # the request's "model" picks the fine-tune

A LoRARequest whose path ends in `.ddq` is a delta; any other path is an ordinary PEFT adapter, and both
can be served by the same engine. Each delta stays compressed in device memory (kernel encodings as
stored; seeded_rans re-laid as seeded, seeded_rans_split as seeded per column class; lowrank_q/lowrank as their float32 factors; dense entries decoded
to float32); nothing is merged into the base.

vLLM internals used (read against vLLM 0.32.0 and 0.33.0; compat.SUPPORTED):
- vllm.v1.worker.lora_model_runner_mixin.LRUCacheWorkerLoRAManager: the name the model runners build
  their LoRA manager from; replaced by a subclass (manager.py) that loads .ddq paths and moves deltas
  into vLLM's slots on activate/deactivate (LRUCacheLoRAModelManager.activate_adapter,
  _deactivate_adapter, _add_adapter, remove_all_adapters, lora_index_to_id, modules, packed_modules,
  _get_punica_wrapper).
- the LoRA layer classes (vllm.lora.layers: BaseLinearLayerWithLoRA.apply, slice_lora_b,
  VocabParallelEmbeddingWithLoRA.forward, LogitsProcessorWithLoRA._get_logits) and RMSNorm/GemmaRMSNorm
  (vllm.model_executor.layers.layernorm): each wrapped instance gets a subclass adding the delta of each
  row's slot (layers.py); the slot per token / per logits row is PunicaWrapperBase.token_lora_indices /
  sampler_indices (update_metadata marks a new step). While no PEFT adapter holds a slot the wrapped
  layers call the base directly (base_layer.quant_method.apply, the embedding's base_layer.forward,
  the base LogitsProcessor._get_logits at TP=1); on CPU a norm with deltas runs vLLM's native RMSNorm
  formula (the CPU build's ir_op_priority) with a weight per row.
- vllm.v1.engine.input_processor.InputProcessor._validate_lora: wrapped to check a request's .ddq file
  before the request enters the engine (frontend.py).
"""
from __future__ import annotations

import functools
import logging

from . import compat

logger = logging.getLogger("vllm.ddq")
_installed = False


def install() -> bool:
    """Hook .ddq adapters into vLLM's LoRA path (idempotent). On an unsupported vLLM, install only a gate
    that refuses .ddq adapters with a one-line message, and return False."""
    global _installed
    if _installed:
        return True
    from vllm.v1.engine import input_processor
    if not compat.is_supported():
        from vllm.lora import worker_manager
        _wrap_validate(input_processor.InputProcessor, _refuse_unsupported)
        _wrap_load(worker_manager.WorkerLoRAManager)
        logger.warning("ddq: %s; .ddq LoRA adapters are refused", compat.message(compat.vllm_version()))
        _installed = True
        return False
    from vllm.v1.worker import lora_model_runner_mixin

    from .frontend import check_request
    from .manager import classes
    lora_model_runner_mixin.LRUCacheWorkerLoRAManager = classes()[2]
    _wrap_validate(input_processor.InputProcessor, lambda proc, req: check_request(proc.model_config, req))
    _installed = True
    return True


def _refuse_unsupported(proc, lora_request) -> None:
    if lora_request is not None and compat.is_ddq_path(lora_request.lora_path):
        compat.require_supported()


def _wrap_load(cls) -> None:
    """The worker side of the gate (adapters added through vLLM's add_lora, e.g. --lora-modules)."""
    original = getattr(cls, "_load_adapter", None)
    if original is None:
        return

    @functools.wraps(original)
    def _load_adapter(self, lora_request):
        _refuse_unsupported(self, lora_request)
        return original(self, lora_request)

    cls._load_adapter = _load_adapter


def _wrap_validate(cls, check) -> None:
    original = cls._validate_lora

    @functools.wraps(original)
    def _validate_lora(self, lora_request):
        original(self, lora_request)
        check(self, lora_request)

    cls._validate_lora = _validate_lora
