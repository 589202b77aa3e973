"""Resident bytes of a file's kernel-served entries against their bytes in the file, per encoding.

    python benchmarks/resident_bytes.py FILE.ddq [FILE.ddq ...]

Loads every entry the kernels keep compressed (kernels.supports) as a CompressedDelta on the CPU (the
resident layout is the same on every device) and prints, per encoding: entries, entry bytes in the file,
resident bytes, the part of them that is column lists (seeded_rans_split's classes), and resident / file.
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
            lists = sum(p.columns.numel() * p.columns.element_size() for p in d.parts if p.columns is not None)
            row = out.setdefault(e["encoding"], [0, 0, 0, 0])
            for i, v in enumerate((1, d.encoded_nbytes, d.nbytes, lists)):
                row[i] += v
    return out


def main(paths) -> None:
    print("| file | encoding | entries | file bytes | resident bytes | of which column lists | resident / file |")
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        for enc, (n, enc_b, res_b, lists) in tally(path).items():
            print(f"| {Path(path).name} | {enc} | {n} | {enc_b} | {res_b} | {lists} ({lists / res_b:.0%}) | "
                  f"{res_b / enc_b:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
