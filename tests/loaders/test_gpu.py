"""The loaders on a CUDA device: decode on the GPU (Triton kernels) gives the same fine-tuned weights as the
CPU path bit for bit, and separate computation (the fused base + delta kernel for small batches) and mixed
batches (SGMV) match the materialized model there, for every encoding the kernels keep compressed.
Skipped without CUDA (CI has none); run on a lent GPU (benchmarks/gpu_run.sh)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
sys.path.insert(0, str(Path(__file__).parent))

from _build import checkpoint_state, finetune, tiny_model, write_ddq  # noqa: E402

from ddq_format.loaders import DeltaLinear, apply_delta, attach_deltas, patch_model, use_deltas  # noqa: E402

RTOL = 1e-4


def _close(a, b):
    return float((a - b).abs().max()) <= RTOL * max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("encoding", ["csr_parts", "seeded", "seeded_rans"])
def test_gpu_paths_match_cpu_and_materialized(tmp_path, encoding):
    base = tiny_model(seed=0)
    base_sd = checkpoint_state(base)
    ft_sd = finetune(base, seed=1)
    path = write_ddq(tmp_path / "d.ddq", base_sd, ft_sd, encoding=encoding)
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = apply_delta(tiny_model(seed=0), path)
        gpu = apply_delta(tiny_model(seed=0).cuda(), path)  # decoded by the Triton kernels on the device
        for (n, a), (_, b) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
            assert torch.equal(a, b.cpu()), n
        ref = gpu(ids.cuda()).logits
        patched = tiny_model(seed=0).cuda()
        info = patch_model(patched, path)
        assert isinstance(patched.model.layers[0].mlp.up_proj, DeltaLinear) and len(info["separate"]) == 15
        assert _close(patched(ids.cuda()).logits, ref)  # 21 tokens: cuBLAS base + delta kernel
        assert _close(patched(ids[:1].cuda()).logits, ref[:1])  # 7 tokens: the fused 16-token tile
        assert _close(patched(ids[:1, :1].cuda()).logits, ref[:1, :1])  # 1 token: the fused GEMV
        multi = tiny_model(seed=0).cuda()
        attach_deltas(multi, [path])
        with use_deltas(multi, [0, -1, 0]):
            mixed = multi(ids.cuda()).logits
        plain = tiny_model(seed=0).cuda()(ids.cuda()).logits
        for row, r in enumerate([ref[0], plain[1], ref[2]]):
            assert _close(mixed[row], r), row
