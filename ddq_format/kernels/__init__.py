"""GPU kernels for compressed deltas (Triton) with pure-torch reference paths and a dispatch.

torch is required here; `import ddq_format` never imports this subpackage. Triton is imported only when
the Triton backend runs.
"""
from .delta import KERNEL_ENCODINGS, CompressedDelta, decode_dense, multi_delta_matmul
from .dispatch import BACKENDS, choose

__all__ = ["CompressedDelta", "decode_dense", "multi_delta_matmul", "BACKENDS", "choose", "KERNEL_ENCODINGS"]
