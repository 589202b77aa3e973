"""Base-model binding (SPEC.md §5.3): shape, dtype and a sampled fingerprint per base tensor, and optionally
(format 1.2) a full digest of every element, which `verify(..., full=True)` checks."""
from __future__ import annotations

import hashlib
import zlib

import numpy as np

from .errors import BindingError
from .spec import DIGEST_SCHEME, DTYPES, FINGERPRINT_SAMPLES, FINGERPRINT_SCHEME


def sample_indices(numel: int) -> np.ndarray:
    """Element indices hashed: all of them up to FINGERPRINT_SAMPLES, else i*numel // FINGERPRINT_SAMPLES."""
    if numel <= FINGERPRINT_SAMPLES:
        return np.arange(numel, dtype=np.int64)
    return np.arange(FINGERPRINT_SAMPLES, dtype=np.int64) * numel // FINGERPRINT_SAMPLES


def _flat_bits(bits: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(bits).reshape(-1)
    if flat.dtype.kind == "f":  # float arrays are reinterpreted, never value-cast (that would hash numbers)
        flat = flat.view(f"<u{flat.dtype.itemsize}")
    return flat


def fingerprint_bits(bits: np.ndarray, dtype: str) -> str:
    """Fingerprint of a tensor given as its raw element bit patterns (uint16 for F16/BF16, uint32 for F32),
    flattened in row-major order."""
    flat = _flat_bits(bits)
    sample = flat[sample_indices(flat.size)].astype(DTYPES[dtype].bits)
    return f"{FINGERPRINT_SCHEME}:{zlib.crc32(sample.tobytes()):08x}"


def digest_bits(bits: np.ndarray, dtype: str) -> str:
    """Full digest (SPEC.md §5.3): SHA-256 of every element's little-endian storage bits, row-major."""
    flat = np.ascontiguousarray(_flat_bits(bits), DTYPES[dtype].bits)  # no copy for an mmap view of the base
    return f"{DIGEST_SCHEME}:{hashlib.sha256(flat).hexdigest()}"


def fingerprint(array: np.ndarray, dtype: str) -> str:
    """Fingerprint of a numpy tensor converted to `dtype` (F32, F16; BF16 expects uint16 bit patterns)."""
    if dtype == "BF16":
        if array.dtype != np.uint16:
            from .encodings.raw import to_bf16_bits
            array = to_bf16_bits(np.asarray(array, np.float32))
        return fingerprint_bits(array, dtype)
    return fingerprint_bits(np.asarray(array, DTYPES[dtype].numpy).view(DTYPES[dtype].bits), dtype)


def binding(array_bits: np.ndarray, shape, dtype: str, *, digest: bool = False) -> dict:
    """The entry's `base` record; digest=True adds the full digest (the file then needs format 1.2)."""
    rec = {"shape": [int(s) for s in shape], "dtype": dtype, "fingerprint": fingerprint_bits(array_bits, dtype)}
    if digest:
        rec["digest"] = digest_bits(array_bits, dtype)
    return rec


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
