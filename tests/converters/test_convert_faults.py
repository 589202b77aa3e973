"""Faults of issue 12 on the converter side, each reproduced: concurrent runs on one output (1), non-finite
input (3), no tokenizer for the calibration text (7), a full disk (8)."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from safetensors.numpy import load_file
from typer.testing import CliRunner

from ddq_format import UsageError, open_ddq
from ddq_format.converters import groupsize, resume
from ddq_format.converters.command import convert as convert_cmd
from ddq_format.verify import verify

ROOT = str(Path(__file__).resolve().parents[2])
KW = {"alpha": 2, "bits": 4, "parts": 4}


def cli(*args):
    app = typer.Typer()
    app.command()(convert_cmd)
    return CliRunner().invoke(app, [str(a) for a in args])


# -- 1: two runs, one output -------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[4])
    from ddq_format.converters import resume, convert
    real, n = resume.ResumableWriter.add, [0]
    def add(self, *a, **k):  # after 3 tensors: say so, then wait until the test lets this run finish
        if n[0] == 3:
            Path(sys.argv[5]).touch()
            deadline = time.time() + 120
            while not Path(sys.argv[6]).exists() and time.time() < deadline:
                time.sleep(0.05)
        n[0] += 1
        return real(self, *a, **k)
    resume.ResumableWriter.add = add
    convert(sys.argv[1], sys.argv[2], sys.argv[3], alpha=2, bits=4, parts=4, embeddings="dense", progress=False, quiet=True)
""")


def test_a_second_run_on_the_same_output_is_refused_and_the_first_publishes_a_sound_file(tmp_path, llama,
                                                                                          quiet_convert):
    base, ft = llama
    whole = tmp_path / "whole.ddq"
    quiet_convert(base, ft, whole, **KW)
    out, waiting, go = tmp_path / "out.ddq", tmp_path / "waiting", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(base), str(ft), str(out), ROOT, str(waiting),
                              str(go)])
    try:
        deadline = time.time() + 120
        while not waiting.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert waiting.exists(), "the first run never reached its fourth tensor"
        second = subprocess.run([sys.executable, "-m", "ddq_format.cli", "convert", str(base), str(ft), "-o",
                                 str(out), "--alpha", "2", "--bits", "4", "--parts", "4", "--embeddings", "dense", "-q"],
                                capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        assert second.returncode == 2, second.stderr
        assert f"another ddq convert (pid {first.pid}) is writing this output" in second.stderr
        assert "Traceback" not in second.stderr
        # --resume is a run on the same output too: refused as well, nothing of the first run touched
        second = subprocess.run([sys.executable, "-m", "ddq_format.cli", "convert", str(base), str(ft), "-o",
                                 str(out), "--alpha", "2", "--bits", "4", "--parts", "4", "--embeddings", "dense", "-q",
                                 "--resume"],
                                capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
        assert second.returncode == 2 and "another ddq convert" in second.stderr
    finally:
        go.touch()
        assert first.wait(timeout=120) == 0
    assert verify(out) == [] and out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "out.ddq", "waiting", "whole.ddq"]  # lock gone


def test_a_lock_file_left_by_a_killed_run_does_not_block(tmp_path, llama, quiet_convert):
    base, ft = llama
    out = tmp_path / "o.ddq"
    (tmp_path / "o.ddq.lock").write_text("12345\n")  # what kill -9 leaves: the file, no lock held on it
    quiet_convert(base, ft, out, group_size=8)
    assert verify(out) == [] and not (tmp_path / "o.ddq.lock").exists()


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    with resume.OutputLock(tmp_path / "x.ddq"):
        assert (tmp_path / "x.ddq.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UsageError, match="another ddq convert") as err:
            with resume.OutputLock(tmp_path / "x.ddq"):
                pass
        assert err.value.field == "output"
    assert not (tmp_path / "x.ddq.lock").exists()
    with resume.OutputLock(tmp_path / "x.ddq"):  # released: the next run takes it
        pass


# -- 8: a full disk ------------------------------------------------------------------------------------------
class FullDisk:
    """A file that takes `room` more bytes and then fails like a full disk (a short write, then ENOSPC)."""

    def __init__(self, f, room):
        self._f, self.room = f, room

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self._f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture
def disk_fills_after(monkeypatch):
    """disk_fills_after(n): the next convert's OUT.partial fails with ENOSPC after n more bytes."""
    real = resume.ResumableWriter._open_output

    def arm(room):
        def open_output(self):
            f, path = real(self)
            self._f = FullDisk(f, room)
            return self._f, path
        monkeypatch.setattr(resume.ResumableWriter, "_open_output", open_output)
    yield arm
    monkeypatch.setattr(resume.ResumableWriter, "_open_output", real)


def test_disk_full_is_one_clear_line_and_resume_continues(tmp_path, llama, quiet_convert, disk_fills_after,
                                                          monkeypatch):
    base, ft = llama
    whole = tmp_path / "whole.ddq"
    quiet_convert(base, ft, whole, **KW)
    out = tmp_path / "out.ddq"
    disk_fills_after(whole.stat().st_size // 2)  # the aux files and the first tensors fit
    r = cli(base, ft, "-o", out, "--alpha", 2, "--bits", 4, "--parts", 4, "--embeddings", "dense", "-q")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line = r.output.strip()
    assert line.startswith(f"error: {out}.partial: disk full (No space left on device) after ")
    assert "--resume to continue" in line and "\n" not in line
    assert not out.exists() and (tmp_path / "out.ddq.partial").exists() and not (tmp_path / "out.ddq.lock").exists()
    monkeypatch.undo()
    s = quiet_convert(base, ft, out, resume=True, **KW)
    assert s.resumed_tensors > 0 and out.read_bytes() == whole.read_bytes()


def test_disk_full_while_publishing_keeps_the_partial_file(tmp_path, llama, quiet_convert, disk_fills_after):
    base, ft = llama
    quiet_convert(base, ft, tmp_path / "whole.ddq", group_size=8)
    data_bytes = (tmp_path / "whole.ddq").stat().st_size - 2000  # room for every tensor, not for the header
    disk_fills_after(data_bytes)
    with pytest.raises(UsageError, match="--resume to continue"):
        quiet_convert(base, ft, tmp_path / "out.ddq", group_size=8)
    assert not (tmp_path / "out.ddq").exists() and (tmp_path / "out.ddq.partial").exists()


# -- 3: non-finite input -------------------------------------------------------------------------------------
def _poison(arr, value, dtype=np.float32):
    arr = np.array(arr, dtype)
    arr.reshape(-1)[arr.size // 2] = value
    return arr


@pytest.mark.parametrize("which,name,value", [
    ("ft", "model.norm.weight", np.nan),  # the case: it used to be stored and materialized silently
    ("ft", "model.layers.1.post_attention_layernorm.weight", np.inf),
    ("base", "model.layers.0.input_layernorm.weight", -np.inf),  # a NaN delta all the same
    ("ft", "model.embed_tokens.weight", np.nan),
])
def test_non_finite_dense_tensors_are_refused_before_heavy_work(tmp_path, llama, quiet_convert, edited_copy,
                                                                monkeypatch, which, name, value):
    base, ft = llama
    src = ft if which == "ft" else base
    bad = edited_copy(src, "bad", **{name: _poison(load_file(src / "model.safetensors")[name], value)})
    monkeypatch.setattr(groupsize, "search", lambda *a, **k: pytest.fail("the group-size search ran"))
    pair = (base, bad) if which == "ft" else (bad, ft)
    with pytest.raises(UsageError) as err:
        quiet_convert(*pair, tmp_path / "o.ddq")
    e = err.value
    assert e.reason.startswith("non-finite values (NaN or inf)") and "1 of " in e.reason
    assert (e.path, e.tensor, e.field) == (str(bad / "model.safetensors"), name, "values")
    assert not any(p.name.startswith("o.ddq") for p in tmp_path.iterdir())  # nothing started


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_non_finite_large_dense_tensors_are_refused_when_read(tmp_path, models, quiet_convert, monkeypatch, dtype):
    """Above the early-check size a dense tensor is checked as the tensor work reads it (no second read)."""
    from safetensors.torch import load_file as load_pt, save_file as save_pt
    from ddq_format.converters import finite
    base, ft = models(f"nan-{dtype}", "llama", dtype=dtype)
    sd = load_pt(ft / "model.safetensors")
    name = "model.embed_tokens.weight"
    sd[name].view(-1)[7] = float("nan")
    save_pt(sd, ft / "model.safetensors", metadata={"format": "pt"})
    monkeypatch.setattr(finite, "EARLY_CHECK_ELEMENTS", 64)  # norms still early; the embedding is "large"
    with pytest.raises(UsageError, match=r"non-finite values \(NaN or inf\): 1 of 20480 elements") as err:
        quiet_convert(base, ft, tmp_path / "o.ddq", group_size=8)
    assert err.value.tensor == name and err.value.path == str(ft / "model.safetensors")
    assert (tmp_path / "o.ddq.partial").exists() and not (tmp_path / "o.ddq.lock").exists()


def test_non_finite_layer_0_weights_are_named_by_the_group_size_search(tmp_path, llama, quiet_convert, edited_copy):
    base, ft = llama
    name = "model.layers.0.self_attn.k_proj.weight"
    bad = edited_copy(ft, "bad", **{name: _poison(load_file(ft / "model.safetensors")[name], np.nan)})
    with pytest.raises(UsageError, match=r"^.*non-finite values \(NaN or inf\)") as err:
        quiet_convert(base, bad, tmp_path / "o.ddq")
    assert err.value.tensor == name and err.value.field == "values"


# -- 7: no tokenizer --------------------------------------------------------------------------------------------
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _without_tokenizer(edited_copy, src, name):
    return edited_copy(src, name, drop=[f for f in TOKENIZER if (src / f).exists()])


def test_the_base_tokenizer_stands_in_for_a_missing_one(tmp_path, llama, quiet_convert, edited_copy):
    base, ft = llama
    bare = _without_tokenizer(edited_copy, ft, "bare")
    quiet_convert(base, ft, tmp_path / "a.ddq", **KW)
    quiet_convert(base, bare, tmp_path / "b.ddq", **KW)
    a, b = (open_ddq(tmp_path / n).header["algorithm"]["group_size_search"] for n in ("a.ddq", "b.ddq"))
    assert a == b and a["tokens"] > 100  # same tokenizer, same search


def test_no_tokenizer_anywhere_is_one_clear_line_saying_what_to_pass(tmp_path, llama, edited_copy):
    base, ft = llama
    b, f = _without_tokenizer(edited_copy, base, "b"), _without_tokenizer(edited_copy, ft, "f")
    r = cli(b, f, "-o", tmp_path / "o.ddq", "-q")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line = r.output.strip()
    assert "\n" not in line and line.startswith("error: field 'calib': --group-size auto tokenizes")
    assert "pass --calib FILE.json holding a JSON list of token ids or a fixed --group-size N" in line
    r = cli(b, f, "-o", tmp_path / "o.ddq", "-q", "--group-size", 8, "--seed-trials", 2)
    assert r.exit_code == 2 and "--seed-trials tokenizes" in r.output and "Traceback" not in r.output
    # a tokenizer config without its vocabulary: transformers fails to build it (the traceback)
    b2, f2 = (edited_copy(src, name, drop=["tokenizer.json"]) for src, name in ((base, "b2"), (ft, "f2")))
    r = cli(b2, f2, "-o", tmp_path / "o.ddq", "-q")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "its tokenizer does not load" in r.output and "\n" not in r.output.strip()
    assert not (tmp_path / "o.ddq").exists()


def test_calibration_token_ids_need_no_tokenizer(tmp_path, llama, quiet_convert, edited_copy):
    base, ft = llama
    b, f = _without_tokenizer(edited_copy, base, "b"), _without_tokenizer(edited_copy, ft, "f")
    ids = [int(i) for i in groupsize.tokenize(ft, groupsize.DEFAULT_CALIB_TEXT, 512)]
    (tmp_path / "ids.json").write_text(str(ids))
    s = quiet_convert(b, f, tmp_path / "o.ddq", calib=tmp_path / "ids.json", **KW)
    with_text = quiet_convert(base, ft, tmp_path / "t.ddq", **KW)
    assert s.group_size_search["errors"] == with_text.group_size_search["errors"]  # the same tokens
    quiet_convert(b, f, tmp_path / "s.ddq", calib=tmp_path / "ids.json", seed_trials=2, group_size=8)
    # (learned positions end at max_position_embeddings = 128: the calibration forward pass stops there)
    assert open_ddq(tmp_path / "s.ddq").header["algorithm"]["seed_search"]["calib_tokens"] == min(len(ids), 128)


@pytest.mark.parametrize("content,match", [
    ("[1, 2, -3]", "non-empty JSON list of token ids"),
    ('{"input_ids": [1]}', "non-empty JSON list of token ids"),
    ("[1, 2", "is not JSON"),
    ("[5, 100000]", "token id 100000 is not below the fine-tune's vocab_size 320"),
])
def test_bad_token_id_files(tmp_path, llama, quiet_convert, content, match):
    base, ft = llama
    (tmp_path / "ids.json").write_text(content)
    with pytest.raises(UsageError, match=match) as err:
        quiet_convert(base, ft, tmp_path / "o.ddq", calib=tmp_path / "ids.json")
    assert err.value.field == "calib"
