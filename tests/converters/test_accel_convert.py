"""The converter on the numba path against the numpy path: identical output bytes, and NaN/inf in a linear
weight is a clear error on both (issue 12, fault 3). Skipped when numba is not installed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddq_format import accel

pytest.importorskip("numba")
from tests.test_accel import both  # noqa: E402


def _convert(pair, out, **kw):
    from ddq_format.converters import convert
    convert(*pair, out, progress=False, quiet=True, print_summary=False, **kw)
    return Path(out).read_bytes()


CONVERTS = [dict(encoding="seeded", alpha=8, bits=4, group_size=24), dict(encoding="seeded_rans", ratio=32),
            dict(encoding="csr_parts", ratio=128), dict(method="dare", alpha=4),
            dict(method="bitdelta", alpha=4, group_size=16, embeddings="compressed"),
            dict(encoding="seeded", alpha=4, bits=4, group_size=32, seed_trials=2)]


@pytest.mark.parametrize("kw", CONVERTS, ids=lambda kw: json.dumps(kw, sort_keys=True))
def test_convert_bytes_identical(models, tmp_path, kw):
    pair = models("llama-bf16", "llama", dtype="bfloat16")
    a, b = both(_convert, pair, tmp_path / "x.ddq", workers=2, **kw)
    assert a == b


# -- non-finite linear weights (issue 12, fault 3) ---------------------------------------------------
def _poison(src: Path, dst: Path, name: str, index: int, value: float):
    """A copy of a bf16 checkpoint folder with one element of `name` set to `value`."""
    import shutil
    from ddq_format.converters.checkpoint import Checkpoint
    from ddq_format.encodings.raw import to_bf16_bits
    shutil.copytree(src, dst)
    info = Checkpoint(dst).tensors[name]
    assert info.dtype == "BF16"
    with open(info.source, "r+b") as f:
        f.seek(info.offset + 2 * index)
        f.write(to_bf16_bits(np.array([value], np.float32)).tobytes())
    return dst


@pytest.mark.parametrize("backend", accel.BACKENDS)
@pytest.mark.parametrize("which", ["ft", "base"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_linear_weight_is_a_usage_error(models, tmp_path, backend, which, value):
    from ddq_format.converters import convert
    from ddq_format.errors import UsageError
    base, ft = models("llama-bf16", "llama", dtype="bfloat16")
    name = "model.layers.1.mlp.down_proj.weight"
    # element 1 of row 0: whatever the seed, most elements are dropped; the test must not depend on it
    if which == "ft":
        ft = _poison(ft, tmp_path / "ft", name, 1, value)
    else:
        base = _poison(base, tmp_path / "base", name, 1, value)
    for kw in (dict(encoding="seeded", ratio=32), dict(method="dare", alpha=4)):
        with accel.use(backend), pytest.raises(UsageError) as e:
            convert(base, ft, tmp_path / "x.ddq", progress=False, quiet=True, print_summary=False, **kw)
        err = e.value
        assert err.tensor == name and err.field == "values"
        assert err.reason.startswith("non-finite values (NaN or inf)")
        assert Path(err.path).parent == Path(base if which == "base" else ft)
        assert not (tmp_path / "x.ddq").exists()
