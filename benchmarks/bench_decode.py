"""Reader decode throughput vs memcpy of the same float32 output, both measured in the same run.

    python benchmarks/bench_decode.py                      # 11008x4096, every backend, 1..cores threads
    python benchmarks/bench_decode.py --rows 4096 --cols 4096 --backends numba --threads 1

Setting: alpha=8, k=4, h_g=128; csr_parts with m=8 (the 128x preset) and m=1; seeded and seeded_rans have
no parts. One rows x cols tensor per encoding, written to a temp dir (seeded_rans: the seeded codes
rANS-coded, SPEC.md §9.5). Throughput is MB (10^6 bytes) of dense fp32 output per second of
DDQFile.decode (checksums verified, as a loader would; the output is a fresh array, page faults included).
Baseline: np.copyto of rows*cols*4 bytes into a preallocated array (the issue's memcpy); also np.copy, an
allocating copy that pays the same fresh-page cost (the OS zeroing new pages) as any decode returning a new
array. --repeats runs of every row,
interleaved round-robin with the baseline so that load from other processes hits them alike; ratios are
given by the medians and by the minima (the least disturbed runs), and a target counts as met only when
both meet it; the load average is printed.

Backends (ddq_format.accel): "numba" (the optional extra `ddq[accel]`), "numpy" (the reference reader).
Threads: T threads each decode their own copies of the tensor (--tensors of them in all); the
aggregate rate against 1 thread shows how decode scales with cores (the numba kernels release the GIL).
Targets (issue 13): >= 0.5 of memcpy for seeded and csr_parts, >= 0.25 for seeded_rans, single thread.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ddq_format import DDQFile, Writer, accel  # noqa: E402
from ddq_format.converters.csr_rows import encode_rows  # noqa: E402
from ddq_format.converters.dropout import groupwise_dropout_blocked  # noqa: E402
from ddq_format.encodings import seeded, seeded_rans  # noqa: E402
from _common import median_seconds  # noqa: E402

ALPHA, BITS, GROUP, SEED = 8, 4, 128, 0
ENCODINGS = ("csr_parts", "csr_parts_m1", "seeded", "seeded_rans")
TARGET = {"csr_parts": 0.5, "csr_parts_m1": 0.5, "seeded": 0.5, "seeded_rans": 0.25}


def write_file(path: Path, rows: int, cols: int) -> None:
    delta = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * np.float32(0.01)
    cols_s, vals_s = groupwise_dropout_blocked(delta, ALPHA, GROUP, SEED, sort_columns=True)
    _, vals = groupwise_dropout_blocked(delta, ALPHA, GROUP, SEED, columns=False)
    del delta
    shape = (rows, cols)
    with Writer(path) as w:
        for name, parts in (("csr_parts", 8), ("csr_parts_m1", 1)):
            w.add(name, "compressed", shape, "F16", encode_rows(shape, cols_s, vals_s, bits=BITS, parts=parts,
                                                                alpha=ALPHA, group_size=GROUP, seed=SEED))
        w.add("seeded", "compressed", shape, "F16",
              seeded.encode(shape, vals, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=SEED))
        w.add("seeded_rans", "compressed", shape, "F16",
              seeded_rans.encode(shape, vals, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=SEED))


def interleaved(fns: dict, repeats: int) -> dict:
    """(median, min) seconds of each fn: one warm-up call each, then `repeats` rounds calling every fn once."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v)) for k, v in times.items()}


def single_thread(path: Path, out_bytes: int, backends, repeats: int) -> dict:
    src = np.ones(out_bytes // 4, np.float32)
    dst = np.empty_like(src)
    fns = {("memcpy", ""): lambda: np.copyto(dst, src), ("np.copy", ""): src.copy}
    f = DDQFile(path)
    for b in backends:
        for name in ENCODINGS:
            def run(b=b, name=name):
                with accel.use(b):
                    f.decode(name)
            fns[(b, name)] = run
    return interleaved(fns, repeats)


def threaded(path: Path, out_bytes: int, backend: str, name: str, threads: int, tensors: int, repeats: int):
    """Aggregate MB/s of `threads` threads decoding `tensors` decodes of one entry in all."""
    f = DDQFile(path)

    def one(_):
        f.decode(name)
    with accel.use(backend), ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            list(pool.map(one, range(tensors)))
            times.append(time.perf_counter() - t)
    return tensors * out_bytes / statistics.median(times) / 1e6


def _rans_entry(vals, shape):
    """(entry, buffers) of one seeded_rans tensor whose codes all sit in one stream."""
    enc = seeded_rans.encode(shape, vals, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=SEED,
                             rows_per_stream=shape[0])
    entry = {"name": "w", "shape": list(shape), "params": enc.params,
             "buffers": {r: {"dtype": dt} for r, (dt, _) in enc.buffers.items()}}
    return entry, {r: np.asarray(b).view(np.uint8).reshape(-1) for r, (_, b) in enc.buffers.items()}


def long_stream(symbols: int, backends) -> list[str]:
    """Issue 12 fault 9: microseconds per symbol of one rANS stream holding every code of a tensor."""
    rows = max(8, symbols // 512)
    delta = np.random.default_rng(1).standard_normal((rows, 4096), dtype=np.float32) * np.float32(0.01)
    _, vals = groupwise_dropout_blocked(delta, ALPHA, GROUP, SEED, columns=False)
    out = []
    for b, how in [(b, "") for b in backends if b != "numpy"] + [("numpy", "scalar"), ("numpy", "lanes")]:
        n_rows = 8 if how == "lanes" else rows  # the numpy lanes path on one lane: ~20 us per symbol
        entry, bufs = _rans_entry(vals[:n_rows], (n_rows, 4096))
        old = seeded_rans.SCALAR_LANES
        seeded_rans.SCALAR_LANES = 0 if how == "lanes" else old
        try:
            with accel.use(b):
                dt = median_seconds(lambda: seeded_rans.codes_of(entry, bufs), 1 if b == "numpy" else 5)
        finally:
            seeded_rans.SCALAR_LANES = old
        n = n_rows * vals.shape[1]
        out.append(f"{(b + ' ' + how).strip():<14} {n:>9} symbols {dt * 1e6 / n:8.3f} us/symbol")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=11008)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--backends", default=",".join(b for b in accel.BACKENDS if b != "numba" or accel.available()))
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default 1..cores)")
    ap.add_argument("--tensors", type=int, default=8, help="decodes per threaded measurement")
    ap.add_argument("--long-stream", type=int, default=1 << 20,
                    help="symbols in the one-stream seeded_rans case (issue 12 fault 9); 0 skips it")
    args = ap.parse_args(argv)
    rows, cols = args.rows, args.cols
    out_bytes = rows * cols * 4
    backends = args.backends.split(",")
    cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")] if args.threads else list(range(1, cores + 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.ddq"
        write_file(path, rows, cols)
        load0 = os.getloadavg()
        med = single_thread(path, out_bytes, backends, args.repeats)
        copy_med, copy_min = med[("memcpy", "")]
        alloc_med, alloc_min = med[("np.copy", "")]
        print(f"decode {rows}x{cols} -> {out_bytes / 2**20:.0f} MiB fp32; alpha={ALPHA} k={BITS} h_g={GROUP}, "
              f"csr_parts m=8 and m=1; {args.repeats} interleaved runs; numpy {np.__version__}; "
              f"{cores} cores; load average {load0[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
        with DDQFile(path) as f:
            stored = {n: sum(b["length"] for b in f.entries[n]["buffers"].values()) for n in ENCODINGS}
        print(f"{'backend':<8} {'encoding':<13} {'stored MB':>9} {'median ms':>9} {'min ms':>7} {'MB/s(med)':>9} "
              f"{'x memcpy med/min':>16} {'target':>7}   {'x np.copy med/min':>17}")
        for name, (t, t_min) in (("memcpy", (copy_med, copy_min)), ("np.copy", (alloc_med, alloc_min))):
            print(f"{'':<8} {name:<13} {'':>9} {t * 1e3:9.2f} {t_min * 1e3:7.2f} {out_bytes / t / 1e6:9.0f} "
                  f"{copy_med / t:8.3f}/{copy_min / t_min:.3f}")
        for b in backends:
            for name in ENCODINGS:
                t, t_min = med[(b, name)]
                r, r_min = copy_med / t, copy_min / t_min
                ok = "met" if min(r, r_min) >= TARGET[name] else "MISSED"
                print(f"{b:<8} {name:<13} {stored[name] / 1e6:9.2f} {t * 1e3:9.2f} {t_min * 1e3:7.2f} "
                      f"{out_bytes / t / 1e6:9.0f} {r:8.3f}/{r_min:.3f} {'>=' + str(TARGET[name]):>5} {ok:<6} "
                      f"{alloc_med / t:9.3f}/{alloc_min / t_min:.3f}")
        if threads != [1]:
            print(f"\nthreads: {args.tensors} decodes of one entry, aggregate MB/s (scaling vs 1 thread); "
                  f"load average {os.getloadavg()[0]:.2f}")
            for b in backends:
                for name in ("seeded", "csr_parts", "seeded_rans"):
                    rates = [threaded(path, out_bytes, b, name, t, args.tensors, max(3, args.repeats // 2))
                             for t in threads]
                    cells = "  ".join(f"{t}T {r:6.0f} ({r / rates[0]:.2f}x)" for t, r in zip(threads, rates))
                    print(f"{b:<8} {name:<13} {cells}")
        if args.long_stream:
            print("\nseeded_rans, one stream holding every code (issue 12 fault 9; 1 thread):")
            for line in long_stream(args.long_stream, backends):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
