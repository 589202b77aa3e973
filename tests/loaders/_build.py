"""Tiny Llama base/fine-tune pairs and .ddq files written directly with the Writer (no converter needed)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ddq_format import Writer
from ddq_format.binding import binding
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, raw, seeded, seeded_rans

ALPHA, GROUP, BITS, PARTS = 2, 8, 4, 2


def tiny_config(tied=False, vocab=128):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64,
                       tie_word_embeddings=tied, dtype="float32")


def tiny_model(seed=0, tied=False):
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tied)).eval()
    with torch.no_grad():  # random init is tiny for some tensors; give everything a visible scale
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def finetune(model, seed=1, scale=0.02, keep_same=("model.norm.weight",)):
    """A perturbed copy of the model's state dict (HF checkpoint names; tied lm_head omitted like HF)."""
    g = torch.Generator().manual_seed(seed)
    sd = checkpoint_state(model)
    out = {}
    for n, t in sd.items():
        out[n] = t.clone() if n in keep_same else t + scale * torch.randn(t.shape, generator=g)
    return out


def checkpoint_state(model):
    """The tensors HF would write: state dict minus the tied duplicate."""
    sd = {n: t.detach().clone() for n, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def bits_of(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(torch.int32).numpy().view(np.uint32)


def write_ddq(path, base_sd, ft_sd, *, encoding="mixed", seed=7, config=None, tied=False, extra_files=None):
    """Linear weights (…proj.weight, lm_head.weight) compressed; others dense; unchanged ones 'same'."""
    path = Path(path)
    i = 0
    with Writer(path, metadata={"source": "tests/loaders"}, algorithm={"name": "deltadq"}) as w:
        for n, b in base_sd.items():
            f = ft_sd[n]
            bind = binding(bits_of(b), b.shape, "F32")
            d = (f - b).numpy().astype(np.float32)
            if not d.any():
                w.add_same(n, b.shape, "F32", base=bind)
            elif b.dim() == 2 and (n.endswith("proj.weight") or n == "lm_head.weight"):
                enc = encoding if encoding != "mixed" else ("csr_parts" if i % 2 == 0 else "seeded")
                i += 1
                cols, vals = groupwise_dropout(d, ALPHA, GROUP, seed)
                if enc in ("seeded", "seeded_rans"):
                    e = (seeded if enc == "seeded" else seeded_rans).encode(d.shape, vals, bits=BITS, alpha=ALPHA,
                                                                            group_size=GROUP, seed=seed)
                else:
                    rows = np.repeat(np.arange(d.shape[0]), cols.shape[1])
                    e = csr_parts.encode(d.shape, rows, cols.reshape(-1), vals.reshape(-1), bits=BITS, parts=PARTS,
                                         alpha=ALPHA, group_size=GROUP, seed=seed)
                w.add(n, "compressed", b.shape, "F32", e, base=bind)
            else:
                w.add(n, "dense", b.shape, "F32", raw.encode(d, "F32"), base=bind)
        for n, f in ft_sd.items():
            if n not in base_sd:
                w.add(n, "replace", f.shape, "F32", raw.encode(f.numpy(), "F32"))
        if tied:
            w.add("lm_head.weight", "tied", base_sd["model.embed_tokens.weight"].shape, "F32",
                  tied_to="model.embed_tokens.weight")
        if config is not None:
            w.add_file("config.json", config.to_json_string().encode())
            w.add_file("generation_config.json", json.dumps({"bos_token_id": 1, "eos_token_id": 2}).encode())
        for name, data in (extra_files or {}).items():
            w.add_file(name, data)
    return path


def expected_state(ddq_path, base_sd):
    """The oracle: base + DDQFile.decode (numpy), per tensor, tied left to the loader."""
    from ddq_format import DDQFile
    with DDQFile(ddq_path) as f:
        out = {}
        for n, b in base_sd.items():
            e = f.entries[n]
            if e["kind"] == "removed":
                continue
            d = torch.from_numpy(np.array(f.decode(n)))
            out[n] = d if e["kind"] == "replace" else b + d
        for n, e in f.entries.items():
            if n not in base_sd and e["kind"] == "replace":
                out[n] = torch.from_numpy(np.array(f.decode(n)))
    return out


def save_base(model, folder, shards=1):
    """An HF folder for the base, optionally with several safetensors shards and an index."""
    folder = Path(folder)
    if shards == 1:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, max_shard_size="60KB")
    return folder
