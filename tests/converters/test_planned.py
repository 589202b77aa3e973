"""Planned conversions on a tiny pair: --target-ratio lands within 5% of R, every choice is recorded, no tensor
is stored above its fp16 delta size; the baselines write their encodings; bad options are refused early."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_format import UsageError, open_ddq
from ddq_format.accounting import report
from ddq_format.converters.planned import tensors_ratio


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
        for e in data:
            if len(e["shape"]) == 1:
                assert e["encoding"] == "dense_q"
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
