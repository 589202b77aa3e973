"""apply_delta, finetuned_tensor and `ddq materialize` against the numpy oracle (base + DDQFile.decode)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parent))

from _build import checkpoint_state, expected_state, finetune, save_base, tiny_model, write_ddq  # noqa: E402

from ddq_format import BindingError, DDQFile, UsageError  # noqa: E402
from ddq_format.loaders import apply_delta, check_base_binding, finetuned_tensor  # noqa: E402
from ddq_format.loaders import materialize  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("mat")
    model = tiny_model(seed=0)
    base = checkpoint_state(model)
    ft = finetune(model)
    ddq = write_ddq(root / "ft.ddq", base, ft, config=model.config,
                    extra_files={"tokenizer_config.json": b'{"model_max_length": 64}'})
    base_dir = save_base(model, root / "base", shards=3)
    return {"root": root, "model": model, "base": base, "ddq": ddq, "base_dir": base_dir,
            "expected": expected_state(ddq, base)}


def test_fixture_covers_every_kind(pair):
    kinds = {e["kind"] for e in DDQFile(pair["ddq"]).entries.values()}
    encs = {e.get("encoding") for e in DDQFile(pair["ddq"]).entries.values()}
    assert {"compressed", "dense", "same"} <= kinds and {"csr_parts", "seeded"} <= encs
    assert (pair["base_dir"] / "model.safetensors.index.json").is_file()  # the base really is sharded


def test_apply_delta_state_dict_equals_oracle(pair):
    sd = {n: t.clone() for n, t in pair["base"].items()}
    apply_delta(sd, pair["ddq"])
    assert sd.keys() == pair["expected"].keys()
    for n, t in sd.items():
        assert torch.equal(t, pair["expected"][n]), n


def test_finetuned_tensor_kinds(pair):
    f = DDQFile(pair["ddq"])
    b = pair["base"]["model.norm.weight"]
    assert f.entries["model.norm.weight"]["kind"] == "same"
    assert torch.equal(finetuned_tensor(f, "model.norm.weight", b), b)
    with pytest.raises(BindingError, match="does not list it"):
        finetuned_tensor(f, "model.layers.9.mlp.up_proj.weight", b)
    name = "model.layers.0.self_attn.q_proj.weight"
    with pytest.raises(BindingError, match="needs the base tensor"):
        finetuned_tensor(f, name, None)


def test_binding_mismatch_is_refused_before_anything_changes(pair):
    other = tiny_model(seed=5)  # same architecture, different weights: the fingerprint must catch it
    before = {n: t.clone() for n, t in other.state_dict().items()}
    with pytest.raises(BindingError) as err:
        apply_delta(other, pair["ddq"])
    assert err.value.field == "base.fingerprint" and err.value.tensor == "model.embed_tokens.weight"
    assert "not the base model" in str(err.value)
    for n, t in other.state_dict().items():
        assert torch.equal(t, before[n]), f"{n} changed although the binding check failed"
    # dtype and shape mismatches name their field too
    f = DDQFile(pair["ddq"])
    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(BindingError) as err:
        check_base_binding(f, name, pair["base"][name].half())
    assert err.value.field == "base.dtype"
    with pytest.raises(BindingError) as err:
        check_base_binding(f, name, pair["base"][name][:-1])
    assert err.value.field == "base.shape"


def test_unlisted_tensor_in_model_is_an_error(pair):
    sd = {n: t.clone() for n, t in pair["base"].items()}
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(BindingError, match="extra.weight: not listed"):
        apply_delta(sd, pair["ddq"])


def test_materialize_loads_in_transformers_and_matches_apply_delta(pair, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    summary = materialize(pair["base_dir"], pair["ddq"], out, max_shard_size="100KB", progress=False)
    assert len(summary["weights"]) > 1 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(pair["expected"])
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64
    assert summary["files"]["config.json"] == "delta" and summary["files"]["tokenizer_config.json"] == "delta"
    assert (out / "generation_config.json").is_file()
    # tensors on disk == the oracle, bit for bit
    on_disk = {}
    for w in summary["weights"]:
        on_disk.update(load_file(out / w))
    assert on_disk.keys() == pair["expected"].keys()
    for n, t in on_disk.items():
        assert torch.equal(t, pair["expected"][n]), n
    # transformers loads it unchanged; logits equal apply_delta's model
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    applied = apply_delta(tiny_model(seed=0), pair["ddq"])
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, applied(ids).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_materialize_is_atomic(pair, tmp_path):
    wrong = tmp_path / "wrongbase"
    save_base(tiny_model(seed=3), wrong)
    out = tmp_path / "merged"
    with pytest.raises(BindingError):
        materialize(wrong, pair["ddq"], out, progress=False)
    assert not out.exists() and os.listdir(tmp_path) == ["wrongbase"], "a failed run left files behind"
    # an existing folder is kept unless overwrite is asked for, then replaced whole
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="output exists"):
        materialize(pair["base_dir"], pair["ddq"], out, progress=False)
    assert (out / "keep.txt").is_file()
    materialize(pair["base_dir"], pair["ddq"], out, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(os.listdir(tmp_path)) == ["merged", "wrongbase"]


def test_materialize_cli(pair, tmp_path):
    import typer
    from typer.testing import CliRunner

    from ddq_format.loaders.command import materialize as cmd

    app = typer.Typer()
    app.command()(cmd)
    app.command("noop")(lambda: None)  # two commands so the subcommand name is required, as in the real CLI
    out = tmp_path / "cli-out"
    r = CliRunner().invoke(app, ["materialize", str(pair["base_dir"]), str(pair["ddq"]), "-o", str(out),
                                 "--no-progress", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").is_file() and "tensors" in r.output
    r = CliRunner().invoke(app, ["materialize", str(pair["base_dir"]), str(pair["ddq"]), "-o", str(out)])
    assert r.exit_code == 2 and "output exists" in r.output


def test_tied_embeddings(tmp_path):
    """lm_head tied to the embedding: one update through the shared Parameter; the folder loads tied."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(seed=0, tied=True)
    base = checkpoint_state(model)
    assert "lm_head.weight" not in base
    ddq = write_ddq(tmp_path / "t.ddq", base, finetune(model), config=model.config, tied=True)
    expected = expected_state(ddq, base)
    applied = apply_delta(tiny_model(seed=0, tied=True), ddq)
    assert applied.lm_head.weight is applied.model.embed_tokens.weight
    assert torch.equal(applied.model.embed_tokens.weight, expected["model.embed_tokens.weight"])
    # a state dict from model.state_dict() holds both names as aliases of one storage: both follow
    sd = tiny_model(seed=0, tied=True).state_dict()
    apply_delta(sd, ddq)
    assert torch.equal(sd["lm_head.weight"], expected["model.embed_tokens.weight"])
    save_base(model, tmp_path / "base")
    materialize(tmp_path / "base", ddq, tmp_path / "out", progress=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(merged.lm_head.weight, expected["model.embed_tokens.weight"])
    ids = torch.arange(10).reshape(2, 5)
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, applied(ids).logits)


@pytest.mark.parametrize("files,match", [
    ({"model.safetensors": b"junk"}, "name of a weights file"),
    ({"model.safetensors.index.json": b"{}"}, "name of a weights file"),
    ({"model-00001-of-00002.safetensors": b"junk"}, "name of a weights file"),
    ({"extra/pytorch_model.bin": b"junk"}, "name of a weights file"),
    ({"a": b"1", "a/b": b"2"}, "needs 'a' to be a folder"),
    ({"a/b": b"2", "a": b"1"}, "is also a folder"),
    ({"Notes.txt": b"1", "notes.txt": b"2"}, "only in letter case"),
])
def test_aux_files_never_collide_with_what_materialize_writes(pair, tmp_path, files, match):
    """Fault 2 of issue 12: an aux file named model.safetensors silently replaced the weights; 'a' + 'a/b'
    crashed with FileExistsError. Both are refused before any tensor is read, and nothing is written."""
    ddq = write_ddq(tmp_path / "aux.ddq", pair["base"], finetune(pair["model"]), extra_files=files)
    out = tmp_path / "merged"
    with pytest.raises(UsageError, match=match) as err:
        materialize(pair["base_dir"], ddq, out, progress=False)
    assert err.value.path == str(ddq) and err.value.field.startswith("files.")
    assert sorted(os.listdir(tmp_path)) == ["aux.ddq"]


def test_base_files_only_fill_gaps_the_delta_leaves(pair, tmp_path):
    """A base file whose name the delta's files use as a folder (or in another letter case) is skipped."""
    import shutil
    base = tmp_path / "base"
    shutil.copytree(pair["base_dir"], base)
    (base / "docs").write_text("a base file named like the delta's folder")
    (base / "README.MD").write_text("base readme")
    (base / "LICENSE").write_text("base licence")
    ddq = write_ddq(tmp_path / "aux.ddq", pair["base"], finetune(pair["model"]),
                    extra_files={"docs/usage.md": b"from the delta", "readme.md": b"delta readme"})
    s = materialize(base, ddq, tmp_path / "out", progress=False)
    assert s["files"] == {"docs/usage.md": "delta", "readme.md": "delta", "LICENSE": "base",
                          "config.json": "base", "generation_config.json": "base"}
    assert (tmp_path / "out" / "docs" / "usage.md").read_bytes() == b"from the delta"
    assert (tmp_path / "out" / "readme.md").read_bytes() == b"delta readme"


def test_every_export_resolves_to_its_documented_object():
    """Fault 11 of issue 12: once the submodule `loaders.materialize` was imported, the package attribute was
    the module and `from ddq_format.loaders import materialize` returned it (materialize(...) -> TypeError)."""
    import importlib
    import pkgutil
    import types

    import ddq_format.loaders as loaders
    subs = {m.name for m in pkgutil.iter_modules(loaders.__path__)}
    for sub in subs:  # every submodule imported first: that is what used to rebind the name
        importlib.import_module(f"ddq_format.loaders.{sub}")
    assert not set(loaders.__all__) & subs, "an export named like a submodule is shadowed once it is imported"
    for name in loaders.__all__:
        obj = getattr(loaders, name)
        home = importlib.import_module(f"ddq_format.loaders.{loaders._EXPORTS[name]}")
        assert obj is getattr(home, name) and not isinstance(obj, types.ModuleType), name
        assert callable(obj) and obj.__module__ == home.__name__, name
    from ddq_format.loaders import materialize as m
    assert m is loaders.hf_folder.materialize
