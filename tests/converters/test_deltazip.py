"""DeltaZip: SparseGPT n:m pruning with GPTQ rounding, stored as nm_q."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_format import Writer, open_ddq
from ddq_format.converters import deltazip, obs


@pytest.mark.parametrize("n,m,bits", [(2, 4, 4), (1, 8, 2), (3, 5, 3)])
def test_pattern_and_obs_beat_magnitude_rounding(tmp_path, n, m, bits):
    rng = np.random.default_rng(0)
    cols = 40
    x = rng.standard_normal((500, cols)) @ rng.standard_normal((cols, cols))
    H = x.T @ x
    D = (rng.standard_normal((24, cols)) * 1e-3).astype(np.float32)
    enc = deltazip.compress(D, H, n=n, m=m, bits=bits)
    p = tmp_path / "x.ddq"
    with Writer(p) as w:
        w.add("t", "compressed", D.shape, "F32", enc)
    got = open_ddq(p).decode("t")
    kept = np.zeros_like(got, bool)
    from ddq_format.encodings import nm_q
    cols_of = nm_q.columns(open_ddq(p).entries["t"], open_ddq(p).buffers("t"))
    np.put_along_axis(kept, cols_of, True, 1)
    assert (kept.reshape(24, -1)[:, : cols // m * m].reshape(24, -1, m).sum(-1) == n).all()
    rtn = open_ddq_decode(tmp_path, deltazip.compress(D, None, n=n, m=m, bits=bits), D.shape)
    assert obs.output_error(D - got, H) < obs.output_error(D - rtn, H)
    assert enc.params["zero"] == 1 << (bits - 1)


def open_ddq_decode(tmp_path, enc, shape):
    p = tmp_path / "rtn.ddq"
    with Writer(p) as w:
        w.add("t", "compressed", shape, "F32", enc)
    return open_ddq(p).decode("t")
