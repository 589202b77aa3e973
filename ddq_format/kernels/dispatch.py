"""Backend choice: Triton for CUDA tensors, the torch reference elsewhere.

`backend="triton"|"torch"` (or env DDQ_KERNEL_BACKEND) forces one; forcing Triton on CPU tensors needs
TRITON_INTERPRET=1 (that is how the CPU test suite checks the kernels).
"""
from __future__ import annotations

import os

import torch

from ..errors import UsageError
from . import reference

BACKENDS = ("triton", "torch")


def unforced(backend: str | None) -> bool:
    """No backend asked for, by argument or environment."""
    return not (backend or os.environ.get("DDQ_KERNEL_BACKEND"))


def choose(device: torch.device, backend: str | None) -> str:
    backend = backend or os.environ.get("DDQ_KERNEL_BACKEND") or None
    if backend is None:
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend not in BACKENDS:
        raise UsageError(f"unknown kernel backend {backend!r}; one of {BACKENDS}", field="backend")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UsageError("the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)", field="backend")
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _same_device(d, x):
    if x.device != d.device:
        raise UsageError(f"input on {x.device}, delta on {d.device}", tensor=d.name, field="device")


def decode(d, dtype, backend):
    if choose(d.device, backend) == "triton":
        from . import triton_kernels
        return triton_kernels.decode(d, dtype)
    return reference.decode(d).to(dtype)


def matmul(d, x, backend):
    _same_device(d, x)
    if choose(d.device, backend) == "triton":
        from . import triton_kernels
        return triton_kernels.matmul(d, x)
    return reference.matmul(d, x)


def multi_matmul(x, deltas, index, backend):
    for d in deltas:
        _same_device(d, x)
    if choose(x.device, backend) == "triton":
        from . import triton_kernels
        return triton_kernels.multi_matmul(x, deltas, index)
    return reference.multi_matmul(x, deltas, index)
