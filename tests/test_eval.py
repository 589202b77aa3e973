"""`ddq eval`: data parsing (errors name the line), scores of base / fine-tune / .ddq, JSON, plot and sweep."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ddq_format import UsageError  # noqa: E402
from ddq_format.evaluate import load_data  # noqa: E402


@pytest.mark.parametrize("lines,match", [
    (['{"prompt": "a", "answer": "b"}', "", "{not json"], "line 3"),
    (['[1, 2]'], "line 1.*JSON object"),
    (['{"prompt": "a"}'], "line 1.*answer"),
    (['{"prompt": "a", "answer": ""}'], "answer"),
    (['{"text": "  "}'], "line 1.*non-empty"),
    (['{"question": "a"}'], "line 1.*prompt"),
    ([""], "no examples"),
])
def test_bad_data_names_the_line(tmp_path, lines, match):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=match) as e:
        load_data(p)
    assert str(p) in str(e.value)


def test_good_data(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "x", "answer": " y"}\n\n{"text": "hello world"}\n')
    d = load_data(p)
    assert len(d.pairs) == 1 and d.texts == ["hello world"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ddq_format.converters import convert
    from tests.tiny_models import TOKENIZER_TEXT, make_pair
    root = tmp_path_factory.mktemp("eval")
    base, ft = make_pair(root, "llama")
    ddq = root / "a.ddq"
    convert(base, ft, ddq, alpha=2, bits=8, encoding="seeded", embeddings="compressed", progress=False, quiet=True)
    data = root / "d.jsonl"
    words = TOKENIZER_TEXT.split()
    data.write_text("".join(json.dumps({"prompt": " ".join(words[i:i + 5]), "answer": " " + words[i + 5]}) + "\n"
                            for i in range(0, 60, 6)) + json.dumps({"text": TOKENIZER_TEXT[:200]}) + "\n")
    return base, ft, ddq, data


def test_eval_scores_every_model(setup):
    from ddq_format.evaluate.run import run
    base, ft, ddq, data = setup
    rows = run(base, ft, [ddq], data, progress=False)
    assert [r.label for r in rows] == ["fine-tune", "base", "a.ddq"]
    ftm, bm, dm = (r.metrics for r in rows)
    assert ftm["n"] == bm["n"] == dm["n"] == 10
    assert ftm["kl"] == 0.0 and bm["kl"] > dm["kl"] >= 0  # alpha=2, 8 bits: much closer than the base
    assert rows[2].tensors_true_ratio > 1 and rows[2].file_bytes == ddq.stat().st_size
    assert all(m["perplexity"] > 1 for m in (ftm, bm, dm))


def test_cli_json_table_and_plot(setup, tmp_path):
    from typer.testing import CliRunner

    from ddq_format.cli import app  # `ddq eval` as registered
    base, ft, ddq, data = setup
    png = tmp_path / "p.png"
    res = CliRunner().invoke(app, ["eval", str(base), str(ft), str(ddq), "--data", str(data), "--json", "--plot",
                                   str(png), "-q"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("["):])
    assert [r["label"] for r in out] == ["fine-tune", "base", "a.ddq"] and png.stat().st_size > 1000
    assert out[2]["tensors_true_ratio"] > 1 and out[0]["metrics"]["kl"] == 0.0
    res = CliRunner().invoke(app, ["eval", str(base), str(ft), str(ddq), "--data", str(data), "-q"])
    assert res.exit_code == 0, res.output
    table = res.stdout
    assert "exact match" in table and "a.ddq" in table and "KL" in table
    acc = out[2]["metrics"]
    assert f"{acc['correct']}/{acc['n']}" in table
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "x"}\n{"prompt": 1, "answer": "x"}\n')
    res = CliRunner().invoke(app, ["eval", str(base), str(ft), "--data", str(bad), "-q"])
    assert res.exit_code == 2 and "line 2" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "nope"), str(ft), "--data", str(data), "-q"])
    assert res.exit_code == 2 and "no such model folder" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["eval", str(base), str(ft), "--data", str(data), "--sweep", "--ratios", "8,x"])
    assert res.exit_code == 2 and "--ratios" in res.output


def test_sweep_converts_a_ladder(setup, tmp_path):
    from ddq_format.evaluate.run import run
    base, ft, _, data = setup
    rows = run(base, ft, [], data, sweep=[4], out_dir=tmp_path, progress=False)
    assert rows[-1].label == "target-4x.ddq" and (tmp_path / "target-4x.ddq").exists()
    assert abs(rows[-1].tensors_true_ratio / 4 - 1) <= 0.05
