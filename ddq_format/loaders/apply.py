"""Fine-tuned tensors from a base tensor and a .ddq entry, in torch.

The building block of every loader (materialize, apply_delta, vLLM): given the base tensor under an HF
checkpoint name, return the fine-tune's tensor. Arithmetic is fp32 (base + delta) and the result takes the
fine-tune's recorded dtype (entry["dtype"]), so a materialized model has the dtypes the fine-tune had.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ..binding import check_binding, fingerprint_bits, sample_indices
from ..errors import BindingError, DDQError
from ..reader import DDQFile
from ..spec import (DTYPES, FLOAT_DTYPES, KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED, KIND_REPLACE, KIND_SAME,
                    KIND_TIED)

TORCH_DTYPES = {n: getattr(torch, DTYPES[n].torch) for n in FLOAT_DTYPES}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}
# Same-width signed torch views (torch lacks uint16/uint32 ops) and the unsigned numpy dtype of the bits.
_SIGNED = {2: torch.int16, 4: torch.int32}
_BITS_VIEW = {TORCH_DTYPES[n]: (_SIGNED[DTYPES[n].size], np.dtype(DTYPES[n].bits)) for n in FLOAT_DTYPES}


def open_file(ddq) -> DDQFile:
    return ddq if isinstance(ddq, DDQFile) else DDQFile(ddq)


def dtype_name(dtype: torch.dtype) -> str | None:
    return DTYPE_NAMES.get(dtype)


def resolve(ddq: DDQFile, name: str) -> dict:
    """The entry for `name`; a name the file does not list is an error, never 'unchanged': the file lists
    every tensor of the base and of the fine-tune, so an unknown name means the wrong model or file."""
    e = ddq.entries.get(name)
    if e is None:
        raise BindingError("the base has this tensor but the delta file does not list it: wrong base model "
                           "or wrong file", path=ddq.path, tensor=name)
    return e


def tensor_fingerprint(t: torch.Tensor) -> str:
    """The binding fingerprint of a torch tensor, computed from at most FINGERPRINT_SAMPLES elements so a
    GPU tensor only sends the sample to the host."""
    int_dtype, np_dtype = _BITS_VIEW[t.dtype]
    flat = t.detach().reshape(-1)
    idx = torch.from_numpy(sample_indices(flat.numel())).to(flat.device)
    sample = flat.index_select(0, idx).view(int_dtype).cpu().numpy().view(np_dtype)
    return fingerprint_bits(sample, DTYPE_NAMES[t.dtype])


def check_base_binding(ddq: DDQFile, name: str, tensor: torch.Tensor, *, fingerprint: bool = True) -> None:
    """Raise BindingError unless `tensor` is the base tensor the entry `name` was made against (shape,
    dtype and sampled fingerprint). Entries without a recorded binding (replace, fine-tune-only) pass."""
    e = resolve(ddq, name)
    rec = e.get("base")
    if rec is None:
        return
    dt = dtype_name(tensor.dtype)
    if dt is None:
        raise BindingError(f"base tensor has unsupported dtype {tensor.dtype}", path=ddq.path, tensor=name,
                           field="base.dtype")
    fp = tensor_fingerprint(tensor) if fingerprint and list(tensor.shape) == list(rec["shape"]) \
        and dt == rec["dtype"] else None
    check_binding(rec, list(tensor.shape), dt, fp, path=ddq.path, tensor=name)


# -- decoding ---------------------------------------------------------------------------------------
def _kernels():
    try:
        from .. import kernels
    except ImportError:
        return None
    return kernels if hasattr(kernels, "supports") else None


def has_kernel(entry: dict) -> bool:
    """A compressed entry the kernels decode and multiply directly (not the baselines' encodings)."""
    k = _kernels()
    return k is not None and k.supports(entry)


def decode_delta(ddq: DDQFile, name: str, device=None) -> torch.Tensor:
    """float32 torch tensor: the delta (compressed/dense) or the full tensor (replace) of entry `name`,
    decoded on `device` (the GPU kernel when there is one and the kernels package is present)."""
    e = resolve(ddq, name)
    if e["kind"] == KIND_TIED:
        return decode_delta(ddq, e["tied_to"], device)
    if has_kernel(e):
        return _kernels().decode_dense(e, ddq.buffers(name), device if device is not None else "cpu")
    arr = ddq.decode(name)
    return torch.from_numpy(np.ascontiguousarray(arr, np.float32)).to(device)


def finetuned_tensor(ddq: DDQFile, name: str, base: torch.Tensor | None, device=None, *,
                     check: bool = True) -> torch.Tensor | None:
    """The fine-tune's tensor `name` given its base tensor (None when the base lacks it).

    compressed/dense: base + delta in fp32, cast to the entry's dtype; replace: the stored tensor;
    same: base (cast to the entry's dtype if the fine-tune changed dtypes); tied: as its target (with this
    base); removed: None. Runs on `device`, else on base's device, else CPU.
    """
    e = resolve(ddq, name)
    kind = e["kind"]
    if kind == KIND_REMOVED:
        return None
    if kind == KIND_TIED:
        return finetuned_tensor(ddq, e["tied_to"], base, device, check=check)
    dtype = TORCH_DTYPES[e["dtype"]]
    if device is None:
        device = base.device if base is not None else torch.device("cpu")
    if kind == KIND_REPLACE:
        return decode_delta(ddq, name, device).to(dtype).reshape(e["shape"])
    if base is None:
        raise BindingError(f"kind {kind} needs the base tensor, which the base model lacks", path=ddq.path,
                           tensor=name)
    if check:
        check_base_binding(ddq, name, base)
    if kind == KIND_SAME:
        return base.to(device=device, dtype=dtype)
    if kind in (KIND_COMPRESSED, KIND_DENSE):
        delta = decode_delta(ddq, name, device)
        return (base.to(device=device, dtype=torch.float32) + delta.reshape(base.shape)).to(dtype)
    raise DDQError(f"unknown kind {kind}", path=ddq.path, tensor=name, field="kind")


def iter_finetuned(ddq: DDQFile, base_items: Iterable[tuple[str, torch.Tensor]], device=None, *,
                   check: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, fine-tuned tensor) for every base tensor (removed ones skipped), then the fine-tune-only
    tensors (kind replace, plus tied ones whose target exists) the base did not have. Holds one tensor at a
    time; a base name the file does not list raises BindingError."""
    seen = set()
    for name, base in base_items:
        seen.add(name)
        t = finetuned_tensor(ddq, name, base, device, check=check)
        if t is not None:
            yield name, t
    for name, e in ddq.entries.items():
        if name in seen or e["kind"] == KIND_REMOVED:
            continue
        if e["kind"] == KIND_REPLACE:
            yield name, finetuned_tensor(ddq, name, None, device)
        elif e["kind"] == KIND_TIED:
            # A tied fine-tune-only name is left to the config's tie (tie_word_embeddings): HF checkpoints
            # store one copy; the loader re-ties.
            continue
        else:
            raise BindingError(f"kind {e['kind']} needs a base tensor, but the base model has none under "
                               "this name", path=ddq.path, tensor=name)


def missing_from_base(ddq: DDQFile, names: Iterable[str]) -> list[str]:
    """Entries that need a base tensor (compressed, dense, same) but are not among `names`."""
    have = set(names)
    return [n for n, e in ddq.entries.items()
            if e["kind"] in (KIND_COMPRESSED, KIND_DENSE, KIND_SAME) and n not in have]
