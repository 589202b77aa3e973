"""convert(base, finetuned, out, **options): the whole conversion, streaming, tensor by tensor.

Stages, in order: options (options.py) -> open both checkpoints (headers only) and plan every tensor
(plan.py; errors here, before any heavy work) -> group-size search and the header's algorithm record (here)
-> per-tensor seed search when asked -> auxiliary files, then every tensor in a fixed order, computed by
`workers` threads (tensor_work.py) and written in order under a memory budget (write.py) -> summary
(summary.py).
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from ..errors import UsageError
from ..spec import (COMPACT_MAJOR, FORMAT_MAJOR, CONVERT_CALIB_MAX_TOKENS, CONVERT_FALLBACK_GROUP_SIZE, CONVERT_SEED_DERIVATION,
                    FINGERPRINT_SCHEME, KIND_COMPRESSED, KIND_REMOVED, KIND_TIED)
from . import finite, groupsize, seed_search
from .checkpoint import Checkpoint
from .methods import Options
from .options import calibration_input, check_seed_trials, resolve_options
from .options import settings as with_defaults
from .plan import plan
from .resume import OutputLock, ResumableWriter, partial_paths
from .seeds import tensor_seed
from . import summary as summary_stage
from .summary import Summary, stored_bytes
from .write import write_all


def convert(base, finetuned, out, *, method: str = "deltadq", alpha: int | None = None, bits: int | None = None,
            parts: int | None = None, group_size="auto", encoding: str | None = None, seed: int = 0,
            calib=None, ratio: int | None = None, workers: int = 1, resume: bool = False,
            embeddings: str | None = None, rank: int | None = None, progress: bool = True, console=None,
            quiet: bool = False, seed_trials: int = 1, print_summary: bool = True,
            base_digest: bool = False, target_ratio: float | None = None, method_options: dict | None = None,
            format_major: int | None = None, _encode_hook=None, _algorithm=None) -> Summary:
    """Convert a fine-tune against its base into a .ddq file at `out`; returns the Summary (also printed).

    base, finetuned: local HF folders or model ids in the local HF cache. Options as in `ddq convert`; what
    is not given comes from spec.CONVERT_DEFAULTS exactly as on the command line (options.settings).
    print_summary=False: return the Summary without printing its table (the CLI prints its own).
    base_digest=True: record a full SHA-256 of every bound base tensor (format 1.2), so `ddq verify --full
    --base` proves the base is bit-identical, not only that its sampled fingerprint matches.
    format_major: 1 (a plain msgpack header, format 1.x) or 2 (the header zlib-compressed, format 2.0); None:
    2 for deltadq's --target-ratio, where the header's bytes count against the budget, else 1.
    """
    from . import planned
    if format_major not in (None, FORMAT_MAJOR, COMPACT_MAJOR):
        raise UsageError(f"--format must be {FORMAT_MAJOR} or {COMPACT_MAJOR}, got {format_major!r}", field="format")
    if _encode_hook is None and (target_ratio is not None or method in planned.METHODS):
        return planned.convert(base, finetuned, out, method=method, target_ratio=target_ratio, calib=calib,
                               seed=seed, seed_trials=seed_trials, workers=workers, progress=progress,
                               console=console, quiet=quiet, print_summary=print_summary, resume=resume,
                               format_major=format_major, options=dict(method_options or {}, **{k: v for k, v in
                                            (("alpha", alpha), ("bits", bits), ("rank", rank)) if v is not None}))
    t_start = time.perf_counter()
    if console is None:
        from rich.console import Console
        console = Console(stderr=True, quiet=quiet)
    note = console.print
    out = _check_output(Path(out))
    s = with_defaults(method, alpha, bits, parts, encoding, ratio, embeddings, group_size)
    embeddings = s["embeddings"]
    opts, gs = resolve_options(method=method, alpha=s["alpha"], bits=s["bits"], parts=s["parts"],
                               encoding=s["encoding"], ratio=ratio, group_size=s["group_size"], workers=workers,
                               embeddings=embeddings, rank=rank, seed=seed, note=note)
    cal = calibration_input(calib)
    check_seed_trials(seed_trials, opts)
    base_ck, ft_ck = Checkpoint(base), Checkpoint(finetuned)
    tasks = plan(base_ck, ft_ck, opts, embeddings)
    finite.check_small(tasks, base_ck, ft_ck)  # NaN in a norm: refused before any heavy work

    settings = {"options": asdict(opts), "group_size": gs, "seed": seed, "embeddings": embeddings,
                "calib": hashlib.sha256(cal.text.encode()).hexdigest()}
    if seed_trials > 1:  # only then: N = 1 keeps today's run key (and bytes)
        settings["seed_trials"] = seed_trials
    if _algorithm is not None:  # a planned conversion (planned.py): its choices are part of the run
        from .planned import run_key
        settings["planned"] = run_key(_algorithm)
    if base_digest:  # likewise: absent keeps the run key of a file without digests
        settings["base_digest"] = True
    major = FORMAT_MAJOR if format_major is None else format_major
    if major != FORMAT_MAJOR:  # and a 1.x file's run key stays what it was
        settings["format_major"] = major
    run_key = _run_key(base_ck, ft_ck, settings)
    with OutputLock(out):  # from reading the journal to publishing OUT: one run per output
        recorded = ResumableWriter.recorded_start(out, run_key) if resume else None
        if resume and recorded is None:
            note("[yellow]--resume: no matching partial run found; starting from the beginning[/]")
        search_seconds = 0.0
        if recorded is not None:
            algorithm, base_rec = recorded["algorithm"], recorded["base"]
        else:
            chosen, search_rec, search_seconds = _group_size(opts, gs, base_ck, ft_ck, cal, seed, note)
            algorithm = _algorithm_record(opts, chosen, search_rec, seed, embeddings)
            if _algorithm is not None:  # a planned conversion records its own choices
                algorithm = dict(_algorithm)
            base_rec = _base_record(base_ck)
        chosen, search_rec = algorithm.get("group_size"), algorithm.get("group_size_search")
        choose_seed, cal_seconds = None, 0.0
        if seed_trials > 1:
            choose_seed, cal_seconds = _seed_chooser(tasks, base_ck, ft_ck, cal, opts, seed, seed_trials, note,
                                                     algorithm if recorded is None else None)
        ft_names, base_names = finite.checked_names(tasks, opts, chosen)
        write_tensors = functools.partial(
            write_all, base_ck=finite.FiniteReads(base_ck, base_names), ft_ck=finite.FiniteReads(ft_ck, ft_names),
            opts=opts, group_size=chosen, seed=seed, workers=workers, progress=progress, console=console,
            total=len(tasks), choose_seed=choose_seed, digest=base_digest, encode_hook=_encode_hook)
        writer = _write(out, run_key, ft_ck, base_rec, algorithm, recorded is not None, tasks, write_tensors,
                        major)
    result = _summarize(out, writer.header["tensors"], writer.alignment, opts, algorithm, chosen, search_rec,
                        time.perf_counter() - t_start, search_seconds, writer.resumed, seed_trials, cal_seconds)
    if print_summary:
        summary_stage.print_summary(console, result)
    return result


def _write(out, run_key, ft_ck, base_rec, algorithm, resumed: bool, tasks, write_tensors,
           major: int = FORMAT_MAJOR) -> ResumableWriter:
    """Auxiliary files, then every tensor not yet written (write_tensors(writer, todo)), into OUT.partial;
    published as OUT on success. On any failure OUT.partial and its journal stay for --resume; a full disk
    says so in one line."""
    metadata = {"producer": "ddq convert"}
    if ft_ck.config.get("_name_or_path"):
        metadata["finetuned"] = str(ft_ck.config["_name_or_path"])
    writer = None
    try:
        writer = ResumableWriter(out, run_key=run_key, metadata=metadata, base=base_rec, algorithm=algorithm,
                                 resume=resumed, major=major)
        have = {f["name"] for f in writer.header["files"]}
        for fname, data in ft_ck.aux_files().items():  # first, and in a fixed order: a resume adds the rest
            if fname not in have:
                writer.add_file(fname, data)
        done = set(writer.done)
        todo = [t for t in tasks if t.name not in done]
        write_tensors(writer, todo)
        writer.close()
    except OSError as e:
        if writer is not None:
            writer.abort()
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        done = len(writer.done) if writer is not None else 0
        raise UsageError(f"disk full ({e.strerror}) after {done} of {len(tasks)} tensors; the partial file is kept: "
                         f"free space and run the same command with --resume to continue from there",
                         path=partial_paths(out)[0]) from None
    except BaseException:
        if writer is not None:
            writer.abort()  # OUT.partial and the journal stay for --resume
        raise
    return writer


def _check_output(out: Path) -> Path:
    if out.exists() and out.is_dir():
        raise UsageError("output is a folder; give a file name", path=out)
    if not out.parent.exists():
        raise UsageError("output folder does not exist", path=out.parent)
    return out


def _group_size(opts: Options, gs, base_ck, ft_ck, cal, seed, note):
    """(h_g, its search record or None, search seconds): the fixed --group-size, the attention-error search on
    layer 0, or the fallback h_g for architectures without an adapter."""
    if not opts.uses_groups:
        return None, None, 0.0
    if gs != "auto":
        return gs, None, 0.0
    adapter = groupsize.adapter_for(ft_ck.config, ft_ck.tensors)
    if adapter is None or adapter.compressed_names[0] not in base_ck.tensors:
        chosen = max(opts.alpha, CONVERT_FALLBACK_GROUP_SIZE // opts.alpha * opts.alpha)
        note(f"[yellow]warning: no group-size adapter for model_type {ft_ck.config.get('model_type')!r}; "
             f"using the fixed h_g = {chosen}[/]")
        rec = {"proxy": None, "fallback": True, "chosen": chosen,
               "reason": f"no adapter for model_type {ft_ck.config.get('model_type')!r}"}
        return chosen, rec, 0.0
    ids = groupsize.calibration_ids(cal, ft_ck, base_ck, CONVERT_CALIB_MAX_TOKENS, "--group-size auto")
    note(f"group-size search on layer 0 ({', '.join(adapter.compressed_names)}), {len(ids)} calibration tokens")
    res = groupsize.search(adapter, base_ck, ft_ck, ids, opts, lambda n: tensor_seed(seed, n),
                           report=lambda g, e: note(f"  h_g = {g:>6}: proxy error {e:.6g}"))
    note(f"  chosen h_g = {res.chosen} ({res.seconds:.2f} s)")
    return res.chosen, res.record(), res.seconds


def _algorithm_record(opts: Options, chosen, search_rec, seed, embeddings) -> dict:
    nominal = opts.nominal_ratio()
    algorithm = {"method": opts.method, "alpha": opts.alpha, "bits": opts.bits, "parts": opts.parts,
                 "encoding": opts.encoding, "group_size": chosen, "seed": int(seed),
                 "seed_derivation": CONVERT_SEED_DERIVATION, "embeddings": embeddings,
                 "nominal_ratio": None if math.isnan(nominal) else nominal}
    if opts.method == "lowrank":
        algorithm["rank"] = opts.rank
    if search_rec is not None:
        algorithm["group_size_search"] = search_rec
    return algorithm


def _base_record(base_ck: Checkpoint) -> dict:
    rec = {"architecture": (base_ck.config.get("architectures") or [None])[0],
           "model_type": base_ck.config.get("model_type"), "num_tensors": len(base_ck.tensors),
           "dtype": _main_dtype(base_ck), "fingerprint_scheme": FINGERPRINT_SCHEME}
    if base_ck.config.get("_name_or_path"):  # no local paths: the same inputs give the same bytes anywhere
        rec["name"] = base_ck.config["_name_or_path"]
    return rec


def _seed_chooser(tasks, base_ck, ft_ck, cal, opts, seed, seed_trials, note, algorithm):
    """(choose_seed(name, delta, h_g) -> seed, calibration seconds); records the search in `algorithm` when
    given (a resumed run keeps the record it started with)."""
    searched = [t.name for t in tasks if t.kind == KIND_COMPRESSED]
    ids = groupsize.calibration_ids(cal, ft_ck, base_ck, CONVERT_CALIB_MAX_TOKENS, "--seed-trials")
    note(f"seed search: {seed_trials} seeds per tensor, layer-output error on {len(ids)} calibration tokens "
         f"(loading the fine-tune with transformers)")
    cal = seed_search.calibrate(ft_ck.folder, ids, searched)
    if algorithm is not None:
        algorithm["seed_trials"] = seed_trials
        algorithm["seed_search"] = cal.record(searched)

    def choose_seed(name, delta, gt):
        return seed_search.choose(cal, name, delta, opts, seed, gt, seed_trials)[0]

    return choose_seed, cal.seconds


def _summarize(out: Path, entries, alignment: int, opts: Options, algorithm, chosen, search_rec, seconds, search_seconds, resumed,
               seed_trials, cal_seconds) -> Summary:
    comp = [e for e in entries if e["kind"] == KIND_COMPRESSED]
    fp16 = sum(2 * math.prod(e["shape"]) for e in comp)
    stored = sum(stored_bytes(e, alignment) for e in comp)
    all_fp16 = sum(2 * math.prod(e["shape"]) for e in entries if e["kind"] not in (KIND_REMOVED, KIND_TIED))
    file_bytes = out.stat().st_size
    kinds = {}
    for e in entries:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    nominal = algorithm.get("nominal_ratio")
    return Summary(str(out), opts.method, opts.alpha, opts.bits, opts.parts, opts.encoding, chosen, search_rec,
                   float("nan") if nominal is None else nominal, fp16 / stored if stored else float("nan"),
                   all_fp16 / file_bytes, fp16, stored, file_bytes, kinds, seconds, search_seconds, resumed,
                   seed_trials, cal_seconds)


def _run_key(base: Checkpoint, ft: Checkpoint, settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for ck in (base, ft):
        for name, info in sorted(ck.tensors.items()):
            h.update(f"{name}|{info.shape}|{info.dtype}|{info.nbytes}".encode())
        for src in sorted({i.source for i in ck.tensors.values()}):
            st = Path(src).stat()
            h.update(f"{Path(src).name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _main_dtype(ck: Checkpoint) -> str | None:
    counts = {}
    for i in ck.tensors.values():
        counts[i.dtype] = counts.get(i.dtype, 0) + math.prod(i.shape)
    return max(counts, key=counts.get) if counts else None
