"""Measure what opening the largest and the costliest headers the caps allow takes (SPEC.md §3.3 quotes it).

    python tests/attacks/measure_open.py [CASE ...]

Each case is written to a temporary file and opened in a fresh subprocess, which prints its CPU seconds
and its peak resident memory (VmHWM: the interpreter and numpy, ~30 MB, and the mapped file's pages
included). Not a test: a few 40-64 MB files are built.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import msgpack  # noqa: E402

from ddq_testing import assemble  # noqa: E402

TOP = {"alignment": 64, "checksum": "crc32"}


def _with_tensors(raw_entries: list[bytes], top=TOP) -> bytes:
    head = msgpack.packb(top)
    return (bytes([head[0] + 1]) + head[1:] + msgpack.packb("tensors") + b"\xdd" + struct.pack(">I", len(raw_entries))
            + b"".join(raw_entries))


def largest_legal() -> bytes:
    """131 072 seeded entries with base bindings: the most tensors a header may hold."""
    n = 131072
    ents = [msgpack.packb({
        "name": f"model.layers.{i // 1000}.mlp.experts.{i % 1000}.down_proj.weight", "kind": "compressed",
        "shape": [16, 64], "dtype": "BF16", "encoding": "seeded",
        "params": {"alpha": 8, "group_size": 64, "bits": 4, "scale": 0.0001220703125, "zero": 7, "seed": i},
        "buffers": {"codes": {"dtype": "PACKED", "offset": 64 * i, "length": 64, "crc32": 0}},
        "base": {"shape": [16, 64], "dtype": "BF16", "fingerprint": "sample4096-crc32:0123abcd"}})
        for i in range(n)]
    return assemble(None, bytes(64 * n), raw_header=_with_tensors(ents))


def _junk_entries(n: int, junk: bytes) -> bytes:
    ents = []
    for i in range(n):
        e = msgpack.packb({"name": f"t{i}", "kind": "same", "shape": [1], "dtype": "F32"})
        ents.append(bytes([e[0] + 1]) + e[1:] + msgpack.packb("junk") + junk)
    return assemble(None, b"", raw_header=_with_tensors(ents))


def empty_arrays_in_entries() -> bytes:
    """120 000 entries of 470 empty arrays each (62 MB): refused at MAX_HEADER_OBJECTS."""
    return _junk_entries(120_000, b"\xdc" + struct.pack(">H", 470) + b"\x90" * 470)


def short_strings_in_entries() -> bytes:
    """120 000 entries of 160 two-character strings each (63 MB): refused at MAX_HEADER_OBJECTS."""
    return _junk_entries(120_000, b"\xdc" + struct.pack(">H", 160) + msgpack.packb("ab") * 160)


def empty_arrays_in_one_value() -> bytes:
    """64 MiB of empty arrays under one top-level key (it took 47 s and 4.9 GB before the caps)."""
    inner = b"\xdc" + struct.pack(">H", 480) + b"\x90" * 480
    head = msgpack.packb({**TOP, "tensors": []})
    raw = bytes([head[0] + 1]) + head[1:] + msgpack.packb("x") + b"\xdd" + struct.pack(">I", 131072) + inner * 131072
    return assemble(None, b"", raw_header=raw)


def million_same_entries() -> bytes:
    """1 000 000 `same` entries (it took 9 s and 0.7 GB before the caps)."""
    one = msgpack.packb({"name": "t", "kind": "same", "shape": [1], "dtype": "F32"})
    return assemble(None, b"", raw_header=_with_tensors([one] * 1_000_000))


CASES = {f.__name__: f for f in (largest_legal, empty_arrays_in_entries, short_strings_in_entries,
                                 empty_arrays_in_one_value, million_same_entries)}

_CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from ddq_format import DDQError, DDQFile
r0 = resource.getrusage(resource.RUSAGE_SELF)
try:
    with DDQFile({path!r}) as f:
        outcome = f"opened, {{len(f.entries)}} entries"
except DDQError as e:
    outcome = f"refused: {{e.reason}}"
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(f"{{cpu:.2f}} s CPU, peak RSS {{hwm / 1024:.0f}} MB: {{outcome}}")
"""


def main(argv=None) -> int:
    names = (sys.argv[1:] if argv is None else argv) or list(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = Path(tmp) / f"{name}.ddq"
            path.write_bytes(CASES[name]())
            out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), path=str(path))],
                                 capture_output=True, text=True, check=True).stdout.strip()
            print(f"{name} ({path.stat().st_size / 2**20:.1f} MiB): {out}")
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
