"""Encodings of a tensor entry: one module per encoding id (SPEC.md §Encodings).

Each module offers encode(...) -> Encoded, check(entry, ctx) for header-only validation (sizes are checked
against the shape before any byte is read) and decode(entry, buffers) -> float32 ndarray.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec import (ENC_CSR_F16, ENC_CSR_PARTS, ENC_DENSE_Q, ENC_LOWRANK, ENC_LOWRANK_Q, ENC_NM_Q, ENC_RAW, ENC_SEEDED,
                    ENC_SEEDED_RANS, ENC_SIGN_SCALE)


@dataclass
class Encoded:
    """What the writer stores for one entry: encoding id, scalar params and named buffers."""
    encoding: str
    params: dict
    buffers: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # role -> (dtype, array)


def registry():
    from . import csr_f16, csr_parts, dense_q, lowrank, lowrank_q, nm_q, raw, seeded, seeded_rans, sign_scale
    return {ENC_RAW: raw, ENC_CSR_PARTS: csr_parts, ENC_SEEDED: seeded, ENC_CSR_F16: csr_f16,
            ENC_SIGN_SCALE: sign_scale, ENC_LOWRANK: lowrank, ENC_SEEDED_RANS: seeded_rans,
            ENC_LOWRANK_Q: lowrank_q, ENC_NM_Q: nm_q, ENC_DENSE_Q: dense_q}


def get(encoding: str):
    return registry().get(encoding)
