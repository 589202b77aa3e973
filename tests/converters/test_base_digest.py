"""`ddq convert --base-digest`: the file records a full SHA-256 of every bound base tensor (format 1.2), so
`ddq verify --full --base` proves the base bit-identical; without the flag no entry has a digest."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from ddq_format import open_ddq
from ddq_format.binding import sample_indices
from ddq_format.verify import verify

pytest.importorskip("torch")


def _run(args):
    from typer.testing import CliRunner

    from ddq_format.cli import app
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def test_base_digest_flag_makes_verify_full_prove_the_base(tmp_path):
    from safetensors.numpy import load_file, save_file

    from tests.tiny_models import make_pair
    base, ft = make_pair(tmp_path, "llama")
    out, plain = tmp_path / "d.ddq", tmp_path / "plain.ddq"
    assert _run(["convert", base, ft, "-o", out, "--base-digest", "-q", "--group-size", "32"])[0] == 0
    assert _run(["convert", base, ft, "-o", plain, "-q", "--group-size", "32"])[0] == 0
    assert struct.unpack_from("<HH", out.read_bytes(), 8) == (1, 2)  # the digest is the only 1.2 feature used
    assert struct.unpack_from("<HH", plain.read_bytes(), 8) == (1, 1)  # seeded_rans: a default file stays 1.1
    with open_ddq(plain) as f:
        assert all("digest" not in (e.get("base") or {}) for e in f.header["tensors"])
    assert verify(out, base, full=True) == []
    assert any("'base.digest': absent" in f for f in verify(plain, base, full=True))

    # Change one element the sampled fingerprint does not read: only the full digest sees it.
    other = tmp_path / "other"
    other.mkdir()
    for f in base.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(other / "model.safetensors"))
    name = next(n for n in weights if n.endswith("mlp.down_proj.weight"))
    w = weights[name]
    unsampled = next(i for i in range(w.size) if i not in set(sample_indices(w.size).tolist()))
    w.reshape(-1)[unsampled] = np.nextafter(w.reshape(-1)[unsampled], np.float32(np.inf))
    save_file(weights, str(other / "model.safetensors"))
    assert verify(out, other) == []
    faults = verify(out, other, full=True)
    assert len(faults) == 1 and name in faults[0] and "'base.digest'" in faults[0], faults
    code, text = _run(["verify", out, "--base", other, "--full"])
    assert code != 0 and name in text
