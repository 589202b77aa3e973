"""Stage 1 of a conversion: decide every tensor's kind from the two checkpoints' headers (errors here,
before any heavy work)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..spec import FLOAT_DTYPES, KIND_COMPRESSED, KIND_DENSE, KIND_REMOVED, KIND_REPLACE, KIND_TIED
from .checkpoint import Checkpoint
from .methods import Options

EMBEDDING_PATTERNS = ("embed_tokens", "wte", "wpe", "lm_head", "embed_out", "word_embeddings",
                      "position_embeddings", "embed_positions")


@dataclass
class Task:
    name: str
    kind: str
    shape: tuple
    dtype: str  # the fine-tune's (the base's for `removed`)
    tied_to: str | None = None
    numel: int = 0


def natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_embedding(name: str) -> bool:
    return any(p in name for p in EMBEDDING_PATTERNS)


def plan(base: Checkpoint, ft: Checkpoint, opts: Options, embeddings: str) -> list[Task]:
    """Decide every tensor's kind from the headers (plus one comparison for tied lm_head); raise early."""
    tasks = []
    tie = bool(ft.config.get("tie_word_embeddings", ft.config.get("model_type") == "gpt2"))
    names = sorted(set(ft.tensors) | set(base.tensors), key=natural_key)
    bad = [n for n in names if (ft.tensors.get(n) or base.tensors[n]).dtype not in FLOAT_DTYPES]
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
