"""Helpers shared by the benchmark scripts (run as scripts: this folder is on sys.path)."""
from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` calls, after one warm-up call (page cache, mmap, allocator)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired_seconds(fa, fb, rounds: int) -> tuple[float, float, float]:
    """(median seconds of fa(), of fb(), median of the per-round ratio fa / fb), the two timed alternately
    round by round after a warm-up of each: on a machine whose speed drifts over seconds, a ratio of
    neighbouring calls is steadier than a ratio of two separate medians."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(rounds):
        for fn, ts in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb), statistics.median(a / b for a, b in zip(ta, tb))


def write_csv(path: Path, rows, fields) -> None:
    """Rows (dicts) as CSV with `fields` as columns, floats to 6 significant digits; atomic."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(path)
