"""Kernel speed: decode, fused delta matmul, 16 mixed deltas. Prints ratios against baselines measured in
the same run (device-to-device copy, dense fp16 matmul, a loop over merged fp16 models).

    python benchmarks/bench_kernels.py [--out results.md] [--quick]

On CPU only the torch reference decode vs memcpy is measured. Not a test: nothing here asserts speed.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddq_format.converters.dropout import groupwise_dropout  # noqa: E402
from ddq_format.encodings import csr_parts, seeded  # noqa: E402
from ddq_format.kernels import CompressedDelta, decode_dense, multi_delta_matmul  # noqa: E402
from _common import median_seconds  # noqa: E402

ALPHA, BITS, PARTS, GROUP = 8, 4, 8, 128
L2_ROTATE_BYTES = 160 * 2**20  # rotate among copies so each call reads from HBM, not L2 (50 MB on H100)


def build(rows, cols, encoding, device, seed=1234):
    """One compressed delta through the real encoders (dropout + quantization), uploaded to `device`."""
    return CompressedDelta.from_entry(*build_entry(rows, cols, encoding, seed), device)


def build_entry(rows, cols, encoding, seed=1234):
    """(entry, numpy buffers) of one compressed delta through the real encoders."""
    rng = np.random.default_rng(seed)
    delta = (rng.standard_normal((rows, cols)) * 0.01).astype(np.float32)
    kept, values = groupwise_dropout(delta, ALPHA, GROUP, seed)
    if encoding == "seeded":
        enc = seeded.encode((rows, cols), values, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=seed)
    else:
        r = np.repeat(np.arange(rows), kept.shape[1])
        enc = csr_parts.encode((rows, cols), r, kept.reshape(-1), values.reshape(-1), bits=BITS, parts=PARTS,
                               alpha=ALPHA, group_size=GROUP, seed=seed)
    entry = {"name": f"{encoding}-{rows}x{cols}", "kind": "compressed", "shape": [rows, cols], "dtype": "F16",
             "encoding": enc.encoding, "params": enc.params,
             "buffers": {k: {"dtype": dt, "length": int(a.nbytes), "offset": 0, "crc32": 0}
                         for k, (dt, a) in enc.buffers.items()}}
    bufs = {k: np.ascontiguousarray(a).view(np.uint8).reshape(-1) for k, (_, a) in enc.buffers.items()}
    return entry, bufs


def clone(d):
    return CompressedDelta(d.encoding, d.shape, d.params, {k: v.clone() for k, v in d.buffers.items()}, d.dtypes,
                           d.name)


# -- timing ---------------------------------------------------------------------------------------
def gpu_time(fn, reps=20):
    """Median ms of one replay of a CUDA graph of fn (after warm-up)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def cpu_time(fn, reps=5):
    """Milliseconds, median after a warm-up."""
    return median_seconds(fn, reps) * 1e3


def copies_for(nbytes):
    return max(4, min(256, math.ceil(L2_ROTATE_BYTES / max(nbytes, 1))))


# -- benchmarks -----------------------------------------------------------------------------------
def copy_bandwidth(dev):
    """Bytes read + written per second by a large device-to-device copy."""
    n = 1 << 28  # 1 GiB of fp32 each way
    src = torch.randn(n // 4, device=dev)
    dst = torch.empty_like(src)
    ms = gpu_time(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / (ms * 1e-3), ms


def bench_decode(deltas, dev, lines):
    lines.append("\n## Decode to dense (GPU)\n")
    lines.append("| delta | out dtype | decode ms | GB/s written | copy ms (same bytes) | decode / copy speed |")
    lines.append("|---|---|---|---|---|---|")
    res = []
    for d in deltas:
        for dtype in (torch.float16, torch.float32):
            nbytes = d.shape[0] * d.shape[1] * torch.tensor([], dtype=dtype).element_size()
            k = max(2, copies_for(nbytes))
            ds = [d] + [clone(d) for _ in range(min(k, 4) - 1)]
            outs = [None] * len(ds)

            def run():
                for i, x in enumerate(ds):
                    outs[i] = x.to_dense(dtype)
            ms = gpu_time(run) / len(ds)
            src = [torch.randn(d.shape, device=dev).to(dtype) for _ in ds]
            dst = [torch.empty_like(s) for s in src]

            def cp():
                for s, t in zip(src, dst):
                    t.copy_(s)
            cms = gpu_time(cp) / len(ds)
            # a device-to-device copy reads and writes the bytes; decode writes them (its reads are small)
            lines.append(f"| {d.name} {d.encoding} | {str(dtype)[6:]} | {ms:.4f} | {nbytes / ms / 1e6:.0f} | "
                         f"{cms:.4f} | {cms / ms:.2f} |")
            res.append(cms / ms)
            del src, dst, outs
    return res


def bench_matmul(deltas, dev, bw, lines):
    lines.append("\n## Fused delta matmul (GPU), fp16 activations\n")
    lines.append(f"floor = compressed bytes / copy bandwidth ({bw / 1e12:.2f} TB/s); dense = torch fp16 "
                 "x @ W.T of the same delta, rotated over copies\n")
    lines.append("| delta | batch | compressed MB | fused us | floor us | fused/floor | dense fp16 us | "
                 "dense/fused |")
    lines.append("|---|---|---|---|---|---|---|---|")
    out = []
    for d in deltas:
        rows, cols = d.shape
        k = copies_for(d.nbytes)
        ds = [d] + [clone(d) for _ in range(k - 1)]
        kd = copies_for(rows * cols * 2)
        ws = [torch.randn(rows, cols, device=dev, dtype=torch.float16) * 0.01 for _ in range(kd)]
        for batch in (1, 4, 16):
            x = torch.randn(batch, cols, device=dev, dtype=torch.float16)
            ms = gpu_time(lambda: [t.matmul(x) for t in ds]) / len(ds)
            dms = gpu_time(lambda: [x @ w.T for w in ws]) / len(ws)
            floor = d.nbytes / bw * 1e3
            lines.append(f"| {d.name} {d.encoding} | {batch} | {d.nbytes / 1e6:.2f} | {ms * 1e3:.1f} | "
                         f"{floor * 1e3:.1f} | {ms / floor:.1f} | {dms * 1e3:.1f} | {dms / ms:.2f} |")
            out.append((d.name, d.encoding, batch, ms / floor, dms / ms))
        del ds, ws
    return out


def bench_multi(base_delta, dev, lines, n=16, batch=16):
    rows, cols = base_delta.shape
    lines.append(f"\n## {n} deltas, mixed batch of {batch} ({rows}x{cols} layer, fp16, "
                 f"{base_delta.encoding})\n")
    deltas = [base_delta] + [clone(base_delta) for _ in range(n - 1)]
    base = torch.randn(rows, cols, device=dev, dtype=torch.float16) * 0.02
    merged = [torch.randn(rows, cols, device=dev, dtype=torch.float16) * 0.02 for _ in range(n)]
    x = torch.randn(batch, cols, device=dev, dtype=torch.float16)
    index = torch.arange(batch, device=dev) % n
    groups = [(index == i).nonzero().reshape(-1) for i in range(n)]
    rounds = 4  # rotate the delta set (n * compressed bytes is small; base stays hot as in a real layer loop)

    def ours():
        y = x @ base.T
        return y + multi_delta_matmul(x, deltas, index, check_index=False)

    def loop():
        return [x[g] @ w.T for g, w in zip(groups, merged)]
    t_ours = gpu_time(lambda: [ours() for _ in range(rounds)]) / rounds
    t_loop = gpu_time(loop)
    t_base = gpu_time(lambda: x @ base.T)
    resident = sum(d.nbytes for d in deltas) + base.numel() * 2
    lines.append("| path | ms per layer | tokens/s | resident bytes |")
    lines.append("|---|---|---|---|")
    lines.append(f"| base fp16 + {n} compressed deltas (multi_delta_matmul) | {t_ours:.4f} | "
                 f"{batch / t_ours * 1e3:,.0f} | {resident / 1e6:.1f} MB |")
    lines.append(f"| loop over {n} merged fp16 models | {t_loop:.4f} | {batch / t_loop * 1e3:,.0f} | "
                 f"{n * rows * cols * 2 / 1e6:.1f} MB |")
    lines.append(f"| (base fp16 matmul alone) | {t_base:.4f} | | |")
    lines.append(f"\nspeed-up vs loop: **{t_loop / t_ours:.2f}x** (target >= 8x)")
    return t_loop / t_ours


def bench_cpu(lines, quick):
    rows, cols = (1024, 1024) if quick else (4096, 4096)
    lines.append(f"\n## CPU: decode vs memcpy ({rows}x{cols}, float32 out, {torch.get_num_threads()} threads)\n")
    lines.append("decode_dense on CPU uses the numpy decoder by default; the torch reference is the kernels' oracle.\n")
    lines.append("| encoding | path | decode ms | memcpy ms (same bytes) | decode / memcpy speed |")
    lines.append("|---|---|---|---|---|")
    src = torch.randn(rows, cols)
    dst = torch.empty_like(src)
    cms = cpu_time(lambda: dst.copy_(src))
    for enc in ("seeded", "csr_parts"):
        entry, bufs = build_entry(rows, cols, enc)
        d = CompressedDelta.from_entry(entry, bufs, "cpu")
        for path, fn in (("decode_dense (numpy)", lambda: decode_dense(entry, bufs, "cpu")),
                         ("torch reference", lambda: d.to_dense(backend="torch"))):
            ms = cpu_time(fn, reps=2)
            lines.append(f"| {enc} | {path} | {ms:.1f} | {cms:.2f} | {cms / ms:.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--sections", default="decode,matmul,multi,cpu", help="comma-separated subset to run")
    a = ap.parse_args()
    lines = [f"# Kernel benchmarks\n\ntorch {torch.__version__}, python {platform.python_version()}"]
    if torch.cuda.is_available() and not a.cpu_only:
        import triton
        dev = "cuda"
        props = torch.cuda.get_device_properties(0)
        lines.append(f"device: **{torch.cuda.get_device_name(0)}** ({props.multi_processor_count} SMs), "
                     f"triton {triton.__version__}\n")
        bw, _ = copy_bandwidth(dev)
        lines.append(f"device-to-device copy: {bw / 1e12:.2f} TB/s (bytes read + written)\n")
        shapes = [(4096, 4096)] if a.quick else [(4096, 4096), (11008, 4096)]
        deltas = [build(r, c, enc, dev) for r, c in shapes for enc in ("seeded", "csr_parts")]
        print("\n".join(lines), flush=True)
        n0 = len(lines)
        if "decode" in a.sections:
            bench_decode(deltas, dev, lines)
        print("\n".join(lines[n0:]), flush=True)
        n0 = len(lines)
        if "matmul" in a.sections:
            bench_matmul(deltas, dev, bw, lines)
        print("\n".join(lines[n0:]), flush=True)
        n0 = len(lines)
        for d in deltas[:2] if "multi" in a.sections else []:
            bench_multi(d, dev, lines)
        print("\n".join(lines[n0:]), flush=True)
        n0 = len(lines)
    else:
        lines.append("device: CPU only\n")
        n0 = len(lines)
    if "cpu" in a.sections:
        bench_cpu(lines, a.quick)
    print("\n".join(lines[n0:]), flush=True)
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
