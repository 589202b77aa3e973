"""Tiny Hugging Face model pairs (base, fine-tune) for tests and examples, built offline in about a second.

    from tests.tiny_models import make_pair
    base_dir, ft_dir = make_pair(tmp_path, "llama")            # LLaMA, fp32, single-file safetensors
    base_dir, ft_dir = make_pair(tmp_path, "qwen2", dtype="bfloat16", shard_kb=40)   # sharded, bf16

make_pair(root, arch="llama", *, dtype="float32", steps=3, seed=0, shard_kb=None, bin_format=False,
          extra_vocab=0, tie=None, layers=2, hidden=64) -> (base_dir: Path, ft_dir: Path)

- arch: "llama" | "qwen2" (q/k/v biases) | "qwen3" (q_norm/k_norm) | "mistral" | "gpt2" (fused Conv1D c_attn).
- The base is a randomly initialised model (torch seed `seed`); the fine-tune is the same model after
  `steps` Adam steps on random tokens, so every tensor the loss reaches carries a real, small delta.
- dtype: the dtype of the saved checkpoints ("float32", "bfloat16", "float16").
- shard_kb: save both checkpoints as sharded safetensors (model.safetensors.index.json) with shards of at
  most this many KiB; None saves one model.safetensors.
- bin_format: save pytorch_model.bin (torch.save of the state dict) instead of safetensors (never sharded).
- extra_vocab: the fine-tune grows its vocabulary by this many rows (embeddings change shape).
- tie: tie_word_embeddings (None: the architecture's default; True for gpt2, False otherwise).
Both folders get config.json, generation_config.json and a small byte-level BPE tokenizer (tokenizer.json,
tokenizer_config.json, ...) trained on a fixed text, so the converter's calibration path runs for real.
Folders are `root/<arch>-base` and `root/<arch>-ft` (suffixed when the folder already exists).
"""
from __future__ import annotations

from pathlib import Path

VOCAB = 320
TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. A delta between two models is small; dropout keeps a few "
    "entries per group and quantization stores them in a handful of bits. Models learn to add numbers, "
    "write code and answer questions. 0123456789 + - * / = ( ) [ ] { } def return if else for while in "
) * 4


def _tokenizer(path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(path)


def _config(arch: str, layers: int, hidden: int, tie):
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=layers, num_attention_heads=4, bos_token_id=0,
                  eos_token_id=1)
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=128, vocab_size=VOCAB,
                            bos_token_id=0, eos_token_id=1)
    else:
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
               "mistral": tf.MistralConfig}[arch]
        extra = {"head_dim": hidden // 4} if arch == "qwen3" else {}
        cfg = cls(hidden_size=hidden, intermediate_size=2 * hidden + 32, num_key_value_heads=2,
                  max_position_embeddings=128, **common, **extra)
    if tie is not None:
        cfg.tie_word_embeddings = bool(tie)
    return cfg


def _save(model, path: Path, dtype, shard_kb, bin_format):
    import torch

    path.mkdir(parents=True)
    model = model.to(getattr(torch, dtype))
    kw = {"max_shard_size": f"{shard_kb}KB"} if shard_kb and not bin_format else {}
    model.save_pretrained(path, **kw)  # config.json, generation_config.json and the weights
    if bin_format:  # same tensors and config, as a legacy pickle-free-loadable state dict
        from safetensors.torch import load_file
        for f in path.glob("model*.safetensors*"):
            if f.suffix == ".safetensors":
                torch.save(load_file(f), path / "pytorch_model.bin")
            f.unlink()
    _tokenizer(path)


def _free(root: Path, name: str) -> Path:
    p, i = root / name, 1
    while p.exists():
        p, i = root / f"{name}{i}", i + 1
    return p


def make_pair(root, arch: str = "llama", *, dtype: str = "float32", steps: int = 3, seed: int = 0,
              shard_kb: int | None = None, bin_format: bool = False, extra_vocab: int = 0, tie=None,
              layers: int = 2, hidden: int = 64) -> tuple[Path, Path]:
    import torch
    import transformers as tf

    root = Path(root)
    torch.manual_seed(seed)
    cfg = _config(arch, layers, hidden, tie)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    model.generation_config = tf.GenerationConfig(bos_token_id=0, eos_token_id=1, max_new_tokens=16)
    base_dir, ft_dir = _free(root, f"{arch}-base"), _free(root, f"{arch}-ft")
    # Save the base first: training updates the parameters in place.
    _save(model, base_dir, dtype, shard_kb, bin_format)
    model = model.float()
    if extra_vocab:
        model.resize_token_embeddings(VOCAB + extra_vocab)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        ids = torch.randint(0, VOCAB, (2, 16), generator=g)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    _save(model, ft_dir, dtype, shard_kb, bin_format)
    return base_dir, ft_dir
