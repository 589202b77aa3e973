"""`ddq inspect` (accounting covers every byte, JSON keys) and `ddq verify` (checksums, base binding)."""
import json
import math
import zlib

import numpy as np
import pytest
from typer.testing import CliRunner

from ddq_format import Writer
from ddq_format.binding import binding
from ddq_format.cli import app
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, raw, seeded
from ddq_format.spec import PREAMBLE_SIZE

runner = CliRunner()


@pytest.fixture
def pair(tmp_path):
    """A base safetensors checkpoint and a .ddq delta bound to it."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    base = {"layers.0.q.weight": rng.standard_normal((32, 96)).astype(np.float32),
            "layers.0.k.weight": rng.standard_normal((32, 96)).astype(np.float32),
            "norm.weight": np.ones(96, np.float32)}
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    out = tmp_path / "x.ddq"
    with Writer(out, base={"architecture": "TestForCausalLM"}, algorithm={"alpha": 4, "bits": 4}) as w:
        for name, enc in (("layers.0.q.weight", "csr"), ("layers.0.k.weight", "seeded")):
            d = rng.standard_normal((32, 96)).astype(np.float32) * 0.01
            cols, vals = groupwise_dropout(d, 4, 32, 7)
            if enc == "csr":
                e = csr_parts.encode(d.shape, np.repeat(np.arange(32), cols.shape[1]), cols.ravel(), vals.ravel(),
                                     bits=4, parts=4, alpha=4, group_size=32, seed=7)
            else:
                e = seeded.encode(d.shape, vals, bits=4, alpha=4, group_size=32, seed=7)
            w.add(name, "compressed", d.shape, "F32", e,
                  base=binding(base[name].view(np.uint32), base[name].shape, "F32"))
        w.add("norm.weight", "dense", [96], "F32", raw.encode(np.full(96, 0.5, np.float32), "F16"),
              base=binding(base["norm.weight"].view(np.uint32), [96], "F32"))
        w.add_file("config.json", b'{"model_type": "test"}')
    return tmp_path / "base", out, base


def test_inspect_json_accounts_for_every_byte(pair):
    _, path, _ = pair
    res = runner.invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["format_version"] == "1.0"
    assert rep["file_bytes"] == path.stat().st_size
    assert sum(rep["totals"]["components"].values()) == rep["file_bytes"]
    assert rep["totals"]["stored_bytes"] == rep["file_bytes"]
    t = {x["name"]: x for x in rep["tensors"]}
    q = t["layers.0.q.weight"]
    assert q["encoding"] == "csr_parts" and q["kind"] == "compressed" and q["shape"] == [32, 96]
    assert q["nominal_ratio"] == pytest.approx(4 * 16 / (4 - 2))
    assert q["stored_bytes"] == sum(q["components"].values())
    assert q["true_ratio"] == pytest.approx(32 * 96 * 2 / q["stored_bytes"])
    # Every buffer byte shows up in exactly one component.
    assert q["components"]["col_indices"] == q["params"]["nnz"]  # U8 indices for 96 columns
    assert t["layers.0.k.weight"]["nominal_ratio"] == pytest.approx(16.0)
    assert t["norm.weight"]["nominal_ratio"] is None
    assert t["norm.weight"]["components"]["dense"] == 96 * 2
    assert rep["totals"]["true_ratio"] == pytest.approx(rep["totals"]["delta_fp16_bytes"] / rep["file_bytes"])
    # Harmonic combination of the two compressed tensors' nominal ratios (equal sizes): 2/(1/32 + 1/16).
    assert rep["totals"]["nominal_ratio"] == pytest.approx(2 / (1 / 32 + 1 / 16))


def test_inspect_table_shows_both_ratios(pair):
    _, path, _ = pair
    res = runner.invoke(app, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "nominal:" in res.stdout and "whole file" in res.stdout and "true: fp16 delta / bytes stored" in res.stdout
    assert "layers.0.q.weight" in res.stdout  # among the largest tensors


def test_inspect_zero_bit_parts_json_has_null_nominal(tmp_path):
    d = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    cols, vals = groupwise_dropout(d, 2, 8, 0)
    e = csr_parts.encode(d.shape, np.repeat(np.arange(4), cols.shape[1]), cols.ravel(), vals.ravel(), bits=2,
                         parts=4, alpha=2, group_size=8)
    with Writer(tmp_path / "z.ddq") as w:
        w.add("w", "compressed", d.shape, "F32", e)
    rep = json.loads(runner.invoke(app, ["inspect", str(tmp_path / "z.ddq"), "--json"]).stdout)
    assert rep["tensors"][0]["nominal_ratio"] is None  # infinite: 0 bits per value, JSON has no inf


def test_verify_sound_file_and_bound_base(pair):
    base_dir, path, _ = pair
    res = runner.invoke(app, ["verify", str(path), "--base", str(base_dir)])
    assert res.exit_code == 0, res.output
    assert "OK" in res.stdout


def test_verify_reports_corrupt_buffer_with_field(pair):
    _, path, _ = pair
    from ddq_format import DDQFile
    with DDQFile(path) as f:
        b = f.entry("layers.0.k.weight")["buffers"]["codes"]
    data = bytearray(path.read_bytes())
    data[PREAMBLE_SIZE + b["offset"]] ^= 0xFF
    path.write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", str(path)])
    assert res.exit_code == 1
    assert "layers.0.k.weight" in res.stderr and "buffers.codes" in res.stderr and "CRC-32" in res.stderr


def test_verify_reports_nonzero_padding(pair):
    _, path, _ = pair
    from ddq_format import DDQFile
    with DDQFile(path) as f:
        b = f.entry("layers.0.q.weight")["buffers"]["row_offsets"]
    end = PREAMBLE_SIZE + b["offset"] + b["length"]
    data = bytearray(path.read_bytes())
    assert end % 64, "test needs padding after this buffer"
    data[end] = 1
    path.write_bytes(bytes(data))
    res = runner.invoke(app, ["verify", str(path)])
    assert res.exit_code == 1 and "padding" in res.stderr


def test_verify_wrong_base_is_a_fault(pair, tmp_path):
    from safetensors.numpy import save_file
    base_dir, path, base = pair
    other = dict(base)
    other["layers.0.q.weight"] = base["layers.0.q.weight"] + 1
    other["norm.weight"] = np.ones((2, 48), np.float32)
    (tmp_path / "other").mkdir()
    save_file(other, str(tmp_path / "other" / "model.safetensors"))
    res = runner.invoke(app, ["verify", str(path), "--base", str(tmp_path / "other")])
    assert res.exit_code == 1
    lines = [l for l in res.stderr.splitlines() if l.startswith("FAULT")]
    assert any("layers.0.q.weight" in l and "base.fingerprint" in l for l in lines)
    assert any("norm.weight" in l and "base.shape" in l for l in lines)
    assert not any("layers.0.k.weight" in l for l in lines)


def test_verify_not_a_ddq_file(tmp_path):
    p = tmp_path / "bad.ddq"
    p.write_bytes(b"hello world" * 10)
    res = runner.invoke(app, ["verify", str(p)])
    assert res.exit_code == 1 and "bad magic" in res.stderr


def test_inspect_bad_file_is_clean_error(tmp_path):
    p = tmp_path / "bad.ddq"
    p.write_bytes(b"\x89DDQ\r\n\x1a\n" + bytes(10))
    res = runner.invoke(app, ["inspect", str(p)])
    assert res.exit_code == 2 and "error" in res.stderr and "Traceback" not in res.output
