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

_MODULES = ("triton_common", "triton_seeded", "triton_decode", "triton_linear", "triton_rans")  # import order


@pytest.fixture(scope="session")
def triton_kernels():
    """The Triton kernel modules, interpreted on CPU (decorated again if imported before the variable)."""
    if _IMPORTED_LATE and not torch.cuda.is_available():
        pytest.fail("triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; set it in the "
                    "environment (or in the root conftest) to run the kernel tests in this process")
    mods = {m: importlib.import_module(f"ddq_format.kernels.{m}") for m in _MODULES}
    if not torch.cuda.is_available() and not type(mods["triton_decode"].seeded_rows_decode_kernel).__name__.startswith(
            "Interpreted"):
        mods = {m: importlib.reload(mods[m]) for m in _MODULES}
    return mods


@pytest.fixture
def rng(request):
    """Inputs seeded from the test's name by a stable hash (seeding.stable_rng)."""
    from seeding import stable_rng
    return stable_rng(request.node.name)
