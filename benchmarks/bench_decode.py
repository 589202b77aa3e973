"""Reader decode throughput vs numpy memcpy of the same output bytes, measured in the same run.

    python benchmarks/bench_decode.py [--rows 4096] [--cols 4096] [--repeats 7]

Setting: alpha=8, k=4, m=8 (csr_parts; seeded and seeded_rans have no parts), h_g=128, one rows x cols
tensor per encoding written to a temp dir (seeded_rans: the seeded codes rANS-coded, SPEC.md §9.5). Throughput is MB (10^6 bytes) of dense fp32 output per second, median of --repeats runs of
DDQFile.decode (checksums verified, as a loader would). The baseline is np.copyto of rows*cols*4 bytes into
a preallocated array (64 MiB at 4096x4096), median of the same number of runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ddq_format import DDQFile, Writer  # noqa: E402
from ddq_format.converters.dropout import groupwise_dropout  # noqa: E402
from ddq_format.encodings import csr_parts, seeded, seeded_rans  # noqa: E402
from _common import median_seconds  # noqa: E402

ALPHA, BITS, PARTS, GROUP, SEED = 8, 4, 8, 128, 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    rows, cols = args.rows, args.cols
    out_bytes = rows * cols * 4

    delta = (np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32) * np.float32(0.01))
    kept, vals = groupwise_dropout(delta, ALPHA, GROUP, SEED)
    del delta
    r = np.repeat(np.arange(rows), kept.shape[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.ddq"
        with Writer(path) as w:
            w.add("csr_parts", "compressed", (rows, cols), "F16",
                  csr_parts.encode((rows, cols), r, kept.reshape(-1), vals.reshape(-1), bits=BITS, parts=PARTS,
                                   alpha=ALPHA, group_size=GROUP, seed=SEED))
            w.add("seeded", "compressed", (rows, cols), "F16",
                  seeded.encode((rows, cols), vals, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=SEED))
            w.add("seeded_rans", "compressed", (rows, cols), "F16",
                  seeded_rans.encode((rows, cols), vals, bits=BITS, alpha=ALPHA, group_size=GROUP, seed=SEED))
        del kept, vals, r

        src = np.ones(out_bytes // 4, np.float32)
        dst = np.empty_like(src)
        t_copy = median_seconds(lambda: np.copyto(dst, src), args.repeats)
        copy_mbs = out_bytes / t_copy / 1e6

        print(f"decode {rows}x{cols} -> {out_bytes / 2**20:.0f} MiB fp32 output; alpha={ALPHA} k={BITS} "
              f"m={PARTS} (csr_parts) h_g={GROUP}; median of {args.repeats}; numpy {np.__version__}")
        print(f"{'what':<12} {'stored MB':>10} {'median ms':>10} {'MB/s':>10} {'vs memcpy':>10}")
        print(f"{'memcpy':<12} {'':>10} {t_copy * 1e3:10.2f} {copy_mbs:10.0f} {1.0:10.3f}")
        with DDQFile(path) as f:
            for name in ("csr_parts", "seeded", "seeded_rans"):
                stored = sum(b["length"] for b in f.entries[name]["buffers"].values())
                t = median_seconds(lambda: f.decode(name), args.repeats)
                mbs = out_bytes / t / 1e6
                print(f"{name:<12} {stored / 1e6:10.2f} {t * 1e3:10.2f} {mbs:10.0f} {mbs / copy_mbs:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
