"""vLLM plugin: `load_format="ddq"` serves a base checkpoint with a .ddq delta applied at load time, and
.ddq files serve as LoRA adapters, many per engine (vllm_multi/).

    vllm.LLM(model=BASE, load_format="ddq", model_loader_extra_config={"ddq_path": "ft.ddq"})
    python -m vllm.entrypoints.openai.api_server --model BASE --load-format ddq \
        --model-loader-extra-config '{"ddq_path": "ft.ddq"}'

vLLM finds `register` through the entry point group `vllm.general_plugins` (pyproject.toml) and calls it in
every process it starts. The loader is vLLM's default loader with its weights iterator wrapped: each
(checkpoint name, base tensor) becomes the fine-tuned tensor before the model's own `load_weights`, so fused
QKV / gate-up layers and tensor-parallel sharding work as for any HF checkpoint, with no per-model code.

model_loader_extra_config keys: `ddq_path` (required), `base_load_format` (how to read the base checkpoint,
default "auto"); any other key goes to vLLM's default loader (e.g. enable_multithread_load).

vLLM is imported inside functions: vLLM loads plugins early, and `import ddq_format` must never need it.
"""
from __future__ import annotations

import functools
import os
import re

from ..errors import UsageError

LOAD_FORMAT = "ddq"
OWN_KEYS = ("ddq_path", "base_load_format")
# Tensor names that only pre-quantized checkpoints have (GPTQ/AWQ, FP8/compressed-tensors, bitsandbytes):
# a delta in full precision cannot be added to packed integer codes.
_PACKED = re.compile(r"\.(qweight|qzeros|scales|g_idx|weight_scale|weight_scale_inv|input_scale|weight_packed|"
                     r"weight_zero_point|weight_global_scale|SCB)$")

_registered = False


def register() -> None:
    """Register the "ddq" load format with vLLM, and .ddq files as LoRA adapters (vllm_multi). Called by
    vLLM through the entry point in every process it starts; calling it again does nothing (vLLM would
    otherwise log an 'overwritten' warning each time)."""
    global _registered
    if _registered:
        return
    from ..accel.llvmlite_guard import guard

    guard()  # before vLLM's CPU worker scans every module (numba may be loaded already)
    from vllm.model_executor.model_loader import register_model_loader

    register_model_loader(LOAD_FORMAT)(loader_class())
    _registered = True
    try:
        from .vllm_multi import install
        install()
    except (ImportError, AttributeError) as e:  # internals moved: the load format still works
        import logging
        logging.getLogger("vllm.ddq").warning("ddq: .ddq files cannot serve as LoRA adapters with this vLLM "
                                              "(%s: %s)", type(e).__name__, e)


def split_extra_config(extra) -> tuple[dict, dict]:
    """(our options, the rest for vLLM's default loader), with ddq_path required."""
    if not isinstance(extra, dict):
        raise UsageError(f"model_loader_extra_config must be a JSON object, got {type(extra).__name__}",
                         field="model_loader_extra_config")
    rest = dict(extra)
    own = {k: rest.pop(k) for k in OWN_KEYS if k in rest}
    if not own.get("ddq_path"):
        raise UsageError('load_format "ddq" needs model_loader_extra_config={"ddq_path": "/path/to/delta.ddq"}',
                         field="model_loader_extra_config.ddq_path")
    own["ddq_path"] = os.path.abspath(os.path.expanduser(str(own["ddq_path"])))
    if not os.path.isfile(own["ddq_path"]):
        raise UsageError("no such .ddq file", path=own["ddq_path"], field="model_loader_extra_config.ddq_path")
    own.setdefault("base_load_format", "auto")
    if own["base_load_format"] == LOAD_FORMAT:
        raise UsageError('base_load_format names how the base checkpoint is read; it cannot be "ddq"',
                         field="model_loader_extra_config.base_load_format")
    return own, rest


def refuse_prequantized(model_config, ddq_path) -> None:
    """A pre-quantized base (its config.json has a quantization_config) stores packed codes, not weights."""
    for cfg in (getattr(model_config, "hf_config", None), getattr(model_config, "hf_text_config", None)):
        qc = getattr(cfg, "quantization_config", None) or getattr(cfg, "compression_config", None)
        if qc:
            method = qc.get("quant_method", "?") if isinstance(qc, dict) else type(qc).__name__
            raise UsageError(f"the base model {model_config.model} is pre-quantized ({method}); a .ddq delta "
                             "applies to full-precision base weights only: serve the unquantized base (vLLM "
                             "can still quantize it online with --quantization)", path=ddq_path,
                             field="base.quantization_config")


def refuse_packed(items, ddq_path):
    """Pass (name, tensor) pairs through, refusing names of packed quantized weights."""
    for name, tensor in items:
        if _PACKED.search(name):
            raise UsageError("the base checkpoint holds pre-quantized (packed) weights; a .ddq delta applies to "
                             "full-precision base weights only", path=ddq_path, tensor=name)
        yield name, tensor


def check_names(ddq, base_dir) -> None:
    """Before any weight is read: the base's tensor names (safetensors headers) and the file's must agree."""
    from ..checkpoint_raw import SafetensorsCheckpoint
    from .vllm_multi.base import check_names as check_both_ways
    names = list(SafetensorsCheckpoint(base_dir).tensors)
    for _ in refuse_packed(((n, None) for n in names), ddq.path):  # raises on the first packed name
        pass
    check_both_ways(ddq, names, base_dir)


@functools.cache
def loader_class():
    """The loader class (built on first use so that importing this module does not import vLLM)."""
    import dataclasses

    from vllm.model_executor.model_loader import DefaultModelLoader

    from ..reader import DDQFile
    from .apply import iter_finetuned
    from .vllm_multi.compat import require_supported

    class DDQModelLoader(DefaultModelLoader):
        """vLLM's default loader whose weights pass through the .ddq delta on their way into the model."""

        def __init__(self, load_config):
            require_supported()
            own, rest = split_extra_config(load_config.model_loader_extra_config)
            self.ddq_path = own["ddq_path"]
            DDQFile(self.ddq_path).close()  # a bad file fails here, at engine start, not mid-load
            # The default loader reads the base with the base's own format and rejects unknown keys.
            super().__init__(dataclasses.replace(load_config, load_format=own["base_load_format"],
                                                 model_loader_extra_config=rest))

        def load_weights(self, model, model_config) -> None:
            refuse_prequantized(model_config, self.ddq_path)
            if os.path.isdir(model_config.model) and any(
                    f.endswith(".safetensors") for f in os.listdir(model_config.model)):
                with DDQFile(self.ddq_path) as ddq:
                    check_names(ddq, model_config.model)
            super().load_weights(model, model_config)

        def get_all_weights(self, model_config, model):
            if self.local_expert_ids is not None:
                raise UsageError("expert-parallel weight filtering skips expert tensors the delta needs; start "
                                 "vLLM without --enable-ep-weight-filter", path=self.ddq_path)
            # Decode where the model lives: on a GPU the delta is decoded on the device and the base tensor
            # goes there once; on CPU nothing moves.
            param = next(model.parameters(), None)
            device = param.device if param is not None and param.device.type != "cpu" else None
            ddq = DDQFile(self.ddq_path)
            try:
                base = refuse_packed(super().get_all_weights(model_config, model), self.ddq_path)
                yield from iter_finetuned(ddq, base, device)
            finally:
                ddq.close()

    return DDQModelLoader


def __getattr__(name):
    if name == "DDQModelLoader":
        return loader_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
