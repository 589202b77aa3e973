"""Helpers shared by the format tests: deterministic deltas, a sample file of every kind, and tools to
rebuild a file from a (possibly corrupted) header so a test hits exactly the check it targets.

A module of its own (not conftest.py): several conftest modules exist in subfolders, and `from conftest
import ...` would pick whichever pytest loaded first.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import msgpack
import numpy as np

from ddq_format import DDQFile, Writer
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, raw, seeded
from ddq_format.spec import COMPACT_MAJOR, PREAMBLE_SIZE
from ddq_format.writer import footer, pack_header, preamble


def small_delta(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A deterministic float32 matrix with both signs and some exact zeros."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(0.01)
    d[rng.random((rows, cols)) < 0.05] = 0
    return d


def write_sample(path: Path) -> Path:
    """A small file holding every kind and both compressed encodings, plus one aux file."""
    d = small_delta(6, 40, seed=1)
    with Writer(path, metadata={"note": "sample"}, algorithm={"alpha": 4}) as w:
        cols, vals = groupwise_dropout(d, 4, 16, seed=3)
        r = np.repeat(np.arange(6), cols.shape[1])
        w.add("a.csr", "compressed", d.shape, "F16",
              csr_parts.encode(d.shape, r, cols.reshape(-1), vals.reshape(-1), bits=4, parts=4, alpha=4,
                               group_size=16, seed=3))
        w.add("b.seeded", "compressed", d.shape, "BF16",
              seeded.encode(d.shape, vals, bits=3, alpha=4, group_size=16, seed=3))
        w.add("c.dense", "dense", [5], "F16", raw.encode(np.linspace(-1, 1, 5, dtype=np.float32), "F16"))
        w.add("d.replace", "replace", [2, 3], "BF16", raw.encode(np.arange(6, dtype=np.float32), "BF16"))
        w.add("e.same", "same", [3, 3], "F32")
        w.add("f.tied", "tied", [2, 3], "BF16", tied_to="d.replace")
        w.add("g.removed", "removed", [4], "F32")
        w.add_file("config.json", b'{"model_type": "toy"}')
    return path


def without_offsets(h):
    """A header with its layout (buffer offsets, alignment) taken out: what both majors share."""
    strip = lambda r: {k: v for k, v in r.items() if k != "offset"}  # noqa: E731
    return dict(h, alignment=None, files=[strip(r) for r in h.get("files", [])],
                tensors=[dict(e, buffers={k: strip(v) for k, v in e.get("buffers", {}).items()})
                         for e in h["tensors"]])


def split_file(path: Path) -> tuple[dict, bytes]:
    """(header dict, data section bytes) of a well-formed file."""
    with DDQFile(path) as f:
        header = f.header
        data_length = f.data_length
    blob = Path(path).read_bytes()
    return header, blob[PREAMBLE_SIZE: PREAMBLE_SIZE + data_length]


def assemble(header, data: bytes, *, raw_header: bytes | None = None, major: int = 1, minor: int = 0) -> bytes:
    """A file from a (possibly corrupted) header and data section, with a correct footer and header CRC, so
    a test hits exactly the check it targets."""
    hbytes = raw_header if raw_header is not None else pack_header(header)
    if major == COMPACT_MAJOR and raw_header is None:  # 2.x stores the header compressed (SPEC.md §3.3)
        hbytes = zlib.compress(hbytes, 9)
    return preamble(major, minor) + data + hbytes + footer(PREAMBLE_SIZE + len(data), hbytes, major, minor)


def packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def write_read(tmp_path, shape, enc, mutate=None, kind="compressed", dtype="F32"):
    """One entry `t` written with Writer and opened again; mutate(entry) edits the header entry of the
    written file (rebuilt with assemble: the writer itself refuses an invalid entry)."""
    from ddq_format import open_ddq
    from ddq_format.spec import FORMAT_MINOR
    p = Path(tmp_path) / "x.ddq"
    with Writer(p) as w:
        w.add("t", kind, shape, dtype, enc)
    if mutate:
        header, data = split_file(p)
        mutate(header["tensors"][0])
        p.write_bytes(assemble(header, data, minor=FORMAT_MINOR))
    return open_ddq(p)
