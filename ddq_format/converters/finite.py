"""Non-finite input is refused with an error naming the file and the tensor (a NaN or inf in a delta would be
carried into every model loaded from the file).

Dense and replace tensors (norms, biases, embeddings kept dense) are this module's: the small ones are read and
checked right after the plan, before any heavy work; the large ones when the tensor work reads them (one
blocked pass over the array already in memory, no second read from disk). Compressed linear weights are
checked inside their own fused pass (tensor_work), not here.
"""
from __future__ import annotations

from ..spec import KIND_COMPRESSED, KIND_DENSE, KIND_REPLACE
from .checkpoint import Checkpoint, count_non_finite, non_finite
from .methods import tensor_group_size

EARLY_CHECK_ELEMENTS = 1 << 20  # dense/replace tensors up to this size are checked before any heavy work


def checked_names(tasks, opts, group_size) -> tuple[set[str], set[str]]:
    """(fine-tune names, base names) whose values this module checks: both sides of dense tasks and of
    compressed ones that will be stored dense (rows shorter than alpha); the fine-tune side of replace tasks
    (their base side is read for its binding only)."""
    ft, base = set(), set()
    for t in tasks:
        dense_fallback = (t.kind == KIND_COMPRESSED and opts.uses_groups and group_size is not None
                          and tensor_group_size(group_size, t.shape[1], opts.alpha) is None)
        if t.kind == KIND_DENSE or dense_fallback:
            ft.add(t.name)
            base.add(t.name)
        elif t.kind == KIND_REPLACE:
            ft.add(t.name)
    return ft, base


def check_small(tasks, base: Checkpoint, ft: Checkpoint) -> None:
    """Read and check the small dense and replace tensors of both checkpoints now (norms, biases)."""
    for t in tasks:
        if t.kind in (KIND_DENSE, KIND_REPLACE) and t.numel <= EARLY_CHECK_ELEMENTS:
            for ck in (ft, base) if t.kind == KIND_DENSE else (ft,):
                _check(ck, t.name, ck.read(t.name))


def _check(ck: Checkpoint, name, bits) -> None:
    info = ck.tensors[name]
    bad = count_non_finite(bits, info.dtype)
    if bad:
        raise non_finite(info, bad)


class FiniteReads:
    """A Checkpoint whose `read` refuses non-finite values of the tensors in `names`; all else delegated."""

    def __init__(self, ck: Checkpoint, names: set[str]):
        self._ck, self._names = ck, names

    def __getattr__(self, attr):
        return getattr(self._ck, attr)

    def read(self, name):
        bits = self._ck.read(name)
        if name in self._names:
            _check(self._ck, name, bits)
        return bits
