"""The dispatch table: which kernel serves which encoding, device and batch, decided in one place."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddq_format.kernels import KERNEL_ENCODINGS, describe, dispatch, supports
from ddq_format.spec import (ENC_CSR_F16, ENC_CSR_PARTS, ENC_LOWRANK, ENC_SEEDED, ENC_SEEDED_RANS, ENC_SEEDED_RANS_SPLIT,
                             ENC_SIGN_SCALE)

KERNELS_DIR = Path(dispatch.__file__).parent


def test_supports_exactly_the_kernel_encodings():
    assert set(KERNEL_ENCODINGS) == {ENC_SEEDED, ENC_SEEDED_RANS, ENC_CSR_PARTS, ENC_SEEDED_RANS_SPLIT}
    for enc in KERNEL_ENCODINGS:
        assert supports({"kind": "compressed", "encoding": enc})
        assert not supports({"kind": "dense", "encoding": enc})
    for enc in (ENC_CSR_F16, ENC_SIGN_SCALE, ENC_LOWRANK, "raw", None):
        assert not supports({"kind": "compressed", "encoding": enc})


# (op, encoding, backend, batch) -> kernel: the table as the loaders and the vLLM path see it
EXPECTED = [
    ("load", ENC_SEEDED, "triton", None, "upload as stored"),
    ("load", ENC_SEEDED_RANS, "triton", None, "triton rans_lanes -> packed seeded codes"),
    ("load", ENC_SEEDED_RANS, "torch", None, "numpy rANS decode -> packed seeded codes"),
    ("decode", ENC_SEEDED, "triton", None, "triton seeded_rows"),
    ("decode", ENC_SEEDED_RANS, "triton", None, "triton seeded_rows"),
    ("decode", ENC_CSR_PARTS, "triton", None, "triton csr_scatter"),
    ("decode", ENC_CSR_PARTS, "torch", None, "torch reference decode"),
    ("decode", ENC_SEEDED_RANS, "numpy", None, "numpy reader decode"),
    ("rows", ENC_SEEDED, "numpy", None, "numpy mask of those rows"),
    ("rows", ENC_CSR_PARTS, "triton", None, "torch reference rows"),
    ("matmul", ENC_SEEDED, "numpy", 1, "numpy decode, then dense matmul"),
    ("linear", ENC_CSR_PARTS, "numpy", 1, "F.linear + delta matmul"),
    ("multi", ENC_CSR_PARTS, "numpy", None, "numpy decode (one hash pass per mask geometry), dense matmul per delta"),
    ("decode_entry", ENC_SEEDED_RANS, "numpy", None, "numpy reader decode"),
    ("decode_entry", ENC_SEEDED_RANS, "triton", None, "triton rans_lanes -> seeded_rows (8-bit codes)"),
    ("decode_entry", ENC_SEEDED, "triton", None, "load, then decode"),
    ("matmul", ENC_SEEDED, "triton", 64, "triton delta_matmul"),
    ("matmul", ENC_SEEDED, "triton", 65, "decode, then dense matmul"),
    ("matmul", ENC_CSR_PARTS, "torch", 1, "torch reference matmul"),
    ("linear", ENC_SEEDED_RANS, "triton", 1, "triton fused_linear"),
    ("linear", ENC_CSR_PARTS, "triton", 16, "triton fused_linear"),
    ("linear", ENC_SEEDED, "triton", 17, "F.linear + delta matmul"),
    ("linear", ENC_SEEDED, "torch", 1, "F.linear + delta matmul"),
    ("multi", ENC_SEEDED_RANS, "triton", None, "triton sgmv"),
    ("multi", ENC_SEEDED, "torch", None, "torch reference multi"),
    # seeded_rans_split: each column class a seeded delta; products run per class, decodes put columns back
    ("load", ENC_SEEDED_RANS_SPLIT, "triton", None,
     "each column class as seeded_rans, + U16 (U32) column lists (or the hot list's complement)"),
    ("decode", ENC_SEEDED_RANS_SPLIT, "triton", None, dispatch.PER_CLASS),
    ("decode", ENC_SEEDED_RANS_SPLIT, "numpy", None, "numpy reader decode"),  # each class into its columns
    ("rows", ENC_SEEDED_RANS_SPLIT, "numpy", None, dispatch.PER_CLASS),
    ("decode_entry", ENC_SEEDED_RANS_SPLIT, "numpy", None, "numpy reader decode"),
    ("decode_entry", ENC_SEEDED_RANS_SPLIT, "triton", None, "load, then decode"),
    ("matmul", ENC_SEEDED_RANS_SPLIT, "triton", 1, "triton delta_matmul"),
    ("linear", ENC_SEEDED_RANS_SPLIT, "triton", 16, "triton fused_linear"),
    ("multi", ENC_SEEDED_RANS_SPLIT, "triton", None, "triton sgmv"),
    ("multi", ENC_SEEDED_RANS_SPLIT, "numpy", None,
     "numpy decode (one hash pass per mask geometry), dense matmul per delta"),
]


@pytest.mark.parametrize("op,enc,backend,batch,kernel", EXPECTED)
def test_rules(op, enc, backend, batch, kernel):
    assert dispatch.select(op, enc, backend, batch) == kernel


def test_every_encoding_has_a_kernel_for_every_operation_and_backend():
    for op in ("load", "decode", "rows", "matmul", "linear", "multi"):
        for enc in KERNEL_ENCODINGS:
            for backend in dispatch.BACKENDS:
                assert dispatch.select(op, enc, backend, 1)
    decoders = {r.kernel for r in dispatch.RULES if r.op == "decode"}
    assert decoders <= set(dispatch.DECODERS) | {dispatch.PER_CLASS}  # per class: the classes' own rules
    rows = describe()
    assert len(rows) == len(dispatch.RULES) and {"op", "encodings", "device", "batch", "kernel"} <= set(rows[0])
    with pytest.raises(Exception, match="no kernel"):
        dispatch.select("decode", ENC_LOWRANK, "triton")


def test_backend_choice(monkeypatch):
    """CPU tensors default to the numpy backend (the reader's decoders), the torch reference stays one
    argument or variable away; the numpy backend refuses device tensors."""
    import torch
    from ddq_format.errors import UsageError
    monkeypatch.delenv("DDQ_KERNEL_BACKEND", raising=False)
    assert dispatch.choose(torch.device("cpu"), None) == "numpy"
    assert dispatch.choose(torch.device("meta"), None) == "torch"
    with pytest.raises(UsageError, match="numpy backend needs CPU"):
        dispatch.choose(torch.device("meta"), "numpy")
    monkeypatch.setenv("DDQ_KERNEL_BACKEND", "torch")
    assert dispatch.choose(torch.device("cpu"), None) == "torch" and not dispatch.unforced(None)


def test_no_encoding_names_compared_outside_the_registries():
    """Kernel choice by encoding lives in registry.py (ENCODINGS) and dispatch.py (RULES), nowhere else."""
    names = "|".join(re.escape(e) for e in KERNEL_ENCODINGS)
    pattern = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    pattern_const = re.compile(r"(==|!=)\s*ENC_[A-Z_]+|ENC_[A-Z_]+\s*(==|!=)")
    for path in KERNELS_DIR.glob("*.py"):
        text = path.read_text()
        assert not pattern.search(text), (path.name, pattern.search(text).group(0))
        assert not pattern_const.search(text), (path.name, pattern_const.search(text).group(0))


def test_grouped_launch_tables_do_not_keep_their_deltas_alive(tmp_path, rng):
    """The GPU grouped call's cached tables (multi_tables: the parts' buffer addresses) are dropped with their
    deltas: an adapter vLLM evicts from its slot frees its device memory instead of staying cached."""
    import gc
    import weakref

    from kernel_builders import write_cases

    from ddq_format.kernels import CompressedDelta
    f, names = write_cases(tmp_path, rng, [(9, 40, dict(encoding="seeded", alpha=4, group_size=16, bits=4))] * 2)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    first = dispatch.multi_tables([ds[0], None, ds[1]])[0]
    assert dispatch.multi_tables([ds[0], None, ds[1]])[0] is first  # cached while they live
    gone = weakref.ref(ds[1])
    key = (id(ds[0]), id(None), id(ds[1]))
    del ds[1], first
    gc.collect()
    assert gone() is None and key not in dispatch._MULTI_CACHE
    assert dispatch.multi_tables([ds[0]])[0].shape[0] == 1


def test_byte_codes_only_when_every_bit_width_divides_8(tmp_path, rng):
    """BYTE (one load per code) is set for a launch only when every delta's codes lie in single bytes: one
    3-bit delta in a grouped launch turns it off for the whole launch (its codes straddle bytes)."""
    from kernel_builders import write_cases

    from ddq_format.kernels import CompressedDelta
    cases = [(9, 40, dict(encoding="seeded", alpha=4, group_size=16, bits=b)) for b in (1, 2, 4, 8, 3, 5)]
    f, names = write_cases(tmp_path, rng, cases)
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    assert [dispatch.launch_args(d)[2]["BYTE"] for d in ds] == [True, True, True, True, False, False]
    assert dispatch.multi_tables(ds[:4])[1][0][1]["BYTE"] is True
    assert dispatch.multi_tables(ds[:5])[1][0][1]["BYTE"] is False
    csr = [(9, 40, dict(encoding="csr_parts", alpha=4, group_size=16, bits=4, parts=m)) for m in (8, 4, 2, 1)]
    (tmp_path / "csr").mkdir()
    f, names = write_cases(tmp_path / "csr", rng, csr)  # part codes of 1, 2, 3 and 4 bits
    ds = [CompressedDelta.from_entry(f.entry(n), f.buffers(n), "cpu") for n in names]
    assert [dispatch.launch_args(d)[2]["BYTE"] for d in ds] == [True, True, False, True]
