"""Replay the crafted-file corpus (manifest.json): each file fails at its stage with exactly the error class,
field and message fragment recorded, or is accepted; and for every file, `verify` returns fault lines (never
raises) and the inspect report of any file that opens is JSON. make_attacks.py must reproduce the bytes."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

import ddq_format.errors as errors
from ddq_format import DDQError, DDQFile
from ddq_format.accounting import report
from ddq_format.spec import MAX_HEADER_BYTES
from ddq_format.verify import verify

HERE = Path(__file__).resolve().parent
MANIFEST = json.loads((HERE / "manifest.json").read_text())
ALLOC_CAP = 16 * 2**20  # no file of the corpus may make any step allocate more than this
# but a 2.x header is inflated into memory before it is parsed: up to the header cap (the same 64 MiB a 1.x
# header may map), one step more to see that a stream goes past it, and the buffer's growth margin
INFLATE_CAP = MAX_HEADER_BYTES + 8 * 2**20


def _check_error(err: DDQError, case: dict, path: Path):
    assert type(err) is getattr(errors, case["error"]), (type(err).__name__, str(err))
    assert str(path) in str(err)
    if "field" in case:
        assert err.field == case["field"], (err.field, str(err))
    if "tensor" in case:
        assert err.tensor == case["tensor"], (err.tensor, str(err))
    if "match" in case:
        assert case["match"] in str(err), str(err)


def _within_cap(fn, cap=ALLOC_CAP):
    tracemalloc.start()
    try:
        return fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < cap, peak


@pytest.fixture(scope="module")
def warm_kernels():
    """Every file's steps once, untraced: the optional numba kernels compile (or load from numba's cache) on
    first use, and that one-time allocation is the library's, not the file's."""
    for case in MANIFEST:
        path = HERE / case["file"]
        verify(path)
        try:
            with DDQFile(path) as f:
                for name, e in f.entries.items():
                    if e["kind"] not in ("same", "removed", "tied"):
                        try:
                            f.decode(name)
                        except DDQError:
                            pass
        except DDQError:
            pass


@pytest.mark.parametrize("case", MANIFEST, ids=[c["file"] for c in MANIFEST])
def test_attack(case, warm_kernels):
    path = HERE / case["file"]
    stage = case["stage"]
    cap = INFLATE_CAP if case["file"] == "v2_header_bomb.ddq" else ALLOC_CAP
    faults = _within_cap(lambda: verify(path), cap)
    assert isinstance(faults, list) and all(isinstance(f, str) for f in faults)
    if stage == "open":
        with pytest.raises(DDQError) as info:
            _within_cap(lambda: DDQFile(path), cap)
        _check_error(info.value, case, path)
        assert faults == [str(info.value)]
        return
    with DDQFile(path) as f:
        json.dumps(_within_cap(lambda: report(f)), allow_nan=False)
        if stage == "decode":
            with pytest.raises(DDQError) as info:
                _within_cap(lambda: f.decode(case["tensor"]))
            _check_error(info.value, case, path)
            assert any(case["tensor"] in x for x in faults), faults
            return
        for name, e in f.entries.items():
            if e["kind"] not in ("same", "removed", "tied"):
                _within_cap(lambda: f.decode(name))
    if stage == "verify":
        assert faults and any(case["match"] in x for x in faults), faults
    else:
        assert stage == "ok" and faults == [], faults


def test_corpus_regenerates_byte_for_byte(tmp_path):
    from tests.attacks import make_attacks
    manifest = make_attacks.build(tmp_path)
    assert manifest == MANIFEST
    for case in MANIFEST:
        assert (tmp_path / case["file"]).read_bytes() == (HERE / case["file"]).read_bytes(), case["file"]
    assert sorted(p.name for p in HERE.glob("*.ddq")) == sorted(c["file"] for c in MANIFEST)


@pytest.mark.parametrize("case", [c for c in MANIFEST if c["stage"] != "open"], ids=lambda c: c["file"])
def test_kernel_load_of_every_opened_file(case):
    """The loaders' path (kernels.CompressedDelta.from_entry, then its decode): every kernel-served entry of a
    file that opens either loads and decodes exactly as the reader does, or fails with a DDQError naming the
    tensor; never another exception. A decode past the reader's budget (a decode bomb) is only loaded: the
    loaders decode a delta only into a base layer of its shape, which binding checks first."""
    torch = pytest.importorskip("torch")
    from ddq_format.kernels import CompressedDelta, supports
    path = HERE / case["file"]
    with DDQFile(path) as f:
        for name, e in f.entries.items():
            if not supports(e):
                continue
            try:
                want = f.decode(name)
            except errors.LimitError:
                d = _within_cap(lambda: CompressedDelta.from_entry(e, f.buffers(name), path=f.path))
                assert d.nbytes <= 2 * d.encoded_nbytes  # resident as stored: nothing decoded
                continue
            except DDQError:
                want = None
            try:
                d = CompressedDelta.from_entry(e, f.buffers(name), path=f.path)
                got = d.to_dense()
            except DDQError as err:
                assert want is None, (name, str(err))  # the kernels refuse only what the reader refuses
                assert err.tensor == name, str(err)
                continue
            assert want is not None and torch.equal(got, torch.from_numpy(want)), name
