"""Issue 14: the `ddq` command as a newcomer meets it, through the CLI runner (what a user types).

Each test is one mistake or first impression: a default convert, an existing output, arguments swapped, the
same model twice, reading the summary, a wrong base, help and --version.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ddq_format import DDQFile  # noqa: E402
from ddq_format.cli import app  # noqa: E402
from ddq_format.spec import CONVERT_DEFAULTS  # noqa: E402
from tests.tiny_models import make_pair  # noqa: E402

runner = CliRunner()
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny LLaMA pair with tied embeddings: stored dense, the embedding is most of the file."""
    return make_pair(tmp_path_factory.mktemp("models"), "llama", tie=True)


@pytest.fixture(scope="module")
def converted(pair, tmp_path_factory):
    """`ddq convert BASE FT -o X` with no options, and what it printed."""
    base, ft = pair
    out = tmp_path_factory.mktemp("conv") / "x.ddq"
    res = runner.invoke(app, ["convert", str(base), str(ft), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out, res


def _ddq(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output
    return res


# -- item 1: the default file, said in one line; warnings --------------------------------------------------
def test_default_convert_writes_the_recommended_file_and_says_why(converted):
    out, res = converted
    with DDQFile(out) as f:
        alg = f.header["algorithm"]
    d = CONVERT_DEFAULTS
    assert (alg["method"], alg["encoding"], alg["alpha"], alg["bits"], alg["parts"], alg["embeddings"]) == \
        (d["method"], d["encoding"], d["alpha"], d["bits"], d["parts"], d["embeddings"])
    assert "group_size_search" in alg  # h_g searched
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("settings:")]
    assert len(lines) == 1 and "defaults:" in lines[0] and "seeded_rans" in lines[0] and "alpha=8" in lines[0]


def test_explicit_options_are_not_called_defaults(pair, tmp_path):
    base, ft = pair
    res = _ddq("convert", base, ft, "-o", tmp_path / "y.ddq", "--encoding", "seeded", "--alpha", "4")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("settings:"))
    assert "seeded alpha=4" in line and "from your options" in line


def test_warns_when_one_tensor_is_most_of_the_file(pair, tmp_path):
    base, ft = pair
    res = _ddq("convert", base, ft, "-o", tmp_path / "dense.ddq", "--embeddings", "dense")
    assert res.exit_code == 0, res.output
    assert re.search(r"warning: model\.embed_tokens\.weight takes \d+% of the file", res.output), res.output
    assert "--embeddings compressed" in res.output


def test_same_model_twice_warns_all_zero(pair, tmp_path):
    base, _ = pair
    res = _ddq("convert", base, base, "-o", tmp_path / "zero.ddq")
    assert res.exit_code == 0, res.output
    assert "BASE and FINETUNED are the same folder" in res.stderr
    assert "the delta is all zero" in res.stderr


def test_tiny_delta_warns(pair, tmp_path):
    """A fine-tune that differs from its base in one norm only: probably not the fine-tune of that base."""
    import shutil

    from safetensors.numpy import load_file, save_file
    base, _ = pair
    ft = tmp_path / "ft"
    shutil.copytree(base, ft)
    w = load_file(str(ft / "model.safetensors"))
    w["model.norm.weight"] = w["model.norm.weight"] + 1
    save_file(w, str(ft / "model.safetensors"), metadata={"format": "pt"})
    res = _ddq("convert", base, ft, "-o", tmp_path / "tiny.ddq")
    assert res.exit_code == 0, res.output
    assert "the delta is tiny: only 1 of" in res.stderr


# -- item 2: outputs and argument order ----------------------------------------------------------------------
def test_every_writer_refuses_an_existing_output_with_the_same_words(pair, converted, tmp_path):
    base, ft = pair
    out, _ = converted
    before = out.read_bytes()
    res = _ddq("convert", base, ft, "-o", out)
    assert res.exit_code == 2 and f"error: {out}: output exists; pass --overwrite to replace it" in res.stderr
    assert out.read_bytes() == before
    folder = tmp_path / "hf"
    folder.mkdir()
    res = _ddq("materialize", base, out, "-o", folder)
    assert res.exit_code == 2 and f"error: {folder}: output exists; pass --overwrite to replace it" in res.stderr
    assert "overwrite=True" not in res.stderr  # no API wording in the CLI
    existing = tmp_path / "e.ddq"
    existing.write_bytes(b"keep")
    res = _ddq("example", "run", "--out", existing)
    assert res.exit_code == 2 and f"error: {existing}: output exists; pass --overwrite to replace it" in res.stderr
    assert existing.read_bytes() == b"keep"


def test_overwrite_replaces(pair, tmp_path):
    base, ft = pair
    out = tmp_path / "o.ddq"
    out.write_bytes(b"old")
    res = _ddq("convert", base, ft, "-o", out, "--overwrite", "-q")
    assert res.exit_code == 0, res.output
    with DDQFile(out) as f:
        assert f.names


def test_missing_parent_folder_is_refused_the_same_way(pair, converted, tmp_path):
    base, ft = pair
    out, _ = converted
    missing = tmp_path / "no" / "such"
    for args in (("convert", base, ft, "-o", missing / "x.ddq"), ("materialize", base, out, "-o", missing / "hf"),
                 ("example", "run", "--out", missing / "x.ddq")):
        res = _ddq(*args)
        assert res.exit_code == 2, res.output
        assert f"error: {missing} does not exist: create the folder first" in res.stderr, res.stderr
    assert not (tmp_path / "no").exists()  # nothing created


def test_materialize_arguments_swapped_says_which_is_which(pair, converted, tmp_path):
    base, _ = pair
    out, _ = converted
    res = _ddq("materialize", out, base, "-o", tmp_path / "hf")
    assert res.exit_code == 2
    msg = res.stderr
    assert "BASE (the first argument) is a model folder" in msg and f"{out} is a .ddq file" in msg, msg
    assert "Is a directory" not in msg


def test_convert_given_a_ddq_file_as_a_model(pair, converted, tmp_path):
    base, _ = pair
    out, _ = converted
    res = _ddq("convert", base, out, "-o", tmp_path / "z.ddq")
    assert res.exit_code == 2 and f"{out} is a .ddq file" in res.stderr
    assert "FINETUNED (the second) is a model folder" in res.stderr


def test_inspect_and_verify_given_a_model_folder(pair, converted):
    base, _ = pair
    out, _ = converted
    res = _ddq("inspect", base)
    assert res.exit_code == 2 and f"{base} is a model folder" in res.stderr
    res = _ddq("verify", base, "--base", out)  # both swapped
    assert res.exit_code == 2 and f"{base} is a model folder" in res.stderr and f"{out} is a .ddq file" in res.stderr


def test_output_may_not_replace_an_input(pair, tmp_path, converted):
    base, _ = pair
    out, _ = converted
    res = _ddq("materialize", base, out, "-o", base, "--overwrite")
    assert res.exit_code == 2 and "would replace the input" in res.stderr
    assert (base / "config.json").is_file()


# -- item 3: one summary, the same figures in convert and inspect ---------------------------------------------
def _size_rows(text: str) -> list[str]:
    keep = ("compressed tensors (", "all tensors (", "whole file", "nominal:", "bytes: values")
    return [ln.strip() for ln in text.splitlines() if any(k in ln for k in keep)]


def test_convert_and_inspect_print_the_same_figures(converted):
    out, res = converted
    ins = _ddq("inspect", out)
    assert ins.exit_code == 0, ins.output
    conv_rows, ins_rows = _size_rows(res.stdout), _size_rows(ins.stdout)
    assert len(ins_rows) == 5 and conv_rows == ins_rows
    rep = json.loads(_ddq("inspect", out, "--json").stdout)
    tot = rep["totals"]
    assert f"{tot['compressed_true_ratio']:.1f}x" in ins.stdout or f"{tot['compressed_true_ratio']:.2f}x" in ins.stdout
    assert f"{rep['file_bytes']:,} bytes" in ins.stdout


def test_inspect_summary_fits_80_columns_and_tensors_lists_all(converted):
    out, _ = converted
    ins = _ddq("inspect", out)
    assert max(map(len, ins.stdout.splitlines())) <= 80
    assert "largest tensors" in ins.stdout and "seeded_rans" in ins.stdout
    with DDQFile(out) as f:
        names = f.names
    full = _ddq("inspect", out, "--tensors")
    assert full.exit_code == 0
    assert all(n in full.stdout for n in names)
    assert "…" not in full.stdout  # no figure or name cut short
    rows = [ln for ln in ins.stdout.splitlines() if ln.split(" ")[0] in names]
    assert 1 <= len(rows) <= 5  # the summary lists only the largest tensors


def test_inspect_flags_tensors_stored_wider_than_fp16(pair, tmp_path):
    """No default stores a tensor wider than its fp16 delta (issue 11); a file that does (an F32 dense
    delta, legal in the format) is flagged by inspect, the summary and the `!` of --tensors."""
    import numpy as np

    from ddq_format import Writer
    from ddq_format.encodings import raw
    base, ft = pair
    default = tmp_path / "default.ddq"
    assert _ddq("convert", base, ft, "-o", default, "--embeddings", "dense", "-q").exit_code == 0
    ins = _ddq("inspect", default)
    assert "more bytes than their fp16 delta" not in ins.stdout
    assert not any("! " in ln for ln in _ddq("inspect", default, "--tensors").stdout.splitlines()
                   if ln.startswith("model."))
    wide = tmp_path / "wide.ddq"
    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    with Writer(wide) as wr:
        wr.add("w32", "dense", w.shape, "F32", raw.encode(w, "F32"))
        wr.add("w16", "dense", w.shape, "F16", raw.encode(w.astype(np.float16), "F16"))
    ins = _ddq("inspect", wide)
    assert re.search(r"warning: 1 tensor\(s\) take more bytes than their fp16 delta", ins.stdout), ins.stdout
    rows = {ln.split()[0]: ln for ln in _ddq("inspect", wide, "--tensors").stdout.splitlines()
            if ln.startswith("w") and " dense " in ln}
    assert "! 0." in rows["w32"] and "!" not in rows["w16"]


# -- item 4: verify ends with one line ------------------------------------------------------------------------
def test_verify_wrong_base_one_summary_line_and_capped_faults(pair, converted, tmp_path):
    _, ft = pair
    out, _ = converted
    res = _ddq("verify", out, "--base", ft)  # the fine-tune is not the base
    assert res.exit_code == 1
    faults = [ln for ln in res.stderr.splitlines() if ln.startswith("FAULT")]
    with DDQFile(out) as f:
        n_changed = sum(e["kind"] != "same" for e in f.entries.values())
    assert len(faults) == min(10, n_changed)
    summary = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(summary) == 1
    assert re.match(rf"FAILED {re.escape(str(out))}: \d+ fault\(s\) in \d+ tensor\(s\); most likely cause: "
                    r"not the base this delta was made from", summary[0]), summary
    if n_changed > 10:
        assert "--verbose prints all" in res.stderr
    full = _ddq("verify", out, "--base", ft, "--verbose")
    assert len([ln for ln in full.stderr.splitlines() if ln.startswith("FAULT")]) == n_changed


def test_verify_sound_says_so_in_one_line(pair, converted):
    base, _ = pair
    out, _ = converted
    res = _ddq("verify", out, "--base", base)
    assert res.exit_code == 0 and res.stdout.strip().startswith(f"OK {out}: sound") and "bound to" in res.stdout


# -- item 5: progress in a log ----------------------------------------------------------------------------------
def test_convert_progress_in_a_log_is_timestamped_lines(converted):
    _, res = converted  # CliRunner output is not a terminal
    lines = [ln for ln in res.stderr.splitlines() if re.match(STAMP, ln)]
    assert lines and re.match(STAMP + r" tensors (\d+)/\1 \(100%\), elapsed", lines[-1]), res.stderr
    assert max(map(len, res.stderr.splitlines())) < 400 and "\r" not in res.stderr


# -- item 6: help and version --------------------------------------------------------------------------------
def test_version():
    from ddq_format import __version__
    res = _ddq("--version")
    assert res.exit_code == 0 and res.stdout.startswith(f"ddq {__version__}")


@pytest.mark.parametrize("cmd", [["convert"], ["inspect"], ["verify"], ["materialize"], ["example", "run"],
                                 ["example", "build"], ["example", "info"], []])
def test_help_has_metavars_and_no_bool_labels(cmd):
    res = _ddq(*cmd, "--help")
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.stdout
    usage = next(ln for ln in res.stdout.splitlines() if "Usage:" in ln)
    assert "{" not in usage
    expected = {"convert": "[OPTIONS] BASE FINETUNED", "inspect": "[OPTIONS] FILE", "verify": "[OPTIONS] FILE",
                "materialize": "[OPTIONS] BASE DELTA"}
    if cmd and cmd[0] in expected:
        assert usage.strip().endswith(expected[cmd[0]]), usage


@pytest.mark.parametrize("cmd", [["convert"], ["example", "run"]])
def test_help_lists_every_encoding_and_method(cmd):
    from ddq_format.converters.methods import ENCODINGS, METHODS
    out = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).stdout  # choices unwrapped
    assert all(e in out for e in ENCODINGS) and all(m in out for m in METHODS)


def test_unknown_choice_is_rejected_with_the_choices():
    res = _ddq("convert", "a", "b", "-o", "x.ddq", "--encoding", "zip")
    assert res.exit_code == 2 and "seeded_rans" in res.output


def test_example_info_prints_cache_prompt_format_and_examples(tmp_path):
    from ddq_format.example import task
    from ddq_format.example.build import Recipe
    res = _ddq("example", "info", "--cache", tmp_path)
    assert res.exit_code == 0, res.output
    assert str(tmp_path / Recipe().key()) in res.stdout and "not built yet" in res.stdout
    assert repr(task.PROMPT) in res.stdout
    facts = task.make_facts(Recipe().n_facts, Recipe().seed)
    assert facts[0].prompt in res.stdout and facts[0].answer.strip() in res.stdout


def test_verify_full_needs_a_base_and_says_what_it_could_check(pair, converted):
    base, _ = pair
    out, _ = converted
    res = _ddq("verify", out, "--full")
    assert res.exit_code == 2 and "--full checks the base binding" in res.output
    res = _ddq("verify", out, "--base", base, "--full")  # convert wrote no full digests: said, not passed
    assert res.exit_code == 1 and "sampled fingerprint" in res.output and "Traceback" not in res.output
