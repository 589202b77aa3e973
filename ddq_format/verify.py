"""`ddq verify`: structure, every checksum, zero padding, the version label, every stored tensor decodable, and
(with a base) the base binding; with full=True also each base tensor's full digest (SPEC.md §5.3).

It returns faults as lines and never raises for a bad file. Entries that store nothing (same, removed, tied)
are not decoded, so verifying them allocates nothing whatever their shape.
"""
from __future__ import annotations

import zlib

import numpy as np

from .binding import digest_bits, fingerprint_bits
from .errors import DDQError
from .reader import DDQFile
from .spec import (DIGEST_SCHEME, ENCODINGS_BY_KIND, FINGERPRINT_SCHEME, KIND_COMPRESSED, PREAMBLE_SIZE,
                   minor_needed)


def verify(path, base=None, *, full: bool = False, max_decoded_bytes: int | None = None) -> list[str]:
    """One line per fault; an empty list means the file is sound. `max_decoded_bytes` as in DDQFile: a tensor
    whose decode would exceed it is reported, not decoded."""
    try:
        ddq = DDQFile(path, verify_checksums=False, max_decoded_bytes=max_decoded_bytes)
    except DDQError as e:
        return [str(e)]
    with ddq:
        faults = _checksum_faults(ddq) + _padding_faults(ddq) + _label_faults(ddq)
        if not faults:  # decoding corrupt buffers would only repeat the checksum faults
            for name, e in ddq.entries.items():
                if e["kind"] not in ENCODINGS_BY_KIND:
                    continue  # same, removed, tied: nothing stored (a tied entry's target is decoded itself)
                try:
                    ddq.decode(name)
                except DDQError as err:
                    faults.append(str(err))
        if base is not None:
            faults += _binding_faults(ddq, base, full)
    return faults


def _checksum_faults(ddq) -> list[str]:
    faults = []
    with memoryview(ddq._mm) as mm:  # slices of a memoryview copy nothing
        for r in ddq.layout.all():
            start = PREAMBLE_SIZE + r.offset
            if zlib.crc32(mm[start: start + r.length]) != r.crc32:
                where = f"tensor {r.tensor!r}: " if r.tensor is not None else ""
                faults.append(f"{ddq.path}: {where}field {r.field!r}: CRC-32 mismatch")
    return faults


def _padding_faults(ddq) -> list[str]:
    """Padding between buffers must be zero bytes (SPEC.md §3.2)."""
    faults = []
    with memoryview(ddq._mm) as mm:
        for start, length in ddq.layout.padding():
            if any(mm[PREAMBLE_SIZE + start: PREAMBLE_SIZE + start + length]):
                faults.append(f"{ddq.path}: field 'buffers': non-zero padding bytes at data offset {start}")
    return faults


def _label_faults(ddq) -> list[str]:
    """The label must cover every feature used (SPEC.md §2): a reader of the labelled minor would reject it."""
    need = minor_needed(ddq.entries.values(), ddq.version[0])
    if need > ddq.version[1]:
        return [f"{ddq.path}: field 'version': labelled {ddq.version[0]}.{ddq.version[1]} but uses features of "
                f"{ddq.version[0]}.{need} (a {ddq.version[0]}.{ddq.version[1]} reader rejects or misreads it)"]
    return []


def _binding_faults(ddq, base, full: bool) -> list[str]:
    from .checkpoint_raw import open_checkpoint
    try:
        ckpt = open_checkpoint(base)
    except (DDQError, OSError, ValueError) as e:
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
        try:
            faults += _tensor_binding_faults(ddq, base, ckpt[name], name, rec, full)
        except (DDQError, OSError, ValueError) as err:  # a malformed base checkpoint is a fault, not a crash
            faults.append(f"{base}: tensor {name!r}: cannot read the base tensor: {err}")
    return faults


def _tensor_binding_faults(ddq, base, shard, name, rec, full) -> list[str]:
    where = f"{base}: tensor {name!r}: field"
    dtype, shape = shard.info(name)
    if shape != rec["shape"]:
        return [f"{where} 'base.shape': base has {shape}, delta made for {rec['shape']}"]
    if dtype != rec["dtype"]:
        return [f"{where} 'base.dtype': base has {dtype}, delta made for {rec['dtype']}"]
    bits = np.asarray(shard.bits(name))
    faults = []
    if not rec["fingerprint"].startswith(FINGERPRINT_SCHEME + ":"):
        faults.append(f"{where} 'base.fingerprint': unknown scheme in {rec['fingerprint']!r}: cannot check it")
    elif (fp := fingerprint_bits(bits, dtype)) != rec["fingerprint"]:
        faults.append(f"{where} 'base.fingerprint': {fp} differs from the recorded {rec['fingerprint']} (not the "
                      "base this delta was made from)")
    if full:
        digest = rec.get("digest")
        if digest is None:
            faults.append(f"{where} 'base.digest': absent, so only the sampled fingerprint was checked; write the "
                          "file with full digests (format 1.2) to check every element")
        elif not digest.startswith(DIGEST_SCHEME + ":"):
            faults.append(f"{where} 'base.digest': unknown scheme in {digest!r}: cannot check it")
        elif (d := digest_bits(bits, dtype)) != digest:
            faults.append(f"{where} 'base.digest': {d} differs from the recorded {digest} (the base differs in "
                          "at least one element)")
    return faults
