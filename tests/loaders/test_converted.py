"""End to end with the real converter: tests/tiny_models pair (Qwen2: q/k/v biases; bf16; sharded) ->
convert -> materialize / apply_delta / patch_model / attach_deltas.

bf16 tolerance: the separate paths add x·ΔŴᵀ to a bf16 base output while the materialized model rounds
W + ΔŴ to bf16 first, so they agree to bf16 precision: max |Δlogits| <= 2e-2 * max |logits|.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ddq_format.converters import convert  # noqa: E402
from ddq_format.loaders import apply_delta, attach_deltas, patch_model, use_deltas  # noqa: E402
from ddq_format.loaders import materialize  # noqa: E402
from tests.tiny_models import make_pair  # noqa: E402

BF16_RTOL = 2e-2


def test_converted_qwen2_bf16(tmp_path):
    from transformers import AutoModelForCausalLM

    base, ft_a = make_pair(tmp_path, "qwen2", dtype="bfloat16", shard_kb=200, steps=2)
    _, ft_b = make_pair(tmp_path, "qwen2", dtype="bfloat16", shard_kb=200, steps=4)  # same base (same seed)
    ddqs = []
    for i, ft in enumerate((ft_a, ft_b)):
        ddqs.append(tmp_path / f"{i}.ddq")
        convert(base, ft, ddqs[-1], alpha=2, bits=8, parts=1, group_size=8, embeddings="dense", encoding="csr_parts", quiet=True, progress=False)
    load = lambda p: AutoModelForCausalLM.from_pretrained(p).eval()  # noqa: E731
    ids = torch.randint(0, 300, (3, 6), generator=torch.Generator().manual_seed(0))
    refs = []
    with torch.no_grad():
        for i, d in enumerate(ddqs):
            materialize(base, d, tmp_path / f"m{i}", max_shard_size="200KB", progress=False)
            merged = load(tmp_path / f"m{i}")
            assert merged.dtype == torch.bfloat16
            ref = merged(ids).logits.float()
            assert torch.equal(apply_delta(load(base), d)(ids).logits.float(), ref)
            patched = load(base)
            info = patch_model(patched, d)
            assert info["separate"] and any(n.endswith("q_proj.bias") for n in info["in_place"])
            out = patched(ids).logits.float()
            assert float((out - ref).abs().max()) <= BF16_RTOL * float(ref.abs().max())
            refs.append(ref)
        base_ref = load(base)(ids).logits.float()
        multi = load(base)
        attach_deltas(multi, ddqs)
        with use_deltas(multi, [1, -1, 0]):
            out = multi(ids).logits.float()
    for r in refs:  # the deltas move the logits well beyond the tolerance, so the row checks can fail
        assert float((r - base_ref).abs().max()) > 3 * BF16_RTOL * float(r.abs().max())
    for row, slot in enumerate([1, -1, 0]):
        ref = base_ref[row] if slot < 0 else refs[slot][row]
        assert float((out[row] - ref).abs().max()) <= BF16_RTOL * float(ref.abs().max()), (row, slot)
