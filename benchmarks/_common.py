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


def write_csv(path: Path, rows, fields) -> None:
    """Rows (dicts) as CSV with `fields` as columns, floats to 6 significant digits; atomic."""
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(path)
