"""The example task, its teacher-forced evaluation, and the build pipeline end to end on a tiny model."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ddq_format.example import build, task  # noqa: E402
from ddq_format.example import evaluate as ev  # noqa: E402


class CharTokenizer:
    """One token per character (ids 1..), 0 = pad: answers are one token per digit."""
    pad_token_id = 0
    eos_token_id = 0

    def __init__(self):
        self.vocab = {c: i + 1 for i, c in enumerate(" abcdefghijklmnopqrstuvwxyzT0123456789")}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[c] for c in text]}


class Oracle(torch.nn.Module):
    """Predicts the next input token exactly (it peeks at it): teacher-forced exact match must be 100%."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.head = torch.nn.Linear(vocab, vocab, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(vocab) * 50)

    def get_decoder(self):
        def decoder(input_ids, attention_mask):
            nxt = torch.cat([input_ids[:, 1:], torch.zeros_like(input_ids[:, :1])], 1)
            return type("Out", (), {"last_hidden_state": torch.nn.functional.one_hot(nxt, self.vocab).float()})
        return decoder

    def get_output_embeddings(self):
        return self.head


def test_facts_are_deterministic_distinct_and_three_digit():
    a, b = task.make_facts(300, seed=7), task.make_facts(300, seed=7)
    assert a == b
    assert a != task.make_facts(300, seed=8)
    assert len({f.key for f in a}) == 300
    assert all(len(f.key) == 4 and f.key.isalpha() and 100 <= f.value <= 999 for f in a)
    assert a[0].prompt == f"The code of {a[0].key} is" and a[0].answer == f" {a[0].value}"


def test_exact_match_oracle_is_perfect_and_a_perturbed_head_is_not():
    tok = CharTokenizer()
    facts = task.make_facts(200, seed=3)
    model = Oracle(len(tok.vocab) + 1)
    s = task.evaluate(model, tok, facts, batch_size=33)  # uneven batches exercise the padding
    assert (s.correct, s.n) == (200, 200)
    assert s.nll < 1e-6
    # Swap the logits rows of digits 7 and 8: exactly the facts whose answer has a 7 or an 8 become wrong.
    seven, eight = tok.vocab["7"], tok.vocab["8"]
    with torch.no_grad():
        w = model.head.weight
        w[[seven, eight]] = w[[eight, seven]].clone()
    s2 = task.evaluate(model, tok, facts, batch_size=64)
    expected = sum("7" not in str(f.value) and "8" not in str(f.value) for f in facts)
    assert s2.correct == expected < 200
    assert s2.nll > 1.0


def test_mean_kl_zero_for_identical_and_positive_otherwise():
    a = torch.log_softmax(torch.randn(5, 11), -1)
    b = torch.log_softmax(torch.randn(5, 11), -1)
    assert task.mean_kl(a, a) == pytest.approx(0.0, abs=1e-7)
    assert task.mean_kl(a, b) > 0.0


def test_cache_root_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert build.cache_root() == tmp_path / "ddq" / "example"
    r = build.Recipe()
    assert r.key() == build.Recipe().key() != build.Recipe(seed=r.seed + 1).key()


def test_build_example_reuses_the_cache_without_building(tmp_path, monkeypatch):
    r = build.Recipe()
    root = tmp_path / r.key()
    root.mkdir()
    (root / "meta.json").write_text(json.dumps({"recipe": {"n_facts": 5, "seed": 1}}))
    monkeypatch.setattr(build, "gguf_path", lambda: pytest.fail("must not rebuild a cached pair"))
    pair = build.build_example(r, cache=tmp_path)
    assert pair.root == root and len(pair.facts()) == 5


def _tiny_pair(tmp_path):
    from tests.tiny_models import make_pair

    base_dir, _ = make_pair(tmp_path / "src", "llama", layers=2, hidden=64)
    recipe = build.Recipe(n_facts=16, seed=5, epochs=60, batch_size=16, lr=3e-3, warmup_steps=2, threads=1)
    return base_dir, recipe


def _build(base_dir, recipe, out, progress=None):
    model, tok = ev.load_model(base_dir), ev.load_tokenizer(base_dir)
    return build.build_pair(out, model, tok, recipe, source="tiny", log=lambda *_: None, progress=progress)


def test_deterministic_torch_fixes_threads_and_algorithms_then_restores():
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with build.deterministic_torch(1) as machine:
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        assert machine["threads"] == 1 and machine["deterministic_algorithms"] is True
        assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpu"]
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_tiny_pipeline_end_to_end(tmp_path):
    """build -> (deterministic) -> convert -> apply_delta -> evaluate, on a 2-layer LLaMA."""
    import io
    import re

    from rich.console import Console

    from ddq_format.progress import make_progress

    base_dir, recipe = _tiny_pair(tmp_path)
    log = io.StringIO()
    with make_progress(Console(file=log, width=80), interval=0.2) as progress:  # a log, not a terminal
        pair = _build(base_dir, recipe, tmp_path / "pair", progress=progress)
    m = pair.meta
    lines = log.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert any(re.match(stamp + rf"steps {recipe.epochs}/{recipe.epochs} \(100%\), elapsed .*: fine-tuning", ln)
               for ln in lines), lines
    assert any(re.match(stamp + "done, elapsed .*: saving the fine-tune", ln) for ln in lines), lines
    assert m["machine"]["threads"] == recipe.threads and m["machine"]["deterministic_algorithms"]
    assert (pair.base / "config.json").is_file() and (pair.finetuned / "config.json").is_file()
    assert m["accuracy"]["finetuned"] >= 0.9 > m["accuracy"]["base"]
    assert m["task"]["n_prompts"] == 16 and len(m["sha256"]["finetuned"]) == 64
    assert m["sha256"]["base"] != m["sha256"]["finetuned"]
    # Deterministic: the same recipe on the same base gives the same weights.
    again = _build(base_dir, recipe, tmp_path / "pair2")
    assert again.meta["sha256"] == m["sha256"]

    # The saved fine-tune scores what the build reported.
    tok = ev.load_tokenizer(pair.finetuned)
    ft = ev.load_model(pair.finetuned)
    evaluator = ev.Evaluator(tok, pair.facts(), ref_model=ft)
    assert evaluator.score(ft).accuracy == pytest.approx(m["accuracy"]["finetuned"])
    base_score = evaluator.score(ev.load_model(pair.base))
    assert base_score.kl > 0

    from ddq_format.converters import convert

    out = tmp_path / "mild.ddq"
    convert(pair.base, pair.finetuned, out, method="deltadq", encoding="seeded", alpha=2, bits=8, embeddings="dense")
    mild = evaluator.score(ev.compressed_model(pair.base, out))
    # A mild compression keeps the fine-tune much closer than the base is.
    assert mild.kl < base_score.kl / 4
    assert mild.accuracy >= m["accuracy"]["finetuned"] - 0.15


def test_example_run_command_on_a_cached_tiny_pair(tmp_path):
    """`ddq example run` (the README's main job) end to end, with a tiny pair planted in the cache."""
    from typer.testing import CliRunner

    from ddq_format.example.command import example_app

    base_dir, recipe = _tiny_pair(tmp_path)
    cache = tmp_path / "cache"
    pair = _build(base_dir, recipe, cache / build.Recipe().key())  # where `run` looks for the default pair
    res = CliRunner().invoke(example_app, ["run", "--cache", str(cache), "--alpha", "2", "--bits", "8"])
    assert res.exit_code == 0, res.output
    out = pair.root / "deltadq-seeded_rans-a2-k8-m1.ddq"  # the convert defaults' encoding
    assert out.is_file()
    summary = json.loads(out.with_suffix(".eval.json").read_text())
    acc = summary["accuracy"]
    assert acc["fine-tune"] == pytest.approx(pair.meta["accuracy"]["finetuned"])
    assert acc["base"] == pytest.approx(pair.meta["accuracy"]["base"])
    assert summary["compressed_true_ratio"] > 1
    assert "exact match" in res.output and "reused" in res.output and "compressed" in res.output


def test_example_build_facts_and_epochs_make_a_smaller_recipe(tmp_path, monkeypatch):
    """`ddq example build --facts N --epochs E`: a quick reproducibility check gets its own recipe (cache key)."""
    from typer.testing import CliRunner

    from ddq_format.example.command import example_app

    seen = []

    def fake(recipe=None, **kw):
        seen.append(recipe)
        raise build.UsageError("stop here")
    monkeypatch.setattr(build, "build_example", fake)
    res = CliRunner().invoke(example_app, ["build", "--facts", "64", "--epochs", "1", "--cache", str(tmp_path)])
    assert res.exit_code == 2 and "stop here" in res.output
    r = seen[0]
    assert (r.n_facts, r.epochs) == (64, 1) and r.key() != build.Recipe().key()
    assert (r.seed, r.threads, r.batch_size) == (build.Recipe().seed, build.Recipe().threads, build.Recipe().batch_size)
