"""ddq convert on a synthetic LLaMA-7B-shaped pair (bf16), against the I/O floor measured in the same run.

    python benchmarks/bench_convert.py --layers 2            # 2 decoder layers of 7B shape + embeddings
    python benchmarks/bench_convert.py --layers 32 --dir /big/disk   # the full 7B shape (~27 GB on disk)

Prints: convert time; the I/O floor (read both checkpoints + write the output's bytes + fsync, same files,
same page-cache state) and their ratio (target <= 2); the converter's peak RSS against the largest tensor's
fp32 bytes (target <= 3x + 1 GiB); the group-size search time (target <= 60 s at 7B shape).
The pair: base ~ N(0, 0.02), fine-tune = base + N(0, 2e-4) (a realistic small delta), both rounded to bf16,
written as one safetensors shard per layer with model.safetensors.index.json, plus config and a tokenizer.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shapes(layers, hidden, inter, vocab, kv_heads, heads):
    hd = hidden // heads
    out = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (hidden, hidden),
                    p + "self_attn.k_proj.weight": (kv_heads * hd, hidden),
                    p + "self_attn.v_proj.weight": (kv_heads * hd, hidden),
                    p + "self_attn.o_proj.weight": (hidden, hidden),
                    p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                    p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                    p + "post_attention_layernorm.weight": (hidden,)})
    out["model.norm.weight"] = (hidden,)
    out["lm_head.weight"] = (vocab, hidden)
    return out


def bf16(x):
    from ddq_format.encodings.raw import to_bf16_bits
    return to_bf16_bits(x)


def write_shard(path, tensors):
    """Stream a safetensors file: tensors is a list of (name, shape, generator of bf16 bits)."""
    header, off = {}, 0
    for name, shape, _ in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, _, make in tensors:
            f.write(make().tobytes())


def make_pair(root: Path, args):
    shp = shapes(args.layers, args.hidden, args.intermediate, args.vocab, args.kv_heads, args.heads)
    groups = {"embed": [n for n in shp if "layers." not in n]}
    for i in range(args.layers):
        groups[f"layer{i}"] = [n for n in shp if f"layers.{i}." in n]
    for which in ("base", "ft"):
        d = root / which
        d.mkdir(parents=True)
        weight_map = {}
        for gi, (g, names) in enumerate(groups.items()):
            fname = f"model-{gi + 1:05d}-of-{len(groups):05d}.safetensors"

            def maker(n, which=which):
                def make():
                    seed = zlib.crc32(n.encode())
                    rng = np.random.default_rng(seed)
                    w = rng.standard_normal(shp[n], np.float32) * (0.02 if len(shp[n]) == 2 else 0.0)
                    if len(shp[n]) == 1:
                        w += 1.0
                    if which == "ft":
                        w += np.random.default_rng(seed + 1).standard_normal(shp[n], np.float32) * 2e-4
                    return bf16(w)
                return make
            write_shard(d / fname, [(n, shp[n], maker(n)) for n in names])
            weight_map.update({n: fname for n in names})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": args.hidden,
               "intermediate_size": args.intermediate, "num_hidden_layers": args.layers,
               "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "vocab_size": args.vocab,
               "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
        (d / "config.json").write_text(json.dumps(cfg))
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        from ddq_format.converters.groupsize import DEFAULT_CALIB_TEXT
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.train_from_iterator([DEFAULT_CALIB_TEXT * 4], trainers.BpeTrainer(
            vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tok.save(str(d / "tokenizer.json"))
    return shp


def io_floor(root: Path, out_bytes: int) -> float:
    """Read every byte of both checkpoints, write out_bytes to a file and fsync it."""
    t = time.perf_counter()
    buf = bytearray(16 << 20)
    for f in sorted((root / "base").glob("*")) + sorted((root / "ft").glob("*")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    chunk = np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8).tobytes()
    with open(root / "floor.bin", "wb") as fh:
        left = out_bytes
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    (root / "floor.bin").unlink()
    return time.perf_counter() - t


CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ddq_format.converters.pipeline import convert
import rich.progress, rich.table, tokenizers
def hwm():  # VmHWM belongs to this process image (ru_maxrss would inherit the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
rss0 = hwm()
t = time.perf_counter()
s = convert(sys.argv[2], sys.argv[3], sys.argv[4], progress=False, **json.loads(sys.argv[5]))
wall = time.perf_counter() - t
print(json.dumps({"wall": wall, "rss0": rss0, "peak": hwm(),
                  "search": s.search_seconds, "chosen": s.group_size, "true": s.true_ratio_compressed,
                  "file_true": s.true_ratio_file, "nominal": s.nominal_ratio, "bytes": s.file_bytes}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--method", default="deltadq")
    ap.add_argument("--ratio", type=int, default=128)
    ap.add_argument("--encoding", default="csr_parts")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where to generate the pair (default: a temp dir, removed)")
    ap.add_argument("--keep", default=None, help="generate the pair into this folder once and reuse it later")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ddq-bench-", dir=args.dir))
    try:
        t = time.perf_counter()
        if args.keep and (root / "ft" / "config.json").exists():
            shp = shapes(args.layers, args.hidden, args.intermediate, args.vocab, args.kv_heads, args.heads)
        else:
            shp = make_pair(root, args)
        gen = time.perf_counter() - t
        in_bytes = sum(f.stat().st_size for d in ("base", "ft") for f in (root / d).glob("*"))
        largest = max(int(np.prod(s)) for s in shp.values()) * 4
        print(f"pair: {args.layers} layers of hidden {args.hidden}, {len(shp)} tensors, "
              f"{in_bytes / 2**30:.2f} GiB on disk (generated in {gen:.1f} s)")
        opts = {"method": args.method, "workers": args.workers, "encoding": args.encoding}
        if args.method == "deltadq":
            opts["ratio"] = args.ratio
        out = root / "out.ddq"
        p = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(root / "base"), str(root / "ft"), str(out),
                            json.dumps(opts)], capture_output=True, text=True)
        if p.returncode:
            print(p.stderr)
            raise SystemExit(p.returncode)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        floor = io_floor(root, r["bytes"])
        print(f"convert ({args.method}, {opts.get('ratio', '')}x preset, workers={args.workers}): {r['wall']:.1f} s; "
              f"I/O floor (read {in_bytes / 2**30:.2f} GiB + write {r['bytes'] / 2**20:.1f} MiB + fsync): "
              f"{floor:.1f} s; ratio {r['wall'] / floor:.2f} (target <= 2)")
        print(f"peak RSS {r['peak'] / 2**30:.2f} GiB (after imports {r['rss0'] / 2**30:.2f} GiB); largest tensor "
              f"fp32 {largest / 2**30:.2f} GiB; (peak - imports) / largest = {(r['peak'] - r['rss0']) / largest:.2f} "
              f"(target <= 3 + 1 GiB)")
        print(f"group-size search: {r['search']:.1f} s (target <= 60 s), chosen h_g = {r['chosen']}")
        print(f"ratios: nominal {r['nominal']:.0f}x, true (compressed tensors) {r['true']:.2f}x, "
              f"whole file {r['file_true']:.2f}x")
    finally:
        (root / "out.ddq").unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
