"""ddq convert on a synthetic LLaMA-7B-shaped bf16 pair, against the I/O floor measured in the same run.

    python benchmarks/bench_convert.py --layers 2                     # 2 decoder layers of 7B shape
    python benchmarks/bench_convert.py --layers 32 --keep /big/pair   # the full 7B shape (25 GiB on disk)
    python benchmarks/bench_convert.py --layers 2 --backends numba,numpy --sha256

Runs, for each --encoding x --group-size (default seeded and seeded_rans, alpha=8, k=4, h_g 128 and
auto) and each --backends entry (ddq_format.accel: numba = the optional extra, numpy = the reference),
one `convert` in a fresh child process with --workers threads (default: the cores), after a warm-up
conversion of a tiny pair in that process (numba compiles on first use; the compiled kernels are cached on
disk, so only a first-ever run pays it; the warm-up time is printed).

The I/O floor: read every byte of both checkpoints into a 16 MiB buffer, write the output's size and fsync,
single-threaded. It is measured before every conversion, in the same page-cache state: the inputs are
read once first, so when they fit in RAM floor and conversion both read warm; when they do not (the
32-layer pair on a 24 GiB machine), both read from disk. Each conversion is compared with the smallest
floor of the run. Targets (issue 13): convert <= 3x floor with a fixed h_g, <= 4x with auto; peak RSS of
the converter above its state after imports <= 3x the largest fp32 tensor + 1 GiB.

--profile adds the converter's CPU and wall time per stage, summed over the worker threads; --sha256
prints each output's hash (the before/after check that output bytes did not change; --code runs another
checkout's converter on the same pair, e.g. `git archive <commit> | tar -x -C /tmp/old`);
--repeats N keeps the fastest of N conversions per setting. "CPU s" is the conversion's user + system time
(all threads): on a machine shared with other work, wall time is CPU time stretched by the load, and the
load average at each conversion's start is printed beside it.
The pair: base ~ N(0, 0.02), fine-tune = base + N(0, 2e-4) (a realistic small delta), both rounded to bf16,
one safetensors shard per layer with model.safetensors.index.json, plus config and a tokenizer.
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


def read_all(root: Path) -> float:
    """Read every byte of both checkpoints into a 16 MiB buffer; seconds."""
    t = time.perf_counter()
    buf = bytearray(16 << 20)
    for f in sorted((root / "base").glob("*")) + sorted((root / "ft").glob("*")):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t


def cpu_seconds() -> float:
    import resource
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def io_floor(root: Path, out_bytes: int) -> tuple[float, float]:
    """Read both checkpoints, write out_bytes to a file and fsync it: (seconds, CPU seconds)."""
    t, c = time.perf_counter(), cpu_seconds()
    read_all(root)
    chunk = np.random.default_rng(0).integers(0, 255, 16 << 20, dtype=np.uint8).tobytes()
    with open(root / "floor.bin", "wb") as fh:
        left = out_bytes
        while left > 0:
            fh.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    (root / "floor.bin").unlink()
    return time.perf_counter() - t, cpu_seconds() - c


CHILD = r"""
import collections, contextlib, json, sys, threading, time
sys.path.insert(0, sys.argv[1])
try:
    from ddq_format import accel
except ImportError:  # --code of a version without the accelerated path
    accel = None
from ddq_format.converters.pipeline import convert
import rich.progress, rich.table, tokenizers
args = json.loads(sys.argv[5])
def hwm():  # VmHWM belongs to this process image (ru_maxrss would inherit the parent's peak across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
stages, lock = collections.Counter(), threading.Lock()
def timed(owner, attr, label):  # wall and CPU (this thread's) seconds per stage
    f = getattr(owner, attr, None)
    if f is None:  # an older --code without this stage
        return
    def g(*a, **k):
        t, c = time.perf_counter(), time.thread_time()
        try:
            return f(*a, **k)
        finally:
            with lock:
                stages[label + "|wall"] += time.perf_counter() - t
                stages[label + "|cpu"] += time.thread_time() - c
    setattr(owner, attr, g)
if args["profile"]:
    from ddq_format.converters import checkpoint, tensor_work, write
    from ddq_format.converters.resume import ResumableWriter
    timed(checkpoint.Checkpoint, "read", "Checkpoint.read (maps; older versions read)")
    timed(tensor_work, "binding", "base fingerprint")
    timed(tensor_work, "_equal", "equality test")
    timed(tensor_work, "compress_bits", "fused compress (read + dropout + quantize + encode)")
    timed(tensor_work, "_delta_from", "dense delta (unfused methods)")
    timed(tensor_work, "compress", "compress of a dense delta")
    timed(tensor_work, "delta_blocks", "dense-kind delta (embeddings, norms)")
    timed(ResumableWriter, "add", "write + fsync + journal (writer thread)")
with accel.use(args["backend"]) if accel else contextlib.nullcontext():
    t = time.perf_counter()
    convert(sys.argv[6], sys.argv[7], sys.argv[4] + ".warmup", progress=False, quiet=True, print_summary=False,
            **args["convert"])
    warm = time.perf_counter() - t
    stages.clear()
    rss0 = hwm()
    import resource
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = ru0.ru_utime + ru0.ru_stime
    t = time.perf_counter()
    s = convert(sys.argv[2], sys.argv[3], sys.argv[4], progress=False, quiet=True, print_summary=False,
                **args["convert"])
    wall = time.perf_counter() - t
import resource
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime - cpu0, "warmup": warm, "rss0": rss0,
                  "peak": hwm(), "stages": stages, "search": s.search_seconds, "chosen": s.group_size,
                  "true": s.true_ratio_compressed, "file_true": s.true_ratio_file, "nominal": s.nominal_ratio,
                  "bytes": s.file_bytes}))
"""


def tiny_pair(root: Path) -> Path:
    """A 1-layer bf16 pair of hidden 256 (every code path of the big one, in a second)."""
    ns = argparse.Namespace(layers=1, hidden=256, intermediate=688, vocab=512, heads=4, kv_heads=4)
    if not (root / "ft" / "config.json").exists():
        make_pair(root, ns)
    return root


def sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def run_one(root: Path, tiny: Path, backend: str, conv: dict, profile: bool, code: Path) -> dict:
    out = root / "out.ddq"
    p = subprocess.run([sys.executable, "-c", CHILD, str(code), str(root / "base"), str(root / "ft"), str(out),
                        json.dumps({"backend": backend, "convert": conv, "profile": profile}),
                        str(tiny / "base"), str(tiny / "ft")], capture_output=True, text=True)
    if p.returncode:
        print(p.stderr)
        raise SystemExit(p.returncode)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--method", default="deltadq")
    ap.add_argument("--encoding", default="seeded,seeded_rans", help="comma-separated")
    ap.add_argument("--alpha", type=int, default=8)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--parts", type=int, default=None)
    ap.add_argument("--group-size", default="128,auto", help="comma-separated: integers and/or auto")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--backends", default="numba", help="comma-separated: numba, numpy")
    ap.add_argument("--repeats", type=int, default=1, help="conversions per setting (the fastest counts)")
    ap.add_argument("--profile", action="store_true", help="print the converter's time per stage")
    ap.add_argument("--code", default=str(ROOT), help="checkout whose ddq_format converts (default: this one; "
                    "e.g. an older commit extracted with git archive, for a before/after comparison)")
    ap.add_argument("--sha256", action="store_true", help="print each output's sha256")
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
        tiny = tiny_pair(root / "warmup-pair")
        in_bytes = sum(f.stat().st_size for d in ("base", "ft") for f in (root / d).glob("*"))
        largest = max(int(np.prod(s)) for s in shp.values()) * 4
        print(f"pair: {args.layers} layers of hidden {args.hidden}, {len(shp)} tensors, "
              f"{in_bytes / 2**30:.2f} GiB on disk (generated in {gen:.1f} s); {os.cpu_count()} cores, "
              f"--workers {args.workers}; load average {os.getloadavg()[0]:.2f}")
        first_read = read_all(root)
        print(f"first read of both checkpoints (page-cache state before the runs): {first_read:.1f} s")
        runs, floors = [], []
        for backend in args.backends.split(","):
            for enc in args.encoding.split(","):
                for gs in args.group_size.split(","):
                    conv = {"method": args.method, "workers": args.workers, "encoding": enc, "alpha": args.alpha,
                            "bits": args.bits, "group_size": gs if gs == "auto" else int(gs)}
                    if args.parts:
                        conv["parts"] = args.parts
                    best = None
                    for _ in range(args.repeats):
                        floors.append(io_floor(root, runs[-1][2]["bytes"] if runs else 64 << 20))
                        load = os.getloadavg()[0]
                        r = run_one(root, tiny, backend, conv, args.profile, Path(args.code).resolve())
                        r["load"] = load
                        if args.sha256:
                            r["sha256"] = sha256(root / "out.ddq")
                        best = r if best is None or r["wall"] < best["wall"] else best
                    runs.append((backend, conv, best))
        floors.append(io_floor(root, max(r["bytes"] for _, _, r in runs)))
        floor, floor_cpu = min(floors)
        print(f"I/O floor (read {in_bytes / 2**30:.2f} GiB + write the output + fsync): min {floor:.2f} s "
              f"(CPU {floor_cpu:.2f} s) of {len(floors)} measured between the runs "
              f"({', '.join(f'{x:.2f}' for x, _ in floors)})")
        print(f"{'backend':<7} {'encoding':<12} {'h_g':>9} {'convert s':>9} {'x floor':>7} {'target':>6}  "
              f"{'search s':>8} {'CPU s':>6} {'peak-imports GiB':>16} {'/largest':>8} {'true x':>7} {'load':>5}")
        for backend, conv, r in runs:
            target = 4 if conv["group_size"] == "auto" else 3
            ratio = r["wall"] / floor
            extra = r["peak"] - r["rss0"]
            mem_ok = extra <= 3 * largest + 2**30
            print(f"{backend:<7} {conv['encoding']:<12} {str(conv['group_size']) + '→' + str(r['chosen']):>9} "
                  f"{r['wall']:9.2f} {ratio:7.2f} {'<=' + str(target):>6} {'met' if ratio <= target else 'MISSED':<6}"
                  f"{r['search']:8.2f} {r['cpu']:6.1f} {extra / 2**30:16.2f} {extra / largest:8.2f}"
                  f"{'' if mem_ok else '!'} {r['true']:7.2f} {r['load']:5.2f}")
        warm = ", ".join(f"{r['warmup']:.1f}" for _, _, r in runs)
        print(f"largest tensor fp32 {largest / 2**30:.2f} GiB; memory target: peak - imports <= 3 x largest + 1 GiB "
              f"= {(3 * largest + 2**30) / 2**30:.2f} GiB ('!' marks a miss). Warm-up conversion of the tiny pair "
              f"(numba compile or disk-cache load): {warm} s")
        for backend, conv, r in runs:
            if args.sha256:
                print(f"sha256 {backend} {conv['encoding']} h_g={conv['group_size']}: {r['sha256']}")
            if args.profile:
                print(f"stages, {backend} {conv['encoding']} h_g={conv['group_size']} (seconds summed over threads; "
                      f"wall includes waiting for the disk and for a core):")
                st = r["stages"]
                for k in sorted({k.split("|")[0] for k in st}, key=lambda k: -st[k + "|cpu"]):
                    print(f"  {k:<55} CPU {st[k + '|cpu']:7.2f}   wall {st[k + '|wall']:7.2f}")
    finally:
        (root / "out.ddq").unlink(missing_ok=True)
        (root / "out.ddq.warmup").unlink(missing_ok=True)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
