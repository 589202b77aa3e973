"""Options of a conversion: validated together, before any checkpoint is read."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import encodings
from ..errors import UsageError
from ..spec import CONVERT_DEFAULTS as D
from ..spec import CONVERT_RATIO_PRESETS, ENC_CSR_PARTS, MAX_ALPHA, MAX_BITS
from . import groupsize
from .methods import DEFAULT_ALPHA, DEFAULT_RANK, ENCODINGS, METHODS, Options

EMBEDDINGS_MODES = ("dense", "compressed")


def settings(method, alpha, bits, parts, encoding, ratio, embeddings, group_size) -> dict:
    """The options a conversion runs with, for the CLI and the API alike: the user's, then CONVERT_DEFAULTS. --ratio and --parts > 1 mean the
    paper's csr_parts layout (the only one with parts), unless --encoding says otherwise."""
    deltadq = method == "deltadq"
    if encoding is None:  # baselines have their own encodings; the record keeps the library default for them
        encoding = ENC_CSR_PARTS if not deltadq or ratio is not None or (parts or 1) > 1 else D["encoding"]
    s = {"method": method, "encoding": encoding, "embeddings": embeddings or D["embeddings"],
         "group_size": group_size or D["group_size"], "ratio": ratio, "alpha": alpha, "bits": bits, "parts": parts}
    if deltadq and ratio is None:  # other methods keep their own defaults (pipeline.DEFAULT_ALPHA)
        s.update(alpha=D["alpha"] if alpha is None else alpha, bits=D["bits"] if bits is None else bits,
                 parts=D["parts"] if parts is None else parts)
    return s


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
    if not 1 <= bits <= MAX_BITS:
        raise UsageError(f"bits k={bits} outside 1..{MAX_BITS}", field="bits")
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


@dataclass(frozen=True)
class Calibration:
    """--calib: `text` (what the run key hashes: the file's text, or the built-in text) and `ids`, the token
    ids when the file gives them (FILE.json holding a JSON list of ids), else None (the text is tokenized)."""
    text: str
    ids: np.ndarray | None = None
    path: str | None = None


def calibration_input(calib) -> Calibration:
    """The calibration of --calib: a text file, a .json file of token ids, or the built-in text."""
    if calib is None:
        return Calibration(groupsize.DEFAULT_CALIB_TEXT)
    try:
        text = Path(calib).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read calibration text: {getattr(e, 'strerror', None) or e}", path=calib,
                         field="calib") from None
    if not text.strip():
        raise UsageError("calibration text is empty", path=calib, field="calib")
    if Path(calib).suffix.lower() != ".json":
        return Calibration(text, None, str(calib))
    try:
        ids = json.loads(text)
    except ValueError as e:
        raise UsageError(f"a .json calibration file holds token ids, and this is not JSON: {e}", path=calib,
                         field="calib") from None
    if not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool)
                                                  and 0 <= i < 2**63 for i in ids)):
        raise UsageError("a .json calibration file must hold a non-empty JSON list of token ids (integers >= 0)",
                         path=calib, field="calib")
    return Calibration(text, np.asarray(ids, np.int64), str(calib))


def check_seed_trials(seed_trials, opts: Options) -> None:
    if not isinstance(seed_trials, int) or seed_trials < 1:
        raise UsageError(f"--seed-trials must be an integer >= 1, got {seed_trials!r}", field="seed_trials")
    if seed_trials > 1 and not opts.uses_groups:
        raise UsageError("--seed-trials chooses group-wise dropout seeds: it applies to --method deltadq and "
                         "to bitdelta with --alpha > 1", field="seed_trials")
