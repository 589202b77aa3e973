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

    from ddq_format.converters.methods import DEFAULT_ALPHA

    def run(base, ft, out, **kw):
        # These tests were written for the library's own settings (csr_parts, dense embeddings, the method's
        # alpha), not the recommended CONVERT_DEFAULTS that an unqualified convert() uses; pin them.
        kw.setdefault("embeddings", "dense")
        if kw.get("method", "deltadq") == "deltadq" and kw.get("ratio") is None and kw.get("target_ratio") is None:
            kw.setdefault("encoding", "csr_parts")
            kw.setdefault("alpha", DEFAULT_ALPHA["deltadq"])
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
