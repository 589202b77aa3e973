"""The encodings registry (issue 12, one source of truth): every spec id has one implementation with the
full protocol, and no module outside the registries branches on encoding names."""
import re
from pathlib import Path

import pytest

from ddq_format import encodings
from ddq_format.accounting import COMPONENTS
from ddq_format.encodings._common import Ctx
from ddq_format.errors import EncodingError
from ddq_format.spec import ENCODING_SINCE, ENCODINGS_BY_KIND

PKG = Path(__file__).resolve().parents[1] / "ddq_format"


def test_every_spec_id_is_registered_with_the_protocol():
    reg = encodings.registry()
    assert set(reg) == set(ENCODING_SINCE)
    for enc_id, enc in reg.items():
        assert enc.id == enc_id and enc.since == ENCODING_SINCE[enc_id]
        assert enc.kinds and all(enc_id in ENCODINGS_BY_KIND[k] for k in enc.kinds)
        for fn in ("check", "decode", "encode"):
            assert callable(getattr(enc.module, fn)), (enc_id, fn)
        assert enc.roles and set(enc.roles.values()) <= set(COMPONENTS)


def test_deltadq_layouts():
    assert encodings.deltadq_encodings() == ("csr_parts", "seeded", "seeded_rans")
    reg = encodings.registry()
    assert reg["csr_parts"].separate_parts and not reg["csr_parts"].kept_order
    assert reg["seeded"].kept_order and reg["seeded_rans"].kept_order
    assert all(reg[i].has_parts for i in encodings.deltadq_encodings())
    assert not reg["raw"].has_parts and not reg["raw"].deltadq


def test_unknown_and_partless_encodings_fail_clearly():
    ctx = Ctx("f.ddq", "t")
    assert encodings.get(["not", "a", "str"]) is None
    with pytest.raises(EncodingError, match="unknown encoding 'nope'") as e:
        encodings.require("nope", ctx)
    assert e.value.tensor == "t" and e.value.field == "encoding"
    with pytest.raises(EncodingError, match="has no compressed parts"):
        encodings.get("raw").parts({}, {}, ctx)


# An encoding id literal or ENC_* constant compared with == / != / in (...), outside the registries
# ("lowrank" is also a --method name, so only its ENC_ constant counts).
_BRANCH = re.compile(r"""(==|!=|\bin\s*\()\s*(ENC_[A-Z_]+|["'](raw|csr_parts|seeded|seeded_rans|csr_f16|"""
                     r"""sign_scale)["'])|\bin\s+KERNEL_ENCODINGS""")
_ALLOWED = ("encodings/", "spec.py", "kernels/registry.py", "kernels/dispatch.py")  # the registries


def test_no_branching_on_encoding_names_outside_the_registries():
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(_ALLOWED):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _BRANCH.search(line.split("#")[0]):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)
