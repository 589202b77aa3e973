"""Seed search (`ddq convert --seed-trials N`): per compressed tensor, the dropout seed among N candidates
whose reconstruction minimises the layer-output error on calibration activations.

For a linear layer y = x W^T with calibration inputs X [T, h_in] (the FINE-TUNED model's, hooked on every
nn.Linear while it runs over the calibration text), the error of a candidate seed s is

    E(s) = ||X (dW - dW_s)^T||_F^2 = tr(D H D^T),   D = dW - dW_s,  H = X^T X,

with dW_s = methods.reconstruct(dW, opts, s, h_g): the same dropout and quantizer as the written entry.
Each distinct input is kept as whichever of X (T x h_in) or H (h_in x h_in) is smaller: both give exactly
the Gram form. A tensor read by several modules adds their errors: an embedding's own lookup (one-hot
inputs: sum over calibration tokens t of ||D[id_t]||^2) and, when lm_head is tied to it, the lm_head's
error on the final-norm outputs. GPT-2's Conv1D (y = x W) uses ||X D||^2.

Candidate seeds: trial 0 is the converter's usual tensor_seed(seed, name), so N = 1 is today's file; trial
i > 0 is sha256(f"{seed}:{name}:{i}")[:4] as a little-endian uint32. The chosen seed is the entry's
params.seed, so readers need nothing new. Ties go to the lowest trial.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np

from ..spec import CONVERT_SEED_TRIAL_DERIVATION
from .seeds import tensor_seed

OBJECTIVE = ("sum over calibration tokens and over every module reading the tensor of "
             "||x (dW - dW_hat)^T||^2 (fine-tune's inputs; embeddings: the looked-up rows)")
ROW_BLOCK = 1 << 22  # elements of D per block: bounded float64 temporaries


def trial_seed(seed: int, name: str, trial: int) -> int:
    """uint32 seed of candidate `trial` for tensor `name` (trial 0 = the run's usual per-tensor seed)."""
    if trial == 0:
        return tensor_seed(seed, name)
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{name}:{int(trial)}".encode()).digest()[:4], "little")


@dataclass
class Use:
    """One module's view of a tensor: kind 'x' (X [T, in]), 'gram' (H [in, in], float64) or 'rows' (counts
    [vocab] of looked-up rows). transposed: the weight is stored [in, out] (Conv1D)."""
    kind: str
    data: np.ndarray
    transposed: bool = False

    def error(self, d: np.ndarray) -> float:
        if self.transposed:
            d = d.T
        if self.kind == "rows":
            rows = np.flatnonzero(self.data)
            sq = np.einsum("ij,ij->i", d[rows], d[rows], dtype=np.float64)
            return float(sq @ self.data[rows])
        step = max(1, ROW_BLOCK // max(d.shape[1], 1))
        total = 0.0
        for r0 in range(0, d.shape[0], step):
            blk = d[r0:r0 + step]
            if self.kind == "x":
                y = blk @ self.data.T  # [rows, T] float32; squares summed in float64
                total += float(np.einsum("ij,ij->", y, y, dtype=np.float64))
            else:
                b = blk.astype(np.float64)
                total += float(np.einsum("ij,ij->", b @ self.data, b))
        return total


@dataclass
class Calibration:
    tokens: int
    uses: dict[str, list[Use]] = field(default_factory=dict)  # checkpoint tensor name -> its uses
    seconds: float = 0.0

    def error(self, name: str, d: np.ndarray) -> float:
        return sum(u.error(d) for u in self.uses[name])

    def record(self, searched) -> dict:
        """header["algorithm"]["seed_search"]. No timings: the header must be byte-identical across runs and
        --workers. `searched`: the tensors the search applies to; those no hooked module read keep trial 0."""
        rec = {"objective": OBJECTIVE, "calib_tokens": int(self.tokens), "trial_seeds": CONVERT_SEED_TRIAL_DERIVATION}
        unsearched = [n for n in searched if n not in self.uses]
        if unsearched:
            rec["unsearched"] = unsearched
        return rec


def calibrate(folder, ids: np.ndarray, names) -> Calibration:
    """Run the fine-tune (transformers, CPU, float32) over `ids` once, hooking every nn.Linear / Conv1D /
    nn.Embedding whose weight is one of `names` (checkpoint tensor names)."""
    t0 = time.perf_counter()
    import torch

    from .calibration import load_finetune
    model = load_finetune(folder, why="--seed-trials", field="seed_trials")
    model.eval()
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    ids = np.asarray(ids, np.int64)[:limit]  # learned positions (GPT-2) end there
    names = set(names)
    by_param: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        for cand in _checkpoint_names(pname, names):
            by_param.setdefault(id(p), []).append(cand)
    cal = Calibration(int(len(ids)))
    seen: dict[int, tuple] = {}  # id(input) -> (input, Use): q/k/v (and gate/up) share one input
    handles = []

    def add(w, use):
        for n in by_param.get(id(w), ()):
            cal.uses.setdefault(n, []).append(use)

    def linear_hook(mod, args):
        x = args[0]
        if id(x) in seen:
            use = seen[id(x)][1]
        else:
            a = x.detach().reshape(-1, x.shape[-1]).to(torch.float32).numpy()
            if a.shape[0] <= a.shape[1]:
                use = Use("x", np.ascontiguousarray(a, np.float32))
            else:
                a64 = a.astype(np.float64)
                use = Use("gram", a64.T @ a64)
            seen[id(x)] = (x, use)
        add(mod.weight, Use(use.kind, use.data, transposed=type(mod).__name__ == "Conv1D"))

    def embedding_hook(mod, args):
        counts = np.bincount(args[0].reshape(-1).numpy(), minlength=mod.weight.shape[0]).astype(np.float64)
        add(mod.weight, Use("rows", counts))

    for mod in model.modules():
        w = getattr(mod, "weight", None)
        if w is None or id(w) not in by_param:
            continue
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            handles.append(mod.register_forward_pre_hook(linear_hook))
        elif isinstance(mod, torch.nn.Embedding):
            handles.append(mod.register_forward_pre_hook(embedding_hook))
    try:
        with torch.no_grad():
            model(torch.as_tensor(ids).reshape(1, -1))
    finally:
        for h in handles:
            h.remove()
    del model, seen
    cal.seconds = time.perf_counter() - t0
    return cal


def _checkpoint_names(param_name: str, names: set) -> list[str]:
    """Checkpoint names of a model parameter: the same name, or one differing by a leading prefix
    (transformers may add or drop e.g. 'transformer.' on load)."""
    if param_name in names:
        return [param_name]
    return [n for n in names if n.endswith("." + param_name) or param_name.endswith("." + n)]


def choose(cal: Calibration, name: str, delta: np.ndarray, opts, seed: int, group_size: int,
           trials: int) -> tuple[int, list[float]]:
    """(chosen tensor seed, E per trial). delta is read, not modified. A tensor no calibration module read
    keeps trial 0."""
    from .methods import reconstruct
    if trials <= 1 or name not in cal.uses:
        return trial_seed(seed, name, 0), []
    errors = []
    for i in range(trials):
        d = reconstruct(delta, opts, trial_seed(seed, name, i), group_size)
        np.subtract(delta, d, out=d)
        errors.append(cal.error(name, d))
        del d
    best = min(range(trials), key=lambda i: (errors[i], i))
    return trial_seed(seed, name, best), errors
