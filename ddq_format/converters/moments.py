"""Second moments of every linear layer's input columns, E[x_j^2] over the calibration text, from one forward
pass of the FINE-TUNE (`--target-ratio`'s seeded_rans_split candidates and their price, budget.py).

Why only the diagonal: the per-channel energy of a layer's inputs is a property of the model (the residual
stream's large channels, the norms' gains) that any text shows, while the full input Gram of a short text is
dominated by a few directions and misprices the rest (budget.relative_noise, rescale.py).
"""
from __future__ import annotations

import numpy as np

from .calibration import load_finetune, param_names, sequences

SEQ = 128  # tokens per calibration sequence


def collect(ft_folder, ids, names) -> dict[str, np.ndarray]:
    """{checkpoint tensor name: E[x_j^2] float64 [in_features]} for the `names` held by an nn.Linear (weight
    [out, in]) of the fine-tune. Raises UsageError where transformers cannot load it."""
    import torch

    model = load_finetune(ft_folder, why="the input moments of --target-ratio", field="calib")
    owners = {p: n for n, ps in param_names(model, set(names)).items() for p in ps}
    sums: dict[str, np.ndarray] = {}
    count = 0
    hooks = []

    def hook(name):
        def f(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] += (x * x).sum(0).numpy()
        return f

    for mname, mod in model.named_modules():
        owner = owners.get(f"{mname}.weight" if mname else "weight")
        if isinstance(mod, torch.nn.Linear) and owner is not None and owner not in sums:
            sums[owner] = np.zeros(mod.in_features)
            hooks.append(mod.register_forward_pre_hook(hook(owner)))
    limit = getattr(model.config, "max_position_embeddings", None) or SEQ
    try:
        with torch.no_grad():
            for seq in sequences(ids, min(SEQ, limit)):
                model(seq[None])
                count += seq.numel()
    finally:
        for h in hooks:
            h.remove()
        del model
    return {n: s / max(count, 1) for n, s in sums.items()}
