"""Planned conversions on a tiny pair: --target-ratio lands within 5% of R, every choice is recorded, no tensor
is stored above its fp16 delta size; the baselines write their encodings; bad options are refused early."""
from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from ddq_format import UsageError, open_ddq
from ddq_format.accounting import report
from ddq_format.cli_report import wider_than_fp16
from ddq_format.converters import budget
from ddq_format.converters.planned import tensors_ratio
from ddq_format.spec import CONVERT_PLAN_1D_SHARE


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from tests.tiny_models import make_pair
    return make_pair(tmp_path_factory.mktemp("planned"), "llama", hidden=128, layers=2)


@pytest.fixture(scope="module")
def cache():
    return {}


@pytest.mark.parametrize("ratio", [6, 12])
def test_target_ratio_is_met_and_recorded(tmp_path, pair, cache, quiet_convert, ratio):
    base, ft = pair
    out = tmp_path / "r.ddq"
    quiet_convert(base, ft, out, target_ratio=ratio, seed_trials=2, method_options={"cache": cache})
    got = tensors_ratio(out)
    assert abs(got / ratio - 1) <= 0.05, got
    with open_ddq(out) as f:
        alg = f.header["algorithm"]
        rep = report(f)
        data = [e for e in f.header["tensors"] if e["kind"] in ("compressed", "dense")]
        assert alg["planner"] == "budget" and alg["target_ratio"] == ratio
        assert len(alg["choice"]) == len(data) and max(alg["choice"]) < len(alg["configs"])
        ones = [e for e in data if len(e["shape"]) == 1]
        assert ones and all(e["encoding"] == "dense_q" for e in ones)
        # one code width for every 1-D delta: 8 bits unless they would take more than their share of the budget
        # (a vector smaller than its own entry takes its smallest candidate, as budget.within_fp16 says)
        # (in a 2.x file each entry's msgpack bytes are charged at the header's recorded compressed share)
        assert (f.version[0] == 2) == ("header_share" in alg)

        def stored(e, bits):
            enc = budget.encode(budget.Config("dense_q", bits=bits), f.decode(e["name"]), 0)
            entry = budget.as_entry(e["name"], e["shape"], e["dtype"], "dense", enc, e["base"])[0]
            plain = len(msgpack.packb(entry, use_bin_type=True))
            return budget.buffer_bytes(entry, f.header["alignment"]) + math.ceil(alg.get("header_share", 1.0) * plain)

        widths = budget.ONE_D_BITS
        size = {(e["name"], b): stored(e, b) for e in ones for b in widths}
        fits = {e["name"]: [b for b in widths if size[e["name"], b] <= 2 * np.prod(e["shape"])]
                or [min(widths, key=lambda b: size[e["name"], b])] for e in ones}  # within_fp16
        # the widest but the last whose total fits the share, else the one before the last (budget.one_d; the
        # last only where nothing fits at the one before: not at these ratios)
        for want in widths[:-1]:
            total = sum(size[n, want] if want in fits[n] else min(size[n, b] for b in fits[n]) for n in fits)
            if total <= CONVERT_PLAN_1D_SHARE * alg["budget_bytes"]:
                break
        for e in ones:
            n = e["name"]
            assert e["params"]["bits"] == want if want in fits[n] else e["params"]["bits"] in fits[n], (n, want)
        assert f.entries["model.embed_tokens.weight"]["kind"] == "compressed"
        for t in rep["tensors"]:  # never above the fp16 delta size, but for tensors smaller than their own entry
            if t["delta_fp16_bytes"] > 2 * t["components"]["header"]:
                assert t["true_ratio"] >= 1, t["name"]
            assert sum(t["components"][c] for c in ("values", "col_indices", "row_offsets", "dense")) \
                <= t["delta_fp16_bytes"], t["name"]
        assert rep["totals"]["delta_fp16_bytes"] == sum(t["delta_fp16_bytes"] for t in rep["tensors"])


def test_planned_file_loads_and_is_close_to_the_fine_tune(tmp_path, pair, cache, quiet_convert):
    import torch
    from transformers import AutoModelForCausalLM
    from ddq_format.loaders import apply_delta
    base, ft = pair
    out = tmp_path / "r.ddq"
    quiet_convert(base, ft, out, target_ratio=4, method_options={"cache": cache})
    m = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    want = AutoModelForCausalLM.from_pretrained(str(ft), dtype=torch.float32).state_dict()
    b0 = {k: v.clone() for k, v in m.state_dict().items()}
    apply_delta(m, out)
    got = m.state_dict()
    num = sum(float(((got[k] - want[k]) ** 2).sum()) for k in want)
    den = sum(float(((b0[k] - want[k]) ** 2).sum()) for k in want)
    assert num < den  # closer to the fine-tune than the base is


@pytest.mark.parametrize("method,kw,encs", [
    ("deltacome", {"target_ratio": 8}, {"lowrank_q"}),
    ("deltacome", {"target_ratio": 8, "method_options": {"allocation": "ilp"}}, {"lowrank_q"}),
    ("deltazip", {}, {"nm_q"}),
    ("bitdelta-distill", {"method_options": {"steps": 3}}, {"sign_scale"}),
])
def test_baselines_write_their_encodings(tmp_path, pair, quiet_convert, method, kw, encs):
    base, ft = pair
    out = tmp_path / "b.ddq"
    quiet_convert(base, ft, out, method=method, **kw)
    with open_ddq(out) as f:
        got = {e["encoding"] for e in f.header["tensors"] if e["kind"] == "compressed"}
        assert got == encs
        assert f.header["algorithm"]["method"] == method.split("-")[0]
        for n in f.names:
            assert np.isfinite(f.decode(n)).all()
    if method == "deltacome":
        assert abs(tensors_ratio(out) / kw["target_ratio"] - 1) < 0.25  # budget in codes + scales, per matrix


def test_distilled_scales_differ_from_the_mean(tmp_path, pair, quiet_convert):
    base, ft = pair
    quiet_convert(base, ft, tmp_path / "m.ddq", method="bitdelta", alpha=1)
    quiet_convert(base, ft, tmp_path / "d.ddq", method="bitdelta-distill", method_options={"steps": 5})
    with open_ddq(tmp_path / "m.ddq") as a, open_ddq(tmp_path / "d.ddq") as b:
        name = "model.layers.0.mlp.up_proj.weight"
        assert a.entries[name]["params"]["scale"] != b.entries[name]["params"]["scale"]
        assert b.header["algorithm"]["distill"]["steps"] == 5


@pytest.mark.parametrize("kw,match", [({"target_ratio": 0.5}, "target-ratio"),
                                      ({"target_ratio": 16, "alpha": 8}, "alpha and bits"),
                                      ({"target_ratio": 16, "method": "dare"}, "deltadq"),
                                      ({"method": "deltacome", "target_ratio": 8,
                                        "method_options": {"allocation": "greedy"}}, "allocation")])
def test_bad_options_are_refused(tmp_path, pair, quiet_convert, kw, match):
    base, ft = pair
    with pytest.raises(UsageError, match=match):
        quiet_convert(base, ft, tmp_path / "x.ddq", **kw)
    assert not (tmp_path / "x.ddq").exists()


def test_cli_target_ratio_and_inspect_show_the_choices(tmp_path, pair):
    """`ddq convert --target-ratio` from the command line; `ddq inspect` shows the planner's choices and
    `--json` gives totals.tensors_true_ratio."""
    import json

    from typer.testing import CliRunner

    from ddq_format.cli import app
    base, ft = pair
    out = tmp_path / "c.ddq"
    res = CliRunner().invoke(app, ["convert", str(base), str(ft), "-o", str(out), "--target-ratio", "10", "-q",
                                   "--no-split"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["inspect", str(out), "--json"])
    rep = json.loads(res.stdout)
    assert abs(rep["totals"]["tensors_true_ratio"] / 10 - 1) <= 0.05
    assert rep["algorithm"]["planner"] == "budget" and rep["format_version"] == "2.0"  # compact; no split: 2.0
    assert not [t for t in rep["tensors"] if t.get("encoding") == "seeded_rans_split"]
    res = CliRunner().invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0 and "chosen" in res.stdout
    configs, choice = rep["algorithm"]["configs"], rep["algorithm"]["choice"]
    top = max(set(choice), key=choice.count)
    assert f"{configs[top]}: {choice.count(top)}" in " ".join(res.stdout.split())
    res = CliRunner().invoke(app, ["convert", str(base), str(ft), "-o", str(tmp_path / "d.ddq"), "--method",
                                   "deltacome", "--target-ratio", "8", "--allocation", "ilp", "-q"])
    assert res.exit_code == 0, res.output
    with open_ddq(tmp_path / "d.ddq") as f:
        assert f.header["algorithm"]["allocation"] == "ilp"


def test_default_convert_stores_no_tensor_wider_than_fp16(tmp_path, pair, quiet_convert):
    """Issue 11 item 2: every dense delta at most 16 bits per element: an F32 fine-tune's dense deltas
    (norms included, raw, so a default file needs no 1.3 reader) as binary16; none flagged by inspect."""
    from ddq_format.converters import convert
    base, ft = pair
    out = tmp_path / "default.ddq"
    convert(base, ft, out, progress=False, quiet=True)  # the library's defaults, as `ddq convert` with no options
    dense = tmp_path / "dense.ddq"
    quiet_convert(base, ft, dense, embeddings="dense")
    for p in (out, dense):
        with open_ddq(p) as f:
            rep = report(f)
            for t in rep["tensors"]:
                e = f.entries[t["name"]]
                if e["kind"] != "dense":
                    continue
                data = sum(b["length"] for b in e["buffers"].values())
                assert data <= t["delta_fp16_bytes"], t["name"]
                assert e["encoding"] == "raw" and e["buffers"]["data"]["dtype"] in ("F16", "BF16"), t["name"]
                assert not wider_than_fp16(t), t["name"]
    with open_ddq(dense) as f:  # --embeddings dense: the delta's own 16 bits, plus its entry
        assert f.entries["model.embed_tokens.weight"]["kind"] == "dense"


def test_default_price_runs_no_calibration_pass(tmp_path, pair, quiet_convert, monkeypatch):
    """--target-ratio's default (element-wise) price needs no calibration: the fine-tune is never run and the
    header records no calibration; the calibration-metric objective still runs the pass."""
    from ddq_format.converters import calibration
    base, ft = pair
    real = calibration.collect
    calls = []

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(calibration, "collect", counting)
    out = tmp_path / "snr.ddq"
    quiet_convert(base, ft, out, target_ratio=8)
    assert calls == []
    with open_ddq(out) as f:
        assert "calibration" not in f.header["algorithm"] and f.header["algorithm"]["objective"] == "snr"
    assert abs(tensors_ratio(out) / 8 - 1) <= 0.05
    quiet_convert(base, ft, tmp_path / "cal.ddq", target_ratio=8, method_options={"objective": "calibrated"})
    assert calls == [1]
    with open_ddq(tmp_path / "cal.ddq") as f:
        assert f.header["algorithm"]["calibration"]["calib_tokens"] > 0


def test_vectors_get_4_bit_codes_only_where_8_bits_would_crowd_the_budget(tmp_path, quiet_convert):
    """Norms wider than their own entry: 8-bit codes at a loose budget, 4-bit at one where 8 bits would take more
    than CONVERT_PLAN_1D_SHARE of it (budget.one_d), and the file still lands on the ratio."""
    from tests.tiny_models import make_pair
    base, ft = make_pair(tmp_path / "p", "llama", hidden=512, layers=1)
    bits = {}
    for ratio in (8, 200):
        out = tmp_path / f"r{ratio}.ddq"
        quiet_convert(base, ft, out, target_ratio=ratio, seed_trials=1, method_options={"rescale": False})
        assert abs(tensors_ratio(out) / ratio - 1) <= 0.05
        with open_ddq(out) as f:
            ones = [e for e in f.header["tensors"] if len(e["shape"]) == 1 and e["kind"] == "dense"]
            share = sum(np.prod(e["shape"]) for e in ones) / f.header["algorithm"]["budget_bytes"]
            bits[ratio] = ({e["params"]["bits"] for e in ones}, share)
    assert bits[8][0] == {8} and bits[8][1] < CONVERT_PLAN_1D_SHARE, bits
    assert bits[200][0] == {4} and bits[200][1] > CONVERT_PLAN_1D_SHARE, bits


@pytest.mark.parametrize("ratio", [40])
def test_both_containers_land_on_the_ratio_and_2_0_spends_the_header_it_saves_on_codes(tmp_path, pair, cache,
                                                                                      quiet_convert, ratio):
    """--format 1 and the default (2.0 for --target-ratio) both land within 5% of R; the compact header leaves
    more of the same budget to the tensors' own bytes."""
    base, ft = pair
    reps = {}
    for major in (1, 2):
        out = tmp_path / f"f{major}.ddq"
        quiet_convert(base, ft, out, target_ratio=ratio, format_major=None if major == 2 else 1,
                      method_options={"cache": cache, "rescale": False})
        assert abs(tensors_ratio(out) / ratio - 1) <= 0.05, (major, tensors_ratio(out))
        with open_ddq(out) as f:
            assert f.version == ((1, 4) if major == 1 else (2, 1))  # the minors defining seeded_rans_split
            reps[major] = report(f)["totals"]["components"]
    head = {m: c["header"] + c["scalars"] for m, c in reps.items()}
    data = {m: c["values"] + c["dense"] + c["row_offsets"] + c["col_indices"] for m, c in reps.items()}
    assert head[2] < head[1] / 2, head
    assert data[2] > data[1], data


def test_an_unknown_format_is_refused_before_any_work(tmp_path, pair, quiet_convert):
    base, ft = pair
    with pytest.raises(UsageError, match="--format"):
        quiet_convert(base, ft, tmp_path / "x.ddq", target_ratio=8, format_major=3)
    assert not (tmp_path / "x.ddq").exists()


def test_split_replaces_seeded_rans_where_the_inputs_are_known(tmp_path, pair, cache, quiet_convert):
    """The input moments are measured and recorded; every linear delta at alpha >= 4 is seeded_rans_split, its
    hot columns the inputs with the most energy, kept more often than the rest."""
    base, ft = pair
    out = tmp_path / "s.ddq"
    quiet_convert(base, ft, out, target_ratio=40, method_options={"cache": cache})
    with open_ddq(out) as f:
        alg = f.header["algorithm"]
        assert alg["input_moments"]["tokens"] > 0 and alg["input_moments"]["tensors"] > 0
        lin = [e for e in f.header["tensors"] if e["kind"] == "compressed" and "embed" not in e["name"]
               and "lm_head" not in e["name"]]
        assert lin and not [e for e in lin if e["encoding"] == "seeded_rans" and e["params"]["alpha"] >= 4]
        split = [e for e in lin if e["encoding"] == "seeded_rans_split"]
        assert split and all(e["params"]["hot"]["alpha"] <= e["params"]["rest"]["alpha"] for e in split)
        assert f.version[1] == 1  # 2.1: the minor that defines seeded_rans_split
        for e in split:
            assert np.isfinite(f.decode(e["name"])).all()


def test_no_split_without_moments(tmp_path, pair, quiet_convert, monkeypatch):
    """Where the fine-tune cannot run under transformers the planner warns and offers seeded_rans as before."""
    from ddq_format.converters import moments

    def refuse(*a, **k):
        raise UsageError("transformers cannot load this model", field="calib")

    monkeypatch.setattr(moments, "collect", refuse)
    base, ft = pair
    out = tmp_path / "n.ddq"
    quiet_convert(base, ft, out, target_ratio=40, method_options={"cache": {}})
    with open_ddq(out) as f:
        assert "skipped" in f.header["algorithm"]["input_moments"]
        assert not [e for e in f.header["tensors"] if e.get("encoding") == "seeded_rans_split"]
        assert f.version == (2, 0)


def test_no_split_keeps_seeded_rans(tmp_path, pair, cache, quiet_convert):
    """--no-split (method_options split=False): the kernels' seeded_rans, no forward pass for the moments."""
    base, ft = pair
    out = tmp_path / "k.ddq"
    quiet_convert(base, ft, out, target_ratio=40, method_options={"cache": cache, "split": False})
    with open_ddq(out) as f:
        assert "input_moments" not in f.header["algorithm"]
        encs = {e.get("encoding") for e in f.header["tensors"]}
        assert "seeded_rans" in encs and "seeded_rans_split" not in encs


def test_no_split_where_the_model_does_not_fit_in_memory(tmp_path, pair, quiet_convert, monkeypatch):
    """The moments load the fine-tune in float32: too little memory skips them (and the rescale) with the reason,
    instead of an out-of-memory kill of the whole conversion."""
    from ddq_format.converters import rescale
    monkeypatch.setattr(rescale, "available_memory", lambda: 2**20)
    base, ft = pair
    out = tmp_path / "m.ddq"
    quiet_convert(base, ft, out, target_ratio=40, method_options={"cache": {}})
    with open_ddq(out) as f:
        assert "memory" in f.header["algorithm"]["input_moments"]["skipped"]
        assert not [e for e in f.header["tensors"] if e.get("encoding") == "seeded_rans_split"]


def test_split_only_where_the_smallest_file_fits():
    """split_instead drops seeded_rans at alpha >= 4 beside split candidates, unless the smallest file of the
    split-only candidates would exceed the room: then both stay (the tightest budgets need seeded_rans's bytes)."""
    def opt(family, alpha, nbytes):
        return budget.Option(budget.Config(family, alpha=alpha), nbytes, 0.0, float(alpha), 100)

    opts = {"w": [opt("raw16", 1, 200), opt("rans", 2, 90), opt("rans", 8, 30), opt("split", 8, 36)],
            "v": [opt("dense_q", 1, 5)]}
    narrow = budget.split_instead(opts, room=100)
    assert [o.cfg.family for o in narrow["w"]] == ["raw16", "rans", "split"] and narrow["v"] == opts["v"]
    assert budget.split_instead(opts, room=40) is opts  # 36 + 5 > 40: seeded_rans's 30 bytes stay offered
