"""Bounded random-mutation fuzz campaign (issue 12), run by CI: open + decode + parts + files + verify + the
inspect report (+ json.dumps of it) on mutated real files may only raise DDQError (verify and report never
raise), within an allocation cap.

Five mutators: raw bytes of the whole file (mostly caught by the footer/CRCs); the header's msgpack bytes
with a valid CRC (the parser and validator), and its zlib bytes in a 2.x file (the inflater); header values
replaced by arbitrary msgpack values with a valid CRC (the per-field checks); buffer bytes read with checksums
off (the decoders' content checks).
Bases: a sample of every kind, a tiny file, a file with one entry of every encoding (tests/attacks), and the
crafted corpus itself. CI runs DDQ_FUZZ_EXAMPLES examples per mutator (default below, ~40 s on 2 cores);
`DDQ_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py` digs deeper.
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddq_testing import assemble, split_file, write_sample
from ddq_format import DDQError, DDQFile, Writer
from ddq_format.accounting import report
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, seeded
from ddq_format.verify import verify
from ddq_format.writer import pack_header
from tests.attacks.make_attacks import HERE as ATTACKS, base_file

FUZZ = settings(max_examples=int(os.environ.get("DDQ_FUZZ_EXAMPLES", 1000)), deadline=None,
                suppress_health_check=list(HealthCheck))
ALLOC_CAP = 64 * 2**20  # any input: no step allocates more (the default decode budget refuses amplification)
CORPUS = sorted(p for p in ATTACKS.glob("*.ddq") if p.stat().st_size < 4096)


def _tiny(path: Path) -> Path:
    d = np.linspace(-1, 1, 3 * 10, dtype=np.float32).reshape(3, 10)
    cols, vals = groupwise_dropout(d, 2, 4, seed=9)
    with Writer(path) as w:
        w.add("c", "compressed", d.shape, "F32",
              csr_parts.encode(d.shape, np.repeat(np.arange(3), cols.shape[1]), cols.reshape(-1),
                               vals.reshape(-1), bits=3, parts=2, alpha=2, group_size=4, seed=9))
        w.add("s", "compressed", d.shape, "F32", seeded.encode(d.shape, vals, bits=2, alpha=2, group_size=4, seed=9))
    return path


BASES = 3  # sample, tiny, every encoding; then the corpus files that open


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    out = []
    for p in [write_sample(tmp / "sample.ddq"), _tiny(tmp / "tiny.ddq"), base_file(tmp / "all.ddq")] + CORPUS:
        try:
            header, data = split_file(p)
        except DDQError:
            continue  # a corpus file the reader refuses: no header to mutate
        out.append((p.read_bytes(), header, data))
    return out


def _decode_all(f):
    for name, e in f.entries.items():
        try:
            out = f.decode(name)
            assert out.dtype == np.float32 and list(out.shape) == list(e["shape"])
            enc = f.entries[name].get("encoding")
            if name not in f.unsupported and e["kind"] == "compressed" and enc in ("csr_parts", "seeded",
                                                                                      "seeded_rans"):
                f.parts(name)
        except DDQError:
            pass
    for name in f.files:
        try:
            f.file(name)
        except DDQError:
            pass


def exercise(blob: bytes, verify_checksums=True):
    """Open, decode everything, verify, report: only DDQError from the reader, nothing from verify and report,
    and nothing allocates more than ALLOC_CAP."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.ddq"
        path.write_bytes(blob)
        tracemalloc.start()
        try:
            try:
                with DDQFile(path, verify_checksums=verify_checksums) as f:
                    json.dumps(report(f), allow_nan=False)
                    _decode_all(f)
            except DDQError:
                pass
            faults = verify(path)
            assert isinstance(faults, list) and all(isinstance(x, str) for x in faults)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < ALLOC_CAP, peak


mutation = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                     st.integers(0, 2**31), st.integers(0, 255), st.integers(1, 16))


def mutate(blob: bytes, ops) -> bytes:
    b = bytearray(blob)
    for op, pos, val, n in ops:
        if not b:
            break
        i = pos % len(b)
        if op == "flip":
            b[i] ^= 1 << (val % 8)
        elif op == "set":
            b[i] = val
        elif op == "insert":
            b[i:i] = bytes([val]) * n
        elif op == "delete":
            del b[i:i + n]
        else:
            del b[i:]
    return bytes(b)


which = st.one_of(st.integers(0, BASES - 1), st.integers(0, 10**6))  # mostly the bases, sometimes the corpus


def _pick(files, i):
    return files[i] if i < BASES else files[BASES + i % (len(files) - BASES)]


@FUZZ
@given(which=which, ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_file_bytes(files, which, ops):
    exercise(mutate(_pick(files, which)[0], ops))


@FUZZ
@given(which=which, ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_header_bytes_with_valid_crc(files, which, ops):
    _, header, data = _pick(files, which)
    exercise(assemble(header, data, raw_header=mutate(pack_header(header), ops), minor=1))


@FUZZ
@given(which=which, ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_compact_header_bytes_with_valid_crc(files, which, ops):
    """Format 2.x: the stored (zlib) header bytes mutated, CRC correct: the inflater, then the parser."""
    _, header, data = _pick(files, which)
    exercise(assemble(header, data, raw_header=mutate(zlib.compress(pack_header(header), 9), ops), major=2))


@FUZZ
@given(which=which, ops=st.lists(mutation.filter(lambda m: m[0] in ("flip", "set")), min_size=1, max_size=6))
def test_fuzz_buffer_bytes_without_checksums(files, which, ops):
    _, header, data = _pick(files, which)
    exercise(assemble(header, mutate(data, ops), minor=1), verify_checksums=False)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([0, 1, 2, 3, 4, 8, 64, 255, 2**16, 2**17, 2**31, 2**32, 2**34, 2**64 - 1])
    | st.floats(allow_nan=True) | st.text(max_size=8) | st.binary(max_size=8)
    | st.sampled_from(["raw", "csr_parts", "seeded", "seeded_rans", "csr_f16", "sign_scale", "lowrank", "same",
                       "tied", "removed", "dense", "replace", "compressed", "U8", "U32", "U64", "F16", "F32", "BF16",
                       "PACKED", "c", "s", "r", "p", "a.csr", "d.replace", "dare"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)


def _paths(obj, prefix=()):
    """Every (container, key) position in the header tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


@FUZZ
@given(which=which, data=st.data())
def test_fuzz_header_values(files, which, data):
    _, header, blob_data = _pick(files, which)
    h = copy.deepcopy(header)
    paths = list(_paths(h))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = h
        try:
            for key in path[:-1]:
                node = node[key]
            action = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                node[path[-1]] = data.draw(msgpack_values)
            elif action == "delete":
                del node[path[-1]]
            elif isinstance(node, dict):
                node[data.draw(st.text(max_size=6))] = data.draw(msgpack_values)
            else:
                node.append(data.draw(msgpack_values))
        except (KeyError, IndexError, TypeError, AttributeError):
            continue  # an earlier mutation changed the tree under this path
    exercise(assemble(h, blob_data, minor=data.draw(st.sampled_from([0, 1, 2, 9]))))
