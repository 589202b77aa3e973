"""Calibration statistics for the planned conversions (`--target-ratio`, deltacome, deltazip, bitdelta-distill):
per compressed tensor, the Gram matrix of its inputs and the Fisher weight of each output row, from one
forward and backward pass of the FINE-TUNE over the calibration text.

For a linear layer y = x W^T the second-order increase of the expected loss when W's delta is replaced by an
approximation with error E is, under the usual block-diagonal (K-FAC-like) and per-channel approximations,

    err(E) = sum_r f_r * e_r H e_r^T,   H = X^T X / T (inputs),   f_r = mean_t (dL/dy_{t,r})^2,

with the gradients taken on labels SAMPLED from the fine-tune's own predictions (the true Fisher, so err
approximates 2 x KL(fine-tune || compressed) per token). The tied lm_head's rows get the exact expected
Fisher from the same sampled labels (its expectation is p_v (1 - p_v)), and the embedding lookup adds sum over calibration tokens of |e_id|^2
times the Fisher of the first layer's input. Errors are comparable across tensors: the budget allocator
sums them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .seed_search import _checkpoint_names

FISHER_SAMPLES = 1  # sampled-label backward passes (per-row means over every calibration token)
CHUNK = 512  # tokens per forward pass (bounds activation memory)
FACTOR_RANK = 128  # eigen-directions of an input Gram kept exactly by the error evaluation


@dataclass
class TensorStats:
    """grams: H [in, in] per module reading the tensor (float32, sums over tokens; xs: X [T, in] instead, for
    callers that build stats by hand); f [out]: mean Fisher per output row; lookups [vocab]: embedding row
    counts where the tensor is also looked up, lookup_f the mean Fisher of the looked-up vectors."""
    xs: list = field(default_factory=list)
    grams: list = field(default_factory=list)
    f: np.ndarray | None = None
    lookups: np.ndarray | None = None
    lookup_f: float = 0.0

    def hessian(self) -> np.ndarray | None:
        """H = sum over uses of X^T X, float64; None if no linear module reads the tensor."""
        if not self.xs and not self.grams:
            return None
        H = sum(self.grams) if self.grams else 0
        for x in self.xs:
            x64 = x.astype(np.float64)
            H = H + x64.T @ x64
        return np.asarray(H, np.float64)

    def error(self, E: np.ndarray, rows: np.ndarray | None = None) -> float:
        """Fisher-weighted output error of a delta error E [rows, in] (see the module docstring). rows: the
        original row index of each row of E when E is a sample of the rows (the total is then scaled up)."""
        return self.inner(E, E, rows)

    def inner(self, A: np.ndarray, B: np.ndarray, rows: np.ndarray | None = None) -> float:
        """<A, B> in the metric of error(): sum_r f_r a_r H b_r^T (+ the lookup term)."""
        pa = self.project(A)
        return self.inner_projected(pa, pa if A is B else self.project(B), rows)

    def project(self, A: np.ndarray):
        """A's products with every use's inputs (A X^T per xs, A L per Gram factor), with A in float64: what
        inner_projected needs, so that a matrix compared with many others is multiplied once."""
        A64 = A.astype(np.float64)
        return A64, [A64 @ x.astype(np.float64).T for x in self.xs] + [A64 @ low_rank_factor(H)[0]
                                                                         for H in self.grams]

    def inner_projected(self, pa, pb, rows: np.ndarray | None = None) -> float:
        (A64, ya), (B64, yb) = pa, pb
        n_rows = A64.shape[0]
        idx = np.arange(n_rows) if rows is None else np.asarray(rows)
        f = self.f[idx] if self.f is not None else np.ones(n_rows)
        ab = np.einsum("ij,ij->i", A64, B64) if self.grams or self.lookups is not None else None
        total = 0.0
        for k, (a, b) in enumerate(zip(ya, yb)):
            t = np.einsum("ij,ij->i", a, b)
            if k >= len(self.xs):  # a Gram used as L L^T + rho I
                t = t + low_rank_factor(self.grams[k - len(self.xs)])[1] * ab
            total += float(t @ f)
        if self.lookups is not None:
            total += self.lookup_f * float(ab @ self.lookups[idx])
        return total * (self.total_rows(A64) / n_rows if rows is not None else 1.0)

    def total_rows(self, E) -> int:
        if self.f is not None:
            return self.f.size
        if self.lookups is not None:
            return self.lookups.size
        return E.shape[0]


_FACTORS: dict[int, tuple] = {}


def clear_factors() -> None:
    """Drop the cached eigen-factors (they hold references to the Grams)."""
    _FACTORS.clear()


def low_rank_factor(H: np.ndarray, rank: int = FACTOR_RANK) -> tuple[np.ndarray, float]:
    """(L [in, k], rho) with H ~ L L^T + rho I: the top-k eigenpairs exactly, the rest of the trace spread
    evenly (activation Grams are dominated by a few directions; this makes an error evaluation k/in as costly).
    Cached per Gram (q/k/v share one)."""
    key = id(H)
    hit = _FACTORS.get(key)
    if hit is not None and hit[0] is H:
        return hit[1], hit[2]
    n = H.shape[0]
    k = min(rank, n)
    H64 = np.asarray(H, np.float64)
    if n <= 2 * k:
        w, V = np.linalg.eigh(H64)
        w, V = w[n - k:], V[:, n - k:]
    else:  # randomized range finder (Halko et al.): 2 power iterations on a Gaussian sketch of k + 16
        omega = np.random.default_rng(0).standard_normal((n, k + 16))
        Q, _ = np.linalg.qr(H64 @ omega)
        for _ in range(2):
            Q, _ = np.linalg.qr(H64 @ Q)
        w, Vs = np.linalg.eigh(Q.T @ H64 @ Q)
        w, V = w[-k:], Q @ Vs[:, -k:]
    w = np.clip(w, 0, None)
    rest = max(float(np.trace(H64)) - float(w.sum()), 0.0)
    rho = rest / (n - k) if k < n else 0.0
    L = V * np.sqrt(np.clip(w - rho, 0, None))  # L L^T + rho I matches H on the top directions
    _FACTORS[key] = (H, L, rho)
    return L, rho


@dataclass
class Stats:
    tokens: int
    tensors: dict[str, TensorStats] = field(default_factory=dict)
    seconds: float = 0.0

    def get(self, name: str) -> TensorStats | None:
        return self.tensors.get(name)

    def record(self) -> dict:
        return {"objective": "sum_r f_r e_r H e_r^T (Fisher-weighted layer-output error, sampled labels)",
                "calib_tokens": int(self.tokens), "fisher_samples": FISHER_SAMPLES}


def param_names(model, names: set) -> dict[str, list[str]]:
    """Checkpoint name -> the model's parameter names holding it (several when tied)."""
    out: dict[str, list[str]] = {}
    for pname, _ in model.named_parameters(remove_duplicate=False):
        for cand in _checkpoint_names(pname, names):
            out.setdefault(cand, []).append(pname)
    return out


def sequences(ids, seq: int) -> list:
    """The token ids cut into torch sequences of `seq` tokens (the whole text when it is shorter)."""
    import torch
    return [torch.as_tensor(ids[i:i + seq]) for i in range(0, len(ids) - seq + 1, seq)] or [torch.as_tensor(ids)]


def load_finetune(folder, why: str = "calibration", field: str = "calib"):
    """The fine-tune in float32 with transformers (its own progress bars off: the converter draws its own)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
        finally:
            if bar:
                hf_logging.enable_progress_bar()
    except Exception as e:  # transformers raises many types (missing class, OOM, bad config)
        raise UsageError(f"{why} needs the fine-tune loaded with transformers, which failed: "
                         f"{type(e).__name__}: {e}", path=folder, field=field) from None
    model.eval()
    return model


def collect(folder, ids: np.ndarray, names, *, samples: int = FISHER_SAMPLES, seed: int = 0,
            chunk: int = CHUNK, step=None) -> Stats:
    """Run the fine-tune over `ids` in chunks of `chunk` tokens: one forward pass for the input Grams, then
    `samples` backward passes of sampled-label log-likelihoods for the Fisher weights. step(done, total) is
    called after every pass over a chunk (progress)."""
    import torch
    t0 = time.perf_counter()
    model = load_finetune(folder)
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    chunk = min(chunk, limit or chunk)
    ids = np.asarray(ids, np.int64)
    chunks = [torch.as_tensor(ids[i:i + chunk]).reshape(1, -1) for i in range(0, ids.size, chunk)]
    names = set(names)
    by_param: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        for cand in _checkpoint_names(pname, names):
            by_param.setdefault(id(p), []).append(cand)
    stats = Stats(int(ids.size))
    lin = [m for m in model.modules() if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
           and getattr(m, "weight", None) is not None and id(m.weight) in by_param]
    emb = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and id(m.weight) in by_param]
    site_of: dict[int, tuple] = {}  # id(input) -> (input, site: the first module reading it), per forward; the
    # reference keeps the id from being reused by another tensor within the pass
    grams: dict[int, np.ndarray] = {}  # site -> sum of x^T x, float64
    reads: dict[int, int] = {}  # id(module) -> its input site
    grads: dict[int, np.ndarray] = {}
    lookups: dict[int, np.ndarray] = {}
    emb_grad = {"sum": 0.0, "n": 0}

    def pre(mod, args):
        x = args[0]
        site = site_of.setdefault(id(x), (x, id(mod)))[1]
        reads[id(mod)] = site
        if site == id(mod):  # float32 products per chunk (sgemm), summed over chunks in float64
            a = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            grams[site] = grams.get(site, 0) + (a.T @ a).double().numpy()

    def bwd(mod, gin, gout):
        g = gout[0].detach().reshape(-1, gout[0].shape[-1]).double()
        grads[id(mod)] = grads.get(id(mod), 0) + (g ** 2).sum(0).numpy()

    def emb_fwd(mod, args, out):
        c = np.bincount(args[0].reshape(-1).numpy(), minlength=mod.weight.shape[0]).astype(np.float64)
        lookups[id(mod)] = lookups.get(id(mod), 0) + c / samples
        if out.requires_grad:
            def hook(g):
                emb_grad["sum"] += float((g.double() ** 2).sum())
                emb_grad["n"] += g.numel()
            out.register_hook(hook)

    handles = [m.register_forward_pre_hook(pre) for m in lin]
    try:
        total, done = len(chunks) * (1 + samples), 0
        with torch.no_grad():
            for x in chunks:
                site_of.clear()
                model(x)
                done += 1
                if step:
                    step(done, total)
        for h in handles:
            h.remove()
        handles = [m.register_full_backward_hook(bwd) for m in lin] + [m.register_forward_hook(emb_fwd) for m in emb]
        for p in model.parameters():
            p.requires_grad_(False)
        for m in emb:
            m.weight.requires_grad_(True)  # so the embedding output carries a gradient for its hook
        gen = torch.Generator().manual_seed(seed)
        for _ in range(samples):
            for x in chunks:
                logits = model(x).logits[0].float()
                y = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=gen)[:, 0]
                torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()
                model.zero_grad(set_to_none=True)
                done += 1
                if step:
                    step(done, total)
    finally:
        for h in handles:
            h.remove()
    T = max(int(ids.size), 1)
    g32 = {site: g.astype(np.float32) for site, g in grams.items()}  # q/k/v (gate/up) share one array
    grams.clear()
    for m in lin:
        for n in by_param[id(m.weight)]:
            t = stats.tensors.setdefault(n, TensorStats())
            t.grams.append(g32[reads[id(m)]])
            f = grads.get(id(m))
            if f is not None:
                t.f = f / (samples * T) if t.f is None else t.f + f / (samples * T)
    for m in emb:
        for n in by_param[id(m.weight)]:
            t = stats.tensors.setdefault(n, TensorStats())
            t.lookups = lookups.get(id(m))
            t.lookup_f = emb_grad["sum"] / max(emb_grad["n"], 1)
    del model
    stats.seconds = time.perf_counter() - t0
    return stats
