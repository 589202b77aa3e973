"""Resident memory: one base + N attached compressed deltas vs N merged models (DeltaDQ's deployment story,
Delta-CoMe Table 7).

    python benchmarks/bench_memory.py [--encoding seeded|csr_parts] [--alpha 8 --bits 4 --parts 8]

Measured rows: a synthetic Llama (bf16 base, every linear weight of each fine-tune compressed; norms as
dense deltas; embeddings unchanged), N distinct fine-tunes attached with attach_deltas; "resident" is the
bytes the attached deltas keep (packed buffers exactly as in the file + per-row norm overrides), counted by
resident_delta_bytes. A mixed batch is run once as a sanity check that the attached model works.
Analytic rows: Llama-2-7B shapes, delta bytes from the encodings' exact buffer lengths (the formulas the
file's buffer lengths obey; checked here to equal the measured resident bytes of the synthetic files).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddq_format import Writer  # noqa: E402
from ddq_format.bitpack import packed_nbytes  # noqa: E402
from ddq_format.converters.dropout import groupwise_dropout  # noqa: E402
from ddq_format.encodings import csr_parts, raw, seeded  # noqa: E402
from ddq_format.seeded_mask import kept_per_row  # noqa: E402
from ddq_format.spec import align_up, index_dtype_for, DTYPE_SIZES  # noqa: E402

LLAMA7B = dict(hidden=4096, inter=11008, layers=32, vocab=32000, heads=32, kv=32)
SYNTH = dict(hidden=256, inter=688, layers=4, vocab=1024, heads=4, kv=4)


def linear_shapes(c):
    h, i, kvd = c["hidden"], c["inter"], c["hidden"] * c["kv"] // c["heads"]
    per_layer = [("q_proj", (h, h)), ("k_proj", (kvd, h)), ("v_proj", (kvd, h)), ("o_proj", (h, h)),
                 ("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))]
    return per_layer, (c["vocab"], h)


def base_params(c):
    per_layer, lm = linear_shapes(c)
    lin = sum(a * b for _, (a, b) in per_layer) * c["layers"]
    return lin + 2 * c["vocab"] * c["hidden"] + (2 * c["layers"] + 1) * c["hidden"]


def entry_bytes(shape, encoding, alpha, bits, parts, group, pad=False):
    """Exact buffer lengths of one compressed entry as the file records them (pad=True adds the writer's
    64-byte alignment padding, which is in the file but not resident on the device)."""
    a = align_up if pad else (lambda x: x)
    rows, cols = shape
    nnz = rows * kept_per_row(cols, group, alpha)
    if encoding == "seeded":
        return a(packed_nbytes(nnz, bits))
    off = DTYPE_SIZES["U32" if nnz < 2**32 else "U64"] * parts * (rows + 1)
    col = DTYPE_SIZES[index_dtype_for(cols - 1)] * nnz
    val = packed_nbytes(nnz, bits - (parts.bit_length() - 1))
    return a(off) + a(col) + a(val)


def delta_bytes(c, encoding, alpha, bits, parts, group, norm_bytes=2):
    per_layer, lm = linear_shapes(c)
    n = sum(entry_bytes(s, encoding, alpha, bits, parts, group) for _, s in per_layer) * c["layers"]
    n += entry_bytes(lm, encoding, alpha, bits, parts, group)
    return n + (2 * c["layers"] + 1) * c["hidden"] * norm_bytes  # per-row norm overrides in the model dtype


def llama(c, seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=c["hidden"], intermediate_size=c["inter"], num_hidden_layers=c["layers"],
                      num_attention_heads=c["heads"], num_key_value_heads=c["kv"], vocab_size=c["vocab"],
                      max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def write_finetune(path, base_sd, seed, encoding, alpha, bits, parts, group):
    """A synthetic fine-tune: small random deltas on every linear weight and norm; embeddings unchanged."""
    import torch
    from ddq_format.loaders.apply import tensor_fingerprint
    rng = np.random.default_rng(seed)
    with Writer(path) as w:
        for n, b in base_sd.items():
            bind = {"shape": list(b.shape), "dtype": "BF16", "fingerprint": tensor_fingerprint(b)}
            if "embed_tokens" in n:
                w.add_same(n, b.shape, "BF16", base=bind)
                continue
            d = (rng.standard_normal(tuple(b.shape)) * 0.002).astype(np.float32)
            if b.dim() == 1:
                w.add(n, "dense", b.shape, "BF16", raw.encode(d, "F32"), base=bind)
                continue
            cols, vals = groupwise_dropout(d, alpha, group, seed)
            if encoding == "seeded":
                enc = seeded.encode(d.shape, vals, bits=bits, alpha=alpha, group_size=group, seed=seed)
            else:
                r = np.repeat(np.arange(d.shape[0]), cols.shape[1])
                enc = csr_parts.encode(d.shape, r, cols.reshape(-1), vals.reshape(-1), bits=bits, parts=parts,
                                       alpha=alpha, group_size=group, seed=seed)
            w.add(n, "compressed", b.shape, "BF16", enc, base=bind)
    del torch
    return path


def fmt(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:,} B"
        n /= 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoding", default="seeded", choices=["seeded", "csr_parts"])
    ap.add_argument("--alpha", type=int, default=8)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--counts", default="1,4,16")
    a = ap.parse_args(argv)
    import torch

    from ddq_format.loaders.multi import attach_deltas, resident_delta_bytes, use_deltas

    counts = [int(x) for x in a.counts.split(",")]
    base = llama(SYNTH, 0)
    base_sd = {k: v.detach() for k, v in base.state_dict().items()}
    base_bytes = sum(t.numel() * t.element_size() for t in base_sd.values())
    print(f"# encoding={a.encoding} alpha={a.alpha} k={a.bits}" + (f" m={a.parts}" if a.encoding == "csr_parts" else "")
          + f" group={a.group}; base and merged models in bf16")
    print(f"{'model':<22} {'N':>3} {'N merged models':>16} {'base + N deltas':>16} {'saving':>8} "
          f"{'per delta':>12} {'delta/base':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_finetune(Path(tmp) / f"ft{i}.ddq", base_sd, 100 + i, a.encoding, a.alpha, a.bits, a.parts,
                                a.group) for i in range(max(counts))]
        expect = delta_bytes(SYNTH, a.encoding, a.alpha, a.bits, a.parts, a.group)
        for n in counts:
            model = llama(SYNTH, 0)
            attach_deltas(model, paths[:n])
            resident = resident_delta_bytes(model)
            assert resident == n * expect, (resident, n * expect)  # the analytic formula is the file's truth
            ids = torch.randint(0, SYNTH["vocab"], (n, 4))
            with torch.no_grad(), use_deltas(model, torch.arange(n)):
                assert torch.isfinite(model(ids).logits.float()).all()
            row(f"synthetic {base_params(SYNTH) / 1e6:.1f}M", n, base_bytes, resident)
    b7 = base_params(LLAMA7B) * 2
    d7 = delta_bytes(LLAMA7B, a.encoding, a.alpha, a.bits, a.parts, a.group)
    for n in counts:
        row("Llama-2-7B (analytic)", n, b7, n * d7)
    print("# N merged models = N x base bytes; base + N deltas = base bytes + resident delta bytes "
          "(packed buffers as in the file + bf16 norm overrides).")


def row(label, n, base_bytes, resident):
    merged = n * base_bytes
    ours = base_bytes + resident
    print(f"{label:<22} {n:>3} {fmt(merged):>16} {fmt(ours):>16} {merged / ours:>7.2f}x "
          f"{fmt(resident // n):>12} {resident / n / base_bytes:>9.2%}")


if __name__ == "__main__":
    main()
