"""Conversions that decide every tensor before any is written: `--target-ratio R` (the budget allocator,
budget.py) and the seed papers' baselines `deltacome`, `deltazip`, `bitdelta-distill`.

Each runs calibration.collect once (--target-ratio with its default element-wise price needs none and skips
it), decides what every tensor becomes, and then hands a per-tensor encoder
to pipeline.convert (which reads, writes, resumes and reports as for every other method). Small 1-D deltas
(norms, biases) are stored as `dense_q` 8-bit codes by every planned method, so all of them pay the same
fixed bytes; embeddings are compressed by each method's own procedure. `--target-ratio` then rescales its
dropout entries (rescale.py; `--no-rescale` skips it), which reads the calibration text but no statistics.
"""
from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import UsageError
from ..spec import (COMPACT_MAJOR, CONVERT_DENSE_1D_BITS, CONVERT_PLAN_CALIB_MAX_TOKENS, CONVERT_RESCALE_TOKENS,
                    FORMAT_MAJOR, KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED, KIND_TIED, MAX_ALPHA, ALIGNMENT,
                    min_alignment)
from . import budget, calibration, groupsize, rescale
from .checkpoint import Checkpoint
from .methods import Options
from .options import calibration_input
from .plan import plan
from .seed_search import trial_seed
from . import summary as summary_stage
from .tensor_work import delta_blocks
from .seeds import tensor_seed

METHODS = ("deltacome", "deltazip", "bitdelta-distill")
EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "lm_head.weight", "embed_out.weight")  # priced as lookups
DEFAULT_SEED_TRIALS = 8  # --target-ratio: seeds tried per chosen dropout tensor (benchmarks/results/seed_search.md)
DZ_LADDER = ((2, 4, 4), (1, 4, 4), (1, 8, 4), (1, 16, 4), (1, 32, 4), (1, 32, 2), (1, 64, 2), (1, 128, 2),
             (1, 256, 2))  # (n, m, bits): the paper's 2:4 4-bit first, then sparser


def _note(console, quiet):
    if console is None:
        from rich.console import Console
        console = Console(stderr=True, quiet=quiet)
    return console


def convert(base, finetuned, out, *, method: str, target_ratio, calib, seed: int, seed_trials: int, workers: int,
            progress: bool, console, quiet: bool, print_summary: bool, resume: bool, options: dict,
            format_major: int | None = None):
    """options["cache"]: a dict shared by several conversions of the same pair, calibration text and seed (a
    sweep over target ratios): the calibration statistics, the scored candidates and the seeds searched are
    computed once."""
    from . import pipeline
    console = _note(console, quiet)
    if target_ratio is not None and (not isinstance(target_ratio, (int, float)) or not target_ratio >= 1):
        raise UsageError(f"--target-ratio must be a number >= 1, got {target_ratio!r}", field="target_ratio")
    if method not in METHODS and method != "deltadq":
        raise UsageError(f"--target-ratio chooses DeltaDQ settings per tensor (--method deltadq) or sets the "
                         f"budget of {', '.join(METHODS)}; not {method!r}", field="target_ratio")
    if method == "deltadq" and any(options.get(k) is not None for k in ("alpha", "bits")):
        raise UsageError("--target-ratio chooses alpha and bits per tensor; do not pass them too", field="target_ratio")
    if options.get("objective", "snr") not in budget.OBJECTIVES:
        raise UsageError(f"objective must be one of {budget.OBJECTIVES}", field="objective")
    if method == "deltacome" and options.get("allocation", "paper") not in ("paper", "ilp"):
        raise UsageError(f"--allocation must be paper (Delta-CoMe) or ilp (DeltaMix), got "
                         f"{options.get('allocation')!r}", field="allocation")
    if method == "deltazip" and options.get("nm") is not None:
        n, m, bits = options["nm"]
        if not (1 <= n <= m <= 256 and 1 <= bits <= 8):
            raise UsageError(f"deltazip n:m must have 1 <= n <= m <= 256 and 1 <= bits <= 8, got {n}:{m} "
                             f"k={bits}", field="nm")
    if method == "bitdelta-distill" and not 1 <= int(options.get("alpha") or 1) <= MAX_ALPHA:
        raise UsageError(f"alpha must be in 1..{MAX_ALPHA}", field="alpha")
    t0 = time.perf_counter()
    base_ck, ft_ck = Checkpoint(base), Checkpoint(finetuned)
    tasks = plan(base_ck, ft_ck, Options(method="dare", alpha=1), "compressed")
    names = [t.name for t in tasks if t.kind == KIND_COMPRESSED]
    cal = calibration_input(calib)
    text = cal.text
    # the default price (snr) is element-wise: no calibration pass, no fine-tune loaded with transformers
    needs_stats = method != "deltadq" or options.get("objective", "snr") != "snr"
    rescaling = method == "deltadq" and options.get("rescale", True) and options.get("objective") != "shrink"
    cache = options.get("cache")
    key = (str(base_ck.folder), str(ft_ck.folder), hashlib.sha256(text.encode()).hexdigest(), int(seed))
    if cache is not None and cache.get("key") != key:
        cache.clear()
        cache["key"] = key
    stats = cache.get("stats") if cache is not None else None
    if needs_stats:
        ids = groupsize.calibration_ids(cal, ft_ck, base_ck, CONVERT_PLAN_CALIB_MAX_TOKENS,
                                        "--target-ratio" if target_ratio is not None else f"--method {method}")
    else:
        stats = NO_STATS
    rescale_ids = skipped = None
    if rescaling:
        try:
            rescale_ids = ids if needs_stats else groupsize.calibration_ids(
                cal, ft_ck, base_ck, CONVERT_RESCALE_TOKENS, "--target-ratio's rescale")
        except UsageError as e:
            skipped = f"no calibration tokens: {e}"
            console.print(f"[yellow]warning: rescale skipped (dropout entries keep the scale alpha): {e}[/]")
    if stats is None:
        console.print(f"calibration: {len(ids)} tokens through the fine-tune (forward + "
                      f"{calibration.FISHER_SAMPLES} backward passes)")
        from ..progress import make_progress
        bar = make_progress(console, enabled=progress)
        job = bar.add_task("calibration", total=None, what="passes")
        with bar:
            stats = calibration.collect(ft_ck.folder, ids, names, seed=seed,
                                        step=lambda d, t: bar.update(job, completed=d, total=t))
        if cache is not None:
            cache["stats"] = stats
    ctx = Context(base_ck, ft_ck, tasks, stats, seed, workers, console, cache if cache is not None else {}, progress)
    moments_record = None
    if method == "deltadq" and options.get("split", True):
        ctx.moments, moments_record = input_moments(ctx, cal, ids if needs_stats else rescale_ids, names)
    if format_major is None:  # where the header's bytes count against the user's budget: compressed
        format_major = COMPACT_MAJOR if method == "deltadq" else FORMAT_MAJOR
    if method == "deltadq":
        hook, record = plan_budget(ctx, float(target_ratio), seed_trials if seed_trials > 1 else DEFAULT_SEED_TRIALS,
                                   options.get("objective", "snr"), rescale_ids, skipped, format_major, moments_record)
    elif method == "deltacome":
        hook, record = plan_deltacome(ctx, float(target_ratio or 16), options.get("allocation", "paper"))
    elif method == "deltazip":
        hook, record = plan_deltazip(ctx, target_ratio, options)
    else:
        from .bitdelta_distill import plan_bitdelta
        hook, record = plan_bitdelta(ctx, ids, options)
    record = dict(record, **calibration_record(stats), target_ratio=target_ratio)
    s = pipeline.convert(base, finetuned, out, method="dare", alpha=1, embeddings="compressed", calib=calib,
                         seed=seed, workers=workers, resume=resume, progress=progress, console=console, quiet=quiet,
                         print_summary=False, format_major=format_major, _encode_hook=hook, _algorithm=record)
    if cache is None:
        calibration.clear_factors()
    s.method = method
    s.settings = (f"--target-ratio {target_ratio:g}: " if target_ratio is not None else "") + \
        "chosen per tensor, recorded in the header (ddq inspect lists the choices)"
    s.seconds = time.perf_counter() - t0
    if print_summary:
        summary_stage.print_summary(console, s)
        r = tensors_ratio(out)
        console.print(f"all-tensor true ratio {r:.1f}x" + (f" (target {target_ratio:g}x)" if target_ratio else ""))
    return s


def run_key(record: dict) -> dict:
    """What of a planned record identifies the run for --resume: its choices, not the rescale's criterion values
    (measurements whose last digits may differ between two runs; the header keeps the first run's)."""
    r = dict(record)
    if isinstance(r.get("rescale"), dict):
        r["rescale"] = {k: v for k, v in r["rescale"].items() if k not in ("grid", "least")}
    return r


class _NoStats:
    """The statistics of a conversion that needs none (--target-ratio with the element-wise price)."""
    def get(self, name):
        return None


NO_STATS = _NoStats()


def calibration_record(stats) -> dict:
    """The header's `calibration` record: absent when no calibration pass ran."""
    return {} if stats is NO_STATS else {"calibration": stats.record()}


def tensors_ratio(path) -> float:
    """fp16 bytes of every tensor's delta / every byte the tensors take (aux files excluded): the report's
    totals.tensors_true_ratio."""
    from ..accounting import report
    from ..reader import DDQFile
    with DDQFile(path) as f:
        return report(f)["totals"]["tensors_true_ratio"]


class Context:
    def __init__(self, base, ft, tasks, stats, seed, workers, console, cache, progress=True):
        self.base, self.ft, self.tasks, self.stats = base, ft, tasks, stats
        self.seed, self.workers, self.console, self.cache, self.progress = seed, workers, console, cache, progress
        self.moments: dict = {}  # tensor name -> E[x_j^2] of its input columns (input_moments)

    def delta(self, name: str) -> np.ndarray:
        b, f = self.base.tensors[name], self.ft.tensors[name]
        return delta_blocks(self.ft.read(name), f.dtype, self.base.read(name), b.dtype, "F32")

    def binding(self, name):
        from ..binding import binding
        b = self.base.tensors[name]
        return binding(self.base.read(name), b.shape, b.dtype)

    def data_tasks(self):
        return [t for t in self.tasks if t.kind in (KIND_COMPRESSED, KIND_DENSE)]

    def all_fp16(self) -> int:
        return sum(2 * t.numel for t in self.tasks if t.kind not in (KIND_REMOVED, KIND_TIED))

    def map(self, fn, items, what="tensors"):
        """fn over items on `workers` threads, in order, with a progress bar."""
        from ..progress import make_progress
        items = list(items)
        bar = make_progress(self.console, enabled=self.progress)
        job = bar.add_task(what, total=len(items), what="tensors")
        out = []
        with bar, ThreadPoolExecutor(max_workers=self.workers) as pool:
            for r in pool.map(fn, items):
                out.append(r)
                bar.update(job, advance=1)
        return out


def input_moments(ctx, cal, ids, names) -> tuple[dict, dict]:
    """({tensor name: E[x_j^2]}, the header's `input_moments` record) over the calibration tokens `ids` (the
    first CONVERT_RESCALE_TOKENS of the text when None), computed once per sweep. Where transformers cannot load
    the fine-tune, or no text tokenizes, nothing (the planner then offers no seeded_rans_split candidate)."""
    from . import moments
    hit = ctx.cache.get("moments")
    if hit is not None:
        return hit
    try:
        why = rescale.memory_shortfall(4 * sum(t.numel for t in ctx.tasks))  # it loads the fine-tune in float32
        if why is not None:
            raise UsageError(why, field="calib")
        if ids is None:
            ids = groupsize.calibration_ids(cal, ctx.ft, ctx.base, CONVERT_RESCALE_TOKENS, "--target-ratio")
        ids = ids[:CONVERT_RESCALE_TOKENS]
        m = moments.collect(ctx.ft.folder, ids, names)
        out = (m, {"tokens": int(len(ids)), "tensors": len(m)})
    except UsageError as e:
        ctx.console.print(f"[yellow]warning: no seeded_rans_split candidates (input moments: {e})[/]")
        out = ({}, {"skipped": str(e)})
    ctx.cache["moments"] = out
    return out


def small(name, delta):
    """Every planned method: a 1-D delta as dense_q codes, as the default conversion stores it."""
    return KIND_DENSE, budget.encode(budget.Config("dense_q", bits=CONVERT_DENSE_1D_BITS), delta, 0)


def header_records(ctx, record: dict) -> tuple[dict, list[dict]]:
    """The header's top-level records (this algorithm `record` included; metadata and base at their typical
    size) and the entries without data (same/tied/removed), as the file will hold them, for size estimates."""
    from ..spec import ENTRY_PLACEHOLDER_MAX as BIG
    files = [{"name": n, "offset": BIG, "length": len(d), "crc32": BIG} for n, d in ctx.ft.aux_files().items()]
    top = {"alignment": 64, "checksum": "crc32", "metadata": {"producer": "ddq convert", "finetuned": "x" * 40},
           "base": {"architecture": "x" * 24, "model_type": "x" * 12, "num_tensors": len(ctx.tasks), "dtype": "F32",
                    "fingerprint_scheme": "sample4096-crc32", "name": "x" * 40},
           "algorithm": record, "files": files}
    other = [{"name": t.name, "kind": t.kind, "shape": list(t.shape), "dtype": t.dtype,
              "base": {"shape": list(t.shape), "dtype": t.dtype, "fingerprint": "x" * 25},
              **({"tied_to": t.tied_to} if t.tied_to else {})} for t in ctx.tasks
             if t.kind not in (KIND_COMPRESSED, KIND_DENSE)]
    return top, other


def fixed_overhead(ctx, record: dict, share: float = 1.0, alignment: int = ALIGNMENT) -> int:
    """Bytes the tensors take outside their own entries: preamble and footer, the header's top-level records
    and the entries without data (header_records; at `share` of their msgpack size in a 2.x file, whose header
    is compressed), and the data section's last padding."""
    import msgpack
    top, other = header_records(ctx, record)
    plain = len(msgpack.packb(dict(top, tensors=[]), use_bin_type=True)) + sum(map(len, map(msgpack.packb, other)))
    return 64 + 32 + alignment - 1 + math.ceil(share * plain)


# -- --target-ratio: the budget allocator ------------------------------------------------------------------------
DROPOUT = ("rans", "sign", "split")  # the configuration families behind group-wise dropout (the rescale's entries)


def plan_budget(ctx, ratio: float, trials: int, objective: str = "snr", rescale_ids=None, skipped=None,
                major: int = FORMAT_MAJOR, moments_record: dict | None = None):
    """rescale_ids: calibration token ids for the rescale (None: no rescale; `skipped` says why, if it was
    wanted). major: the file's format major version (2: the header's bytes are charged compressed)."""
    total_budget = ctx.all_fp16() / ratio
    ctx.console.print(f"--target-ratio {ratio:g}: {total_budget:,.0f} bytes for every tensor "
                      f"({ctx.all_fp16():,} fp16 delta bytes)")

    def options_of(task):
        d = ctx.delta(task.name)
        bind = ctx.binding(task.name)
        st = ctx.stats.get(task.name)
        rows = budget.sample_rows(d.shape[0]) if d.ndim == 2 else None
        emb = task.name.endswith(EMBEDDINGS)
        opts = []
        ref = st.project(d[rows]) if st is not None and d.ndim == 2 else None
        m = moments_of(ctx, task.name)
        for cfg in budget.grid(d.shape, task.name, emb, split=m is not None):
            o, _ = budget.score(task.name, d, task.dtype, bind, cfg, tensor_seed(ctx.seed, task.name), st, rows, ref,
                                m)
            opts.append(o)
        if m is not None:
            opts = budget.price_split(opts)
        return task.name, opts

    t0 = time.perf_counter()
    cached = ("options", ctx.stats is NO_STATS, bool(ctx.moments))  # with or without the calibration metric, split
    options = ctx.cache.get(cached)
    if options is None:
        options = dict(ctx.map(options_of, ctx.data_tasks(), "scoring candidates"))
        ctx.cache[cached] = options
        ctx.console.print(f"  scored {sum(map(len, options.values()))} candidates of {len(options)} tensors "
                          f"({time.perf_counter() - t0:.1f} s)")
    scored = options
    seeds = ctx.cache.setdefault("seeds", {})
    data_names = [t.name for t in ctx.data_tasks()]
    record = {"method": "deltadq", "planner": "budget", "encoding": "per tensor",
              "objective": objective, "cost": "snr: sum numel * N/(g^2 S) element-wise; calibrated: the same on the calibration "
                      "activations; fisher: sum N/g^2 (Fisher-weighted); shrink: sum numel * rel/(1+rel), deltas "
                      "stored scaled by C/Q",
              "budget_bytes": int(total_budget), "seed": int(ctx.seed), "seed_trials": int(trials),
              "configs": sorted({o.cfg.label() for opts in options.values() for o in opts}),
              "choice": [0] * len(data_names)}  # choice[i]: index in configs of the i-th entry with data
    if moments_record is not None:
        record["input_moments"] = moments_record
    roles = sorted({rescale.role(t.name) for t in ctx.data_tasks() if len(t.shape) == 2})
    if rescale_ids is not None or skipped:
        record["rescale"] = rescale.placeholder(roles) if rescale_ids is not None else {"skipped": skipped}
    choice, configs, avail = allocate_file(ctx, scored, record, total_budget, ratio, objective, major)
    if sum(o.bytes for o in choice.values()) > avail:
        ctx.console.print(f"[yellow]warning: even the smallest configuration of every tensor exceeds the budget; "
                          f"the file will be larger than --target-ratio {ratio:g} asks[/]")
    planned_bytes = sum(o.bytes for o in choice.values())
    ctx.console.print(f"  allocated {planned_bytes:,} bytes of {avail:,.0f}; "
                      + ", ".join(f"{c.label()}: {sum(o.cfg == c for o in choice.values())}" for c in configs))

    def searched(name, delta):
        """(seed, its Option, its encoding or None) of the chosen configuration, after the seed search of
        --seed-trials (remembered across a sweep's conversions)."""
        cfg = choice[name].cfg
        if cfg.family not in DROPOUT or trials <= 1:
            return tensor_seed(ctx.seed, name), choice[name], None
        if (name, cfg, trials, objective) in seeds:
            return (*seeds[name, cfg, trials, objective], None)
        st = ctx.stats.get(name)
        rows = budget.sample_rows(delta.shape[0])
        ref = st.project(delta[rows]) if st is not None else None
        best = None
        for i in range(trials):
            s = trial_seed(ctx.seed, name, i)
            o, enc = budget.score(name, delta, ctx.ft.tensors[name].dtype, None, cfg, s, st, rows, ref,
                                  moments_of(ctx, name))
            if best is None or o.cost(objective) < best[0]:
                best = (o.cost(objective), enc, s, o)
        seeds[name, cfg, trials, objective] = best[2], best[3]
        return best[2], best[3], best[1]

    if rescale_ids is not None:
        record["rescale"] = run_rescale(ctx, choice, searched, rescale_ids, "roles" in record["rescale"])

    def scale_of(name, o) -> float:
        """What the entry stores times its delta: the shrink objective's C/Q, the rescale's t, or 1."""
        if objective == "shrink":
            return o.shrink
        cfg, c = choice[name].cfg, rescale.c_for(record.get("rescale"), name)
        return rescale.factor(noise_alpha(choice[name]), c) if c > 0 and cfg.family in DROPOUT else 1.0

    def hook(name, delta):
        cfg = choice[name].cfg
        s, o, enc = searched(name, delta)
        t = scale_of(name, o)
        if enc is not None and t == 1.0:
            return cfg.kind, enc
        return cfg.kind, budget.encode(cfg, delta * np.float32(t) if t != 1.0 else delta, s, moments_of(ctx, name))

    return hook, record


def allocate_file(ctx, scored, record, total_budget, ratio, objective, major):
    """(choice, configs chosen, bytes available to the entries): the allocation of `scored` (every tensor's
    candidates) under the whole file's budget. The record lists the configurations chosen: size it, then
    allocate again. In a 2.x file the header is compressed: its share of the msgpack bytes is measured on the
    entries last chosen (first every tensor's smallest) and the buffers are aligned to 16."""
    data_names = [t.name for t in ctx.data_tasks()]
    share, choice, align = 1.0, None, min_alignment(major)
    for _ in range(2 if major == FORMAT_MAJOR else 3):
        full = dict(record, **calibration_record(ctx.stats), target_ratio=ratio)
        if major != FORMAT_MAJOR:
            top, other = header_records(ctx, full)
            chosen = choice or {n: min(opts, key=lambda o: o.bytes) for n, opts in scored.items()}
            share = budget.header_share(top, [chosen[n].entry for n in data_names] + other)
            record["header_share"] = round(share, 6)  # what the allocation charged each msgpack byte
        avail = total_budget - fixed_overhead(ctx, full, share, align)
        options = budget.one_d({n: budget.within_fp16(opts, 2 * opts[0].numel)
                                for n, opts in budget.priced(scored, share, align).items()}, total_budget,
                               room=avail)
        options = budget.split_instead(options, avail)
        choice = budget.allocate(options, avail, objective)
        configs = sorted({o.cfg for o in choice.values()}, key=lambda c: c.label())
        record["configs"] = [c.label() for c in configs]
        index = {c: i for i, c in enumerate(configs)}
        record["choice"] = [index[choice[n].cfg] for n in data_names]
    return choice, configs, avail


def moments_of(ctx, name):
    """The input moments the planner prices `name` with (none for embeddings: a lookup has no input columns)."""
    if name.endswith(EMBEDDINGS):
        return None
    return ctx.moments.get(name)


def noise_alpha(o) -> float:
    """The alpha of the rescale's rule t = 1 / (1 + c (alpha - 1)) for a dropout entry: its alpha, and for
    seeded_rans_split (two alphas) 1 + its priced noise-to-signal ratio, which is alpha - 1 for one alpha."""
    return 1.0 + o.rel if o.cfg.family == "split" else o.cfg.alpha


def run_rescale(ctx, choice, searched, ids, per_role: bool) -> dict:
    """The header's rescale record (rescale.c_for reads it): rescale.search over the decoded deltas. A model
    transformers cannot load, or too little memory for it in float32, skips it (with a warning)."""
    dropout = {n: noise_alpha(o) for n, o in choice.items() if o.cfg.family in DROPOUT and o.cfg.alpha > 1}
    if not dropout:
        return {"skipped": "no dropout entry chosen"}
    why = rescale.memory_shortfall(4 * sum(t.numel for t in ctx.tasks))
    if why is None:
        try:
            return rescale.search(ctx.base.folder, ctx.ft.folder, ids, decoded_deltas(ctx, choice, searched, dropout),
                                  dropout, ctx.console, ctx.cache, per_role)
        except UsageError as e:
            why = str(e)
    ctx.console.print(f"[yellow]warning: rescale skipped (dropout entries keep the scale alpha): {why}[/]")
    return {"skipped": why}


def decoded_deltas(ctx, choice, searched, dropout) -> dict:
    """Every chosen entry encoded and decoded as the file will hold it; the dropout ones as rescale.kept."""
    def decoded(task):
        delta = ctx.delta(task.name)
        s, _, enc = searched(task.name, delta)
        cfg = choice[task.name].cfg
        enc = enc or budget.encode(cfg, delta, s, moments_of(ctx, task.name))
        entry, bufs = budget.as_entry(task.name, delta.shape, task.dtype, cfg.kind, enc)
        d = budget.decode(entry, bufs)
        return task.name, rescale.kept(d) if task.name in dropout else d

    return dict(ctx.map(decoded, ctx.data_tasks(), "rescale: decoding"))


# -- Delta-CoMe / DeltaMix ---------------------------------------------------------------------------------------
def plan_deltacome(ctx, ratio: float, allocation: str):
    from . import deltacome
    big = [t for t in ctx.tasks if t.kind == KIND_COMPRESSED]
    dense = [t for t in ctx.tasks if t.kind == KIND_DENSE]
    # one per-matrix ratio r for every compressed tensor so that the whole file lands on `ratio`
    record = {"method": "deltacome", "allocation": allocation, "matrix_ratio": 0.0, "group_size": deltacome.GROUP,
              "quantizer": "GPTQ, asymmetric, groups of 128 per singular vector, 1% damping"}
    fixed = fixed_overhead(ctx, record) + sum(t.numel + 300 for t in dense) + 400 * len(big)
    room = ctx.all_fp16() / ratio - fixed
    if room <= 0:
        raise UsageError(f"--target-ratio {ratio:g} leaves no bytes for the compressed tensors", field="target_ratio")
    r = sum(2 * t.numel for t in big) / room

    def hook(name, delta):
        if delta.ndim != 2:
            return small(name, delta)
        st = ctx.stats.get(name)
        return KIND_COMPRESSED, deltacome.compress(delta, r, st.hessian() if st else None, allocation=allocation)

    record["matrix_ratio"] = r
    return hook, record


# -- DeltaZip ----------------------------------------------------------------------------------------------------
def plan_deltazip(ctx, ratio, options):
    from . import deltazip
    n, m, bits = options.get("nm") or deltazip.PAPER
    if ratio is not None:  # the sparsest ladder step whose codes reach the ratio
        per_el = [(nn * (bb + (mm - 1).bit_length()) / mm, (nn, mm, bb)) for nn, mm, bb in DZ_LADDER]
        need = 16 / ratio
        fits = [c for bpe, c in per_el if bpe <= need]
        n, m, bits = fits[0] if fits else DZ_LADDER[-1]

    def hook(name, delta):
        if delta.ndim != 2:
            return small(name, delta)
        st = ctx.stats.get(name)
        mm = min(m, delta.shape[1])
        return KIND_COMPRESSED, deltazip.compress(delta, st.hessian() if st else None, n=min(n, mm), m=mm, bits=bits)

    return hook, {"method": "deltazip", "n": n, "m": m, "bits": bits, "damp": 0.01,
                  "procedure": "SparseGPT n:m OBS pruning fused with GPTQ rounding, per-row symmetric grid"}
