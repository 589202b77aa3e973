"""Base-model binding (SPEC.md §Base binding): shape, dtype and a sampled fingerprint per base tensor."""
from __future__ import annotations

import zlib

import numpy as np

from .errors import BindingError
from .spec import DTYPES, FINGERPRINT_SAMPLES, FINGERPRINT_SCHEME


def sample_indices(numel: int) -> np.ndarray:
    """Element indices hashed: all of them up to FINGERPRINT_SAMPLES, else i*numel // FINGERPRINT_SAMPLES."""
    if numel <= FINGERPRINT_SAMPLES:
        return np.arange(numel, dtype=np.int64)
    return np.arange(FINGERPRINT_SAMPLES, dtype=np.int64) * numel // FINGERPRINT_SAMPLES


def fingerprint_bits(bits: np.ndarray, dtype: str) -> str:
    """Fingerprint of a tensor given as its raw element bit patterns (uint16 for F16/BF16, uint32 for F32),
    flattened in row-major order."""
    flat = np.ascontiguousarray(bits).reshape(-1)
    if flat.dtype.kind == "f":  # float arrays are reinterpreted, never value-cast (that would hash numbers)
        flat = flat.view(np.uint32 if flat.dtype.itemsize == 4 else np.uint16)
    sample = flat[sample_indices(flat.size)].astype(DTYPES[dtype].bits)
    return f"{FINGERPRINT_SCHEME}:{zlib.crc32(sample.tobytes()):08x}"


def fingerprint(array: np.ndarray, dtype: str) -> str:
    """Fingerprint of a numpy tensor converted to `dtype` (F32, F16; BF16 expects uint16 bit patterns)."""
    if dtype == "BF16":
        if array.dtype != np.uint16:
            from .encodings.raw import to_bf16_bits
            array = to_bf16_bits(np.asarray(array, np.float32))
        return fingerprint_bits(array, dtype)
    return fingerprint_bits(np.asarray(array, DTYPES[dtype].numpy).view(DTYPES[dtype].bits), dtype)


def binding(array_bits: np.ndarray, shape, dtype: str) -> dict:
    return {"shape": [int(s) for s in shape], "dtype": dtype, "fingerprint": fingerprint_bits(array_bits, dtype)}


def check_binding(recorded: dict, shape, dtype: str, fp: str | None, *, path=None, tensor=None) -> None:
    """Raise BindingError when a base tensor does not match what the delta was made against."""
    if list(shape) != list(recorded["shape"]):
        raise BindingError(f"base has shape {list(shape)}, the delta was made for {recorded['shape']}",
                           path=path, tensor=tensor, field="base.shape")
    if dtype != recorded["dtype"]:
        raise BindingError(f"base has dtype {dtype}, the delta was made for {recorded['dtype']}", path=path,
                           tensor=tensor, field="base.dtype")
    if fp is not None and fp != recorded["fingerprint"]:
        raise BindingError(f"base fingerprint {fp} differs from the recorded {recorded['fingerprint']}: "
                           "this is not the base model the delta was made from", path=path, tensor=tensor,
                           field="base.fingerprint")
