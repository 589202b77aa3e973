"""Group-size search (DeltaDQ §3.2): h_g from {alpha, 2 alpha, 4 alpha, ..., h_in} minimising the attention
proxy ||Q1 K1^T - Q^1 K^1^T||_F^2 on decoder layer 0, summed over heads.

Hidden states: calibration tokens -> the FINE-TUNED model's embedding (+ learned positions for GPT-2) -> the
input norm of layer 0 (RMSNorm or LayerNorm, fine-tuned weights). Q1, K1 use the fine-tuned q/k weights
(and biases); Q^1, K^1 use W_base + the compressed delta at the candidate h_g (biases fine-tuned). Qwen3's
q_norm/k_norm are applied per head. RoPE is NOT applied and the 1/sqrt(d) scaling is left out: the proxy is
the paper's Q1 K1^T of the projections (a constant factor does not move the argmin). With grouped-query
attention each query head is paired with its key/value head. Only embedding, layer-0 norm and q/k tensors
are read; the model is never instantiated.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .checkpoint import Checkpoint, non_finite, to_f32

DEFAULT_CALIB_TEXT = """\
The history of mathematics is a story of patterns. If a train leaves the station at 3 pm travelling at 60
miles per hour, and a second train leaves an hour later at 80 miles per hour, the second train catches the
first after 3 hours: 60 * 4 = 80 * 3 = 240 miles. Let x be the number of apples; then 3x + 5 = 20 gives x = 5.
The derivative of x^2 is 2x, and the integral of 1/x is ln|x| + C.

def fibonacci(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a

User: Can you explain how photosynthesis works?
Assistant: Plants capture light with chlorophyll and use its energy to turn water and carbon dioxide into
glucose and oxygen. The light reactions happen in the thylakoid membranes; the Calvin cycle fixes carbon in
the stroma. In short, sunlight becomes chemical energy that almost every living thing depends on.

Large language models are trained on vast amounts of text to predict the next token. Fine-tuning adapts a
pretrained model to a task such as solving grade-school math problems, writing Python functions or following
instructions in a conversation, and the difference between the two sets of weights is usually small.
"""


@dataclass
class Adapter:
    """Where layer 0's pieces live in one architecture family."""
    family: str
    embed: str
    norm_weight: str
    q: str  # weight names (llama-like) or the fused c_attn (gpt2)
    k: str | None
    q_bias: str | None = None
    k_bias: str | None = None
    norm_bias: str | None = None
    positions: str | None = None  # gpt2 learned position embeddings
    q_norm: str | None = None
    k_norm: str | None = None
    eps: float = 1e-6
    heads: int = 1
    kv_heads: int = 1
    head_dim: int = 1
    fused: bool = False  # gpt2: c_attn is a Conv1D [d, 3d]: y = x W + b, columns [q | k | v]
    extra: dict = field(default_factory=dict)

    @property
    def compressed_names(self) -> list[str]:
        return [self.q] if self.fused else [self.q, self.k]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "mixtral")


def adapter_for(config: dict, names) -> Adapter | None:
    """The adapter for a config.json, or None when the architecture is not in the table."""
    mt = config.get("model_type")
    names = set(names)
    if mt in LLAMA_LIKE:
        pre = "model.layers.0."
        heads = config["num_attention_heads"]
        hd = config.get("head_dim") or config["hidden_size"] // heads
        a = Adapter(mt, "model.embed_tokens.weight", pre + "input_layernorm.weight", pre + "self_attn.q_proj.weight",
                    pre + "self_attn.k_proj.weight", eps=float(config.get("rms_norm_eps", 1e-6)), heads=heads,
                    kv_heads=config.get("num_key_value_heads") or heads, head_dim=hd)
        for attr, n in (("q_bias", "self_attn.q_proj.bias"), ("k_bias", "self_attn.k_proj.bias"),
                        ("q_norm", "self_attn.q_norm.weight"), ("k_norm", "self_attn.k_norm.weight")):
            if pre + n in names:
                setattr(a, attr, pre + n)
    elif mt == "gpt2":
        pre = "transformer." if "transformer.wte.weight" in names else ""
        heads = config["n_head"]
        d = config["n_embd"]
        a = Adapter(mt, pre + "wte.weight", pre + "h.0.ln_1.weight", pre + "h.0.attn.c_attn.weight", None,
                    q_bias=pre + "h.0.attn.c_attn.bias", norm_bias=pre + "h.0.ln_1.bias",
                    positions=pre + "wpe.weight", eps=float(config.get("layer_norm_epsilon", 1e-5)), heads=heads,
                    kv_heads=heads, head_dim=d // heads, fused=True)
    else:
        return None
    needed = [a.embed, a.norm_weight, *a.compressed_names]
    return a if all(n in names for n in needed) else None


def h_in(adapter: Adapter, ft: Checkpoint) -> int:
    """Columns of the (first) searched tensor: the candidates run up to it."""
    return ft.tensors[adapter.q].shape[1]


def candidates(alpha: int, cols: int) -> list[int]:
    out, g = [], alpha
    while g <= cols:
        out.append(g)
        g *= 2
    return out or [alpha]


def tokenize(folder, text: str, max_tokens: int) -> np.ndarray:
    """Token ids of `text` with the tokenizer in `folder` (tokenizers for a tokenizer.json, else transformers).
    UsageError when the folder has no tokenizer files or its tokenizer does not load."""
    folder = Path(folder)
    try:
        if (folder / "tokenizer.json").is_file() and importlib.util.find_spec("tokenizers"):
            from tokenizers import Tokenizer
            ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids
            return np.asarray(ids[:max_tokens], np.int64)
        if not any((folder / n).is_file() for n in TOKENIZER_FILES):
            raise UsageError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})", path=folder, field="tokenizer")
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return np.asarray(tok(text)["input_ids"][:max_tokens], np.int64)
    except UsageError:
        raise
    except Exception as e:  # tokenizers and transformers raise many types (missing sentencepiece, bad files)
        first = (str(e).strip().splitlines() or [""])[0]
        raise UsageError(f"its tokenizer does not load ({type(e).__name__}: {first})", path=folder,
                         field="tokenizer") from None


def calibration_ids(calib, ft: Checkpoint, base: Checkpoint, max_tokens: int, option: str) -> np.ndarray:
    """Calibration token ids for `option` (--group-size auto, --seed-trials): the ids --calib FILE.json gives,
    else the text tokenized by the fine-tune's tokenizer, else by the base's (same architecture, usually the
    same tokenizer). One clear error saying what to pass when none works."""
    if calib.ids is not None:
        ids = calib.ids[:max_tokens]
        vocab = ft.config.get("vocab_size")
        if isinstance(vocab, int) and ids.max() >= vocab:
            raise UsageError(f"token id {int(ids.max())} is not below the fine-tune's vocab_size {vocab}",
                             path=calib.path, field="calib")
        return ids
    failures = []
    for ck in (ft, base):
        try:
            return tokenize(ck.folder, calib.text, max_tokens)
        except UsageError as e:
            failures.append(str(e))
    alternative = " or a fixed --group-size N" if option.startswith("--group-size") else ""
    raise UsageError(f"{option} tokenizes the calibration text but neither model has a usable tokenizer "
                     f"({'; '.join(failures)}): pass --calib FILE.json holding a JSON list of token ids"
                     f"{alternative}", field="calib")


def _f32(ck: Checkpoint, name):
    return _finite(ck, name, to_f32(ck.read(name), ck.tensors[name].dtype))


def _finite(ck: Checkpoint, name, x: np.ndarray) -> np.ndarray:
    """x (float32 values of tensor `name`, or of rows of it), refused when any is NaN or inf."""
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise non_finite(ck.tensors[name], bad)
    return x


def _rms(x, w, eps):
    x = x.astype(np.float32)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)) * w


def hidden_states(adapter: Adapter, ft: Checkpoint, ids: np.ndarray) -> np.ndarray:
    """[T, d] float32: embedding (+ positions) then the layer-0 input norm, fine-tuned weights."""
    if adapter.positions:
        ids = ids[: ft.tensors[adapter.positions].shape[0]]
    emb = ft.read(adapter.embed)
    ids = np.clip(ids, 0, emb.shape[0] - 1)
    x = _finite(ft, adapter.embed, to_f32(emb[ids], ft.tensors[adapter.embed].dtype))  # the rows looked up
    del emb
    if adapter.positions:
        x = x + _f32(ft, adapter.positions)[: len(ids)]
    w = _f32(ft, adapter.norm_weight)
    if adapter.norm_bias:  # LayerNorm
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return ((x - mu) / np.sqrt(var + np.float32(adapter.eps)) * w + _f32(ft, adapter.norm_bias)).astype(np.float32)
    return _rms(x, w, adapter.eps).astype(np.float32)


def project(adapter: Adapter, x: np.ndarray, weights: dict, small: dict) -> tuple[np.ndarray, np.ndarray]:
    """(Q [H, T, hd], K [H, T, hd]) with K expanded to the query heads. weights: name -> float32 matrix;
    small: name -> biases / q_norm / k_norm (float32)."""
    T = x.shape[0]
    H, Hkv, hd = adapter.heads, adapter.kv_heads, adapter.head_dim
    if adapter.fused:
        y = x @ weights[adapter.q] + small[adapter.q_bias]
        q, k = y[:, : H * hd], y[:, H * hd: 2 * H * hd]
    else:
        q = x @ weights[adapter.q].T
        k = x @ weights[adapter.k].T
        if adapter.q_bias:
            q = q + small[adapter.q_bias]
        if adapter.k_bias:
            k = k + small[adapter.k_bias]
    q = q.reshape(T, H, hd)
    k = k.reshape(T, Hkv, hd)
    if adapter.q_norm:
        q = _rms(q, small[adapter.q_norm], adapter.eps)
    if adapter.k_norm:
        k = _rms(k, small[adapter.k_norm], adapter.eps)
    # contiguous per-head blocks: the batched matmul below then runs as BLAS calls (4x faster than strided)
    q = np.ascontiguousarray(q.transpose(1, 0, 2), np.float32)
    k = np.ascontiguousarray(np.repeat(k.transpose(1, 0, 2), H // Hkv, axis=0), np.float32)
    return q, k


def scores(q, k) -> np.ndarray:
    return np.matmul(q, k.transpose(0, 2, 1))


def proxy_error(ref: np.ndarray, q, k) -> float:
    """Squared Frobenius distance, accumulated in float64."""
    d = scores(q, k) - ref
    return float(np.einsum("hij,hij->", d, d, dtype=np.float64))


@dataclass
class SearchResult:
    chosen: int
    errors: dict[int, float]  # candidate -> proxy error
    seconds: float
    tokens: int
    tensors: list[str]

    def record(self) -> dict:
        return {"proxy": "sum_heads ||Q1 K1^T - Q^1 K^1^T||_F^2, layer 0, no RoPE, unscaled",
                "candidates": [int(g) for g in self.errors], "errors": [float(e) for e in self.errors.values()],
                "chosen": int(self.chosen), "tokens": int(self.tokens), "tensors": list(self.tensors)}
        # no timings here: the header must be byte-identical across runs


def search(adapter: Adapter, base: Checkpoint, ft: Checkpoint, ids: np.ndarray, opts, seed_of, *,
           report=None) -> SearchResult:
    """Try every candidate h_g; `seed_of(name)` gives each tensor's dropout seed (the run's own seeds, so the
    chosen candidate's proxy is exactly that of the written file). `report(g, err)` is called per candidate."""
    from .methods import reconstruct, tensor_group_size
    t0 = time.perf_counter()
    x = hidden_states(adapter, ft, ids)
    small = {n: _f32(ft, n) for n in (adapter.q_bias, adapter.k_bias, adapter.q_norm, adapter.k_norm) if n}
    names = adapter.compressed_names
    w_ft = {n: _f32(ft, n) for n in names}
    w_base = {n: _f32(base, n) for n in names}
    ref = scores(*project(adapter, x, w_ft, small))
    errors = {}
    for g in candidates(opts.alpha, h_in(adapter, ft)):
        w_hat = {}
        for n in names:
            delta = w_ft[n] - w_base[n]
            gt = tensor_group_size(g, delta.shape[1], opts.alpha)
            # A row shorter than alpha is stored as a dense delta, so the search sees it exact.
            w_hat[n] = w_ft[n] if gt is None else w_base[n] + reconstruct(delta, opts, seed_of(n), gt)
        errors[g] = proxy_error(ref, *project(adapter, x, w_hat, small))
        if report:
            report(g, errors[g])
    chosen = min(errors, key=lambda g: (errors[g], g))
    return SearchResult(chosen, errors, time.perf_counter() - t0, int(len(x)), names)
