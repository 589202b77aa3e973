"""Encodings of a tensor entry, registered by their spec id (SPEC.md §9): one module per encoding, one protocol.

Each encoding module defines
  ID                       its id (a `spec.ENC_*` constant; version and allowed kinds come from spec.py)
  ROLES                    buffer role -> size-accounting component ("values", "col_indices", ...)
  check(entry, ctx)        header-only validation: sizes are checked against the shape before any byte is read
  decode(entry, bufs)      -> float32 ndarray of the entry's shape
  encode(...)              -> Encoded (the arguments are the encoding's own)
and optionally
  parts(entry, bufs, ctx)  the stored parts as arrays (CSR parts, or the code matrix), for kernels and tools
  nominal_ratio(entry)     the paper's ratio (default: 16·alpha / (k − log2 m) when the params have alpha, bits)
  KEPT_ORDER               DeltaDQ layouts only: True = values in the seeded mask's kept order (the mask is
                           regenerated from the seed), False = positions stored, columns ascending
  SEPARATE_PARTS           True when the encoding stores m > 1 parts of separate quantization
  ENTROPY_CODED            True when the codes are entropy-coded (parts() still gives the plain code matrix)
  factors(entry, bufs)     low-rank layouts: (U [rows, r], V [r, cols]) with the delta = U @ V, so a loader can
                           keep the factors instead of the dense delta

`registry()` wraps each module in an `Encoding` and checks the set against spec.ENCODING_SINCE; callers use
`get(id)` / `require(id, ctx)` and the Encoding's attributes, never comparisons of encoding names.
"""
from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field

import numpy as np

from ..spec import ENCODING_SINCE, ENCODINGS_BY_KIND


@dataclass
class Encoded:
    """What the writer stores for one entry: encoding id, scalar params and named buffers."""
    encoding: str
    params: dict
    buffers: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # role -> (dtype, array)


@dataclass(frozen=True)
class Encoding:
    """One registered encoding: its spec facts and the module that implements it."""
    id: str
    module: object
    since: tuple[int, int]
    kinds: tuple[str, ...]
    roles: dict
    kept_order: bool | None = None
    separate_parts: bool = False
    entropy_coded: bool = False

    @property
    def deltadq(self) -> bool:
        """A layout of DeltaDQ's dropout + quantization (the converter's --encoding choices)."""
        return self.kept_order is not None

    @property
    def has_parts(self) -> bool:
        return hasattr(self.module, "parts")

    @property
    def has_factors(self) -> bool:
        return hasattr(self.module, "factors")

    def factors(self, entry, bufs):
        return self.module.factors(entry, bufs)

    def check(self, entry, ctx) -> None:
        self.module.check(entry, ctx)

    def decode(self, entry, bufs) -> np.ndarray:
        return self.module.decode(entry, bufs)

    def encode(self, *args, **kw) -> Encoded:
        return self.module.encode(*args, **kw)

    def parts(self, entry, bufs, ctx):
        if not self.has_parts:
            raise ctx.fail(f"encoding {self.id!r} has no compressed parts", "encoding")
        return self.module.parts(entry, bufs, ctx)

    def nominal_ratio(self, entry) -> float | None:
        custom = getattr(self.module, "nominal_ratio", None)
        if custom is not None:
            return custom(entry)
        p = entry.get("params") or {}
        if not isinstance(p, dict) or not {"alpha", "bits"} <= p.keys():
            return None
        bits = p["bits"] - int(math.log2(p.get("parts", 1)))
        return math.inf if bits == 0 else p["alpha"] * 16 / bits


# Implementation modules, in spec table order (SPEC.md §9).
_MODULES = ("raw", "csr_parts", "seeded", "csr_f16", "sign_scale", "lowrank", "seeded_rans", "lowrank_q", "nm_q",
            "dense_q", "seeded_rans_split")


@functools.cache
def _build() -> dict[str, Encoding]:
    out = {}
    for mod_name in _MODULES:
        m = importlib.import_module(f".{mod_name}", __name__)
        kinds = tuple(k for k, ids in ENCODINGS_BY_KIND.items() if m.ID in ids)
        out[m.ID] = Encoding(m.ID, m, ENCODING_SINCE[m.ID], kinds, dict(m.ROLES), getattr(m, "KEPT_ORDER", None),
                             getattr(m, "SEPARATE_PARTS", False), getattr(m, "ENTROPY_CODED", False))
    if set(out) != set(ENCODING_SINCE):
        raise RuntimeError(f"encoding modules {sorted(out)} differ from spec.ENCODING_SINCE {sorted(ENCODING_SINCE)}")
    return out


def registry() -> dict[str, Encoding]:
    """id -> Encoding for every encoding this library reads and writes."""
    return _build()


def get(encoding) -> Encoding | None:
    return registry().get(encoding) if isinstance(encoding, str) else None


def require(encoding, ctx) -> Encoding:
    enc = get(encoding)
    if enc is None:
        raise ctx.fail(f"unknown encoding {encoding!r}", "encoding")
    return enc


def deltadq_encodings() -> tuple[str, ...]:
    """Ids of DeltaDQ's layouts (what `ddq convert --encoding` offers), in spec order."""
    return tuple(i for i, e in registry().items() if e.deltadq)
