"""apply_delta: turn a base torch model (or state dict) into the fine-tune, in place."""
from __future__ import annotations

from collections.abc import MutableMapping

import torch

from ..errors import BindingError, UsageError
from ..spec import KIND_REMOVED, KIND_REPLACE, KIND_TIED
from .apply import check_base_binding, finetuned_tensor, open_file, resolve


def named_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and persistent buffer by its state-dict name, tied names included (aliases)."""
    out = dict(model.named_parameters(remove_duplicate=False))
    for n, b in model.named_buffers(remove_duplicate=False):
        mod_name, _, leaf = n.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        if leaf not in getattr(mod, "_non_persistent_buffers_set", ()):
            out[n] = b
    return out


def alias_groups(tensors: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names that share one tensor (tied weights), each group in first-seen order."""
    by_key: dict[tuple, list[str]] = {}
    for n, t in tensors.items():
        by_key.setdefault(storage_key(t), []).append(n)
    return list(by_key.values())


def storage_key(t: torch.Tensor) -> tuple:
    """Equal for tensors viewing the same elements (a state dict holds detached aliases, not one object)."""
    if t.numel() == 0:
        return ("empty", id(t))
    return (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def plan(ddq, tensors: dict[str, torch.Tensor], *, allow_new: bool) -> tuple[list[str], list[str]]:
    """Check the whole model against the file before anything changes.

    Returns (names to compute, fine-tune-only names). Tied aliases are computed once, under the name whose
    entry is not `tied`. Raises BindingError naming the offending tensors.
    """
    problems = []
    compute = []
    for group in alias_groups(tensors):
        listed = [n for n in group if n in ddq.entries]
        if not listed:
            problems.append(f"{group[0]}: not listed in the delta file")
            continue
        owners = [n for n in listed if ddq.entries[n]["kind"] != KIND_TIED]
        if not owners:  # every alias is `tied`: follow the first to its target (which must be in the group)
            target = ddq.entries[listed[0]]["tied_to"]
            if target not in group:
                problems.append(f"{listed[0]}: tied to {target}, which this model does not tie to it")
                continue
            owners = [target]
        if len(owners) > 1 and any(ddq.entries[n] != ddq.entries[owners[0]] | {"name": n} for n in owners[1:]):
            problems.append(f"{', '.join(owners)}: share one tensor in the model but the fine-tune changes them "
                            "differently (untie them first or use materialize)")
            continue
        for n in listed:
            e = ddq.entries[n]
            if e["kind"] == KIND_TIED and e["tied_to"] not in group:
                problems.append(f"{n}: tied to {e['tied_to']} in the fine-tune, separate in the model")
        compute.append(owners[0])
    new = [n for n, e in ddq.entries.items()
           if n not in tensors and e["kind"] not in (KIND_REMOVED, KIND_TIED)]
    if new and not all(ddq.entries[n]["kind"] == KIND_REPLACE for n in new):
        problems += [f"{n}: kind {ddq.entries[n]['kind']} but the model has no such tensor" for n in new
                     if ddq.entries[n]["kind"] != KIND_REPLACE]
    if new and not allow_new:
        problems += [f"{n}: only in the fine-tune; a module cannot grow it (use materialize)" for n in new]
    if problems:
        raise BindingError("the model does not match the delta file:\n  " + "\n  ".join(problems), path=ddq.path)
    for n in compute:
        check_base_binding(ddq, n, tensors[n])
    return compute, new


@torch.no_grad()
def apply_delta(model_or_state_dict, ddq, *, device=None):
    """Add the delta of `ddq` (a path or DDQFile) to a base model or state dict, in place; returns it.

    The base binding of every tensor is checked before any tensor changes. Decoding runs where each tensor
    lives (the GPU when the model is there). Tied parameters are updated once. A state dict also loses the
    fine-tune's removed tensors and gains its fine-tune-only ones; a module refuses both.
    """
    ddq = open_file(ddq)
    is_module = isinstance(model_or_state_dict, torch.nn.Module)
    if not is_module and not isinstance(model_or_state_dict, MutableMapping):
        raise UsageError(f"expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}",
                         path=ddq.path)
    tensors = named_tensors(model_or_state_dict) if is_module else dict(model_or_state_dict)
    removed = [n for n in tensors if n in ddq.entries and ddq.entries[n]["kind"] == KIND_REMOVED]
    if removed and is_module:
        raise BindingError(f"the fine-tune removes {removed}; a module cannot drop them (use materialize)",
                           path=ddq.path)
    live = {n: t for n, t in tensors.items() if n not in removed}
    compute, new = plan(ddq, live, allow_new=not is_module)
    for n in compute:
        t = live[n]
        ft = finetuned_tensor(ddq, n, t, device if device is not None else t.device, check=False)
        if ft.shape == t.shape and ft.dtype == t.dtype and ft.device == t.device:
            t.copy_(ft)
        elif is_module:
            if ft.shape != t.shape:
                raise BindingError(f"the fine-tune's shape {list(ft.shape)} differs from the model's "
                                   f"{list(t.shape)} (use materialize)", path=ddq.path, tensor=n)
            t.data = ft  # dtype change (the fine-tune's recorded dtype); every alias holds the same Parameter
        else:
            for alias in (a for g in alias_groups(live) if n in g for a in g):
                model_or_state_dict[alias] = ft
    if not is_module:
        for n in removed:
            del model_or_state_dict[n]
        for n in new:
            model_or_state_dict[n] = finetuned_tensor(ddq, n, None, device)
    return model_or_state_dict


def entry_of(ddq, name):
    return resolve(ddq, name)
