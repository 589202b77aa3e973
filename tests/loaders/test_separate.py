"""Separate computation (DeltaLinear, patch_model) and many deltas on one base (attach_deltas) against the
materialized models (apply_delta on a fresh base), with every encoding the kernels keep compressed
(seeded_rans included), on the torch reference path and on the Triton kernels (interpreted on CPU).

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
    """Four fine-tunes of one base: csr_parts only, seeded only, mixed (it also changes the final norm:
    per-row norm weights), seeded_rans only."""
    root = tmp_path_factory.mktemp("sep")
    base_model = tiny_model(seed=0)
    base = checkpoint_state(base_model)
    paths = [write_ddq(root / "a.ddq", base, finetune(base_model, seed=11), encoding="csr_parts"),
             write_ddq(root / "b.ddq", base, finetune(base_model, seed=12, scale=0.05), encoding="seeded"),
             write_ddq(root / "c.ddq", base, finetune(base_model, seed=13, keep_same=()), encoding="mixed"),
             write_ddq(root / "d.ddq", base, finetune(base_model, seed=14, scale=0.03), encoding="seeded_rans")]
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
        assert info["encoded_bytes"] > 0 and not info["in_place"] or "norm" in " ".join(info["in_place"])
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
    assert state.n == 4
    down = model.model.layers[1].mlp.down_proj
    assert isinstance(down, MultiDeltaLinear) and set(down.compressed) == {0, 1, 2, 3}  # seeded_rans stays compressed
    assert not down.dense
    assert resident_delta_bytes(model) > 0
    ids = deltas["ids"]
    index = torch.tensor([2, -1, 3, 1])
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
    with pytest.raises(UsageError, match="-1..3"):
        set_delta_index(model, torch.tensor([4, 0, 0, 0]))


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


def test_seeded_rans_kept_compressed(deltas):
    """patch_model keeps seeded_rans linears compressed (resident as seeded codes, within 2x of the file's
    bytes for these 4-bit codes) instead of applying them in place."""
    from ddq_format import DDQFile
    model = tiny_model(seed=0)
    info = patch_model(model, deltas["paths"][3])
    with DDQFile(deltas["paths"][3]) as f:
        rans = [n for n, e in f.entries.items() if e.get("encoding") == "seeded_rans"]
    assert rans and set(rans) <= set(info["separate"]) and not set(rans) & set(info["in_place"])
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, DeltaLinear) and q.delta.encoding == "seeded_rans" and q.delta.layout.name == "seeded"
    assert info["delta_bytes"] <= 2 * info["encoded_bytes"]


@pytest.fixture
def triton_backend(monkeypatch):
    """Every kernel call on the Triton kernels: CPU tensors run them interpreted (TRITON_INTERPRET=1)."""
    import os
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors on the Triton kernels need TRITON_INTERPRET=1 (the root conftest sets it without "
                    "a GPU); test_gpu.py covers these paths on a GPU")
    pytest.importorskip("triton")
    monkeypatch.setenv("DDQ_KERNEL_BACKEND", "triton")


def test_fused_and_grouped_kernels_in_the_loaders(deltas, triton_backend):
    """DeltaLinear on the fused base + delta kernel (1 token; 9 tokens: the 16-token tile) and
    MultiDeltaLinear on the SGMV kernel give the materialized model's logits (a causal model's first
    positions depend on those tokens only)."""
    ids = deltas["ids"]
    model = tiny_model(seed=0)
    patch_model(model, deltas["paths"][2])  # mixed csr_parts / seeded
    with torch.no_grad():
        out = model(ids[:1, :1]).logits
        assert close(out, deltas["ref"][2][:1, :1]), float((out - deltas["ref"][2][:1, :1]).abs().max())
        out = model(ids[1:2]).logits
        assert close(out, deltas["ref"][2][1:2]), float((out - deltas["ref"][2][1:2]).abs().max())
    multi = tiny_model(seed=0)
    attach_deltas(multi, deltas["paths"])
    index = torch.tensor([3, 0, -1, 2])
    with torch.no_grad(), use_deltas(multi, index):
        out = multi(ids[:, :1]).logits
    for row, slot in enumerate(index.tolist()):
        ref = (deltas["base_logits"] if slot < 0 else deltas["ref"][slot])[row, :1]
        assert close(out[row], ref), (row, slot, float((out[row] - ref).abs().max()))
