"""Optional compiled kernels (numba) for the hot loops of decode and convert.

The numpy code in ddq_format stays the reference and the fallback: every kernel here returns the same
bytes (encode) or the same float32 bits (decode), and tests/test_accel.py compares both paths bit for bit.
numba is an optional extra (`pip install 'ddq[accel]'`); without it, or with DDQ_ACCEL=numpy in the
environment, every caller takes the numpy path. The kernels release the GIL (`nogil=True`), so threads
decoding or converting different tensors run on all cores; one is threaded itself, the grouped product of a
decode step (on torch's thread count, at most DDQ_CPU_THREADS, when the step's work repays it and numba's
threading layer allows: accel._threads).

numba is imported on the first call of `kernels()`, never when ddq_format is imported, so the reader's
import stays numpy + msgpack. Compiled kernels are cached on disk (numba's `cache=True`): the first use in
a fresh install compiles for a few seconds per kernel, later processes load them.

What it speeds up (benchmarks/results/cpu-speed.md): decode of seeded / seeded_rans / csr_parts / csr_f16 /
sign_scale (the mask regenerated and each output row filled while in cache, packed codes read in place,
rANS four streams at a time), and the converter's per-tensor work (one fused pass over the two weights'
bit patterns: finite test of every element, delta of the kept elements only, quantization, packing,
csr_parts rows, rANS streams; the dense delta of unfused methods and embeddings in one pass).
"""
from __future__ import annotations

import contextlib
import os
import threading

BACKENDS = ("numba", "numpy")
ENV = "DDQ_ACCEL"  # "numba" (default when importable) or "numpy"
THREADS_ENV = "DDQ_CPU_THREADS"  # at most this many threads for the threaded kernels (default: torch's count)

_lock = threading.Lock()
_loaded: dict = {}
_forced: list = []  # stack of backends forced by use()


def _load():
    if "numba" in _loaded:  # the lock only until the first import is done (this runs per product)
        return _loaded["numba"]
    with _lock:
        if "numba" not in _loaded:
            try:
                from . import _numba as mod
            except ImportError:  # numba (or a numba-compatible numpy) is not installed: numpy path
                mod = None
            _loaded["numba"] = mod
        return _loaded["numba"]


def backend() -> str:
    """The backend in effect: 'numba' when it is importable and not switched off, else 'numpy'."""
    want = _forced[-1] if _forced else os.environ.get(ENV, "numba").strip().lower() or "numba"
    if want not in BACKENDS:
        raise ValueError(f"{ENV}={want!r}: one of {BACKENDS}")
    if want == "numpy":
        return "numpy"
    return "numba" if _load() is not None else "numpy"


def kernels():
    """The numba kernel module, or None when the numpy path is in effect."""
    return _load() if backend() == "numba" else None


def available() -> bool:
    """numba is importable (whatever the current selection)."""
    return _load() is not None


@contextlib.contextmanager
def use(name: str):
    """Force a backend inside the block (tests compare both). Process-wide, not per thread."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: one of {BACKENDS}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()
