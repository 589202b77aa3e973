"""Shared test setup: import path, Hypothesis profile, and helpers to build real and crafted .ddq files."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # plain `pytest` from a checkout works without installing the package
    sys.path.insert(0, str(ROOT))

import os  # noqa: E402

# Triton reads TRITON_INTERPRET when it is first imported: without a GPU its kernels run in the
# interpreter on CPU tensors. Set it before any test module can import triton.
if "TRITON_INTERPRET" not in os.environ:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402


# The whole suite must stay fast on 2 shared cores: modest example counts, no deadlines (timing on a
# loaded machine is noise, not a bug).
settings.register_profile("ddq", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("ddq")

from ddq_testing import write_sample  # noqa: E402


@pytest.fixture(scope="session")
def sample_file(tmp_path_factory) -> Path:
    return write_sample(tmp_path_factory.mktemp("sample") / "sample.ddq")
