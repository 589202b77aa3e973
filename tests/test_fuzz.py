"""Bounded random-mutation fuzz of real files: opening and decoding anything may only raise DDQError.

Four mutators: raw bytes of the whole file (mostly caught by the footer/CRCs); the header's msgpack bytes
with a valid CRC (the parser and validator); header values replaced by arbitrary msgpack values with a
valid CRC (the per-field checks); buffer bytes read with checksums off (the decoders' content checks).
"""
from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddq_testing import assemble, split_file, write_sample
from ddq_format import DDQError, DDQFile, Writer
from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, seeded
from ddq_format.writer import pack_header

# Bounded so the suite stays fast; DDQ_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz.py digs deeper.
FUZZ = settings(max_examples=int(os.environ.get("DDQ_FUZZ_EXAMPLES", 200)), deadline=None,
                suppress_health_check=list(HealthCheck))


def _tiny(path: Path) -> Path:
    d = np.linspace(-1, 1, 3 * 10, dtype=np.float32).reshape(3, 10)
    cols, vals = groupwise_dropout(d, 2, 4, seed=9)
    with Writer(path) as w:
        w.add("c", "compressed", d.shape, "F32",
              csr_parts.encode(d.shape, np.repeat(np.arange(3), cols.shape[1]), cols.reshape(-1),
                               vals.reshape(-1), bits=3, parts=2, alpha=2, group_size=4, seed=9))
        w.add("s", "compressed", d.shape, "F32", seeded.encode(d.shape, vals, bits=2, alpha=2, group_size=4, seed=9))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    out = []
    for p in (write_sample(tmp / "sample.ddq"), _tiny(tmp / "tiny.ddq")):
        header, data = split_file(p)
        out.append((p.read_bytes(), header, data))
    return out


def exercise(blob: bytes, verify=True):
    """Open and decode everything; return normally or raise DDQError only."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.ddq"
        path.write_bytes(blob)
        try:
            with DDQFile(path, verify_checksums=verify) as f:
                for name, e in f.entries.items():
                    out = f.decode(name)
                    assert out.dtype == np.float32 and list(out.shape) == list(e["shape"])
                    if e.get("encoding") in ("csr_parts", "seeded"):
                        f.parts(name)
                for name in f.files:
                    f.file(name)
        except DDQError:
            pass


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


@FUZZ
@given(which=st.integers(0, 1), ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzz_file_bytes(files, which, ops):
    exercise(mutate(files[which][0], ops))


@FUZZ
@given(which=st.integers(0, 1), ops=st.lists(mutation, min_size=1, max_size=3))
def test_fuzz_header_bytes_with_valid_crc(files, which, ops):
    _, header, data = files[which]
    exercise(assemble(header, data, raw_header=mutate(pack_header(header), ops)))


@FUZZ
@given(which=st.integers(0, 1), ops=st.lists(mutation.filter(lambda m: m[0] in ("flip", "set")), min_size=1,
                                              max_size=6))
def test_fuzz_buffer_bytes_without_checksums(files, which, ops):
    _, header, data = files[which]
    exercise(assemble(header, mutate(data, ops)), verify=False)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.sampled_from([0, 1, 2, 3, 4, 8, 64, 255, 2**31])
    | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.sampled_from(["raw", "csr_parts", "seeded", "same", "tied", "dense", "compressed", "U8", "U64", "F16",
                       "PACKED", "c", "a.csr", "d.replace"]),
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
@given(which=st.integers(0, 1), data=st.data())
def test_fuzz_header_values(files, which, data):
    _, header, blob_data = files[which]
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
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the tree under this path
    exercise(assemble(h, blob_data))
