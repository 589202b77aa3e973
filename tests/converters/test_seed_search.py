"""ddq convert --seed-trials N: per-tensor seed chosen by layer-output error on calibration activations.

The error of every trial is recomputed here independently: each trial's entry is encoded, written to a real
.ddq file and decoded by the reader; the activations come from our own forward hooks on the fine-tune.
"""
from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ddq_format import UsageError, open_ddq
from ddq_format.converters import groupsize
from ddq_format.converters.checkpoint import Checkpoint, to_f32
from ddq_format.converters.command import convert as convert_cmd
from ddq_format.converters.methods import Options, compress
from ddq_format.converters.seed_search import trial_seed
from ddq_format.converters.seeds import tensor_seed
from ddq_format.writer import Writer

# ~100 tokens with the tiny tokenizer: between h_in = 64 and the MLP's 160, so both stored forms (X and Gram)
# are exercised.
CALIB = ("The quick brown fox jumps over the lazy dog. Models learn to add numbers, write code and answer "
         "questions: def f(x): return x + 1 if x else 0 for while in [ ] { } = 42. ")


def _f32(ck, n):
    return to_f32(ck.read(n), ck.tensors[n].dtype).astype(np.float64)


def _hooked_uses(ft_dir, ids):
    """tensor name -> list of ('x', X float64 [T, in], transposed) / ('rows', ids), from our own hooks."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(ft_dir), dtype=torch.float32)
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    uses, hooks = {}, []
    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if w is None:
            continue
        is_lin = isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D"
        if not (is_lin or isinstance(mod, torch.nn.Embedding)):
            continue

        def hook(m, args, out, _w=w, _lin=is_lin, _t=type(mod).__name__ == "Conv1D"):
            x = args[0].detach()
            use = ("x", x.reshape(-1, x.shape[-1]).double().numpy(), _t) if _lin else ("rows", x.reshape(-1).numpy())
            for n in names[id(_w)]:
                uses.setdefault(n, []).append(use)
        hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.as_tensor(ids).reshape(1, -1))
    return uses


def _error(uses, d):
    e = 0.0
    for kind, a, *t in uses:
        if kind == "rows":
            e += float((d[a] ** 2).sum())
        else:
            y = a @ (d if t[0] else d.T)
            e += float((y ** 2).sum())
    return e


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(CALIB)
    return p


@pytest.mark.parametrize("arch,encoding", [("llama", "seeded"), ("gpt2", "csr_parts"), ("llama", "seeded_rans")])
def test_chosen_seed_is_the_argmin_of_the_layer_output_error(tmp_path, models, quiet_convert, calib_file,
                                                             arch, encoding):
    base, ft = models(f"{arch}-tied", arch, tie=True)  # tied: the embedding also serves as lm_head
    trials = 4
    kw = dict(alpha=4, bits=3, parts=1, encoding=encoding, embeddings="compressed", calib=calib_file)
    quiet_convert(base, ft, tmp_path / "s.ddq", seed_trials=trials, **kw)
    f = open_ddq(tmp_path / "s.ddq")
    opts = Options(method="deltadq", alpha=4, bits=3, parts=1, encoding=encoding)
    b, t = Checkpoint(base), Checkpoint(ft)
    ids = groupsize.tokenize(ft, CALIB, 512)
    assert 64 < len(ids) < 160
    uses = _hooked_uses(ft, ids)
    comp = [n for n, e in f.entries.items() if e["kind"] == "compressed"]
    assert any("embed" in n or "wte" in n for n in comp) and len(comp) > 8
    # every trial of every tensor, through the writer and the reader
    delta = {n: _f32(t, n) - _f32(b, n) for n in comp}
    decoded = []
    for i in range(trials):
        path = tmp_path / f"trial{i}.ddq"
        with Writer(path) as w:
            for n in comp:
                e = f.entries[n]
                enc = compress(delta[n].astype(np.float32), opts, trial_seed(0, n, i), e["params"]["group_size"])
                w.add(n, "compressed", tuple(e["shape"]), e["dtype"], enc)
        decoded.append(open_ddq(path))
    moved = 0
    for n in comp:
        errs = [_error(uses[n], delta[n] - d.decode(n).astype(np.float64)) for d in decoded]
        best = int(np.argmin(errs))
        seed = f.entries[n]["params"]["seed"]
        chosen = [trial_seed(0, n, i) for i in range(trials)].index(seed)
        assert errs[chosen] <= errs[best] * (1 + 1e-9), (n, errs, chosen)
        assert errs[chosen] <= errs[0] * (1 + 1e-9)
        np.testing.assert_array_equal(f.decode(n), decoded[chosen].decode(n))
        moved += chosen != 0
    assert moved >= len(comp) // 3  # not a no-op: most tensors find a better seed than trial 0
    alg = f.header["algorithm"]
    assert alg["seed_trials"] == trials
    assert alg["seed_search"]["calib_tokens"] == len(ids) and "objective" in alg["seed_search"]
    assert "unsearched" not in alg["seed_search"]


def test_one_trial_is_todays_file(tmp_path, llama, quiet_convert):
    base, ft = llama
    quiet_convert(base, ft, tmp_path / "a.ddq", alpha=2, bits=3, parts=2)
    quiet_convert(base, ft, tmp_path / "b.ddq", alpha=2, bits=3, parts=2, seed_trials=1)
    assert (tmp_path / "a.ddq").read_bytes() == (tmp_path / "b.ddq").read_bytes()
    f = open_ddq(tmp_path / "b.ddq")
    assert not any(k.startswith("seed_s") or k == "seed_trials" for k in f.header["algorithm"])
    comp = [n for n, e in f.entries.items() if e["kind"] == "compressed"]
    assert comp and all(f.entries[n]["params"]["seed"] == tensor_seed(0, n) == trial_seed(0, n, 0) for n in comp)
    assert len({trial_seed(0, comp[0], i) for i in range(16)}) == 16


def test_seed_search_is_deterministic_across_workers(tmp_path, models, quiet_convert):
    base, ft = models("llama-tied", "llama", tie=True)
    kw = dict(alpha=2, bits=3, parts=2, embeddings="compressed", seed_trials=3)
    quiet_convert(base, ft, tmp_path / "a.ddq", workers=1, **kw)
    quiet_convert(base, ft, tmp_path / "b.ddq", workers=3, **kw)
    quiet_convert(base, ft, tmp_path / "c.ddq", workers=1, **kw)
    a = (tmp_path / "a.ddq").read_bytes()
    assert a == (tmp_path / "b.ddq").read_bytes() == (tmp_path / "c.ddq").read_bytes()
    quiet_convert(base, ft, tmp_path / "one.ddq", alpha=2, bits=3, parts=2, embeddings="compressed")
    one = open_ddq(tmp_path / "one.ddq")
    f = open_ddq(tmp_path / "a.ddq")
    # same stored bytes per tensor: the seed is a parameter, not a size
    for n, e in f.entries.items():
        if e["kind"] == "compressed":
            assert {r: v["length"] for r, v in e["buffers"].items()} == \
                   {r: v["length"] for r, v in one.entries[n]["buffers"].items()}


def test_chosen_seeds_apply_with_the_torch_loader(tmp_path, models, quiet_convert):
    import torch
    from transformers import AutoModelForCausalLM

    from ddq_format.loaders import apply_delta
    base, ft = models("llama-tied", "llama", tie=True)
    out = tmp_path / "s.ddq"
    quiet_convert(base, ft, out, alpha=4, bits=4, encoding="seeded", embeddings="compressed", seed_trials=3)
    f = open_ddq(out)
    assert any(e["kind"] == "compressed" and e["params"]["seed"] != tensor_seed(0, n) for n, e in f.entries.items())
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_delta(model, out)
    after = model.state_dict()
    checked = 0
    for n, e in f.entries.items():
        if e["kind"] != "compressed":
            continue
        want = before[n].numpy() + f.decode(n)
        np.testing.assert_allclose(after[n].numpy(), want, rtol=0, atol=1e-6)
        checked += 1
    assert checked > 8


def test_seed_trials_errors(tmp_path, llama, quiet_convert):
    base, ft = llama
    with pytest.raises(UsageError, match="seed-trials") as e:
        quiet_convert(base, ft, tmp_path / "x.ddq", seed_trials=0)
    assert e.value.field == "seed_trials"
    with pytest.raises(UsageError, match="deltadq"):
        quiet_convert(base, ft, tmp_path / "x.ddq", method="dare", seed_trials=2)
    app = typer.Typer()
    app.command()(convert_cmd)
    r = CliRunner().invoke(app, [str(base), str(ft), "-o", str(tmp_path / "x.ddq"), "--seed-trials", "0"])
    assert r.exit_code == 2 and "--seed-trials must be an integer >= 1" in r.output
    assert not (tmp_path / "x.ddq").exists()


def test_model_transformers_cannot_load_is_a_usage_error(tmp_path, llama, quiet_convert):
    import json
    import shutil
    base, ft = llama
    bad = tmp_path / "ft"
    shutil.copytree(ft, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "no-such-arch", ["NoSuchForCausalLM"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="transformers") as e:
        quiet_convert(base, bad, tmp_path / "x.ddq", seed_trials=2, group_size=8)
    assert e.value.field == "seed_trials"
    assert not (tmp_path / "x.ddq").exists()


def test_resume_with_seed_trials_equals_uninterrupted(tmp_path, llama, quiet_convert, monkeypatch):
    """An interrupted --seed-trials run resumes to the same bytes; resuming it with other trials starts over."""
    from ddq_format.converters import resume

    base, ft = llama
    whole = tmp_path / "whole.ddq"
    quiet_convert(base, ft, whole, alpha=2, bits=4, group_size=8, encoding="seeded", seed_trials=3)
    out = tmp_path / "out.ddq"
    real, n = resume.ResumableWriter.add, [0]

    def add(self, *a, **kw):
        if n[0] == 4:
            raise KeyboardInterrupt  # Ctrl-C mid-run: abort() keeps the partial file and its journal
        n[0] += 1
        return real(self, *a, **kw)

    monkeypatch.setattr(resume.ResumableWriter, "add", add)
    with pytest.raises(KeyboardInterrupt):
        quiet_convert(base, ft, out, alpha=2, bits=4, group_size=8, encoding="seeded", seed_trials=3)
    monkeypatch.setattr(resume.ResumableWriter, "add", real)
    assert not out.exists() and (tmp_path / "out.ddq.partial").exists()
    s = quiet_convert(base, ft, out, alpha=2, bits=4, group_size=8, encoding="seeded", seed_trials=3,
                      resume=True)
    assert s.resumed_tensors == 4
    assert out.read_bytes() == whole.read_bytes()
    # A journal written with 3 trials does not match a 1-trial run: nothing is reused.
    n[0] = 0
    monkeypatch.setattr(resume.ResumableWriter, "add", add)
    with pytest.raises(KeyboardInterrupt):
        quiet_convert(base, ft, tmp_path / "two.ddq", alpha=2, bits=4, group_size=8, encoding="seeded",
                      seed_trials=3)
    monkeypatch.setattr(resume.ResumableWriter, "add", real)
    s = quiet_convert(base, ft, tmp_path / "two.ddq", alpha=2, bits=4, group_size=8, encoding="seeded",
                      resume=True)
    assert s.resumed_tensors == 0
    assert "seed_trials" not in open_ddq(tmp_path / "two.ddq").header["algorithm"]
