"""BitDelta as its paper does it (Liu et al., 2024): 1-bit signs of the delta times one scale per matrix, the
scales trained by logit distillation; stored as `sign_scale` (SPEC.md §9.4.2).

What the paper does (its train.py): every linear delta of attention and MLP becomes sign(D) x alpha_t with
alpha_t initialised to mean |D|; the scales are trained so that the compressed model's logits match the
fine-tune's (mean squared error of the logits), AdamW lr 1e-4 with a cosine schedule, 200 steps of 4
sequences of 128 tokens of C4. (Its code hands every parameter of the model to the optimizer; the paper
describes, and this implements, training the scales only.)

What is implemented: exactly that loop, on the converter's calibration text cut into 128-token sequences
(C4 is not available offline), with `steps` (default 200) steps of batches of 4 sequences cycling over the
text. Optional group-wise dropout in front (alpha > 1, the "BitDelta + dropout" rows of the benchmark: the
kept signs of the seeded mask, scale initialised to mean |v| of the rescaled kept values). The embedding
(when compressed) gets its own trained scale; a tied lm_head uses the same tensor.
"""
from __future__ import annotations

import time

import numpy as np

from ..encodings import sign_scale
from ..spec import KIND_COMPRESSED, KIND_DENSE
from .dropout import groupwise_dropout_blocked
from .methods import ROW_BLOCK
from .seeds import tensor_seed

LR, STEPS, BATCH, SEQ = 1e-4, 200, 4, 128  # the paper's recipe


def plan_bitdelta(ctx, ids, options):
    from . import budget
    from .budget import group_size_for
    from .planned import small
    alpha = options.get("alpha") or 1
    steps = int(options.get("steps") or STEPS)
    signs, init, groups = {}, {}, {}
    for t in ctx.tasks:
        if t.kind != KIND_COMPRESSED:
            continue
        d = ctx.delta(t.name)
        g = d.shape[1] if alpha == 1 else group_size_for(d.shape[1], alpha)
        s = tensor_seed(ctx.seed, t.name) if alpha > 1 else 0
        if alpha == 1:
            cols, vals = None, d
        else:
            cols, vals = groupwise_dropout_blocked(d, alpha, g, s, ROW_BLOCK)
        init[t.name] = float(np.abs(vals, dtype=np.float64).mean())
        dense = np.where(vals >= 0, 1.0, -1.0).astype(np.float32)
        if cols is not None:
            full = np.zeros(d.shape, np.float32)
            np.put_along_axis(full, cols.astype(np.int64), dense, axis=1)
            dense = full
        signs[t.name] = dense
        groups[t.name] = (g, s)
    t0 = time.perf_counter()
    scales, losses = train_scales(ctx.base.folder, ctx.ft.folder, ids, signs, init, steps=steps,
                                  console=ctx.console)
    ctx.console.print(f"  scale distillation: {steps} steps, logit MSE {losses[0]:.4g} -> {losses[-1]:.4g} "
                      f"({time.perf_counter() - t0:.1f} s)")
    del signs

    def hook(name, delta):
        if name not in scales:
            return small(name, delta) if delta.ndim != 2 else (KIND_DENSE, budget.encode(budget.Config("raw16"), delta, 0))
        g, s = groups[name]
        vals = delta if alpha == 1 else groupwise_dropout_blocked(delta, alpha, g, s, ROW_BLOCK)[1]
        return KIND_COMPRESSED, sign_scale.encode(delta.shape, vals, alpha=alpha, group_size=g, seed=s,
                                                  scale=max(scales[name], 0.0))

    record = {"method": "bitdelta", "distill": {"loss": "logit MSE", "optimizer": "AdamW", "lr": LR,
                                                "schedule": "cosine", "steps": steps, "batch": BATCH, "seq": SEQ,
                                                "loss_first": losses[0], "loss_last": losses[-1]},
              "alpha": alpha}
    return hook, record


def train_scales(base_folder, ft_folder, ids, signs: dict, init: dict, *, steps: int = STEPS, console=None):
    """Per-matrix scales minimising the logits' MSE to the fine-tune's: returns ({name: scale}, losses)."""
    import torch
    from torch.func import functional_call

    from .calibration import load_finetune, param_names, sequences
    ft = load_finetune(ft_folder)
    model = load_finetune(base_folder)
    for p in list(ft.parameters()) + list(model.parameters()):
        p.requires_grad_(False)
    seqs = sequences(ids, SEQ)
    batches = [torch.stack(seqs[i:i + BATCH]) for i in range(0, len(seqs), BATCH)]
    with torch.no_grad():
        targets = [ft(b).logits for b in batches]
    del ft
    pnames = param_names(model, set(signs))
    base = dict(model.named_parameters(remove_duplicate=False))
    names = [n for n in signs if n in pnames]
    scale = torch.nn.Parameter(torch.tensor([init[n] for n in names], dtype=torch.float32))
    S = {n: torch.from_numpy(signs[n]) for n in names}
    opt = torch.optim.AdamW([scale], lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for step in range(steps):
        b = step % len(batches)
        params = {}
        for i, n in enumerate(names):
            w = base[pnames[n][0]] + scale[i] * S[n]
            for pn in pnames[n]:
                params[pn] = w
        out = functional_call(model, params, (batches[b],), strict=False).logits
        loss = torch.nn.functional.mse_loss(out, targets[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return {n: float(scale[i].detach()) for i, n in enumerate(names)}, losses
