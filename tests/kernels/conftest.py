"""Kernel tests: without CUDA, the Triton kernels run under TRITON_INTERPRET=1 on CPU tensors.

Triton reads TRITON_INTERPRET when a function is decorated (its own standard library at `import triton`
too), so the variable is set here, at collection, before triton is imported."""
from __future__ import annotations

import importlib
import os
import sys

import pytest

torch = pytest.importorskip("torch")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    _IMPORTED_LATE = "triton" in sys.modules  # someone imported triton before this file could set the variable
else:
    _IMPORTED_LATE = False

pytest.importorskip("triton")


@pytest.fixture(scope="session")
def triton_kernels():
    if _IMPORTED_LATE and not torch.cuda.is_available():
        pytest.fail("triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; set it in the "
                    "environment (or in the root conftest) to run the kernel tests in this process")
    from ddq_format.kernels import triton_kernels as tk
    if not torch.cuda.is_available() and not type(tk.seeded_decode_kernel).__name__.startswith("Interpreted"):
        tk = importlib.reload(tk)  # imported before the variable was set: decorate the kernels again
    return tk
