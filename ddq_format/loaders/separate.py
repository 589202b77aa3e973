"""Separate computation (DeltaDQ Fig. 3): y = x·W_baseᵀ + b + x·ΔŴᵀ with ΔŴ kept compressed on the device.

`DeltaLinear` is an nn.Linear that shares the base layer's weight and bias Parameters (state-dict names do
not change) and holds one `kernels.CompressedDelta`; W_base + ΔŴ is never formed. Its forward is
`kernels.delta_linear`: one fused base + delta kernel for small batches on a GPU, where the dispatch says so.
Every entry `kernels.supports` (seeded, seeded_rans, seeded_rans_split, csr_parts) stays compressed;
seeded_rans is re-laid at load as seeded codes, seeded_rans_split as seeded codes per column class with its
column list (resident bytes in `delta_nbytes`, file bytes in `delta.encoded_nbytes`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import KIND_TIED
from .apply import finetuned_tensor, open_file
from .inplace import alias_groups, named_tensors, plan


def kept_compressed(entry: dict) -> bool:
    """The kernels keep this entry compressed on the device (kernels.supports)."""
    from ..kernels import supports
    return supports(entry)


class DeltaLinear(nn.Linear):
    """base nn.Linear + one compressed delta; forward = F.linear(x, W, b) + delta.matmul(x)."""

    def __init__(self, base: nn.Linear, delta):
        nn.Module.__init__(self)
        if tuple(delta.shape) != (base.out_features, base.in_features):
            raise ValueError(f"delta shape {tuple(delta.shape)} does not fit Linear({base.in_features}, "
                             f"{base.out_features})")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # shared, not copied
        self.bias = base.bias
        self.delta = delta

    def forward(self, x):
        from ..kernels import delta_linear
        return delta_linear(x, self.weight, self.bias, self.delta)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.delta = self.delta.map_buffers(fn)  # device moves; dtype casts leave its integer buffers alone
        return self

    @property
    def delta_nbytes(self) -> int:
        return self.delta.nbytes

    def extra_repr(self):
        return (f"{super().extra_repr()}, delta={self.delta.encoding} {self.delta.nbytes} B resident "
                f"({self.delta.encoded_nbytes} B in the file)")


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def linear_owner(model: nn.Module, name: str):
    """(module path, Linear) when `name` is the weight of an nn.Linear, else (None, None)."""
    mod_name, _, leaf = name.rpartition(".")
    if leaf != "weight":
        return None, None
    try:
        mod = model.get_submodule(mod_name)
    except AttributeError:
        return None, None
    return (mod_name, mod) if isinstance(mod, nn.Linear) else (None, None)


def compressed_delta(ddq, name: str, device):
    from ..kernels import CompressedDelta
    e = ddq.entries[name]
    if e["kind"] == KIND_TIED:
        name, e = e["tied_to"], ddq.entries[e["tied_to"]]
    return CompressedDelta.from_entry(e, ddq.buffers(name), device, path=ddq.path)


@torch.no_grad()
def patch_model(model: nn.Module, ddq, *, device=None) -> dict:
    """Serve one fine-tune from a base model: every nn.Linear whose weight has a compressed entry becomes a
    DeltaLinear (delta resident, compressed, on the layer's device); every other changed tensor (norms,
    embeddings, biases, dense deltas, linears whose weight is tied to a non-linear) is updated in place.

    Checks the binding of every tensor first. Returns {"separate": [names], "in_place": [names],
    "delta_bytes": resident bytes of the compressed deltas, "encoded_bytes": their bytes in the file}.
    """
    ddq = open_file(ddq)
    tensors = named_tensors(model)
    compute, _ = plan(ddq, tensors, allow_new=False)
    groups = {n: g for g in alias_groups(tensors) for n in g}
    separate, in_place, nbytes, encoded = [], [], 0, 0
    for n in compute:
        e = ddq.entries[n]
        mod_name, lin = linear_owner(model, n)
        if kept_compressed(e) and lin is not None and len(groups[n]) == 1:
            d = compressed_delta(ddq, n, device if device is not None else lin.weight.device)
            set_module(model, mod_name, DeltaLinear(lin, d))
            separate.append(n)
            nbytes += d.nbytes
            encoded += d.encoded_nbytes
            continue
        t = tensors[n]
        ft = finetuned_tensor(ddq, n, t, device if device is not None else t.device, check=False)
        if ft.dtype == t.dtype and ft.shape == t.shape:
            t.copy_(ft)
        else:
            t.data = ft
        if e["kind"] not in ("same",):
            in_place.append(n)
    return {"separate": separate, "in_place": in_place, "delta_bytes": nbytes, "encoded_bytes": encoded}
