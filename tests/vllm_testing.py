"""Helpers of the vLLM tests: tiny LLaMA checkpoints built here, engine settings, greedy tokens, an OpenAI
server in a subprocess."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

# vLLM settings for a small CPU test: in-process engine (half the start-up), 1 GiB of KV cache, no hub.
VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 64, "enforce_eager": True, "seed": 0}
SENTENCES = ["the quick brown fox jumps over the lazy dog", "a delta file stores the fine tune compressed",
             "vllm serves the base model with the delta applied", "hello world this is a tiny model"]


def save_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer trained on four sentences, saved as a PreTrainedTokenizerFast folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES, trainers.BpeTrainer(
        vocab_size=256, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return len(fast)


def save_llama(folder: Path, seed: int, *, hidden: int = 64, layers: int = 2, intermediate: int = 128,
               heads: int = 2) -> dict[str, np.ndarray]:
    """A LLaMA (default: 2 layers, hidden 64, 2 heads of 32, a head size vLLM's CPU attention takes), float32."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    vocab = save_tokenizer(folder)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      head_dim=hidden // heads, max_position_embeddings=128, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, initializer_range=0.3, dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def save_qwen2(folder: Path, seed: int) -> dict[str, np.ndarray]:
    """A 2-layer Qwen2 with what LLaMA lacks: biased q/k/v projections, grouped kv heads (2 query heads of 32
    per kv head) and lm_head tied to the input embedding; float32."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    vocab = save_tokenizer(folder)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, initializer_range=0.3,
                      dtype="float32")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(folder)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def save_finetune(folder: Path, base_dir: Path, ft: dict[str, np.ndarray]) -> None:
    """The fine-tune as an HF folder: the base's config and tokenizer, the changed weights."""
    from safetensors.numpy import save_file
    folder.mkdir()
    for f in base_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    save_file(ft, folder / "model.safetensors", metadata={"format": "pt"})


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def save_peft_lora(folder: Path, state: dict, rank: int, seed: int, std: float = 0.02) -> dict:
    """A PEFT-format LoRA adapter (random A and B, lora_alpha = rank: scale 1) of rank `rank` on every
    linear layer of `state` named in LORA_TARGETS. Returns {weight name: B @ A}, the change it makes."""
    from safetensors.numpy import save_file
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(100 + seed)
    tensors, change = {}, {}
    for name, w in state.items():
        module = name[:-len(".weight")]
        if w.ndim != 2 or module.rsplit(".", 1)[-1] not in LORA_TARGETS:
            continue
        a = rng.normal(0, std, (rank, w.shape[1])).astype(np.float32)
        b = rng.normal(0, std, (w.shape[0], rank)).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"] = a, b
        change[name] = b @ a
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "bias": "none",
        "target_modules": list(LORA_TARGETS), "base_model_name_or_path": "base"}))
    return change


@contextlib.contextmanager
def env(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def vllm_greedy(engine, prompts, new_tokens: int, **kw) -> list[list[int]]:
    import vllm
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    outs = engine.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False, **kw)
    return [list(o.outputs[0].token_ids) for o in outs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, timeout=60):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def request(url, body=None, timeout=60) -> tuple[int, object]:
    """(HTTP status, JSON or text body), error statuses included."""
    try:
        return 200, post(url, body, timeout) if body is not None else json.loads(
            urllib.request.urlopen(url, timeout=timeout).read())
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


@contextlib.contextmanager
def openai_server(args: list[str], log_path: Path, extra_env: dict | None = None, timeout: float = 300):
    """`python -m vllm.entrypoints.openai.api_server ARGS` on a free port; yields its base URL."""
    import pytest
    port = free_port()
    log = open(log_path, "w+")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args, "--host", "127.0.0.1",
           "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **VLLM_ENV, **(extra_env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"server not ready within {timeout} s:\n{log.read()[-4000:]}")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
