"""GPU kernels for compressed deltas (Triton) with pure-torch reference paths, behind one dispatch table.

torch is required here; `import ddq_format` never imports this subpackage. Triton is imported only when
the Triton backend runs. Public interface (what loaders and the vLLM path call):

- supports(entry) -> bool: the entry is kept compressed on the device by these kernels.
- CompressedDelta.from_entry(entry, buffers, device, rows=None, cols=None): resident delta (.nbytes
  resident, .encoded_nbytes file bytes, .to(device), .map_buffers(fn), .to_dense(dtype), .rows(index),
  .matmul(x)); rows=(r0, r1) / cols=(c0, c1) keep only that tensor-parallel shard (kernels/shards.py).
- decode_dense(entry, buffers, device, dtype): an entry straight to a dense tensor.
- delta_linear(x, W, bias, delta): x·Wᵀ + bias + x·ΔŴᵀ (fused on the GPU for small batches).
- delta_segments(index, n) once per forward, then multi_delta_matmul(x, deltas, index, segments=...,
  add_to=y, check_index=False) per layer: y[t] += x[t]·ΔŴ_{index[t]}ᵀ (SGMV; None deltas and -1 = none);
  multi_delta_matmul_sliced(x, [(offset, deltas)], index, add_to=y, ...) for a packed layer's output slices
  (q, k, v) in one call.
- dispatch.describe(): the table of which kernel serves which encoding, device and batch.

Backends: Triton on CUDA; on CPU the numpy backend (host.py: decoded per call into a scratch that lives for
the call, the reader's mask hash run once for all seeded deltas of a call); the torch reference
(reference.py) anywhere, the oracle of both.
"""
from .delta import (KERNEL_ENCODINGS, CompressedDelta, decode_dense, delta_linear, multi_delta_matmul,
                    multi_delta_matmul_sliced, supports)
from .dispatch import BACKENDS, choose, describe
from .segments import DeltaSegments, delta_segments

__all__ = ["CompressedDelta", "decode_dense", "delta_linear", "multi_delta_matmul", "multi_delta_matmul_sliced",
           "supports", "delta_segments",
           "DeltaSegments", "BACKENDS", "choose", "describe", "KERNEL_ENCODINGS"]
