"""Shared tiny model pairs for the converter tests (built once per session)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `from tests.tiny_models import make_pair` without installing the repo
    sys.path.insert(0, str(ROOT))

from tests.tiny_models import make_pair  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    cache = {}

    def get(key, arch="llama", **kw):
        if key not in cache:
            cache[key] = make_pair(root, arch, **kw)
        return cache[key]
    return get


@pytest.fixture(scope="session")
def llama(models):
    return models("llama", "llama")


@pytest.fixture(scope="session")
def quiet_convert():
    """convert() without progress bar or printing."""
    from ddq_format.converters import convert

    def run(base, ft, out, **kw):
        return convert(base, ft, out, progress=False, quiet=True, **kw)
    return run
