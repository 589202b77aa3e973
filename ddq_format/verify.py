"""`ddq verify`: structure, every checksum, every tensor decodable, and (with a base) the base binding."""
from __future__ import annotations

import zlib

import numpy as np

from .binding import fingerprint_bits
from .errors import DDQError
from .reader import DDQFile
from .spec import KIND_COMPRESSED, PREAMBLE_SIZE


def verify(path, base=None) -> list[str]:
    """One line per fault; an empty list means the file is sound."""
    try:
        ddq = DDQFile(path, verify_checksums=False)
    except DDQError as e:
        return [str(e)]
    faults = []
    with ddq:
        mm = ddq._mm
        for name, e in ddq.entries.items():
            for role, b in e.get("buffers", {}).items():
                start = PREAMBLE_SIZE + b["offset"]
                if zlib.crc32(mm[start: start + b["length"]]) != b["crc32"]:
                    faults.append(f"{ddq.path}: tensor {name!r}: field 'buffers.{role}': CRC-32 mismatch")
        for fname, f in ddq.files.items():
            start = PREAMBLE_SIZE + f["offset"]
            if zlib.crc32(mm[start: start + f["length"]]) != f["crc32"]:
                faults.append(f"{ddq.path}: field 'files.{fname}': CRC-32 mismatch")
        faults += _padding_faults(ddq)
        if not faults:  # decoding corrupt buffers would only repeat the checksum faults
            for name in ddq.names:
                try:
                    ddq.decode(name)
                except DDQError as err:
                    faults.append(str(err))
        if base is not None:
            faults += _binding_faults(ddq, base)
    return faults


def _padding_faults(ddq) -> list[str]:
    """Padding between buffers must be zero bytes (SPEC.md §Layout)."""
    spans = sorted((b["offset"], b["length"]) for e in ddq.entries.values() for b in e.get("buffers", {}).values()
                   if b["length"]) + sorted((f["offset"], f["length"]) for f in ddq.files.values() if f["length"])
    spans.sort()
    pos, faults = 0, []
    for off, length in spans + [(ddq.data_length, 0)]:
        if off > pos and any(ddq._mm[PREAMBLE_SIZE + pos: PREAMBLE_SIZE + off]):
            faults.append(f"{ddq.path}: field 'buffers': non-zero padding bytes at data offset {pos}")
        pos = max(pos, off + length)
    return faults


def _binding_faults(ddq, base) -> list[str]:
    from .checkpoint_raw import open_checkpoint
    try:
        ckpt = open_checkpoint(base)
    except (DDQError, OSError) as e:
        return [f"{base}: cannot read base checkpoint: {e}"]
    faults = []
    for name, e in ddq.entries.items():
        rec = e.get("base")
        if rec is None:
            if e["kind"] == KIND_COMPRESSED:
                faults.append(f"{ddq.path}: tensor {name!r}: field 'base': compressed entry has no base binding")
            continue
        if name not in ckpt:
            faults.append(f"{base}: tensor {name!r}: missing from the base checkpoint")
            continue
        dtype, shape = ckpt[name].info(name)
        if shape != rec["shape"]:
            faults.append(f"{base}: tensor {name!r}: field 'base.shape': base has {shape}, delta made for {rec['shape']}")
        elif dtype != rec["dtype"]:
            faults.append(f"{base}: tensor {name!r}: field 'base.dtype': base has {dtype}, delta made for {rec['dtype']}")
        else:
            fp = fingerprint_bits(np.asarray(ckpt[name].bits(name)), dtype)
            if fp != rec["fingerprint"]:
                faults.append(f"{base}: tensor {name!r}: field 'base.fingerprint': {fp} differs from the recorded "
                              f"{rec['fingerprint']} (not the base this delta was made from)")
    return faults
