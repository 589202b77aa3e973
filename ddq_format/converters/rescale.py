"""`--target-ratio`'s rescale of the dropout deltas (on by default; `--no-rescale`).

Group-wise dropout keeps 1 in alpha elements and scales them by alpha: unbiased, with noise of (alpha - 1) times
the delta's energy. At the alphas a tight budget forces (64-96 at 512x on the example) that noise dominates, and
a scale below alpha gives up a little signal for much less noise (DAREx, Deng et al. 2024, finds the same for
DARE's 1/(1-p) at drop rates near 1). Each dropout entry stores t x its delta: the same codes on a grid t times
finer, so readers need nothing new. With

    t = 1 / (1 + c (alpha - 1)),

the least-squares scale of a delta plus noise of c (alpha - 1) times its energy, c is the share of the
element-wise noise that reaches the model's output (c = 0: no rescale). It is chosen on the calibration text:
the smallest c of CONVERT_RESCALE_GRID whose mean KL(fine-tune || base + decoded deltas) per token, each token
weighted by KL(fine-tune || base), is within CONVERT_RESCALE_TOLERANCE of the least (where the criterion is flat
the unbiased scale is kept). The weight puts the criterion where the fine-tune changed the base: unweighted,
tokens the delta barely moves dominate and shrinking looks free there (on the example at 128x it chose c =
0.01: 83.8% exact match against 86.5% without rescale; weighted it chooses 0.005: 86.3%; at 512x weighted:
c = 0.002, 33.2% against 27.1%; exploration runs, the benchmark's rows in benchmarks/results/quality.md).
The share differs by role (`refine`): at 512x on the example the best c per role was 0.004-0.012 for q, k and v,
0-0.002 for o, gate, up and down, and base + those deltas kept 40.4% exact match against 33.2% with the one c
(an exploration run on one file, seed 0).
Tried and dropped (exploration runs on the --no-rescale 512x file of seed 0, 27.1% exact match as it is):
  - a t per entry, by Adam on log t over this criterion (its gradient from one backward pass), t <= 1, early
    stopped on 1024 held-out calibration tokens: held-out criterion 0.647 -> 0.524, but 36.1% exact match
    (36.9% after 3 steps; unbounded t overfits: 30.5%), below the per-role walk's 40.4% on the same file;
  - the kept values refitted per row by least squares on the calibration Gram, w_S = (H_SS + lam I)^-1 (H d)_S:
    the layer-output error falls 26x on the calibration text while exact match falls to 0.2% (lam = 0.01-0.1
    of H's mean diagonal; 20.3% when anchored to 0.6 x the dropout values with lam = 100): the Gram is
    dominated by a few input directions, and a fit to them gives up the rest.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

import numpy as np

from ..spec import (CONVERT_RESCALE_GRID, CONVERT_RESCALE_ROLE_GAIN, CONVERT_RESCALE_ROLES_MAX, CONVERT_RESCALE_SWEEPS,
                    CONVERT_RESCALE_TOKENS, CONVERT_RESCALE_TOLERANCE)

RULE = "t = 1 / (1 + c (alpha - 1)) times each dropout entry's delta"
CRITERION = "mean KL(fine-tune || base + decoded deltas) per calibration token, weighted by KL(fine-tune || base)"
SEQ, BATCH = 128, 8  # calibration sequences of SEQ tokens, BATCH per forward pass
STOP = 1.1  # the grid's walk stops once the criterion exceeds its least value so far by this factor


def factor(alpha: int, c: float) -> float:
    return 1.0 / (1.0 + c * (alpha - 1))


def role(name: str) -> str:
    """The tensor's role: its name with the layer index as '*' (one module of every decoder layer)."""
    return re.sub(r"\.\d+\.", ".*.", name)


def c_for(record: dict | None, name: str) -> float:
    """The c an entry's rescale used, from the header's rescale record: its role's, else the one c (0: none)."""
    if not record or "skipped" in record:
        return 0.0
    return float(record.get("roles", {}).get(role(name), record.get("c", 0.0)))


def choose(criterion, grid=CONVERT_RESCALE_GRID, tolerance=CONVERT_RESCALE_TOLERANCE):
    """(c, {c: criterion(c)}): the smallest c of `grid` (ascending, from 0) within `tolerance` of the least
    criterion seen; the walk stops once the criterion is STOP x past the least (it is unimodal in c)."""
    seen: dict[float, float] = {}
    for c in grid:
        seen[c] = float(criterion(c))
        if seen[c] > STOP * min(seen.values()):
            break
    least = min(seen.values())
    return min(c for c, v in seen.items() if v <= least * (1 + tolerance)), seen


def refine(criterion, c0: float, value: float, roles, grid=CONVERT_RESCALE_GRID, gain=CONVERT_RESCALE_ROLE_GAIN,
           sweeps=CONVERT_RESCALE_SWEEPS):
    """({role: c}, criterion, passes): from c0 for every role (criterion(c0, {}) = value), per role in turn, step to
    the neighbouring c of `grid` while the criterion falls by more than `gain` (upwards first, downwards if the
    first step up does not); up to `sweeps` sweeps, fewer once a sweep moves nothing. The roles differ: on the
    example at 512x the attention projections take c up to 0.012 and o_proj and gate_proj 0 (rescale.py)."""
    cs, passes, grid = {r: c0 for r in roles}, 0, tuple(sorted({*grid, c0}))
    for _ in range(sweeps):
        moved = False
        for r in roles:
            for step in (1, -1):
                i, went = grid.index(cs[r]), False
                while 0 <= i + step < len(grid):
                    v = float(criterion(c0, {**cs, r: grid[i + step]}))
                    passes += 1
                    if v >= value * (1 - gain):
                        break
                    value, i, went = v, i + step, True
                    cs[r] = grid[i]
                if went:
                    moved = True
                    break
        if not moved:
            break
    return cs, value, passes


@dataclass
class Kept:
    """A decoded dropout delta as the rescale holds it: the flat indices and values of its nonzero elements."""
    shape: tuple
    index: np.ndarray  # int64, into the delta flattened in C order
    values: np.ndarray  # float32

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.values.nbytes


def kept(d: np.ndarray):
    """`Kept` when at most a third of d is nonzero (12 bytes per kept element against 4 per element dense; a
    dropout delta keeps 1 in alpha), else d as it is."""
    flat = np.asarray(d, np.float32).ravel()
    index = np.flatnonzero(flat)
    if 3 * index.size > flat.size:
        return d
    return Kept(tuple(np.shape(d)), index, flat[index])


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil, else /proc/meminfo; None where neither answers)."""
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_shortfall(model_bytes: int) -> str | None:
    """Why the rescale cannot run here, or None: it holds the model in float32 (fine-tune, then base) beside the
    kept deltas, and an out-of-memory kill would lose the whole conversion."""
    free = available_memory()
    need = int(1.1 * model_bytes)  # the log-probs of the calibration text and transformers' own buffers
    if free is None or free >= need:
        return None
    return (f"it loads the model in float32 ({need / 2**30:.1f} GiB with its buffers) and {free / 2**30:.1f} GiB "
            f"of memory is available; free memory and rerun, or pass --no-rescale")


class WeightedKL:
    """The criterion of `choose` for one set of decoded deltas. The fine-tune runs once for its log-probs (then is
    freed), the base once for the token weights (both cached in `cache` by the token ids); the base then gets
    every non-dropout delta added, and each call moves the dropout deltas to factor(alpha, c) x D in place and
    runs one pass over the text (`roles`: a c per role). Memory: the model in float32 and the dropout deltas as
    `kept` holds them (1/alpha of their elements, 12 bytes each) or dense."""

    def __init__(self, base_folder, ft_folder, ids, deltas: dict, alphas: dict, cache: dict | None = None):
        import torch

        from .calibration import load_finetune, param_names, sequences
        self.torch = torch
        cache = {} if cache is None else cache
        key = ("rescale-reference", hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest())
        ref = cache.get(key)
        if ref is None:
            ft = load_finetune(ft_folder, why="the rescale", field="rescale")
            batches = [torch.stack(b) for b in _batched(sequences(ids, _seq(ft)), BATCH)]
            teacher = self._logprobs(ft, batches)
            del ft
        else:
            batches, teacher, _ = ref
        model = load_finetune(base_folder, why="the rescale", field="rescale")
        if ref is None:
            weights = [_kl(t, lp) for t, lp in zip(teacher, self._logprobs(model, batches))]
            cache[key] = ref = (batches, teacher, weights)
        self.batches, self.teacher, self.weights = ref
        self.model = model
        names = param_names(model, set(deltas))
        params = dict(model.named_parameters(remove_duplicate=False))
        self.dropout = {}  # id(parameter) -> [parameter, delta, alpha, the factor it holds now]
        with torch.no_grad():
            for name in list(deltas):
                d = deltas.pop(name)  # each decoded delta is dropped once added, or kept as the dropout's D
                pns = names.get(name, [])
                if not pns:
                    continue
                w = params[pns[0]]  # tied names share one parameter
                if isinstance(d, Kept):
                    held = (torch.from_numpy(d.index), torch.from_numpy(d.values))
                else:
                    held = torch.from_numpy(np.ascontiguousarray(d, np.float32)).reshape(w.shape)
                if name in alphas:
                    self.dropout[id(w)] = [w, held, alphas[name], 0.0, role(name)]
                else:
                    _add(w, held, 1.0)
        self.tokens = int(sum(b.numel() for b in self.batches))

    def _logprobs(self, model, batches):
        with self.torch.no_grad():
            return [self.torch.log_softmax(model(b).logits.float(), -1) for b in batches]

    def __call__(self, c: float, roles: dict | None = None) -> float:
        """The criterion with every dropout delta at factor(alpha, c), or at its role's c where `roles` has one."""
        with self.torch.no_grad():
            for slot in self.dropout.values():
                w, d, a, held, r = slot
                slot[3] = factor(a, roles.get(r, c) if roles else c)
                _add(w, d, slot[3] - held)
        num = den = 0.0
        for lp, t, wt in zip(self._logprobs(self.model, self.batches), self.teacher, self.weights):
            num += float((_kl(t, lp) * wt).sum())
            den += float(wt.sum())
        return num / den if den > 0 else 0.0


def search(base_folder, ft_folder, ids, deltas: dict, alphas: dict, console=None, cache=None, per_role=True):
    """(the header's rescale record, c_for reads it) for these decoded deltas (float32, by entry name; the dict is
    emptied as they are added to the model) of which `alphas` names the dropout ones: one c for every entry
    (`choose`), then one per role (`refine`) where `per_role` and the dropout entries have 2..CONVERT_RESCALE_ROLES_MAX
    roles (the planner passes per_role=False where its placeholder sized no roles)."""
    t0 = time.perf_counter()
    crit = WeightedKL(base_folder, ft_folder, ids[:CONVERT_RESCALE_TOKENS], deltas, alphas, cache)
    c, seen = choose(crit)
    record = {"rule": RULE, "criterion": CRITERION, "c": c, "tokens": crit.tokens,
              "grid": {f"{k:g}": round(v, 6) for k, v in seen.items()}}
    roles = sorted({role(n) for n in alphas})
    value, passes = seen[c], len(seen)
    if per_role and 1 < len(roles) <= CONVERT_RESCALE_ROLES_MAX:
        cs, value, extra = refine(crit, c, seen[c], roles)
        record.update(roles=cs, least=round(value, 6))
        passes += extra
    if console is not None:
        cs = list(record.get("roles", {}).values())
        per = f", per role {min(cs):g}-{max(cs):g}" if cs else ""
        console.print(f"  rescale: c = {c:g}{per} (weighted KL {seen[0.0]:.4f} -> {value:.4f} on {crit.tokens} "
                      f"calibration tokens, {passes} passes, {time.perf_counter() - t0:.1f} s)")
    return record


def placeholder(roles=()) -> dict:
    """A record of the size search writes (the budget sizes the header before the search runs); `roles`: every
    role a dropout entry could have."""
    r = {"rule": RULE, "criterion": CRITERION, "c": 0.0005, "tokens": CONVERT_RESCALE_TOKENS,
         "grid": {f"{k:g}": 0.123456 for k in CONVERT_RESCALE_GRID[:9]}}
    if 1 < len(roles) <= CONVERT_RESCALE_ROLES_MAX:
        r.update(roles={n: 0.0005 for n in roles}, least=0.123456)
    return r


def _add(w, d, scale: float):
    """w += scale x d in place, d dense or (flat indices, values) of `Kept`."""
    if isinstance(d, tuple):
        w.view(-1).index_add_(0, d[0], d[1], alpha=scale)
    else:
        w.add_(d, alpha=scale)


def _kl(logp, logq):
    """KL(p || q) per token from log-probs [..., vocab]."""
    return (logp.exp() * (logp - logq)).sum(-1)


def _seq(model) -> int:
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return min(SEQ, limit or SEQ)


def _batched(items, n):
    return [items[i:i + n] for i in range(0, len(items), n)]
