"""accel._threads: when the threaded kernels may run, and on how many threads (a cap from the
environment; never in a forked child of a process whose GNU OpenMP threads are started)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ddq_format import accel

pytestmark = pytest.mark.skipif(not accel.available(), reason="numba is not installed")


def test_thread_count_capped(monkeypatch):
    from ddq_format.accel import _threads
    import numba
    pool = _threads.usable(1 << 20)
    assert pool in (1, numba.config.NUMBA_NUM_THREADS)
    assert _threads.usable(1) == 1
    monkeypatch.setenv(accel.THREADS_ENV, "1")
    assert _threads.usable(8) == 1
    monkeypatch.setenv(accel.THREADS_ENV, "not a number")
    assert _threads.usable(8) == min(8, pool)


def test_forked_child_runs_single_threaded(tmp_path):
    """After the parent started GNU OpenMP's threads, a forked child's first parallel launch would abort the
    child: it runs the kernels single-threaded instead (and its products are the parent's bits)."""
    from ddq_format.accel import _kernels, _threads
    if _threads.usable(2) < 2 or _threads._layer() != "omp":
        pytest.skip(f"the threading layer here is {_threads._layer()}, not OpenMP")
    rng = np.random.default_rng(0)
    n = 3000  # a one-part table of a dense-ish seeded delta: 3000 x 64, every element kept (alpha 1)
    codes = rng.integers(0, 256, n * 64, dtype=np.uint8)
    parts = np.zeros((1, _kernels.P_FIELDS), np.int64)
    parts[0, [_kernels.P_LIST, _kernels.P_BITS, _kernels.P_ROWS, _kernels.P_COLS, _kernels.P_GROUP,
              _kernels.P_ALPHA]] = (-1, 8, n, 64, 64, 1)
    from ddq_format.accel import _numba
    args = (_numba.product_table([codes]), parts, np.array([0.01]), np.array([0, 1], np.int64),
            np.array([[0, 0, 2]], np.int64), np.arange(2), rng.standard_normal((2, 64)).astype(np.float32))
    want = _numba.seeded_products_multi(*args, np.zeros((2, n), np.float32), threads=2)
    pid = os.fork()
    if pid == 0:  # the child: never raise into pytest's machinery
        ok = False
        try:
            got = _numba.seeded_products_multi(*args, np.zeros((2, n), np.float32), threads=2)
            ok = _threads.usable(2) == 1 and np.array_equal(got, want)
        finally:
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"
