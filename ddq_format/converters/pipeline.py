"""convert(base, finetuned, out, **options): the whole conversion, streaming, tensor by tensor.

Order of work: open both checkpoints (headers only) -> validate every option and plan every tensor (errors
here, before any heavy work) -> group-size search -> write auxiliary files, then tensors in a fixed order
(natural sort of names), computed by `workers` threads under a memory budget, written in order.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..binding import binding
from .. import encodings
from ..encodings import raw
from ..errors import UsageError
from ..spec import (CONVERT_CALIB_MAX_TOKENS, CONVERT_FALLBACK_GROUP_SIZE, CONVERT_RATIO_PRESETS,
                    CONVERT_SEED_DERIVATION, FINGERPRINT_SCHEME, KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED,
                    KIND_REPLACE, KIND_SAME, KIND_TIED, MAX_ALPHA, align_up)
from . import groupsize, seed_search
from .checkpoint import Checkpoint, to_f32
from .methods import DEFAULT_ALPHA, DEFAULT_RANK, ENCODINGS, METHODS, Options, compress, tensor_group_size
from .resume import ResumableWriter
from .seeds import tensor_seed

EMBEDDING_PATTERNS = ("embed_tokens", "wte", "wpe", "lm_head", "embed_out", "word_embeddings",
                      "position_embeddings", "embed_positions")
EMBEDDINGS_MODES = ("dense", "compressed")
# Memory budget per tensor in flight, in multiples of its float32 size (measured: see bench_convert.py).
COST = {KIND_COMPRESSED: 2.5, KIND_DENSE: 2.0, KIND_REPLACE: 1.0, KIND_SAME: 1.0, KIND_REMOVED: 0.5, KIND_TIED: 0}
BUDGET_FACTOR = 3.0


@dataclass
class Task:
    name: str
    kind: str
    shape: tuple
    dtype: str  # the fine-tune's (the base's for `removed`)
    tied_to: str | None = None
    numel: int = 0


@dataclass
class Result:
    name: str
    kind: str
    shape: tuple
    dtype: str
    encoded: object = None
    base: dict | None = None
    tied_to: str | None = None
    group_size: int | None = None


@dataclass
class Summary:
    out: str
    method: str
    alpha: int
    bits: int
    parts: int
    encoding: str
    group_size: int | None
    group_size_search: dict | None
    nominal_ratio: float
    true_ratio_compressed: float
    true_ratio_file: float
    compressed_fp16_bytes: int
    compressed_stored_bytes: int
    file_bytes: int
    kinds: dict = field(default_factory=dict)
    seconds: float = 0.0
    search_seconds: float = 0.0
    resumed_tensors: int = 0
    seed_trials: int = 1
    seed_search_seconds: float = 0.0  # calibration forward pass (trials themselves run inside the tensor work)

    def as_dict(self):
        return asdict(self)


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_embedding(name: str) -> bool:
    return any(p in name for p in EMBEDDING_PATTERNS)


def resolve_options(*, method, alpha, bits, parts, encoding, ratio, group_size, workers, embeddings, rank,
                    seed, note) -> tuple[Options, object]:
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; one of {', '.join(METHODS)}", field="method")
    if encoding not in ENCODINGS:
        raise UsageError(f"unknown encoding {encoding!r}; one of {', '.join(ENCODINGS)}", field="encoding")
    if embeddings not in EMBEDDINGS_MODES:
        raise UsageError(f"unknown embeddings mode {embeddings!r}; one of {EMBEDDINGS_MODES}", field="embeddings")
    if ratio is not None:
        if method != "deltadq":
            raise UsageError("--ratio picks DeltaDQ recipes; use it with --method deltadq", field="ratio")
        if ratio not in CONVERT_RATIO_PRESETS:
            raise UsageError(f"no preset for ratio {ratio}; presets: {sorted(CONVERT_RATIO_PRESETS)}", field="ratio")
        if any(v is not None for v in (alpha, bits, parts)):
            raise UsageError("--ratio sets alpha, bits and parts; do not pass them too", field="ratio")
        alpha, bits, parts = CONVERT_RATIO_PRESETS[ratio]
        note(f"--ratio {ratio}: alpha={alpha}, k={bits} bits, m={parts} parts "
             f"(nominal {16 * alpha / (bits - (parts.bit_length() - 1)):g}x)")
    alpha = DEFAULT_ALPHA[method] if alpha is None else alpha
    bits = 4 if bits is None else bits
    parts = 1 if parts is None else parts
    if not isinstance(alpha, int) or not 1 <= alpha <= MAX_ALPHA:
        raise UsageError(f"alpha must be an integer in 1..{MAX_ALPHA}, got {alpha}", field="alpha")
    if method == "deltadq" and alpha < 1:
        raise UsageError("alpha must be >= 1", field="alpha")
    if not 1 <= bits <= 8:
        raise UsageError(f"bits k={bits} outside 1..8", field="bits")
    if parts < 1 or parts & (parts - 1) or parts > (1 << bits):
        raise UsageError(f"parts m={parts} must be a power of two in 1..2^k={1 << bits}", field="parts")
    if method == "deltadq" and not encodings.get(encoding).separate_parts and parts != 1:
        note(f"--encoding {encoding} stores whole k-bit codes: parts m={parts} does not apply (m=1)")
        parts = 1
    if method == "deltadq" and parts == (1 << bits):
        raise UsageError(f"parts m={parts} = 2^k leaves 0 bits per value; use m <= 2^(k-1)", field="parts")
    if rank is not None and rank < 1:
        raise UsageError("rank must be >= 1", field="rank")
    if workers < 1:
        raise UsageError("workers must be >= 1", field="workers")
    if not 0 <= seed < 2**63:
        raise UsageError("seed must be a non-negative 63-bit integer", field="seed")
    gs = group_size
    if isinstance(gs, str):
        if gs != "auto":
            try:
                gs = int(gs)
            except ValueError:
                raise UsageError(f"group size must be 'auto' or an integer, got {group_size!r}",
                                 field="group_size") from None
    if gs != "auto":
        if gs < 1 or gs % alpha:
            raise UsageError(f"group size {gs} is not a positive multiple of alpha {alpha}", field="group_size")
    opts = Options(method=method, alpha=alpha, bits=bits, parts=parts, encoding=encoding,
                   rank=rank or DEFAULT_RANK)
    return opts, gs


def plan(base: Checkpoint, ft: Checkpoint, opts: Options, embeddings: str) -> list[Task]:
    """Decide every tensor's kind from the headers (plus one comparison for tied lm_head); raise early."""
    tasks = []
    tie = bool(ft.config.get("tie_word_embeddings", ft.config.get("model_type") == "gpt2"))
    names = sorted(set(ft.tensors) | set(base.tensors), key=natural_key)
    bad = [n for n in names if (ft.tensors.get(n) or base.tensors[n]).dtype not in ("F32", "F16", "BF16")]
    if bad:
        i = ft.tensors.get(bad[0]) or base.tensors[bad[0]]
        raise UsageError(f"dtype {i.dtype} is not supported (F32, F16, BF16); {len(bad)} such tensor(s)",
                         path=i.source, tensor=bad[0], field="dtype")
    embed = next((n for n in ft.tensors if n.endswith(("embed_tokens.weight", "wte.weight"))), None)
    for n in names:
        f, b = ft.tensors.get(n), base.tensors.get(n)
        if f is None:
            tasks.append(Task(n, KIND_REMOVED, b.shape, b.dtype, numel=math.prod(b.shape)))
            continue
        numel = math.prod(f.shape)
        if b is None:
            tasks.append(Task(n, KIND_REPLACE, f.shape, f.dtype, numel=numel))
            continue
        linear = len(f.shape) == 2 and n.endswith(".weight") and "norm" not in n
        emb = is_embedding(n)
        if f.shape != b.shape:
            if linear and not emb:
                raise UsageError(f"linear layer shape differs: base {list(b.shape)}, fine-tune {list(f.shape)}",
                                 path=f.source, tensor=n, field="shape")
            tasks.append(Task(n, KIND_REPLACE, f.shape, f.dtype, numel=numel))
            continue
        if tie and embed and n != embed and n.endswith("lm_head.weight") and ft.tensors[embed].shape == f.shape \
                and ft.tensors[embed].dtype == f.dtype and np.array_equal(ft.read(n), ft.read(embed)):
            tasks.append(Task(n, KIND_TIED, f.shape, f.dtype, tied_to=embed, numel=numel))
            continue
        compressed = linear and (not emb or embeddings == "compressed") and min(f.shape) > 0
        if compressed and opts.method == "deltadq" or compressed and opts.method == "bitdelta" and opts.alpha > 1:
            compressed = f.shape[1] >= opts.alpha
        tasks.append(Task(n, KIND_COMPRESSED if compressed else KIND_DENSE, f.shape, f.dtype, numel=numel))
    return tasks


def _process(task: Task, base: Checkpoint, ft: Checkpoint, opts: Options, group_size, seed: int,
             choose_seed=None) -> Result:
    n = task.name
    if task.kind == KIND_TIED:
        return Result(n, KIND_TIED, task.shape, task.dtype, tied_to=task.tied_to)
    if task.kind == KIND_REMOVED:
        bb = base.read(n)
        return Result(n, KIND_REMOVED, task.shape, task.dtype, base=binding(bb, task.shape, task.dtype))
    fb = ft.read(n)
    bind = None
    if n in base.tensors:
        bi = base.tensors[n]
        bb = base.read(n)
        bind = binding(bb, bi.shape, bi.dtype)
    if task.kind == KIND_REPLACE:
        arr = fb.view(np.float16) if task.dtype == "F16" else fb
        return Result(n, KIND_REPLACE, task.shape, task.dtype, raw.encode(arr, task.dtype), base=bind)
    if base.tensors[n].dtype == task.dtype and _equal(fb, bb):
        return Result(n, KIND_SAME, task.shape, task.dtype, base=bind)
    gt = None
    if task.kind == KIND_COMPRESSED and opts.uses_groups:
        gt = tensor_group_size(group_size, task.shape[1], opts.alpha)
    if task.kind == KIND_DENSE or opts.uses_groups and gt is None:
        delta = delta_blocks(fb, task.dtype, bb, base.tensors[n].dtype, task.dtype)
        return Result(n, KIND_DENSE, task.shape, task.dtype, raw.encode(delta, task.dtype), base=bind)
    arrays = [fb, bb]
    del fb, bb  # from here the list holds the only references: the delta replaces them, then compress frees it
    arrays = [_delta_from(arrays, task.dtype, base.tensors[n].dtype)]  # still the only reference, for compress
    s = tensor_seed(seed, n) if choose_seed is None else choose_seed(n, arrays[0], gt)
    enc = compress(arrays.pop(), opts, s, gt)
    return Result(n, KIND_COMPRESSED, task.shape, task.dtype, enc, base=bind, group_size=gt)


def _delta_from(arrays: list, fdtype: str, bdtype: str) -> np.ndarray:
    """Pops [fine-tune bits, base bits] and returns the float32 delta (in place over the fine-tune when F32)."""
    bb, fb = arrays.pop(), arrays.pop()
    if fdtype == "F32" and fb.flags.writeable:
        fb -= to_f32(bb, bdtype)
        return fb
    return delta_blocks(fb, fdtype, bb, bdtype, "F32")


def _equal(a: np.ndarray, b: np.ndarray, block=1 << 22) -> bool:
    """Bitwise equality without a full-size boolean temporary."""
    a, b = a.reshape(-1), b.reshape(-1)
    return a.size == b.size and all(np.array_equal(a[i:i + block], b[i:i + block]) for i in range(0, a.size, block))


def delta_blocks(fb, fdtype, bb, bdtype, out_dtype, block=1 << 20):
    """fine-tune - base in float32, stored as out_dtype (F32 float32, F16 float16, BF16 uint16 bit patterns),
    computed in blocks of `block` elements: no full-size float32 temporaries, cache-sized passes."""
    from ..encodings.raw import to_bf16_bits
    f, b = fb.reshape(-1), bb.reshape(-1)
    out = np.empty(f.size, {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[out_dtype])
    for i in range(0, f.size, block):
        d = to_f32(f[i:i + block], fdtype) - to_f32(b[i:i + block], bdtype)
        out[i:i + block] = to_bf16_bits(d) if out_dtype == "BF16" else d
    return out.reshape(fb.shape)


def _run_key(base: Checkpoint, ft: Checkpoint, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for ck in (base, ft):
        for name, info in sorted(ck.tensors.items()):
            h.update(f"{name}|{info.shape}|{info.dtype}|{info.nbytes}".encode())
        for src in sorted({i.source for i in ck.tensors.values()}):
            st = Path(src).stat()
            h.update(f"{Path(src).name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _stored_bytes(entry: dict) -> int:
    return sum(align_up(b["length"]) for b in entry.get("buffers", {}).values())


def convert(base, finetuned, out, *, method: str = "deltadq", alpha: int | None = None, bits: int | None = None,
            parts: int | None = None, group_size="auto", encoding: str = "csr_parts", seed: int = 0,
            calib=None, ratio: int | None = None, workers: int = 1, resume: bool = False,
            embeddings: str = "dense", rank: int | None = None, progress: bool = True, console=None,
            quiet: bool = False, seed_trials: int = 1, print_summary: bool = True) -> Summary:
    """Convert a fine-tune against its base into a .ddq file at `out`; returns the Summary (also printed).

    base, finetuned: local HF folders or model ids in the local HF cache. Options as in `ddq convert`.
    print_summary=False: return the Summary without printing its table (the CLI prints its own).
    """
    t_start = time.perf_counter()
    if console is None:
        from rich.console import Console
        console = Console(stderr=True, quiet=quiet)
    note = console.print
    out = Path(out)
    if out.exists() and out.is_dir():
        raise UsageError("output is a folder; give a file name", path=out)
    if not out.parent.exists():
        raise UsageError("output folder does not exist", path=out.parent)
    opts, gs = resolve_options(method=method, alpha=alpha, bits=bits, parts=parts, encoding=encoding,
                               ratio=ratio, group_size=group_size, workers=workers, embeddings=embeddings,
                               rank=rank, seed=seed, note=note)
    calib_text = groupsize.DEFAULT_CALIB_TEXT
    if calib is not None:
        try:
            calib_text = Path(calib).read_text()
        except OSError as e:
            raise UsageError(f"cannot read calibration text: {e.strerror}", path=calib, field="calib") from None
        if not calib_text.strip():
            raise UsageError("calibration text is empty", path=calib, field="calib")
    if not isinstance(seed_trials, int) or seed_trials < 1:
        raise UsageError(f"--seed-trials must be an integer >= 1, got {seed_trials!r}", field="seed_trials")
    if seed_trials > 1 and not opts.uses_groups:
        raise UsageError("--seed-trials chooses group-wise dropout seeds: it applies to --method deltadq and "
                         "to bitdelta with --alpha > 1", field="seed_trials")
    base_ck, ft_ck = Checkpoint(base), Checkpoint(finetuned)
    tasks = plan(base_ck, ft_ck, opts, embeddings)

    settings = {"options": asdict(opts), "group_size": gs, "seed": seed, "embeddings": embeddings,
                "calib": hashlib.sha256(calib_text.encode()).hexdigest()}
    if seed_trials > 1:  # only then: N = 1 keeps today's run key (and bytes)
        settings["seed_trials"] = seed_trials
    run_key = _run_key(base_ck, ft_ck, settings)
    recorded = ResumableWriter.recorded_start(out, run_key) if resume else None
    if resume and recorded is None:
        note("[yellow]--resume: no matching partial run found; starting from the beginning[/]")

    # -- group size -------------------------------------------------------------------------------------
    search_rec, chosen, search_seconds = None, None, 0.0
    if recorded is not None:
        algorithm, base_rec = recorded["algorithm"], recorded["base"]
        chosen = algorithm.get("group_size")
        search_rec = algorithm.get("group_size_search")
    else:
        if opts.uses_groups:
            if gs != "auto":
                chosen = gs
            else:
                adapter = groupsize.adapter_for(ft_ck.config, ft_ck.tensors)
                if adapter is None or adapter.compressed_names[0] not in base_ck.tensors:
                    chosen = max(opts.alpha, CONVERT_FALLBACK_GROUP_SIZE // opts.alpha * opts.alpha)
                    note(f"[yellow]warning: no group-size adapter for model_type "
                         f"{ft_ck.config.get('model_type')!r}; using the fixed h_g = {chosen}[/]")
                    search_rec = {"proxy": None, "fallback": True, "chosen": chosen,
                                  "reason": f"no adapter for model_type {ft_ck.config.get('model_type')!r}"}
                else:
                    ids = groupsize.tokenize(ft_ck.folder, calib_text, CONVERT_CALIB_MAX_TOKENS)
                    note(f"group-size search on layer 0 ({', '.join(adapter.compressed_names)}), "
                         f"{len(ids)} calibration tokens")
                    res = groupsize.search(adapter, base_ck, ft_ck, ids, opts, lambda n: tensor_seed(seed, n),
                                           report=lambda g, e: note(f"  h_g = {g:>6}: proxy error {e:.6g}"))
                    chosen, search_rec, search_seconds = res.chosen, res.record(), res.seconds
                    note(f"  chosen h_g = {chosen} ({res.seconds:.2f} s)")
        algorithm = {"method": opts.method, "alpha": opts.alpha, "bits": opts.bits, "parts": opts.parts,
                     "encoding": opts.encoding, "group_size": chosen, "seed": int(seed),
                     "seed_derivation": CONVERT_SEED_DERIVATION, "embeddings": embeddings,
                     "nominal_ratio": opts.nominal_ratio()}
        if opts.method == "lowrank":
            algorithm["rank"] = opts.rank
        if search_rec is not None:
            algorithm["group_size_search"] = search_rec
        base_rec = {"architecture": (base_ck.config.get("architectures") or [None])[0],
                    "model_type": base_ck.config.get("model_type"), "num_tensors": len(base_ck.tensors),
                    "dtype": _main_dtype(base_ck), "fingerprint_scheme": FINGERPRINT_SCHEME}
        if base_ck.config.get("_name_or_path"):  # no local paths: the same inputs give the same bytes anywhere
            base_rec["name"] = base_ck.config["_name_or_path"]
    if algorithm.get("nominal_ratio") is not None and isinstance(algorithm["nominal_ratio"], float) \
            and math.isnan(algorithm["nominal_ratio"]):
        algorithm["nominal_ratio"] = None

    choose_seed, cal_seconds = None, 0.0
    if seed_trials > 1:
        searched = [t.name for t in tasks if t.kind == KIND_COMPRESSED]
        ids = groupsize.tokenize(ft_ck.folder, calib_text, CONVERT_CALIB_MAX_TOKENS)
        note(f"seed search: {seed_trials} seeds per tensor, layer-output error on {len(ids)} calibration tokens "
             f"(loading the fine-tune with transformers)")
        cal = seed_search.calibrate(ft_ck.folder, ids, searched)
        cal_seconds = cal.seconds
        if recorded is None:
            algorithm["seed_trials"] = seed_trials
            algorithm["seed_search"] = cal.record(searched)

        def choose_seed(name, delta, gt):
            return seed_search.choose(cal, name, delta, opts, seed, gt, seed_trials)[0]

    metadata = {"producer": "ddq convert"}
    if ft_ck.config.get("_name_or_path"):
        metadata["finetuned"] = str(ft_ck.config["_name_or_path"])
    writer = ResumableWriter(out, run_key=run_key, metadata=metadata, base=base_rec, algorithm=algorithm,
                             resume=recorded is not None)
    resumed = len(writer.done)
    try:
        have = {f["name"] for f in writer.header["files"]}
        for fname, data in ft_ck.aux_files().items():  # first, and in a fixed order: a resume adds the rest
            if fname not in have:
                writer.add_file(fname, data)
        todo = [t for t in tasks if t.name not in set(writer.done)]
        _write_all(writer, todo, base_ck, ft_ck, opts, chosen, seed, workers, progress, console, len(tasks),
                   choose_seed)
        writer.close()
    except BaseException:
        writer.abort()  # OUT.partial and the journal stay for --resume
        raise

    entries = writer.header["tensors"]
    comp = [e for e in entries if e["kind"] == KIND_COMPRESSED]
    fp16 = sum(2 * math.prod(e["shape"]) for e in comp)
    stored = sum(_stored_bytes(e) for e in comp)
    all_fp16 = sum(2 * math.prod(e["shape"]) for e in entries if e["kind"] not in (KIND_REMOVED, KIND_TIED))
    file_bytes = out.stat().st_size
    kinds = {}
    for e in entries:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    result = Summary(str(out), opts.method, opts.alpha, opts.bits, opts.parts, opts.encoding, chosen, search_rec,
                      algorithm.get("nominal_ratio") or float("nan"), fp16 / stored if stored else float("nan"),
                      all_fp16 / file_bytes, fp16, stored, file_bytes, kinds, time.perf_counter() - t_start,
                      search_seconds, resumed, seed_trials, cal_seconds)
    if print_summary:
        _print_summary(console, result)
    return result


def _main_dtype(ck: Checkpoint) -> str | None:
    counts = {}
    for i in ck.tensors.values():
        counts[i.dtype] = counts.get(i.dtype, 0) + math.prod(i.shape)
    return max(counts, key=counts.get) if counts else None


def _write_all(writer, tasks, base_ck, ft_ck, opts, group_size, seed, workers, progress, console, total,
               choose_seed=None):
    largest = max((t.numel for t in tasks), default=0) * 4
    limit = max(BUDGET_FACTOR * largest, 1)
    used = 0
    pending: deque = deque()  # (task, future, cost) in write order

    def write_head():
        nonlocal used
        task, fut, cost = pending.popleft()
        r = fut.result()
        writer.add(r.name, r.kind, r.shape, r.dtype, r.encoded, base=r.base, tied_to=r.tied_to)
        used -= cost
        bar.update(job, advance=1, description=r.name)

    from ..progress import make_progress
    bar = make_progress(console, enabled=progress)
    job = bar.add_task("tensors", total=total, completed=total - len(tasks), what="tensors")
    with bar, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ddq-convert") as pool:
        for task in tasks:
            cost = COST[task.kind] * task.numel * 4
            while pending and (used + cost > limit or len(pending) >= 2 * workers):
                write_head()
            while pending and pending[0][1].done():
                write_head()
            used += cost
            pending.append((task, pool.submit(_process, task, base_ck, ft_ck, opts, group_size, seed, choose_seed),
                            cost))
        while pending:
            write_head()


def _print_summary(console, s: Summary):
    from rich.table import Table
    t = Table(title=f"ddq convert -> {s.out}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("method", f"{s.method} (alpha={s.alpha}, k={s.bits}, m={s.parts}, {s.encoding})"
              if s.method == "deltadq" else f"{s.method} (alpha={s.alpha})")
    t.add_row("group size h_g", "n/a" if s.group_size is None else str(s.group_size))
    t.add_row("nominal ratio", "n/a" if math.isnan(s.nominal_ratio) else f"{s.nominal_ratio:.1f}x")
    t.add_row("true ratio, compressed tensors", f"{s.true_ratio_compressed:.2f}x "
              f"({s.compressed_fp16_bytes:,} fp16 bytes -> {s.compressed_stored_bytes:,} bytes)")
    t.add_row("true ratio, whole file", f"{s.true_ratio_file:.2f}x ({s.file_bytes:,} bytes)")
    t.add_row("tensors", ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items())))
    t.add_row("time", f"{s.seconds:.2f} s (group-size search {s.search_seconds:.2f} s)"
              + (f", resumed after {s.resumed_tensors} tensors" if s.resumed_tensors else "")
              + (f", seed search x{s.seed_trials} (calibration {s.seed_search_seconds:.2f} s)"
                 if s.seed_trials > 1 else ""))
    console.print(t)
