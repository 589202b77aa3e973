"""Is this .ddq file a delta of the base checkpoint vLLM serves? Checked against the checkpoint on disk.

vLLM's parameters are fused (qkv_proj, gate_up_proj) and tensor-parallel shards, so the binding (shape,
dtype, sampled fingerprint per HF tensor, SPEC.md) is checked against the base's safetensors files, which
are what vLLM loaded. Fingerprints read only their sampled elements (memory-mapped) and are cached per
tensor, so checking the next delta costs almost nothing.
"""
from __future__ import annotations

import functools
import os

from ...binding import check_binding, fingerprint_bits
from ...checkpoint_raw import open_checkpoint
from ...errors import BindingError, DDQError, UsageError


@functools.cache  # asked for every request; failures are not cached
def local_folder(model: str, revision: str | None = None) -> str:
    """The base model's local folder: the path itself, or its snapshot in the local Hugging Face cache."""
    if os.path.isdir(model):
        return model
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(model, revision=revision, local_files_only=True,
                                 allow_patterns=["*.safetensors", "*.json"])
    except Exception as e:  # noqa: BLE001 - any failure means: no local checkpoint to check against
        raise UsageError(f"cannot find the base model {model!r} on disk to check a .ddq delta's binding "
                         f"({type(e).__name__}: {e})") from None


def check_names(ddq, names, folder) -> None:
    """Every tensor the delta needs is in the base checkpoint, and every base tensor is in the file."""
    from ..apply import missing_from_base
    have = set(names)
    missing = missing_from_base(ddq, have)
    if missing:
        raise BindingError(f"{len(missing)} delta tensor(s) are not in the base checkpoint {folder}, e.g. "
                           f"{missing[:3]}: wrong base model or wrong file", path=ddq.path, tensor=missing[0])
    unknown = [n for n in names if n not in ddq.entries]
    if unknown:
        raise BindingError(f"{len(unknown)} tensor(s) of the base checkpoint {folder} are not listed in the "
                           f"delta file, e.g. {unknown[:3]}: wrong base model or wrong file", path=ddq.path,
                           tensor=unknown[0])


class BaseCheckpoint:
    """The base's tensor names, shapes, dtypes and (lazily) fingerprints."""

    def __init__(self, folder):
        self.folder = str(folder)
        try:
            self.shards = open_checkpoint(folder)
        except DDQError as e:
            raise UsageError(f"cannot read the base checkpoint {folder}: {e.reason}", path=folder) from None
        self._fp: dict[str, str] = {}

    def names(self) -> list[str]:
        return list(self.shards)

    def fingerprint(self, name: str) -> str:
        if name not in self._fp:
            dtype, _ = self.shards[name].info(name)
            self._fp[name] = fingerprint_bits(self.shards[name].bits(name), dtype)
        return self._fp[name]

    def check(self, ddq) -> None:
        """Raise BindingError (naming the file and tensor) unless every entry of `ddq` was made from this
        base: names on both sides, then shape, dtype and fingerprint of each bound tensor."""
        have = self.shards
        check_names(ddq, have, self.folder)
        for name, e in ddq.entries.items():
            rec = e.get("base")
            if rec is None or name not in have:
                continue
            dtype, shape = have[name].info(name)
            fp = self.fingerprint(name) if list(shape) == list(rec["shape"]) and dtype == rec["dtype"] else None
            check_binding(rec, shape, dtype, fp, path=ddq.path, tensor=name)

    def values(self, name: str):
        """The base tensor as float32 numpy (for `replace` entries of unchanged shape)."""
        import numpy as np
        dtype, _ = self.shards[name].info(name)
        bits = np.asarray(self.shards[name].bits(name))
        if dtype == "F32":
            return bits.view(np.float32).copy()
        if dtype == "F16":
            return bits.view(np.float16).astype(np.float32)
        return (bits.astype(np.uint32) << 16).view(np.float32)  # BF16: the high half of a float32
