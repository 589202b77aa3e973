"""`ddq convert --target-ratio R`: per tensor, the encoding and parameters that minimise the summed relative
error of the deltas subject to the byte budget of the whole file's tensors.

Budget: R is the all-tensor true ratio, sum of every tensor's fp16 delta bytes / every byte the tensors take
(buffers, alignment padding, header entries, the file's preamble, footer and header records; the copied
config/tokenizer files are reported beside it, not inside it). The file is format 2.0 by default, its header
zlib-compressed: every msgpack byte of the header is then charged at the header's compressed share
(`header_share`, `priced`; about 0.16 on the example, where the entries as msgpack are ~20% of a 512x file).
Candidates per tensor (`grid`):
  - compressed 2-D deltas: `seeded_rans` at dropout alpha and 4-bit codes on a grid step of 1 standard deviation of
    the kept values, the embedding (and an untied lm_head) also as `lowrank_q` at rank r, and a dense binary16
    delta; where the fine-tune runs under transformers (moments.py), `seeded_rans_split` replaces seeded_rans at
    alpha >= 4: the 10% of input columns with the most energy E[x_j^2] kept more often, at the same kept count
    (price_split, split_instead; both are offered where even the smallest file would not fit with split only).
    Measured and dropped (they lose at equal bytes on the example, benchmarks/results/quality.md): a 2-std
    step (a dead zone around zero), the reference min-max grid, 1-bit signs behind dropout (even with the unbiased
    scale E[v^2]/E|v|; again with the rescale and 4-bit norms, at alpha >= 128 only: 38.3% against 41.0% exact match
    at 512x, seed 0, though R=2048 then reaches 1564x instead of 1020x, at 1.2% exact match, with 8-bit norms;
    exploration runs), 2-bit codes. Tried in exploration runs and not made an encoding: a low-rank part plus dropout
    on the residual (about the same exact match at 128x, lower KL; never chosen at 512x);
  - 1-D deltas (norms, biases): `dense_q` codes (raw binary16 plus its entry would exceed its fp16 size), 8 bits
    unless at 8 bits they would take more than CONVERT_PLAN_1D_SHARE of the budget, then 4 bits, and 2 bits only
    where even the smallest file would not fit the budget at 4 (`one_d`; on the example R=2048: the smallest
    file at 4 bits was 1919x; at 1024x, 2-bit norms measured 8.0% exact match against 11.7% at 4 bits); on the
    example the norms are 10% of the 512x budget at 8 bits, and at 4 bits the linear layers get those bytes
    (quality.md: 41.0/43.4/33.0% against 38.1/39.5/28.9% at seeds 0-2); at 4 bits, 256x (where 8 bits take 5.0%)
    keeps 74.2% against 75.6% and 128x 86.7% against 87.5% (seed 0); at 7B the norms are under 1% of the budget.
    Measured and dropped: 8-, 4- and 2-bit candidates priced element-wise like the rest (the allocator then takes 2
    bits everywhere): mean over 3 run seeds on the example, 33.1% vs 30.5% exact match at 512x but 86.6% vs 87.5% at
    128x (exploration runs, with the rescale): the element-wise price undervalues a norm's element, which scales a
    whole input column of the layers reading it (priced as that column's error instead, a norm costs more than its
    consumers' whole noise, yet zeroing every norm delta of the 512x file costs 1.1 points of exact match: neither
    price fits).
Cost: each candidate is encoded and decoded (what a loader gets): its gain g on the delta and the noise N left
beside it. The default objective prices every element's noise-to-signal ratio equally, element-wise (sum of
numel x N/(g^2 S), "snr"); "calibrated" takes that ratio on the fine-tune's activations over the calibration
text (calibration.TensorStats) and "fisher" sums N/g^2 in the Fisher-weighted metric. Both measured worse on the
example pair (calibrated: 50.2% vs 86.5% exact match at 128x, quality.md): the calibration text reaches few of a
tensor's inputs, and the allocator then starves what it does not see (the tied embedding). They stay options;
only they run the calibration pass (planned.py). Choosing the seeds by the calibration metric while allocating
element-wise was lower too, in exploration runs.
Allocation: minimise the summed cost under the byte budget, a multiple-choice knapsack solved by its
Lagrangian (bisection on the price of a byte), then the leftover bytes go to the best cost-per-byte upgrades.
Seeds: the chosen dropout configurations then try `seed_trials` seeds per tensor (as --seed-trials) and keep the
least element-wise noise.
"""
from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass, field, replace

import msgpack
import numpy as np

from ..encodings import Encoded, dense_q, lowrank_q, raw, seeded_rans, seeded_rans_split, sign_scale
from ..quantize import Quantizer, fit
from ..spec import (ALIGNMENT, CONVERT_PLAN_1D_SHARE, CONVERT_SPLIT_HOT_SHARE, ENTRY_PLACEHOLDER_MAX as ENTRY_PLACEHOLDER,
                    HEADER_ZLIB_LEVEL, KIND_COMPRESSED, KIND_DENSE, MAX_SEED, align_up)
from ..seeded_mask import kept_per_row
from .dropout import groupwise_dropout_blocked
from .methods import ROW_BLOCK, tensor_group_size

GROUP = 512  # h_g of the planned dropout configurations (rounded to the tensor, as the converter does)
# about 2^(1/4) apart: with only powers of two the allocation is too coarse near the budget's cliff (512x on the
# example: 14.3% exact match with powers of two, 27.1% with this ladder; benchmarks/results/quality.md)
ALPHAS = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512)
RANS_BITS, RANS_STEPS = 4, (1.0,)  # grid step in std of the kept values; 2.0 measured worse (quality.md)
RANS_STEP = RANS_STEPS[0]
FINE_ALPHAS = (1, 2, 4)  # 8-bit candidates: the budgets below the 4-bit ones (true ratio < ~8x)
LOWRANK_RANKS = (1, 2, 4, 8, 16, 32)
ONE_D_BITS = (8, 4, 2)  # widest first: the code widths of 1-D deltas (one_d; the last only where nothing else fits)
SPLIT_MIN_ALPHA = 4  # seeded_rans_split candidates from this mean alpha up (below it the classes differ little)
SPLIT_SEED_XOR = 0x9E3779B9  # the hot class's mask seed: the entry's seed XOR this (its own mask, reproducible)
ROW_SAMPLE = 2048  # rows of a tensor scored (a fixed random sample, scaled up): bounds the error's cost


@dataclass(frozen=True)
class Config:
    family: str  # rans | split | sign | lowrank | raw16 | dense_q
    alpha: int = 1
    bits: int = 4
    step: float = RANS_STEP
    rank: int = 0

    def label(self) -> str:
        if self.family == "rans":
            return f"seeded_rans a={self.alpha} k={self.bits} step={self.step:g}"
        if self.family == "split":
            return f"seeded_rans_split a={self.alpha} k={self.bits} step={self.step:g}"
        if self.family == "sign":
            return f"sign_scale a={self.alpha} unbiased"
        if self.family == "lowrank":
            return f"lowrank_q r={self.rank} k={self.bits}"
        if self.family == "dense_q":
            return f"dense_q k={self.bits}"
        return "raw f16"

    @property
    def kind(self) -> str:
        return KIND_DENSE if self.family in ("raw16", "dense_q") else KIND_COMPRESSED


def grid(shape, name: str, embedding: bool, split: bool = False) -> list[Config]:
    """split: also seeded_rans_split at every alpha (a tensor whose inputs' second moments are known)."""
    if len(shape) != 2:
        return [Config("dense_q", bits=b) for b in ONE_D_BITS]
    cols = shape[1]
    out = [Config("raw16")]
    out += [Config("rans", alpha=a, bits=RANS_BITS, step=st) for a in ALPHAS if a <= cols for st in RANS_STEPS]
    if split and cols >= 2 * round(1 / CONVERT_SPLIT_HOT_SHARE):
        out += [Config("split", alpha=a, bits=RANS_BITS, step=st) for a in ALPHAS
                if SPLIT_MIN_ALPHA <= a <= cols for st in RANS_STEPS]
    # below 8x: fine grids (8-bit codes on a step 16x finer, the same range) and no dropout
    out += [Config("rans", alpha=a, bits=8, step=st / 16) for a in FINE_ALPHAS if a <= cols for st in RANS_STEPS]
    out += [Config("rans", alpha=1, bits=RANS_BITS, step=st) for st in RANS_STEPS]
    if embedding:
        out += [Config("lowrank", rank=r, bits=4) for r in LOWRANK_RANKS if r <= min(shape)]
    return out


def group_size_for(cols: int, alpha: int) -> int | None:
    return tensor_group_size(max(alpha, GROUP // alpha * alpha), cols, alpha)


def encode(cfg: Config, delta: np.ndarray, seed: int, moments: np.ndarray | None = None) -> Encoded:
    """The entry's encoding of `delta` (float32, not modified) under `cfg`; moments: E[x_j^2] of the tensor's
    input columns (split only)."""
    shape = delta.shape
    if cfg.family == "split":
        return split_encode(cfg, delta, seed, moments)
    if cfg.family == "raw16":
        return raw.encode(delta, "F16")
    if cfg.family == "dense_q":
        return dense_q.encode(delta, cfg.bits)
    if cfg.family == "lowrank":
        return lowrank_rtn(delta, cfg.rank, cfg.bits)
    if cfg.family != "sign":
        return _dropout_rans(delta, cfg.alpha, cfg.bits, cfg.step, seed)
    g = group_size_for(shape[1], cfg.alpha)
    _, vals = groupwise_dropout_blocked(delta, cfg.alpha, g, seed, ROW_BLOCK)
    a = np.abs(vals, dtype=np.float64)
    scale = float((a * a).mean() / a.mean()) if a.size and a.mean() > 0 else 0.0
    return sign_scale.encode(shape, vals, alpha=cfg.alpha, group_size=g, seed=seed, scale=scale)


def _dropout_rans(delta: np.ndarray, alpha: int, bits: int, step: float, seed: int) -> Encoded:
    g = group_size_for(delta.shape[1], alpha)
    _, vals = groupwise_dropout_blocked(delta, alpha, g, seed, ROW_BLOCK)
    return seeded_rans.encode(delta.shape, vals, bits=bits, alpha=alpha, group_size=g, seed=seed,
                              quantizer=step_quantizer(vals, bits, step))


def split_classes(delta: np.ndarray, moments: np.ndarray, alpha: int) -> tuple[np.ndarray, int, int]:
    """(hot columns ascending, alpha of the hot class, alpha of the rest) at a mean rate of 1/alpha: the hot
    columns are the CONVERT_SPLIT_HOT_SHARE with the most input energy E[x_j^2] (so the tensors reading one input
    share the list, which a compressed header then stores about once), and with e_j = sum_i D_ij^2 E[x_j^2] each
    class's keep rate
    is proportional to the root of its mean e_j, which minimises the output noise sum_j e_j (1/p_j - 1) of two
    rates over these classes. Rates become integer alphas (the hot one at least 1, at most the class's width)."""
    n = delta.shape[1]
    m = np.asarray(moments, np.float64)
    e = np.einsum("ij,ij->j", delta, delta, dtype=np.float64) * m
    n_hot = min(max(1, round(CONVERT_SPLIT_HOT_SHARE * n)), n - 1)
    hot = np.sort(np.argsort(-m, kind="stable")[:n_hot])
    mask = np.zeros(n, bool)
    mask[hot] = True
    root = np.sqrt(np.array([e[mask].mean(), e[~mask].mean()]))
    sizes = np.array([n_hot, n - n_hot])
    if not np.all(np.isfinite(root)) or root.sum() <= 0:
        return hot, alpha, alpha
    p = root * (n / alpha) / float(root @ sizes)
    a_hot = int(min(max(1, round(1 / p[0])) if p[0] > 0 else alpha, n_hot))
    a_rest = int(min(max(alpha, round(1 / p[1])) if p[1] > 0 else alpha, n - n_hot))
    return hot, a_hot, a_rest


def price_split(opts: list[Option]) -> list[Option]:
    """A tensor's candidates with each seeded_rans_split priced as seeded_rans's element-wise noise at the split's
    own kept count: rel x (1/p' - 1)/(1/p - 1), p' the split's kept share, p seeded_rans's at that alpha. The
    allocation thus keeps as many elements as it would without classes (pricing the classes' expected output
    noise on the calibration inputs instead let it trade kept elements for them: 42.6% exact match at 512x
    against 45.7% without; keeping the count, benchmarks/results/quality.md), and the classes put them where
    the inputs carry the noise."""
    one = {o.cfg.alpha: o for o in opts if o.cfg.family == "rans" and o.cfg.bits == RANS_BITS}
    out = []
    for o in opts:
        if o.cfg.family == "split":
            u = one[o.cfg.alpha]
            p_u = seeded_rans_kept(u.entry) / u.numel
            p_s = seeded_rans_split.kept(o.entry) / o.numel
            o = replace(o, rel=u.rel * (1 / p_s - 1) / (1 / p_u - 1) if 0 < p_s < 1 and 0 < p_u < 1 else u.rel)
        out.append(o)
    return out


def split_instead(options: dict[str, list[Option]], room: float) -> dict[str, list[Option]]:
    """Every tensor with split candidates without its seeded_rans at alpha >= SPLIT_MIN_ALPHA (at an equal price
    the allocator would take seeded_rans's fewer bytes and never the classes), unless the file of every tensor's
    smallest candidate would then not fit `room`: the split's second stream and column list cost bytes that the
    tightest budgets lack (R=2048 on the example reached 1538x with split only), and both stay offered."""
    def narrow(opts):
        if not any(o.cfg.family == "split" for o in opts):
            return opts
        return [o for o in opts if not (o.cfg.family == "rans" and o.cfg.bits == RANS_BITS
                                        and o.cfg.alpha >= SPLIT_MIN_ALPHA)]

    out = {n: narrow(opts) for n, opts in options.items()}
    return out if sum(min(o.bytes for o in opts) for opts in out.values()) <= room else options


def seeded_rans_kept(entry: dict) -> int:
    p = entry["params"]
    return entry["shape"][0] * kept_per_row(entry["shape"][1], p["group_size"], p["alpha"])


def split_encode(cfg: Config, delta: np.ndarray, seed: int, moments: np.ndarray) -> Encoded:
    """seeded_rans_split: the hot columns and the rest as seeded_rans at their own alphas (split_classes), the
    rest's mask from `seed`, the hot class's from seed XOR SPLIT_SEED_XOR."""
    hot, a_hot, a_rest = split_classes(delta, moments, cfg.alpha)
    rest = np.setdiff1d(np.arange(delta.shape[1]), hot, assume_unique=True)
    parts = [_dropout_rans(np.ascontiguousarray(delta[:, cols]), a, cfg.bits, cfg.step, s) for cols, a, s in
             ((hot, a_hot, (seed ^ SPLIT_SEED_XOR) & MAX_SEED), (rest, a_rest, seed))]
    return seeded_rans_split.encode(delta.shape, hot, *parts)


def step_quantizer(vals: np.ndarray, bits: int, step: float) -> Quantizer:
    """Grid s*(Q - z), z = 2^(k-1), s = step x std of the kept values (binary32); values past the grid clip.
    step 0: the reference writer's min-max fit (SPEC.md §8.2)."""
    if step <= 0:
        return fit(vals, bits)
    std = float(np.sqrt(np.mean(np.square(vals, dtype=np.float64)))) if vals.size else 0.0
    s = float(np.float32(step * std))
    return Quantizer(s, 1 << (bits - 1) if s > 0 else 0, bits)


_SVD = threading.local()  # the last tensor's leading triplets: every lowrank candidate of a tensor shares them


def top_svd(delta: np.ndarray, rank: int):
    """Leading `rank` singular triplets from the eigenvectors of the smaller Gram matrix (float64): one
    matmul and a small eigh instead of a full SVD of a 49152 x 576 embedding for each candidate rank."""
    hit = getattr(_SVD, "hit", None)
    if hit is not None and hit[0] is delta and hit[1] >= rank:
        return hit[2][:, :rank], hit[3][:rank], hit[4][:rank]
    want = min(max(rank, max(LOWRANK_RANKS)), min(delta.shape))
    d = np.asarray(delta, np.float64)
    tall = d.shape[0] >= d.shape[1]
    G = d.T @ d if tall else d @ d.T
    w, V = np.linalg.eigh(G)
    w, V = w[::-1][:want], V[:, ::-1][:, :want]
    S = np.sqrt(np.clip(w, 0, None))
    safe = np.where(S > 0, S, 1)
    if tall:
        Vt, U = V.T, (d @ V) / safe
    else:
        U, Vt = V, ((V.T @ d).T / safe).T
    _SVD.hit = (delta, want, U, S, Vt)
    return U[:, :rank], S[:rank], Vt[:rank]


def lowrank_rtn(delta: np.ndarray, rank: int, bits: int) -> Encoded:
    """Truncated SVD, each vector rounded to `bits` per group of 128 (lowrank_q; no calibration)."""
    from .deltacome import GROUP as LR_GROUP
    U, S, Vt = top_svd(delta, rank)
    u = (U * S).astype(np.float32)
    qu = [lowrank_q.quantize_groups(u[:, i], bits, LR_GROUP) for i in range(u.shape[1])]
    qv = [lowrank_q.quantize_groups(Vt[i].astype(np.float32), bits, LR_GROUP) for i in range(Vt.shape[0])]
    band = (bits, np.stack([q[0] for q in qu]), np.stack([q[1] for q in qu]), np.stack([q[2] for q in qu]),
            np.stack([q[0] for q in qv]), np.stack([q[1] for q in qv]), np.stack([q[2] for q in qv]))
    return lowrank_q.encode(delta.shape, [band], group_size=LR_GROUP)


def as_entry(name: str, shape, dtype: str, kind: str, enc: Encoded, base: dict | None = None) -> tuple[dict, dict]:
    """(entry, buffers) as a reader would see them, for decoding and for the size estimate."""
    bufs = {role: np.ascontiguousarray(arr).reshape(-1).view(np.uint8) for role, (_, arr) in enc.buffers.items()}
    entry = {"name": name, "kind": kind, "shape": [int(s) for s in shape], "dtype": dtype,
             "encoding": enc.encoding, "params": enc.params,
             "buffers": {role: {"dtype": bd, "offset": ENTRY_PLACEHOLDER, "length": int(bufs[role].size),
                                "crc32": ENTRY_PLACEHOLDER} for role, (bd, _) in enc.buffers.items()}}
    if base is not None:
        entry["base"] = base
    return entry, bufs


def buffer_bytes(entry: dict, alignment: int = ALIGNMENT) -> int:
    """Buffers rounded up to the alignment (the padding the next buffer carries)."""
    return sum(align_up(b["length"], alignment) for b in entry["buffers"].values())


def stored_bytes(entry: dict) -> int:
    """Buffers rounded up to the 1.x alignment plus the msgpack entry."""
    return buffer_bytes(entry) + len(msgpack.packb(entry, use_bin_type=True))


def decode(entry: dict, bufs: dict) -> np.ndarray:
    from .. import encodings
    return encodings.get(entry["encoding"]).decode(entry, bufs)


@dataclass
class Option:
    cfg: Config
    bytes: int
    error: float  # N / g^2: the noise left after the gain, in the Fisher-weighted output metric
    rel: float = 0.0  # N / (g^2 S) element-wise (plain sums over the elements): relative to the delta's size
    numel: int = 0
    shrink: float = 1.0  # C / Q: the scale of the decoded delta that minimises the output error
    rel_cal: float | None = None  # N / (g^2 S) in the Fisher metric of the calibration activations (None: = rel)
    entry: dict | None = field(default=None, repr=False, compare=False)  # its header entry (placeholders)
    entry_bytes: int = 0  # msgpack bytes of `entry`, inside `bytes`

    def cost(self, objective: str) -> float:
        """What the allocator sums. snr (default): numel x rel, every element of every tensor at an equal price
        for its noise-to-signal ratio; calibrated: the same with the ratio taken on the calibration activations
        (rel_cal); fisher: error, tensors weighted by their calibration Fisher; shrink: numel x the relative
        output error left once the decoded delta is scaled by `shrink`, rel_cal / (1 + rel_cal) (the encoder
        then stores shrink x the delta; never above a zero delta's 1)."""
        cal = self.rel if self.rel_cal is None else self.rel_cal
        if objective == "fisher":
            return self.error
        if objective == "shrink":
            return self.numel * cal / (1.0 + cal)
        if objective == "calibrated":
            return self.numel * cal
        return self.numel * self.rel


OBJECTIVES = ("snr", "calibrated", "fisher", "shrink")


def score(name, delta, dtype, base, cfg, seed, stats, rows, ref=None, moments=None) -> tuple[Option, Encoded]:
    """ref: stats.project(delta[rows]) when several candidates of one tensor are scored (computed once).
    moments: E[x_j^2] of the tensor's input columns (what a split candidate's classes are chosen by)."""
    enc = encode(cfg, delta, seed, moments)
    entry, bufs = as_entry(name, delta.shape, dtype, cfg.kind, enc, base)
    ebytes = len(msgpack.packb(entry, use_bin_type=True))
    nbytes = buffer_bytes(entry) + ebytes
    head = {"entry": entry, "entry_bytes": ebytes}
    if delta.ndim != 2:
        return Option(cfg, nbytes, 0.0, 0.0, delta.size, **head), enc
    d_hat = decode(entry, bufs)
    rel = relative_noise(delta[rows], d_hat[rows])
    if stats is None:
        return Option(cfg, nbytes, 0.0, rel, delta.size, **head), enc
    err, rel_cal, shrink = noise_to_signal(stats, delta[rows], d_hat[rows], rows, ref)
    return Option(cfg, nbytes, err, rel, delta.size, shrink, rel_cal, **head), enc


def relative_noise(d, d_hat) -> float:
    """N / (g^2 S) with plain sums over the elements (S = |D|^2, C = <D^, D>, Q = |D^|^2): the default price.
    Measured on the example pair against the same ratio on the calibration activations (objective
    "calibrated"): 86.5% vs 50.2% exact match at 128x, 27.1% vs 8.2% at 512x (benchmarks/results/quality.md).
    Calibration text reaches a small part of a tensor's inputs (of the tied embedding, a few hundred of its
    49152 rows: it priced every alpha of the embedding alike and the allocator starved it)."""
    d64, h64 = np.asarray(d, np.float64).ravel(), np.asarray(d_hat, np.float64).ravel()
    return noise_ratio(float(d64 @ d64), float(h64 @ d64), float(h64 @ h64))


def noise_ratio(S: float, C: float, Q: float) -> float:
    """Q S / C^2 - 1: the noise left after removing the gain C/S, relative to S (0 for an empty delta, 1e6 when
    no signal is left), in whichever metric S, C and Q were taken."""
    if S <= 0:
        return 0.0
    if C <= 1e-12 * S:
        return 1e6  # no signal left
    return max(Q * S / (C * C) - 1.0, 0.0)


def noise_to_signal(stats, d, d_hat, rows, ref=None) -> tuple[float, float, float]:
    """(N/g^2, N/(g^2 S), C/Q). With S = <D, D>, C = <D^, D>, Q = <D^, D^> in the Fisher metric, the approximation
    is a gain g = C/S times D plus noise N = Q - C^2/S; N/g^2 = S (Q S / C^2 - 1). A shrinking quantizer
    (gain < 1) is charged for the shrinkage, not rewarded for its smaller squared error: on memorised facts a
    delta scaled down loses answers that an unbiased but noisy one keeps (benchmarks/results/quality.md)."""
    pd = ref if ref is not None else stats.project(d)
    ph = stats.project(d_hat)
    S = stats.inner_projected(pd, pd, rows)
    C = stats.inner_projected(ph, pd, rows)
    Q = stats.inner_projected(ph, ph, rows)
    rel = noise_ratio(S, C, Q)
    if S <= 0 or C <= 1e-12 * S:  # empty delta (shrink 1) or no signal left (shrink 0)
        return S * rel, rel, 1.0 if S <= 0 else 0.0
    return S * rel, rel, (C / Q if Q > 0 else 1.0)


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    if n <= ROW_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, ROW_SAMPLE, replace=False))


def header_share(top: dict, entries: list[dict]) -> float:
    """Stored over msgpack bytes of a format 2.x header (zlib) holding `entries` under the top-level records
    `top`. Placeholder offsets and CRCs are replaced by random values first: a real file's are close to
    incompressible, the placeholders would compress too well."""
    rng = np.random.default_rng(0)

    def real(e):
        bufs = {r: dict(b, offset=int(rng.integers(2**32)), crc32=int(rng.integers(2**32)))
                for r, b in e.get("buffers", {}).items()}
        return dict(e, buffers=bufs) if bufs else e

    plain = msgpack.packb(dict(top, tensors=[real(e) for e in entries]), use_bin_type=True)
    return len(zlib.compress(plain, HEADER_ZLIB_LEVEL)) / len(plain)


def priced(options: dict[str, list[Option]], share: float, alignment: int = ALIGNMENT) -> dict[str, list[Option]]:
    """The options with each entry's msgpack bytes charged at `share` of their size and its buffers padded to
    `alignment` (format 2.x: the header is stored compressed, buffers aligned to 16); share 1 at the 1.x
    alignment leaves them as they are."""
    if share == 1.0 and alignment == ALIGNMENT:
        return options
    return {n: [replace(o, bytes=buffer_bytes(o.entry, alignment) + math.ceil(share * o.entry_bytes)) for o in opts]
            for n, opts in options.items()}


def within_fp16(options: list[Option], fp16_bytes: int) -> list[Option]:
    """The candidates not stored above the tensor's fp16 delta size (issue 11); the smallest one alone when
    every candidate is (a tensor smaller than its own header entry)."""
    ok = [o for o in options if o.bytes <= fp16_bytes]
    return ok or [min(options, key=lambda o: o.bytes)]


def one_d(options: dict[str, list[Option]], budget: float, share: float = CONVERT_PLAN_1D_SHARE,
          room: float | None = None) -> dict:
    """The options with every 1-D delta (only dense_q candidates) narrowed to one width, the same for all: the
    widest of ONE_D_BITS but the last whose total stays within `share` of the budget, else the one before the
    last; the last (narrowest) only where even every tensor's smallest candidate would not fit `room` (the
    bytes the entries may take; default the budget) at the width above it (module docstring)."""
    oned = [n for n, opts in options.items() if opts and all(o.cfg.family == "dense_q" for o in opts)]

    def at(n, b):
        return [o for o in options[n] if o.cfg.bits == b] or options[n]

    def smallest(b, names):
        return sum(min(o.bytes for o in (at(n, b) if n in oned else options[n])) for n in names)

    for bits in ONE_D_BITS[:-1]:
        if smallest(bits, oned) <= share * budget:
            break
    if smallest(bits, options) > (budget if room is None else room):
        bits = ONE_D_BITS[-1]
    return {n: at(n, bits) if n in oned else opts for n, opts in options.items()}


def allocate(options: dict[str, list[Option]], budget: float, objective: str = "snr") -> dict[str, Option]:
    """Least total cost with total bytes <= budget (best effort: the Lagrangian solution, then upgrades by
    cost saved per extra byte while they fit). Falls back to the smallest option of each tensor."""
    names = list(options)

    def pick(lam):
        return {n: min(options[n], key=lambda o: (o.cost(objective) + lam * o.bytes, o.bytes)) for n in names}

    def total(ch):
        return sum(o.bytes for o in ch.values())

    lo, hi = 1e-30, 1e30
    best = {n: min(options[n], key=lambda o: (o.bytes, o.cost(objective))) for n in names}
    if total(best) > budget:
        return best
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        ch = pick(mid)
        if total(ch) <= budget:
            best, hi = ch, mid
        else:
            lo = mid
        if hi / lo < 1 + 1e-9:
            break
    return fill(best, options, budget, objective)


def fill(choice: dict[str, Option], options: dict[str, list[Option]], budget: float,
         objective: str = "snr") -> dict[str, Option]:
    """Spend what the Lagrangian leaves: repeatedly take the upgrade with the most cost saved per byte."""
    choice = dict(choice)
    left = budget - sum(o.bytes for o in choice.values())
    while True:
        best, gain = None, 0.0
        for n, cur in choice.items():
            for o in options[n]:
                extra = o.bytes - cur.bytes
                saved = cur.cost(objective) - o.cost(objective)
                if saved > 0 and 0 < extra <= left and saved / extra > gain:
                    best, gain = (n, o), saved / extra
        if best is None:
            return choice
        left -= best[1].bytes - choice[best[0]].bytes
        choice[best[0]] = best[1]
