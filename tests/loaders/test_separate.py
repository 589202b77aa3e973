"""Separate computation (DeltaLinear, patch_model) and many deltas on one base (attach_deltas) against the
materialized models (apply_delta on a fresh base).

Tolerance (fp32 tiny Llama): max |logits - logits_materialized| <= 1e-4 * max(1, max |logits_materialized|).
The two differ only by summation order: (x·W + x·ΔŴ) vs x·(W + ΔŴ).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

from _build import checkpoint_state, finetune, tiny_model, write_ddq  # noqa: E402

from ddq_format import BindingError, UsageError  # noqa: E402
from ddq_format.loaders import (DeltaLinear, MultiDeltaLinear, apply_delta, attach_deltas, patch_model,  # noqa: E402
                                set_delta_index, use_deltas)
from ddq_format.loaders.multi import resident_delta_bytes  # noqa: E402

RTOL = 1e-4


def close(a, b):
    return float((a - b).abs().max()) <= RTOL * max(1.0, float(b.abs().max()))


@pytest.fixture(scope="module")
def deltas(tmp_path_factory):
    """Three fine-tunes of one base: csr_parts only, seeded only, mixed; the third also changes the final
    norm (per-row norm weights)."""
    root = tmp_path_factory.mktemp("sep")
    base_model = tiny_model(seed=0)
    base = checkpoint_state(base_model)
    paths = [write_ddq(root / "a.ddq", base, finetune(base_model, seed=11), encoding="csr_parts"),
             write_ddq(root / "b.ddq", base, finetune(base_model, seed=12, scale=0.05), encoding="seeded"),
             write_ddq(root / "c.ddq", base, finetune(base_model, seed=13, keep_same=()), encoding="mixed")]
    merged = [apply_delta(tiny_model(seed=0), p) for p in paths]
    ids = torch.randint(0, 128, (4, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = [m(ids).logits for m in merged]
        base_logits = base_model(ids).logits
    return {"paths": paths, "ids": ids, "ref": ref, "base_logits": base_logits}


def test_delta_linear_logits_match_materialized(deltas):
    for p, ref in zip(deltas["paths"], deltas["ref"]):
        model = tiny_model(seed=0)
        before = {n: t.clone() for n, t in model.state_dict().items()}
        info = patch_model(model, p)
        assert len(info["separate"]) == 15 and info["delta_bytes"] > 0  # 14 proj + lm_head
        q = model.model.layers[0].self_attn.q_proj
        assert isinstance(q, DeltaLinear)
        # the base weights of separated layers are untouched: W_base + ΔŴ is never formed
        for n in info["separate"]:
            assert torch.equal(model.state_dict()[n], before[n]), n
        with torch.no_grad():
            out = model(deltas["ids"]).logits
        assert close(out, ref), float((out - ref).abs().max())
        assert not torch.equal(out, deltas["base_logits"])


def test_patch_model_checks_binding_first(deltas):
    other = tiny_model(seed=4)
    with pytest.raises(BindingError, match="not the base model"):
        patch_model(other, deltas["paths"][0])
    assert not any(isinstance(m, DeltaLinear) for m in other.modules()), "patched before the check failed"


def test_multi_delta_mixed_batch(deltas):
    model = tiny_model(seed=0)
    state = attach_deltas(model, deltas["paths"])
    assert state.n == 3
    assert isinstance(model.model.layers[1].mlp.down_proj, MultiDeltaLinear)
    assert resident_delta_bytes(model) > 0
    ids = deltas["ids"]
    index = torch.tensor([2, -1, 0, 1])
    with torch.no_grad(), use_deltas(model, index):
        out = model(ids).logits
    for row, slot in enumerate(index.tolist()):
        ref = deltas["base_logits"][row] if slot < 0 else deltas["ref"][slot][row]
        assert close(out[row], ref), (row, slot, float((out[row] - ref).abs().max()))
    # the per-row norm override mattered: slot 2 changes model.norm.weight, the others keep it
    with torch.no_grad():
        set_delta_index(model, None)
        assert close(model(ids).logits, deltas["base_logits"])
        set_delta_index(model, torch.tensor([2, 2, 2, 2]))
        assert close(model(ids).logits, deltas["ref"][2])
    with pytest.raises(UsageError, match="-1..2"):
        set_delta_index(model, torch.tensor([3, 0, 0, 0]))


def test_multi_delta_refuses_what_it_cannot_serve(tmp_path, deltas):
    base_model = tiny_model(seed=0)
    base = checkpoint_state(base_model)
    ft = finetune(base_model, seed=21)
    ft["extra.bias"] = torch.ones(3)  # a tensor only the fine-tune has
    p = write_ddq(tmp_path / "grown.ddq", base, ft)
    with pytest.raises(BindingError, match="extra.bias"):
        attach_deltas(tiny_model(seed=0), [deltas["paths"][0], p])
    with pytest.raises(BindingError, match="not the base model"):
        attach_deltas(tiny_model(seed=9), deltas["paths"])
