"""The work behind `ddq eval` (torch and transformers are imported only here)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from ..errors import UsageError
from . import Row, load_data, score, sequences


def _load(folder, device):
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    except Exception as e:  # transformers raises many types for a folder it cannot load
        raise UsageError(f"cannot load the model with transformers: {type(e).__name__}: {e}", path=folder) from None
    return m.to(device).eval()


def _console():
    from rich.console import Console
    return Console(stderr=True)


def run(base, finetuned, files, data_path, *, sweep=(), out_dir=None, calib=None, device="cpu", workers=1,
        progress=True) -> list[Row]:
    from transformers import AutoTokenizer

    from ..loaders import apply_delta
    from ..progress import make_progress
    data = load_data(data_path)
    for f in files:
        if not Path(f).is_file():
            raise UsageError("no such .ddq file", path=f)
    for folder in (base, finetuned):
        if not Path(folder).is_dir():
            raise UsageError("no such model folder", path=folder)
    try:
        tok = AutoTokenizer.from_pretrained(str(finetuned), local_files_only=True)
    except Exception as e:  # transformers raises many types for a folder without a usable tokenizer
        raise UsageError(f"cannot load the fine-tune's tokenizer: {type(e).__name__}: {e}", path=finetuned) from None
    pad = next((int(t) for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
    seqs = sequences(tok, data)
    console = _console()
    tmp = None
    if sweep:
        if out_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="ddq-eval-")
            out_dir = Path(tmp.name)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        files = list(files) + convert_ladder(base, finetuned, out_dir, sweep, calib, workers, progress, console)
    bar = make_progress(console, enabled=progress)
    rows = []
    try:
        with bar:
            ft = _load(finetuned, device)
            job = bar.add_task("fine-tune", total=len(seqs), what="sequences")
            rows.append(Row("fine-tune", str(finetuned), 1.0, None, score(ft, seqs, pad, progress=bar, task=job).summary()))
            rows[-1].metrics["kl"] = 0.0
            model = _load(base, device)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            job = bar.add_task("base", total=len(seqs), what="sequences")
            rows.append(Row("base", str(base), None, None, score(model, seqs, pad, ref=ft, progress=bar, task=job).summary()))
            for f in files:
                model.load_state_dict(state)
                apply_delta(model, Path(f))
                job = bar.add_task(Path(f).name, total=len(seqs), what="sequences")
                m = score(model, seqs, pad, ref=ft, progress=bar, task=job).summary()
                ratio, nbytes = file_ratio(f)
                rows.append(Row(Path(f).name, str(f), ratio, nbytes, m))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


def convert_ladder(base, finetuned, out_dir, ratios, calib, workers, progress, console) -> list[Path]:
    from ..converters import convert
    out, cache = [], {}  # one calibration and one scoring of the candidates for the whole ladder
    for r in ratios:
        if not r >= 1:
            raise UsageError(f"target ratio {r:g} must be >= 1", field="ratios")
        p = Path(out_dir) / f"target-{r:g}x.ddq"
        console.print(f"converting at --target-ratio {r:g} -> {p}")
        convert(base, finetuned, p, target_ratio=r, calib=calib, workers=workers, progress=progress,
                console=console, print_summary=False, method_options={"cache": cache})
        out.append(p)
    return out


def file_ratio(path) -> tuple[float, int]:
    """(all-tensor true ratio, file bytes) of a .ddq."""
    from ..converters.planned import tensors_ratio
    return tensors_ratio(path), Path(path).stat().st_size


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def print_table(rows):
    from rich.console import Console
    from rich.table import Table
    t = Table(title="ddq eval", title_justify="left")
    for c in ("model", "all-tensor true ratio", "exact match", "answer NLL", "perplexity", "KL(fine-tune || model)"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        m = r.metrics
        acc = "-" if m["accuracy"] is None else f"{m['correct']}/{m['n']} = {100 * m['accuracy']:.1f}%"
        t.add_row(r.label, _fmt(r.tensors_true_ratio, "{:.1f}x"), acc, _fmt(m["answer_nll"], "{:.3f}"),
                  _fmt(m["perplexity"], "{:.2f}"), _fmt(m["kl"], "{:.4f}"))
    Console().print(t)


def plot_rows(rows, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)", field="plot") from None
    pts = sorted((r.tensors_true_ratio, r.metrics["accuracy"]) for r in rows[2:]
                 if r.tensors_true_ratio and r.metrics["accuracy"] is not None)
    if not pts or rows[0].metrics["accuracy"] is None:
        raise UsageError("--plot needs prompt/answer lines and at least one .ddq (or --sweep)", field="plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=".ddq")
    ax.axhline(100 * rows[0].metrics["accuracy"], color="k", ls="--", lw=1, label="fine-tune")
    ax.axhline(100 * rows[1].metrics["accuracy"], color="gray", ls=":", lw=1, label="base")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("all-tensor true compression ratio")
    ax.set_ylabel("exact match (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
