"""--target-ratio's rescale: the rule, the choice of c, what the file stores, the record, and --no-rescale."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_format import open_ddq
from ddq_format.converters import rescale
from ddq_format.spec import CONVERT_RESCALE_GRID


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from tests.tiny_models import make_pair
    return make_pair(tmp_path_factory.mktemp("rescale"), "llama", hidden=128, layers=2)


def test_factor_is_one_without_noise_and_falls_with_alpha():
    assert rescale.factor(64, 0.0) == 1.0 and rescale.factor(1, 0.01) == 1.0
    assert rescale.factor(8, 0.002) > rescale.factor(64, 0.002) > rescale.factor(128, 0.002) > 0
    assert rescale.factor(65, 1 / 64) == pytest.approx(0.5)


def test_choose_takes_the_smallest_c_within_the_tolerance_and_stops_past_the_minimum():
    calls = []

    def crit(c):  # least at 0.004, flat to within 0.5% at 0.003
        calls.append(c)
        return {0.003: 1.004}.get(c, 1.0 + 200 * abs(c - 0.004))

    c, seen = rescale.choose(crit)
    assert c == 0.003 and seen[0.004] == 1.0
    assert calls == [k for k in CONVERT_RESCALE_GRID if k <= 0.006]  # 0.006 is past 1.1 x the least: stop
    c, _ = rescale.choose(lambda c: 1.0 + c)  # rescaling never helps: the unbiased scale
    assert c == 0.0


def _decoded(path):
    with open_ddq(path) as f:
        return {e["name"]: (e, f.decode(e["name"])) for e in f.header["tensors"] if e["kind"] == "compressed"}


def test_dropout_entries_store_the_rescaled_delta_and_the_choice_is_recorded(tmp_path, pair, quiet_convert,
                                                                             monkeypatch, capsys):
    """With c forced (the tiny pair's own choice is 0): each dropout entry decodes to factor(alpha, c of its role)
    x what the --no-rescale file decodes to with the same configuration (same seed, same codes up to rounding
    ties; the record's bytes may move an allocation); the rest is unchanged."""
    base, ft = pair
    cache = {}
    off = tmp_path / "off.ddq"
    quiet_convert(base, ft, off, target_ratio=40, method_options={"rescale": False, "cache": cache, "split": False})
    real = rescale.choose
    monkeypatch.setattr(rescale, "choose", lambda crit: (0.02, {0.0: crit(0.0), 0.02: crit(0.02)}))
    on = tmp_path / "on.ddq"
    quiet_convert(base, ft, on, target_ratio=40, method_options={"cache": cache, "split": False})
    monkeypatch.setattr(rescale, "choose", real)
    a, b = _decoded(off), _decoded(on)
    assert a.keys() == b.keys()
    with open_ddq(on) as f:
        r = f.header["algorithm"]["rescale"]
    scaled = 0
    for name, (e, d_on) in b.items():
        e_off, d_off = a[name]
        alpha = e["params"].get("alpha", 1)
        same = {k: v for k, v in e["params"].items() if k in ("alpha", "seed", "group_size")}
        if e_off["encoding"] != e["encoding"] or same != {k: e_off["params"].get(k) for k in same}:
            continue  # another configuration for this tensor
        if e["encoding"] == "seeded_rans" and alpha > 1:
            t = rescale.factor(alpha, rescale.c_for(r, name))
            assert t < 1 or rescale.c_for(r, name) == 0, name
            step = e["params"]["scale"]
            assert np.abs(d_on - t * d_off).max() <= 1.01 * alpha * step, name  # a code off by one at most
            assert np.mean(np.isclose(d_on, t * d_off, rtol=1e-5, atol=1e-12)) > 0.99, name
            scaled += 1
        else:
            np.testing.assert_array_equal(d_on, d_off, err_msg=name)
    assert scaled >= len(b) // 2
    assert r["c"] == 0.02 and r["tokens"] > 0 and set(r["grid"]) == {"0", "0.02"}
    assert set(r["roles"]) == {"model.layers.*." + m for m in ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                                               "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                                               "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                                               "mlp.down_proj.weight")} & set(r["roles"])
    with open_ddq(off) as f:
        assert "rescale" not in f.header["algorithm"]
    from ddq_format.cli import app
    from typer.testing import CliRunner
    res = CliRunner().invoke(app, ["inspect", str(on)])
    assert res.exit_code == 0 and "c=0.02 (per role, " in " ".join(res.output.split())
    assert "dropout deltas x 1/(1 + c (alpha - 1))" in " ".join(res.output.split())


def test_the_search_runs_on_the_calibration_text_and_never_worsens_the_criterion(tmp_path, pair, quiet_convert):
    base, ft = pair
    out = tmp_path / "r.ddq"
    quiet_convert(base, ft, out, target_ratio=40)
    with open_ddq(out) as f:
        r = f.header["algorithm"]["rescale"]
    assert r["c"] in CONVERT_RESCALE_GRID and r["tokens"] > 0
    assert r["grid"][f"{r['c']:g}"] <= r["grid"]["0"] * (1 + 1e-9)


def test_a_pair_without_tokenizer_skips_the_rescale_with_a_warning(tmp_path, pair, quiet_convert):
    import shutil
    base, ft = pair
    bare_b, bare_f = tmp_path / "b", tmp_path / "f"
    for src, dst in ((base, bare_b), (ft, bare_f)):
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tokenizer*"))
    from rich.console import Console
    console = Console(record=True, width=200)
    from ddq_format.converters import convert
    out = tmp_path / "r.ddq"
    convert(bare_b, bare_f, out, target_ratio=40, progress=False, console=console, print_summary=True)
    text = console.export_text()
    assert "rescale skipped" in text and "csr_parts" not in text and "chosen per tensor" in text
    with open_ddq(out) as f:
        assert "no calibration tokens" in f.header["algorithm"]["rescale"]["skipped"]


def test_the_command_line_switches_it_off(tmp_path, pair):
    from typer.testing import CliRunner

    from ddq_format.cli import app
    base, ft = pair
    for flag, present in (("--no-rescale", False), ("--rescale", True)):
        out = tmp_path / f"{flag}.ddq"
        res = CliRunner().invoke(app, ["convert", str(base), str(ft), "-o", str(out), "--target-ratio", "40", flag,
                                       "--quiet"])
        assert res.exit_code == 0, res.output
        with open_ddq(out) as f:
            assert ("rescale" in f.header["algorithm"]) is present


def test_an_interrupted_run_resumes_though_the_criterion_moves_in_its_last_digits(tmp_path, pair, quiet_convert,
                                                                                  monkeypatch):
    """--resume keys the run on the chosen c, not on the measured criterion values: a resumed run whose passes
    differ in the last digits continues the partial file and gives the uninterrupted bytes."""
    from ddq_format.converters import resume
    base, ft = pair
    jitter = [0.0]
    monkeypatch.setattr(rescale, "choose", lambda crit: (0.01, {0.0: 0.5 + jitter[0], 0.01: 0.4 + jitter[0]}))
    whole = tmp_path / "whole.ddq"
    quiet_convert(base, ft, whole, target_ratio=40)
    real, n = resume.ResumableWriter.add, [0]

    def add(self, *a, **kw):
        if n[0] == 4:
            raise KeyboardInterrupt
        n[0] += 1
        return real(self, *a, **kw)

    out = tmp_path / "out.ddq"
    monkeypatch.setattr(resume.ResumableWriter, "add", add)
    with pytest.raises(KeyboardInterrupt):
        quiet_convert(base, ft, out, target_ratio=40)
    monkeypatch.setattr(resume.ResumableWriter, "add", real)
    jitter[0] = 1e-6
    s = quiet_convert(base, ft, out, target_ratio=40, resume=True)
    assert s.resumed_tensors == 4 and out.read_bytes() == whole.read_bytes()


def _unrescaled(tmp_path, pair, quiet_convert):
    """A --no-rescale file of the tiny pair, its decoded deltas and the alphas of its dropout entries."""
    out = tmp_path / "r.ddq"
    quiet_convert(*pair, out, target_ratio=40, method_options={"rescale": False, "split": False})
    with open_ddq(out) as f:
        deltas = {e["name"]: f.decode(e["name"]) for e in f.header["tensors"] if e["kind"] in ("compressed", "dense")}
        alphas = {e["name"]: e["params"]["alpha"] for e in f.header["tensors"]
                  if e["encoding"] == "seeded_rans" and e["params"]["alpha"] > 1}
    return out, deltas, alphas


def test_the_criterion_is_the_weighted_kl_of_the_model_a_loader_builds(tmp_path, pair, quiet_convert):
    """WeightedKL(0) is the weighted KL of base + the file's deltas as apply_delta builds it; moving to another c
    and back gives the same value (the in-place updates leave no residue); a larger shrink changes it."""
    import torch
    from transformers import AutoModelForCausalLM

    from ddq_format.loaders import apply_delta
    base, ft = pair
    out, deltas, alphas = _unrescaled(tmp_path, pair, quiet_convert)
    assert alphas
    ids = np.random.default_rng(0).integers(0, 200, 300)
    crit = rescale.WeightedKL(base, ft, ids, dict(deltas), alphas)
    at0 = crit(0.0)
    assert crit(0.05) != pytest.approx(at0, rel=1e-4)
    assert crit(0.0) == pytest.approx(at0, rel=1e-5)

    def logprobs(folder_or_model, batch):
        m = folder_or_model if not isinstance(folder_or_model, type(base)) else \
            AutoModelForCausalLM.from_pretrained(str(folder_or_model), dtype=torch.float32)
        with torch.no_grad():
            return torch.log_softmax(m(batch).logits.float(), -1)

    batch = torch.stack([torch.as_tensor(ids[i:i + 128]) for i in (0, 128)])
    p, b = logprobs(ft, batch), logprobs(base, batch)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    apply_delta(model, out)
    q = logprobs(model, batch)
    w = (p.exp() * (p - b)).sum(-1)
    want = float(((p.exp() * (p - q)).sum(-1) * w).sum() / w.sum())
    assert at0 == pytest.approx(want, rel=1e-4)


def test_dropout_deltas_are_held_as_their_kept_elements_with_the_same_criterion(tmp_path, pair, quiet_convert):
    """rescale.kept holds a dropout delta as its nonzero elements (12 bytes each: under half the float32 array at
    alpha >= 8) and WeightedKL gives the same values from it as from the dense arrays."""
    base, ft = pair
    out, deltas, alphas = _unrescaled(tmp_path, pair, quiet_convert)
    held = {n: rescale.kept(d) if n in alphas else d for n, d in deltas.items()}
    for n, a in alphas.items():
        k = held[n]
        assert isinstance(k, rescale.Kept) and k.nbytes < deltas[n].nbytes * 12 / (4 * a) * 1.05 + 64, n
        back = np.zeros(k.shape, np.float32).ravel()
        back[k.index] = k.values
        np.testing.assert_array_equal(back.reshape(k.shape), deltas[n])
    assert not isinstance(rescale.kept(np.ones((4, 4), np.float32)), rescale.Kept)  # dense: kept as it is
    ids = np.random.default_rng(0).integers(0, 200, 300)
    dense, sparse = rescale.WeightedKL(base, ft, ids, dict(deltas), alphas), rescale.WeightedKL(base, ft, ids, held,
                                                                                                  alphas)
    for c in (0.0, 0.05, 0.0):  # the weights can differ by an ulp (fused multiply-add in the dense add_)
        assert sparse(c) == pytest.approx(dense(c), rel=1e-5)
    one = {rescale.role(next(iter(alphas))): 0.05}  # one role moved, the others at c
    moved = dense(0.0, one)
    assert sparse(0.0, one) == pytest.approx(moved, rel=1e-5) and moved != pytest.approx(dense(0.0), rel=1e-4)


def test_too_little_memory_skips_the_rescale_with_a_warning(tmp_path, pair, monkeypatch):
    """An out-of-memory kill would lose the whole conversion: where the model in float32 does not fit in the
    memory available, the rescale is skipped and the file says why."""
    from rich.console import Console

    from ddq_format.converters import convert
    base, ft = pair
    monkeypatch.setattr(rescale, "available_memory", lambda: 2**20)
    console = Console(record=True, width=200)
    out = tmp_path / "r.ddq"
    convert(base, ft, out, target_ratio=40, progress=False, console=console, print_summary=True)
    text = " ".join(console.export_text().split())
    assert "rescale skipped" in text and "GiB of memory is available" in text and "--no-rescale" in text
    with open_ddq(out) as f:
        assert "GiB of memory is available" in f.header["algorithm"]["rescale"]["skipped"]
    monkeypatch.setattr(rescale, "available_memory", lambda: None)  # no answer: no check
    assert rescale.memory_shortfall(10**15) is None


def test_refine_moves_each_role_to_its_own_least_and_leaves_flat_roles_at_the_shared_c():
    targets = {"a": 0.004, "b": 0.0, "flat": None}
    calls = []

    def crit(c0, roles):
        calls.append(dict(roles))
        return 1.0 + sum(1e5 * (roles.get(r, c0) - t) ** 2 for r, t in targets.items() if t is not None)

    cs, value, passes = rescale.refine(crit, 0.002, crit(0.002, {}), sorted(targets))
    assert cs == {"a": 0.004, "b": 0.0, "flat": 0.002}
    assert value == pytest.approx(1.0) and passes == len(calls) - 1 <= 3 * len(CONVERT_RESCALE_GRID)
    assert rescale.role("model.layers.11.mlp.up_proj.weight") == "model.layers.*.mlp.up_proj.weight"
    assert rescale.c_for({"c": 0.002, "roles": {"model.layers.*.mlp.up_proj.weight": 0.0}},
                         "model.layers.3.mlp.up_proj.weight") == 0.0
    assert rescale.c_for({"c": 0.002, "roles": {}}, "model.layers.3.mlp.up_proj.weight") == 0.002
    assert rescale.c_for({"skipped": "why"}, "x") == 0.0


def test_a_model_with_more_roles_than_the_cap_keeps_one_c():
    from ddq_format.spec import CONVERT_RESCALE_ROLES_MAX
    few = [f"r{i}" for i in range(3)]
    many = [f"r{i}" for i in range(CONVERT_RESCALE_ROLES_MAX + 1)]
    assert set(rescale.placeholder(few)["roles"]) == set(few)
    assert "roles" not in rescale.placeholder(many) and "roles" not in rescale.placeholder()


def test_split_entries_are_rescaled_too(tmp_path, pair, quiet_convert, monkeypatch):
    """seeded_rans_split entries are dropout entries: with c forced, each decodes to one t < 1 times the
    --no-rescale file's decode of the same classes (a code off by one at most)."""
    base, ft = pair
    cache = {}
    off, on = tmp_path / "off.ddq", tmp_path / "on.ddq"
    quiet_convert(base, ft, off, target_ratio=40, method_options={"rescale": False, "cache": cache})
    monkeypatch.setattr(rescale, "choose", lambda crit: (0.02, {0.0: crit(0.0), 0.02: crit(0.02)}))
    quiet_convert(base, ft, on, target_ratio=40, method_options={"cache": cache})
    a, b = _decoded(off), _decoded(on)
    checked = 0
    for name, (e, d_on) in b.items():
        e_off, d_off = a[name]
        if e["encoding"] != "seeded_rans_split" or e_off["encoding"] != e["encoding"]:
            continue
        key = lambda p: (p["hot_columns"], *((p[c]["alpha"], p[c]["seed"]) for c in ("hot", "rest")))  # noqa: E731
        if key(e["params"]) != key(e_off["params"]):
            continue
        nz = (d_off != 0) & (d_on != 0)
        t = float(np.median(d_on[nz] / d_off[nz]))
        assert 0 < t < 1, name
        assert np.mean(np.isclose(d_on[nz], t * d_off[nz], rtol=0.02)) > 0.9, name
        checked += 1
    assert checked
