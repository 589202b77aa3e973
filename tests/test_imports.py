"""A third-party runtime needs numpy + msgpack only: the core and the CLI must not import torch/triton."""
import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_reader_imports_without_torch(tmp_path):
    mods = _modules_after("import ddq_format\nfrom ddq_format import DDQFile, Writer\n"
                          "import ddq_format.loaders, ddq_format.converters")
    assert not {"torch", "triton", "vllm", "transformers"} & mods


def test_cli_imports_without_torch():
    mods = _modules_after("import ddq_format.cli")
    assert not {"torch", "triton", "vllm", "transformers"} & mods
