"""Whether the threaded kernels may run in this process, and on how many threads.

numba picks its threading layer once per process, when it first compiles or runs a parallel function, so
usable() must run before any threaded kernel is called. Only layers whose threads wait for work by spinning
repay a launch at decode sizes: OpenMP ~4 µs per empty launch on the 2-core VM these figures come from (TBB
spins too), numba's own workqueue wakes sleeping threads, ~40 µs, and the grouped product on it was slower
than one thread below ~1 ms of work, so with it the kernels stay single-threaded. GNU OpenMP is not fork-safe: a child forked after the parent started its threads aborts at
its first parallel launch (vLLM forks its engine processes), so a child of a process that launched here
runs the kernels single-threaded, and a layer someone else started that may be GNU OpenMP is not used.
"""
from __future__ import annotations

import os
import threading

import numba

from .. import accel

_lock = threading.Lock()
_usable: list = []


def _layer() -> str | None:
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel launch yet in this process
        return None


def _single_in_children() -> None:
    _usable[:] = [1]


def _decide() -> int:
    if numba.config.NUMBA_NUM_THREADS < 2:
        return 1
    if _layer() is not None:  # started by other code: used only when fork-safe by name
        return numba.config.NUMBA_NUM_THREADS if _layer() == "tbb" else 1
    from . import _kernels
    _kernels.threads_probe(2)  # starts the layer numba picks (NUMBA_THREADING_LAYER, else its default order)
    if _layer() == "omp":
        os.register_at_fork(after_in_child=_single_in_children)
    return numba.config.NUMBA_NUM_THREADS if _layer() in ("tbb", "omp") else 1


def usable(wanted: int) -> int:
    """Threads a threaded kernel may run on: min(wanted, numba's pool, DDQ_CPU_THREADS), or 1."""
    if not _usable:
        with _lock:
            if not _usable:
                _usable.append(_decide())
    cap = os.environ.get(accel.THREADS_ENV)
    n = min(wanted, _usable[0])
    return max(1, min(n, int(cap)) if cap and cap.isdigit() else n)
