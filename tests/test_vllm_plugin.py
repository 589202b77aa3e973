"""The vLLM plugin, for real: a tiny LLaMA served by vLLM (CPU build) with load_format="ddq".

The oracle is transformers on the materialized fine-tune (base + DDQFile.decode deltas, computed here in
numpy), greedy, token by token. Install vLLM with scripts/install_vllm_cpu.sh; without vLLM these tests
skip. One engine serves every in-process test (module fixture); the OpenAI server runs as a subprocess.
"""
from __future__ import annotations

import gc
import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (scripts/install_vllm_cpu.sh installs its CPU build)")

torch = pytest.importorskip("torch")

from ddq_format.converters import convert  # noqa: E402
from ddq_format.errors import BindingError, UsageError  # noqa: E402
from ddq_format.reader import DDQFile  # noqa: E402
from vllm_testing import ENGINE_ARGS, VLLM_ENV, env, openai_server, post, save_finetune, save_llama  # noqa: E402

PROMPTS = [[1, 40, 41, 42, 43], [1, 100, 7, 200], [1, 5, 6, 7, 8, 9, 10, 11]]
NEW_TOKENS = 8


def greedy(state: dict[str, np.ndarray], folder: Path, prompts) -> list[list[int]]:
    """transformers' greedy continuation, one full forward per token (no cache, no generation config)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    model = LlamaForCausalLM(LlamaConfig.from_pretrained(folder)).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = list(p)
            for _ in range(NEW_TOKENS):
                logits = model(torch.tensor([ids])).logits[0, -1]
                top = torch.topk(logits, 2).values
                # A near tie could flip between two correct implementations: keep the test meaningful.
                assert float(top[0] - top[1]) > 1e-3, "near-tie in the reference logits; change the seed"
                ids.append(int(logits.argmax()))
            outs.append(ids[len(p):])
    return outs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm_models")
    base_dir, other_dir = root / "base", root / "other_base"
    base = save_llama(base_dir, seed=0)
    save_llama(other_dir, seed=1)  # same names and shapes, different weights: fails the binding
    rng = np.random.default_rng(0)
    ft = {k: v + rng.normal(0, 0.3, v.shape).astype(np.float32) if v.ndim == 2 else
          v + np.float32(0.5) if k == "model.layers.0.input_layernorm.weight" else v for k, v in base.items()}
    save_finetune(root / "ft", base_dir, ft)
    ddq_path = root / "ft.ddq"
    # Low compression (alpha 2, 8-bit codes in 2 parts): matrices compressed, embeddings and the changed
    # norm dense, the other norms 'same'; every entry bound to its base tensor.
    convert(base_dir, root / "ft", ddq_path, alpha=2, bits=8, parts=2, group_size=8, embeddings="dense",
            quiet=True, progress=False)
    with DDQFile(ddq_path) as f:
        kinds = {e["kind"] for e in f.entries.values()}
    assert {"compressed", "dense", "same"} <= kinds
    with DDQFile(ddq_path) as f:
        materialized = {k: (v + f.decode(k)).astype(np.float32) for k, v in base.items()}
    ns = types.SimpleNamespace(root=root, base_dir=base_dir, other_dir=other_dir, ddq=ddq_path,
                               base_tokens=greedy(base, base_dir, PROMPTS),
                               ft_tokens=greedy(materialized, base_dir, PROMPTS))
    assert ns.ft_tokens != ns.base_tokens, "the fine-tune must change greedy tokens for the test to mean anything"
    return ns


@pytest.fixture(scope="module")
def vllm_env():
    with env(VLLM_ENV):
        yield


@pytest.fixture(scope="module")
def llm(models, vllm_env):
    import vllm
    engine = vllm.LLM(model=str(models.base_dir), load_format="ddq",
                      model_loader_extra_config={"ddq_path": str(models.ddq)}, **ENGINE_ARGS)
    yield engine
    del engine
    gc.collect()


def vllm_greedy(engine, prompts) -> list[list[int]]:
    from vllm_testing import vllm_greedy as greedy_tokens
    return greedy_tokens(engine, prompts, NEW_TOKENS)


# -- registration ----------------------------------------------------------------------------------------
def test_entry_point_registers_the_ddq_load_format(models):
    eps = [ep for ep in md.entry_points(group="vllm.general_plugins") if ep.name == "ddq"]
    assert [ep.value for ep in eps] == ["ddq_format.loaders.vllm_plugin:register"], \
        "ddq is not installed with its entry point: run scripts/install_vllm_cpu.sh (pip install -e .)"
    register = eps[0].load()
    register()
    register()  # idempotent
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    from ddq_format.loaders.vllm_plugin import loader_class
    loader = get_model_loader(LoadConfig(load_format="ddq", model_loader_extra_config={
        "ddq_path": str(models.ddq), "enable_multithread_load": False}))
    assert type(loader) is loader_class()
    # The default loader underneath reads the base as "auto" and keeps vLLM's own options.
    assert loader.load_config.load_format == "auto"
    assert loader.load_config.model_loader_extra_config == {"enable_multithread_load": False}


# -- serving ---------------------------------------------------------------------------------------------
def test_vllm_greedy_tokens_are_the_finetunes(llm, models):
    got = vllm_greedy(llm, PROMPTS)
    assert got == models.ft_tokens
    assert got != models.base_tokens


def server_args(base_dir, ddq_path) -> list[str]:
    return ["--model", str(base_dir), "--load-format", "ddq", "--model-loader-extra-config",
            json.dumps({"ddq_path": str(ddq_path)}), "--dtype", "float32", "--max-model-len", "64",
            "--enforce-eager", "--seed", "0", "--served-model-name", "ft"]


def test_openai_server_serves_the_finetune(models, tmp_path):
    with openai_server(server_args(models.base_dir, models.ddq), tmp_path / "server.log") as url:
        out = post(f"{url}/v1/completions",
                   {"model": "ft", "prompt": PROMPTS[0], "max_tokens": NEW_TOKENS, "temperature": 0,
                    "ignore_eos": True, "return_token_ids": True})
        assert out["choices"][0]["token_ids"] == models.ft_tokens[0]


def test_openai_server_refuses_a_wrong_base(models):
    """The operator's view: the server does not start, and says which file, tensor and check failed."""
    run = subprocess.run([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                          *server_args(models.other_dir, models.ddq)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, **VLLM_ENV})
    assert run.returncode != 0
    assert (f"ddq_format.errors.BindingError: {models.ddq}: tensor " in run.stderr + run.stdout), \
        (run.stdout + run.stderr)[-4000:]
    assert "this is not the base model the delta was made from" in run.stderr + run.stdout


# -- refusals ----------------------------------------------------------------------------------------------
def loader_for(ddq_path, **extra):
    from vllm.config.load import LoadConfig

    from ddq_format.loaders.vllm_plugin import loader_class
    return loader_class()(LoadConfig(load_format="ddq", model_loader_extra_config={"ddq_path": str(ddq_path),
                                                                                   **extra}))


def model_config_of(folder, hf_config=None):
    """What the loader reads of vLLM's ModelConfig before any weight: the folder and the HF config."""
    return types.SimpleNamespace(model=str(folder), hf_config=hf_config, hf_text_config=hf_config)


def test_missing_or_bad_ddq_path_is_refused(models, tmp_path):
    from vllm.config.load import LoadConfig

    from ddq_format.loaders.vllm_plugin import loader_class
    with pytest.raises(UsageError, match="ddq_path"):
        loader_class()(LoadConfig(load_format="ddq"))
    with pytest.raises(UsageError, match="no such .ddq file"):
        loader_for(tmp_path / "absent.ddq")
    with pytest.raises(UsageError, match="cannot be \"ddq\""):
        loader_for(models.ddq, base_load_format="ddq")


def test_delta_tensor_missing_from_base_is_refused(models, tmp_path):
    from safetensors.numpy import load_file, save_file
    short = tmp_path / "short_base"
    short.mkdir()
    for f in models.base_dir.iterdir():
        if f.suffix != ".safetensors":
            (short / f.name).write_bytes(f.read_bytes())
    tensors = load_file(models.base_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, short / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(BindingError, match="not in the base checkpoint") as e:
        loader_for(models.ddq).load_weights(None, model_config_of(short))
    assert e.value.tensor == "model.layers.1.mlp.down_proj.weight"


def test_prequantized_base_is_refused(models, tmp_path):
    from transformers import PretrainedConfig
    cfg = PretrainedConfig(quantization_config={"quant_method": "gptq", "bits": 4})
    with pytest.raises(UsageError, match=r"pre-quantized \(gptq\)"):
        loader_for(models.ddq).load_weights(None, model_config_of(models.base_dir, cfg))
    # Packed GPTQ names without a quantization_config are refused too.
    from safetensors.numpy import save_file
    packed = tmp_path / "packed_base"
    packed.mkdir()
    save_file({"model.layers.0.self_attn.q_proj.qweight": np.zeros((8, 64), np.int32),
               "model.layers.0.self_attn.q_proj.scales": np.zeros((1, 64), np.float16)},
              packed / "model.safetensors")
    with pytest.raises(UsageError, match="pre-quantized") as e:
        loader_for(models.ddq).load_weights(None, model_config_of(packed))
    assert e.value.tensor == "model.layers.0.self_attn.q_proj.qweight"


def test_wrong_base_fails_the_binding_in_vllm(models, vllm_env):
    """Through vLLM's own weight iterator: same names and shapes, other weights -> BindingError."""
    from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
    loader = loader_for(models.ddq)
    mc = ModelConfig(model=str(models.other_dir), dtype="float32", max_model_len=64)
    seen = []

    class Sink(torch.nn.Module):  # stands in for the model: consumes the weights as vLLM's models do
        def load_weights(self, weights):
            for name, _ in weights:
                seen.append(name)
            return None

    with set_current_vllm_config(VllmConfig(model_config=mc)), \
            pytest.raises(BindingError, match="fingerprint") as e:
        loader.load_weights(Sink(), mc)
    assert e.value.path == str(models.ddq)
    assert seen == []  # refused on the first tensor, before the model received anything


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_weights_stream_is_the_finetune_on_the_models_device(models, vllm_env, device):
    """What vLLM's models receive: every checkpoint tensor, fine-tuned, on the model's device (the GPU
    decodes the delta there); values are base + the file's decoded delta."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from safetensors.numpy import load_file
    from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
    mc = ModelConfig(model=str(models.base_dir), dtype="float32", max_model_len=64)
    got = {}

    class Sink(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device=device))

        def load_weights(self, weights):
            for name, t in weights:
                got[name] = t
            return None

    with set_current_vllm_config(VllmConfig(model_config=mc)):
        loader_for(models.ddq).load_weights(Sink(), mc)
    base = load_file(models.base_dir / "model.safetensors")
    assert set(got) == set(base)
    with DDQFile(models.ddq) as f:
        for name, t in got.items():
            assert t.device.type == device, name
            np.testing.assert_allclose(t.cpu().numpy(), base[name] + f.decode(name), rtol=0, atol=1e-6)


def test_plugin_guards_llvmlite_when_numba_came_first():
    """A process that imported numba before vLLM started (any user code, or pytest collecting a numba test)
    crashed at vLLM's CPU worker start: its module scan calls vars() on llvmlite's library wrapper, which
    claims a __dict__. Registering ddq's plugin installs the guard; the scan then goes through."""
    pytest.importorskip("numba")
    code = ("import numba, vllm.triton_utils.dispatcher as d\n"
            "from ddq_format.loaders.vllm_plugin import register\n"
            "register()\n"
            "from llvmlite.binding import ffi\n"
            "assert not hasattr(ffi.lib, '__dict__')\n"
            "d._rebind_kernels([])\n"  # the scan vLLM's CPU worker runs at start
            "print('scan ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **VLLM_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0 and "scan ok" in out.stdout, out.stderr[-2000:]
