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


@pytest.fixture
def edited_copy(tmp_path):
    """edited_copy(src, name, drop=(), **tensors): a copy of model folder `src` at tmp_path/name, its
    model.safetensors updated with `tensors` (name -> numpy array) and files named in `drop` removed."""
    import shutil

    def make(src, name, drop=(), **tensors):
        from safetensors.numpy import load_file, save_file
        dst = tmp_path / name
        shutil.copytree(src, dst)
        if tensors:
            sd = load_file(dst / "model.safetensors")
            sd.update(tensors)
            save_file(sd, dst / "model.safetensors")
        for f in drop:
            (dst / f).unlink()
        return dst
    return make
