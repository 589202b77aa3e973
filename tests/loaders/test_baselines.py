"""The baselines' encodings (csr_f16, sign_scale, lowrank) have no kernels: every loader path must fall back
to the numpy decode instead of refusing them (a bug found by the quality benchmark)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ddq_format import DDQFile  # noqa: E402
from ddq_format.converters import convert  # noqa: E402
from ddq_format.loaders import apply_delta, attach_deltas, patch_model, use_deltas  # noqa: E402
from tests.tiny_models import make_pair  # noqa: E402

METHODS = [("dare", {"alpha": 2}), ("magnitude", {"alpha": 2}), ("bitdelta", {"alpha": 1}),
           ("bitdelta", {"alpha": 2, "group_size": 8}), ("lowrank", {"rank": 4})]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("pair"), "llama", dtype="float32", steps=2)


def check_every_loader(base, out, names, *, kept_compressed=False):
    """apply_delta merges each of `names` as the numpy decode says; patch_model and attach_deltas give the
    merged model's logits (and the base's for a row without delta); kept_compressed: patch_model serves
    every one of `names` from its compressed delta (a DeltaLinear), not merged in place."""
    from transformers import AutoModelForCausalLM

    load = lambda: AutoModelForCausalLM.from_pretrained(base).eval()  # noqa: E731
    ids = torch.randint(0, 200, (2, 5), generator=torch.Generator().manual_seed(0))
    with DDQFile(out) as f:
        expected = {n: load().state_dict()[n] + torch.from_numpy(f.decode(n)) for n in names}
    with torch.no_grad():
        merged = apply_delta(load(), out)
        for n in names:
            assert torch.allclose(merged.state_dict()[n], expected[n], rtol=0, atol=1e-6)
        ref = merged(ids).logits
        patched = load()
        info = patch_model(patched, out)
        assert not kept_compressed or set(names) <= set(info["separate"])
        assert torch.allclose(patched(ids).logits, ref, rtol=1e-4, atol=1e-4)
        multi = load()
        attach_deltas(multi, [out])
        with use_deltas(multi, [0, -1]):
            mixed = multi(ids).logits
        assert torch.allclose(mixed[0], ref[0], rtol=1e-4, atol=1e-4)
        assert torch.allclose(mixed[1], load()(ids).logits[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,opts", METHODS, ids=[f"{m}-{o}" for m, o in METHODS])
def test_every_loader_path_accepts_baseline_encodings(pair, tmp_path, method, opts):
    base, ft = pair
    out = tmp_path / "d.ddq"
    convert(base, ft, out, method=method, quiet=True, progress=False, **opts)
    with DDQFile(out) as f:
        name = next(n for n, e in f.entries.items() if e["kind"] == "compressed")
        assert f.entries[name]["encoding"] in ("csr_f16", "sign_scale", "lowrank")
    check_every_loader(base, out, [name])


def test_every_loader_path_accepts_seeded_rans_split(pair, tmp_path):
    """--target-ratio stores linear deltas as seeded_rans_split: kept compressed by patch_model and
    attach_deltas (each column class a seeded delta with its column list)."""
    base, ft = pair
    out = tmp_path / "s.ddq"
    convert(base, ft, out, target_ratio=40, quiet=True, progress=False)
    with DDQFile(out) as f:
        split = [n for n, e in f.entries.items() if e.get("encoding") == "seeded_rans_split"]
    assert split
    check_every_loader(base, out, split, kept_compressed=True)
