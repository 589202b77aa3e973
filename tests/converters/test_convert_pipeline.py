"""ddq convert end to end on tiny models: kinds, baselines, determinism, resume, input layouts, errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from ddq_format import UsageError, open_ddq
from ddq_format.binding import fingerprint_bits
from ddq_format.converters.checkpoint import Checkpoint, to_f32
from ddq_format.converters.command import convert as convert_cmd


def _full(ck, name):
    return to_f32(ck.read(name), ck.tensors[name].dtype)


def test_entries_reconstruct_the_fine_tune(tmp_path, models, quiet_convert):
    base, ft = models("qwen2-bf16-vocab", "qwen2", dtype="bfloat16", extra_vocab=8)
    out = tmp_path / "o.ddq"
    s = quiet_convert(base, ft, out, alpha=2, bits=8, parts=2)
    f, b, t = open_ddq(out), Checkpoint(base), Checkpoint(ft)
    assert set(f.files) >= {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    assert json.loads(f.file("config.json")) == json.loads((ft / "config.json").read_text())
    assert f.header["base"]["model_type"] == "qwen2" and f.header["base"]["num_tensors"] == len(b.tensors)
    assert f.header["algorithm"]["group_size"] == s.group_size
    kinds = {n: e["kind"] for n, e in f.entries.items()}
    assert kinds["model.embed_tokens.weight"] == kinds["lm_head.weight"] == "replace"  # vocabulary grew
    assert kinds["model.layers.0.self_attn.q_proj.bias"] == "dense"
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "compressed"
    for n, e in f.entries.items():
        assert e["dtype"] == "BF16"
        want = _full(t, n)
        if e["kind"] == "replace":
            np.testing.assert_array_equal(f.decode(n), want)
            continue
        assert e["base"]["fingerprint"] == fingerprint_bits(b.read(n), "BF16")
        got = _full(b, n) + f.decode(n)
        if e["kind"] in ("dense", "same"):  # bf16 delta: exact after rounding back to bf16
            from ddq_format.encodings.raw import bf16_bits_to_f32, to_bf16_bits
            np.testing.assert_array_equal(bf16_bits_to_f32(to_bf16_bits(got)), want)
        else:  # alpha=2, 8 bits: the kept half is close to alpha * delta
            d = want - _full(b, n)
            kept = f.decode(n) != 0
            assert kept.mean() == pytest.approx(0.5, abs=0.02)
            np.testing.assert_allclose(f.decode(n)[kept], 2 * d[kept], atol=2 * np.abs(d).max() / 100)


def test_tied_lm_head_is_stored_once(tmp_path, models, quiet_convert):
    from safetensors.numpy import load_file, save_file
    base, ft = models("llama", "llama")
    pair = []
    for src in (base, ft):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        sd = load_file(dst / "model.safetensors")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"].copy()
        save_file(sd, dst / "model.safetensors")
        cfg = json.loads((dst / "config.json").read_text())
        cfg["tie_word_embeddings"] = True
        (dst / "config.json").write_text(json.dumps(cfg))
        pair.append(dst)
    quiet_convert(*pair, tmp_path / "o.ddq", group_size=8)
    f = open_ddq(tmp_path / "o.ddq")
    assert f.entries["lm_head.weight"]["kind"] == "tied"
    assert f.entries["lm_head.weight"]["tied_to"] == "model.embed_tokens.weight"
    np.testing.assert_array_equal(f.decode("lm_head.weight"), f.decode("model.embed_tokens.weight"))


def test_removed_same_and_only_in_fine_tune(tmp_path, models, quiet_convert):
    from safetensors.numpy import load_file, save_file
    base, ft = models("llama", "llama")
    b2, f2 = tmp_path / "b", tmp_path / "f"
    shutil.copytree(base, b2)
    shutil.copytree(ft, f2)
    sb, sf = load_file(b2 / "model.safetensors"), load_file(f2 / "model.safetensors")
    sb["extra.old"] = np.ones(3, np.float32)
    sf["extra.new"] = np.full(4, 2.0, np.float32)
    sf["model.norm.weight"] = sb["model.norm.weight"].copy()
    save_file(sb, b2 / "model.safetensors")
    save_file(sf, f2 / "model.safetensors")
    quiet_convert(b2, f2, tmp_path / "o.ddq", group_size=8)
    e = open_ddq(tmp_path / "o.ddq").entries
    assert e["extra.old"]["kind"] == "removed" and "base" in e["extra.old"]
    assert e["extra.new"]["kind"] == "replace" and "base" not in e["extra.new"]
    assert e["model.norm.weight"]["kind"] == "same" and "base" in e["model.norm.weight"]


@pytest.mark.parametrize("method,encoding", [("deltadq", "seeded"), ("dare", None), ("magnitude", None),
                                             ("bitdelta", None), ("lowrank", None)])
def test_baselines_round_trip_through_the_container(tmp_path, llama, quiet_convert, method, encoding):
    base, ft = llama
    out = tmp_path / "o.ddq"
    kw = {"encoding": encoding} if encoding else {}
    if method == "bitdelta":
        kw["alpha"] = 2
    s = quiet_convert(base, ft, out, method=method, **kw)
    f, b, t = open_ddq(out), Checkpoint(base), Checkpoint(ft)
    n = "model.layers.1.mlp.down_proj.weight"
    e = f.entries[n]
    d = _full(t, n) - _full(b, n)
    got = f.decode(n)
    enc = {"deltadq": "seeded", "dare": "csr_f16", "magnitude": "csr_f16", "bitdelta": "sign_scale",
           "lowrank": "lowrank"}[method]
    assert e["encoding"] == enc and s.method == method
    if method == "magnitude":  # the top quarter by |delta|, fp16 values
        k = d.size // 4
        thr = np.sort(np.abs(d).ravel())[-k]
        assert (got != 0).sum() == k and (np.abs(d[got != 0]) >= thr).all()
        np.testing.assert_array_equal(got[got != 0], d[got != 0].astype(np.float16).astype(np.float32))
    elif method == "dare":
        kept = got != 0
        assert abs(kept.mean() - 0.25) < 0.05
        np.testing.assert_allclose(got[kept], (4 * d[kept]).astype(np.float16).astype(np.float32))
    elif method == "bitdelta":
        kept = got != 0
        assert kept.mean() == pytest.approx(0.5) and len(np.unique(np.abs(got[kept]))) == 1
        assert (np.sign(got[kept]) == np.where(d[kept] >= 0, 1, -1)).all()
    elif method == "lowrank":
        u, sv, vt = np.linalg.svd(d.astype(np.float64), full_matrices=False)
        best = (u[:, :16] * sv[:16]) @ vt[:16]
        np.testing.assert_allclose(got, best, atol=2e-3 * np.abs(d).max())
    else:
        assert np.corrcoef(got.ravel(), d.ravel())[0, 1] > 0.4
    assert s.true_ratio_compressed > 1


def test_workers_do_not_change_the_bytes(tmp_path, llama, quiet_convert):
    base, ft = llama
    quiet_convert(base, ft, tmp_path / "a.ddq", workers=1, alpha=2, bits=3, parts=2)
    quiet_convert(base, ft, tmp_path / "b.ddq", workers=3, alpha=2, bits=3, parts=2)
    assert (tmp_path / "a.ddq").read_bytes() == (tmp_path / "b.ddq").read_bytes()


def test_sharded_single_and_bin_inputs_give_identical_output(tmp_path, models, quiet_convert):
    outs = []
    for key, kw in (("single", {}), ("sharded", {"shard_kb": 40}), ("bin", {"bin_format": True})):
        base, ft = models("layout-" + key, "llama", seed=3, **kw)
        if key == "sharded":
            assert (ft / "model.safetensors.index.json").exists()
        quiet_convert(base, ft, tmp_path / f"{key}.ddq", alpha=4, bits=4, parts=4)
        outs.append((tmp_path / f"{key}.ddq").read_bytes())
    assert outs[0] == outs[1] == outs[2]


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[4])
    from ddq_format.converters import resume, convert
    real, n = resume.ResumableWriter.add, [0]
    def add(self, *a, **k):
        if n[0] == int(sys.argv[5]):
            os.kill(os.getpid(), signal.SIGKILL)
        n[0] += 1
        return real(self, *a, **k)
    resume.ResumableWriter.add = add
    major = int(sys.argv[6]) if len(sys.argv) > 6 else None
    convert(sys.argv[1], sys.argv[2], sys.argv[3], alpha=2, bits=4, parts=4, embeddings="dense", workers=2, progress=False, quiet=True, format_major=major)
""")


@pytest.mark.parametrize("major", [1, 2])
def test_kill_9_then_resume_equals_uninterrupted(tmp_path, llama, quiet_convert, major):
    base, ft = llama
    whole = tmp_path / "whole.ddq"
    quiet_convert(base, ft, whole, alpha=2, bits=4, parts=4, format_major=major)
    out = tmp_path / "out.ddq"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", KILLER, str(base), str(ft), str(out), root, "9", str(major)])
    assert p.returncode == -9
    assert not out.exists()
    assert (tmp_path / "out.ddq.partial").exists() and (tmp_path / "out.ddq.partial.journal").exists()
    assert (tmp_path / "out.ddq.lock").exists()  # left by the killed run, its flock gone with it: stale
    # A torn journal line (the kill hit mid-write) is tolerated: that entry is redone.
    with open(tmp_path / "out.ddq.partial.journal", "a") as j:
        j.write('{"entry": {"name": "trunc')
    s = quiet_convert(base, ft, out, alpha=2, bits=4, parts=4, resume=True, format_major=major)
    assert s.resumed_tensors == 9
    assert out.read_bytes() == whole.read_bytes() and open_ddq(out).version[0] == major
    assert not (tmp_path / "out.ddq.partial").exists() and not (tmp_path / "out.ddq.partial.journal").exists()
    assert not (tmp_path / "out.ddq.lock").exists()


def test_resume_refuses_a_journal_of_other_options(tmp_path, llama, quiet_convert):
    base, ft = llama
    out = tmp_path / "out.ddq"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", KILLER, str(base), str(ft), str(out), root, "3"])
    # other options: the journal does not match, the run starts over and still produces the right file
    s = quiet_convert(base, ft, out, alpha=4, bits=4, parts=4, resume=True)
    assert s.resumed_tensors == 0 and open_ddq(out).header["algorithm"]["alpha"] == 4


@pytest.mark.parametrize("kw,match", [
    ({"alpha": 4, "group_size": "6"}, "not a positive multiple of alpha"),
    ({"bits": 9}, "bits k=9"),
    ({"bits": 2, "parts": 8}, "parts m=8"),
    ({"parts": 3}, "parts m=3"),
    ({"method": "prune"}, "unknown method"),
    ({"encoding": "zip"}, "unknown encoding"),
    ({"ratio": 100}, "no preset"),
    ({"ratio": 128, "alpha": 8}, "do not pass them too"),
    ({"embeddings": "lora"}, "embeddings"),
    ({"group_size": "big"}, "'auto' or an integer"),
])
def test_option_errors_come_before_work(tmp_path, llama, quiet_convert, kw, match):
    base, ft = llama
    with pytest.raises(UsageError, match=match):
        quiet_convert(base, ft, tmp_path / "o.ddq", **kw)
    assert list(tmp_path.iterdir()) == []


def test_input_errors(tmp_path, llama, quiet_convert, edited_copy):
    base, ft = llama
    with pytest.raises(UsageError, match="no such model folder"):
        quiet_convert(tmp_path / "nope", ft, tmp_path / "o.ddq")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no model.safetensors"):
        quiet_convert(tmp_path / "empty", ft, tmp_path / "o.ddq")
    wide = edited_copy(ft, "wide", **{"model.layers.0.mlp.up_proj.weight": np.zeros((3, 64), np.float32)})
    with pytest.raises(UsageError, match="linear layer shape differs") as e:
        quiet_convert(base, wide, tmp_path / "o.ddq")
    assert e.value.tensor == "model.layers.0.mlp.up_proj.weight"
    ints = edited_copy(ft, "ints", **{"model.position_ids": np.arange(4, dtype=np.int64)})
    with pytest.raises(UsageError, match="dtype I64"):
        quiet_convert(base, ints, tmp_path / "o.ddq")
    assert not (tmp_path / "o.ddq").exists() and not (tmp_path / "o.ddq.partial").exists()


def test_cli_ratio_preset_and_errors(tmp_path, llama):
    base, ft = llama
    app = typer.Typer()
    app.command()(convert_cmd)
    r = CliRunner().invoke(app, [str(base), str(ft), "-o", str(tmp_path / "o.ddq"), "--ratio", "128", "-q"])
    assert r.exit_code == 0, r.output
    alg = open_ddq(tmp_path / "o.ddq").header["algorithm"]
    assert (alg["alpha"], alg["bits"], alg["parts"], alg["nominal_ratio"]) == (8, 4, 8, 128.0)
    r = CliRunner().invoke(app, [str(base), str(ft), "-o", str(tmp_path / "p.ddq"), "--alpha", "3",
                                 "--group-size", "8"])
    assert r.exit_code == 2 and "group size 8 is not a positive multiple of alpha 3" in r.output
    r = CliRunner().invoke(app, [str(base), str(ft), "-o", str(tmp_path / "p.ddq"), "--ratio", "64"])
    assert r.exit_code == 0 and "alpha=8, k=4 bits, m=4 parts (nominal 64x)" in r.output
    assert "group-size search" in r.output and "true ratio" in r.output
    calib = tmp_path / "calib.txt"
    calib.write_text("one two three four five six seven")
    r = CliRunner().invoke(app, [str(base), str(ft), "-o", str(tmp_path / "q.ddq"), "--calib", str(calib), "-q"])
    assert r.exit_code == 0, r.output
    from ddq_format.converters.groupsize import tokenize
    rec = open_ddq(tmp_path / "q.ddq").header["algorithm"]["group_size_search"]
    assert rec["tokens"] == len(tokenize(ft, calib.read_text(), 512)) < 40  # not the built-in text (512)


MEMORY = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from ddq_format.converters import convert
    from ddq_format.converters.pipeline import convert as _c  # imports done before the baseline
    import rich.progress, rich.table
    def hwm():  # peak RSS of this process image (ru_maxrss would inherit pytest's peak across exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    convert(sys.argv[5], sys.argv[6], sys.argv[4] + ".warm", workers=2, alpha=8, bits=4, parts=8, progress=False,
            quiet=True)  # lazy imports and thread pools first: they are the fixed overhead, not the bound
    peak0 = hwm()
    s = convert(sys.argv[1], sys.argv[2], sys.argv[4], workers=2, alpha=8, bits=4, parts=8,
                progress=False, quiet=True)
    print(json.dumps({"before": peak0, "after": hwm(),
                      "fallback": s.group_size_search}))
""")


def test_peak_memory_stays_within_three_largest_tensors(tmp_path):
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    # Tensors above glibc's largest mmap threshold (32 MiB), as in real models: freed memory goes back to the OS.
    shapes = {"big.weight": (4096, 4096), "mid.weight": (3072, 4096), "mid2.weight": (4096, 3072),
              "norm.weight": (4096,)}
    for name, scale, shp_of in (("base", 0.0, shapes), ("ft", 1.0, shapes), ("wb", 0.0, {"w.weight": (64, 64)}),
                                ("wf", 1.0, {"w.weight": (64, 64)})):
        d = tmp_path / name
        d.mkdir()
        sd = {}
        for n, shp in shp_of.items():
            r = np.random.default_rng(hash(n) % 1000)
            sd[n] = (r.standard_normal(shp, np.float32) * 0.02
                     + scale * 1e-3 * rng.standard_normal(shp, np.float32)).astype(np.float32)
        save_file(sd, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps({"model_type": "toy"}))
    largest = 4096 * 4096 * 4
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.run([sys.executable, "-c", MEMORY, str(tmp_path / "base"), str(tmp_path / "ft"), root,
                        str(tmp_path / "o.ddq"), str(tmp_path / "wb"), str(tmp_path / "wf")],
                       capture_output=True, text=True, check=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["fallback"]["fallback"] is True  # unknown architecture: fixed h_g with a warning
    grown = r["after"] - r["before"]
    print(f"peak RSS grew by {grown / 2**20:.1f} MiB = {grown / largest:.2f}x the largest fp32 tensor")
    assert grown <= 3 * largest, f"peak grew by {grown / largest:.2f}x the largest fp32 tensor"


def test_model_ids_resolve_from_the_local_hf_cache_only(tmp_path, llama, quiet_convert, monkeypatch):
    import huggingface_hub.constants as c
    base, ft = llama
    cache = tmp_path / "hub"
    for repo, src in (("tiny/base", base), ("tiny/ft", ft)):
        d = cache / f"models--{repo.replace('/', '--')}"
        (d / "refs").mkdir(parents=True)
        (d / "refs" / "main").write_text("0" * 40)
        shutil.copytree(src, d / "snapshots" / ("0" * 40))
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    quiet_convert("tiny/base", "tiny/ft", tmp_path / "a.ddq", group_size=8)
    quiet_convert(base, ft, tmp_path / "b.ddq", group_size=8)
    assert (tmp_path / "a.ddq").read_bytes() == (tmp_path / "b.ddq").read_bytes()
    with pytest.raises(UsageError, match="not in the local Hugging Face cache"):
        quiet_convert("tiny/missing", "tiny/ft", tmp_path / "c.ddq")


def test_resume_after_a_crash_among_the_auxiliary_files(tmp_path, llama, quiet_convert):
    base, ft = llama
    quiet_convert(base, ft, tmp_path / "whole.ddq", group_size=8)
    out = tmp_path / "out.ddq"
    from ddq_format.converters import resume
    real, n = resume.ResumableWriter.add_file, [0]

    def add_file(self, *a):
        if n[0] == 2:
            raise KeyboardInterrupt  # Ctrl-C: abort() keeps the partial file and the journal
        n[0] += 1
        return real(self, *a)
    resume.ResumableWriter.add_file = add_file
    try:
        with pytest.raises(KeyboardInterrupt):
            quiet_convert(base, ft, out, group_size=8)
    finally:
        resume.ResumableWriter.add_file = real
    assert not out.exists()
    quiet_convert(base, ft, out, group_size=8, resume=True)
    assert out.read_bytes() == (tmp_path / "whole.ddq").read_bytes()


def test_alpha_wider_than_every_row_stores_dense_deltas(tmp_path):
    """alpha > h_in of the searched layer: the search must not crash; rows shorter than alpha are stored dense."""
    from ddq_format import DDQFile
    from ddq_format.converters import convert
    from tests.tiny_models import make_pair

    base, ft = make_pair(tmp_path, "llama", dtype="float32", steps=1, hidden=64)
    out = tmp_path / "wide.ddq"
    convert(base, ft, out, alpha=128, bits=4, quiet=True, progress=False)
    with DDQFile(out) as f:
        kinds = {n: (e["kind"], e["shape"][1]) for n, e in f.entries.items() if n.endswith("proj.weight")}
    assert any(cols < 128 for _, cols in kinds.values())  # the case under test exists
    for name, (kind, cols) in kinds.items():
        assert kind == ("dense" if cols < 128 else "compressed"), name
