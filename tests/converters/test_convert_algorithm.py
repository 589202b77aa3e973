"""The DeltaDQ algorithm pieces: exact group counts, unbiased rescaling, the attention proxy, the search."""
from __future__ import annotations

import numpy as np
import pytest

from ddq_format import open_ddq
from ddq_format.converters import groupsize
from ddq_format.converters.checkpoint import Checkpoint, to_f32
from ddq_format.converters.dropout import groupwise_dropout_blocked
from ddq_format.converters.methods import Options, reconstruct
from ddq_format.converters.seeds import tensor_seed
from ddq_format.seeded_mask import group_layout


def test_kept_count_per_group_is_exact_in_the_file(tmp_path, llama, quiet_convert):
    base, ft = llama
    out = tmp_path / "o.ddq"
    quiet_convert(base, ft, out, alpha=4, bits=4, parts=2, group_size=16)
    f = open_ddq(out)
    checked = 0
    for name, e in f.entries.items():
        if e["kind"] != "compressed":
            continue
        rows, cols = e["shape"]
        g, a = e["params"]["group_size"], e["params"]["alpha"]
        counts = np.zeros((rows, -(-cols // g)), np.int64)
        for part in f.parts(name):
            r = np.repeat(np.arange(rows), np.diff(part.row_offsets.astype(np.int64)))
            np.add.at(counts, (r, part.col_indices.astype(np.int64) // g), 1)
        full, keep, tail, keep_tail = group_layout(cols, g, a)
        want = np.array([keep] * full + ([keep_tail] if tail else []))
        assert (counts == want).all(), name
        checked += 1
    assert checked >= 10


def test_rescaling_is_unbiased_over_seeds():
    rng = np.random.default_rng(0)
    delta = rng.standard_normal((4, 40)).astype(np.float32)  # 40 = 2 full groups of 16 + a tail of 8
    alpha, n = 4, 2000
    acc = np.zeros_like(delta, np.float64)
    for s in range(n):
        cols, vals = groupwise_dropout_blocked(delta, alpha, 16, s)
        np.add.at(acc, (np.repeat(np.arange(4), cols.shape[1]), cols.reshape(-1).astype(np.int64)),
                  vals.reshape(-1))
    mean = acc / n
    se = np.abs(delta) * np.sqrt(alpha - 1) / np.sqrt(n)
    assert (np.abs(mean - delta) <= 5 * se + 1e-6).all()
    # and it is not trivially true: without the rescale the mean is delta / alpha, far outside the band
    assert (np.abs(mean / alpha - delta) > 5 * se).mean() > 0.9


def _torch_scores(arch, folder, ids, replace=None):
    """Q K^T per head through transformers' own modules of layer 0 (no RoPE: the proxy's definition)."""
    import torch
    import transformers as tf
    model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    sd = model.state_dict()
    with torch.no_grad():
        for n, w in (replace or {}).items():
            sd[n].copy_(torch.from_numpy(w))
        x = torch.from_numpy(ids)[None]
        if arch == "gpt2":
            tr = model.transformer
            h = tr.h[0].ln_1(tr.wte(x) + tr.wpe(torch.arange(x.shape[1])[None]))
            q, k, _ = tr.h[0].attn.c_attn(h).split(model.config.n_embd, dim=2)
            H = model.config.n_head
            q = q.view(1, -1, H, q.shape[-1] // H).transpose(1, 2)
            k = k.view(1, -1, H, k.shape[-1] // H).transpose(1, 2)
        else:
            layer = model.model.layers[0]
            h = layer.input_layernorm(model.model.embed_tokens(x))
            att = layer.self_attn
            shp = (1, x.shape[1], -1, att.head_dim)
            q, k = att.q_proj(h).view(shp), att.k_proj(h).view(shp)
            if hasattr(att, "q_norm"):
                q, k = att.q_norm(q), att.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return (q @ k.transpose(-1, -2))[0].double().numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gpt2"])
def test_proxy_equals_transformers_first_attention_layer(tmp_path, models, arch, quiet_convert):
    base, ft = models(arch, arch)
    out = tmp_path / "o.ddq"
    s = quiet_convert(base, ft, out, alpha=4, bits=4, parts=1)
    rec = s.group_size_search
    assert rec["candidates"][rec["errors"].index(min(rec["errors"]))] == rec["chosen"] == s.group_size
    ck_ft = Checkpoint(ft)
    ids = groupsize.tokenize(ft, groupsize.DEFAULT_CALIB_TEXT, 64)
    ad = groupsize.adapter_for(ck_ft.config, ck_ft.tensors)
    if arch == "qwen2":
        assert ad.q_bias and ad.k_bias
    if arch == "qwen3":
        assert ad.q_norm and ad.k_norm
    small = {n: to_f32(ck_ft.read(n), "F32") for n in (ad.q_bias, ad.k_bias, ad.q_norm, ad.k_norm) if n}
    w_ft = {n: to_f32(ck_ft.read(n), "F32") for n in ad.compressed_names}
    ours = groupsize.scores(*groupsize.project(ad, groupsize.hidden_states(ad, ck_ft, ids), w_ft, small))
    ref = _torch_scores(arch, ft, ids)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # The recorded error of the chosen h_g is the proxy of the file's own decoded q/k deltas.
    f, ck_base = open_ddq(out), Checkpoint(base)
    w_hat = {n: to_f32(ck_base.read(n), "F32") + f.decode(n) for n in ad.compressed_names}
    full_ids = groupsize.tokenize(ft, groupsize.DEFAULT_CALIB_TEXT, 512)[: rec["tokens"]]  # gpt2: 128 positions
    hat = _torch_scores(arch, ft, full_ids, w_hat)
    err = float(((hat - _torch_scores(arch, ft, full_ids)) ** 2).sum())
    assert err == pytest.approx(rec["errors"][rec["candidates"].index(rec["chosen"])], rel=1e-3)


def test_search_returns_the_argmin_and_uses_the_run_seeds(llama):
    base, ft = llama
    b, f = Checkpoint(base), Checkpoint(ft)
    ad = groupsize.adapter_for(f.config, f.tensors)
    ids = groupsize.tokenize(ft, "some calibration text about numbers 1 2 3", 64)
    opts = Options(alpha=2, bits=3, parts=1)
    seen = []
    res = groupsize.search(ad, b, f, ids, opts, lambda n: tensor_seed(7, n), report=lambda g, e: seen.append((g, e)))
    assert list(res.errors) == [2, 4, 8, 16, 32, 64] == [g for g, _ in seen]
    assert res.chosen == min(res.errors, key=res.errors.get)
    assert len(set(res.errors.values())) > 1
    # recompute one candidate by hand
    x = groupsize.hidden_states(ad, f, ids)
    w = {n: to_f32(b.read(n), "F32") + reconstruct(to_f32(f.read(n), "F32") - to_f32(b.read(n), "F32"), opts,
                                                  tensor_seed(7, n), 8) for n in ad.compressed_names}
    wf = {n: to_f32(f.read(n), "F32") for n in ad.compressed_names}
    ref = groupsize.scores(*groupsize.project(ad, x, wf, {}))
    assert groupsize.proxy_error(ref, *groupsize.project(ad, x, w, {})) == pytest.approx(res.errors[8], rel=1e-9)


def test_candidates():
    assert groupsize.candidates(8, 4096) == [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert groupsize.candidates(3, 50) == [3, 6, 12, 24, 48]
