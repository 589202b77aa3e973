"""Torch loaders for .ddq deltas: materialize, apply in place, separate computation, many deltas on one base.

Importing this package does not import torch; the names below load their module on first use. No export
shares its name with a submodule: importing that submodule would bind the module over the lazy name.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "finetuned_tensor": "apply", "check_base_binding": "apply", "iter_finetuned": "apply",
    "decode_delta": "apply",
    "apply_delta": "inplace",
    "materialize": "hf_folder",
    "DeltaLinear": "separate", "patch_model": "separate",
    "MultiDeltaLinear": "multi", "attach_deltas": "multi", "set_delta_index": "multi", "use_deltas": "multi",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
