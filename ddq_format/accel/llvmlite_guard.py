"""Keep vLLM's CPU worker start working in a process that has imported numba.

llvmlite's library wrapper answers every attribute name with a C-function wrapper, "__dict__" included.
vLLM's CPU worker start (register_triton_kernel_overrides) calls vars() on every module attribute that has a
__dict__, so it crashes (AttributeError: '_lib_fn_wrapper' object has no attribute 'get') in any process
that imported numba first: a ddq decode or conversion, then vllm.LLM(...). No C symbol is a dunder name:
refuse those, as ctypes.CDLL itself does. Applied when ddq's numba backend loads and when ddq's vLLM plugin
registers (numba may have been imported by anything before that)."""
from __future__ import annotations

import sys


def guard() -> None:
    """Patch llvmlite's library wrapper class if llvmlite is loaded; never imports it."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    if ffi is None:
        return
    cls = type(getattr(ffi, "lib", None))
    original = getattr(cls, "__getattr__", None)
    if original is None or getattr(original, "_ddq_guard", False):
        return  # another llvmlite layout, or already guarded

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return original(self, name)
    __getattr__._ddq_guard = True
    cls.__getattr__ = __getattr__
