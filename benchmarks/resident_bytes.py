"""Resident bytes of a file's kernel-served entries against their bytes in the file, per encoding.

    python benchmarks/resident_bytes.py FILE.ddq [FILE.ddq ...]
    python benchmarks/resident_bytes.py --synthetic    # bench_kernels.py's entries, 7B shapes, every encoding

Loads every entry the kernels keep compressed (kernels.supports) as a CompressedDelta on the CPU (the
resident layout is the same on every device) and prints, per encoding: entries, entry bytes in the file,
resident bytes, the part of them that is column lists (seeded_rans_split's classes), resident / file, and
the largest one entry's resident / file. $DDQ_SPLIT_COLUMNS=direct|complement loads split entries with the
rest class's own list, or through the hot list's complement (default auto: the list where it fits in 2x).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddq_format.kernels import CompressedDelta, supports  # noqa: E402
from ddq_format.reader import DDQFile  # noqa: E402


def tally(path) -> dict:
    out: dict = {}
    with DDQFile(path) as f:
        for name, e in f.entries.items():
            if not supports(e):
                continue
            d = CompressedDelta.from_entry(e, f.buffers(name), path=f.path)
            row = out.setdefault(e["encoding"], [0, 0, 0, 0, 0.0])
            for i, v in enumerate((1, d.encoded_nbytes, d.nbytes, d.list_nbytes)):
                row[i] += v
            row[4] = max(row[4], d.nbytes / d.encoded_nbytes)
    return out


def synthetic() -> dict:
    """{(shape, encoding): counts} of bench_kernels.py's entries (alpha 8, k 4, h_g 128) at 7B shapes."""
    from bench_kernels import ENCODINGS, SHAPES, build_entry
    out = {}
    for r, c in SHAPES:
        for enc in ENCODINGS:
            e, b = build_entry(r, c, enc)
            d = CompressedDelta.from_entry(e, b)
            out[(f"{r}x{c}", enc)] = [1, d.encoded_nbytes, d.nbytes, d.list_nbytes, d.nbytes / d.encoded_nbytes]
    return out


def main(args) -> None:
    print("| file | encoding | entries | file bytes | resident bytes | of which column lists | resident / file | "
          "largest entry's |")
    print("|---|---|---|---|---|---|---|---|")
    tables = [("synthetic " + k[0], {k[1]: v}) for k, v in synthetic().items()] if args == ["--synthetic"] else \
        [(Path(p).name, tally(p)) for p in args]
    for label, rows in tables:
        for enc, (n, enc_b, res_b, lists, top) in rows.items():
            print(f"| {label} | {enc} | {n} | {enc_b} | {res_b} | {lists} ({lists / res_b:.0%}) | "
                  f"{res_b / enc_b:.2f} | {top:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
