"""Build small .ddq files with compressed entries for the kernel tests (encodings + dropout directly)."""
from __future__ import annotations

import numpy as np

from ddq_format.converters.dropout import groupwise_dropout
from ddq_format.encodings import csr_parts, seeded, seeded_rans, seeded_rans_split
from ddq_format.reader import DDQFile
from ddq_format.writer import Writer
from seeding import stable_rng  # noqa: F401  (re-exported)

MATMUL_TOL = 1e-5  # relative Frobenius error of a float32 product vs float64
HALF_TOL = 2e-3  # the same for float16 inputs and outputs (one fp16 rounding of x and of the result)


def make_delta(rng, rows, cols, *, encoding, alpha, group_size, bits, parts=1, seed=None, rows_per_stream=None,
               hot=None):
    """The Encoded entry of a random Gaussian delta with group-wise dropout. seeded_rans_split: `hot` =
    (n hot columns, their alpha, their group size), the hot columns drawn at random (or n: the list of them),
    the rest at alpha."""
    seed = int(rng.integers(0, 2**32)) if seed is None else seed
    if encoding == "seeded_rans_split":
        n_hot, a_hot, g_hot = hot
        cols_hot = np.array(n_hot) if isinstance(n_hot, list) else np.sort(rng.choice(cols, n_hot, replace=False))
        n_hot = cols_hot.size
        kw = dict(encoding="seeded_rans", bits=bits, rows_per_stream=rows_per_stream)
        return seeded_rans_split.encode(
            (rows, cols), cols_hot, make_delta(rng, rows, n_hot, alpha=a_hot, group_size=g_hot, seed=seed ^ 1, **kw),
            make_delta(rng, rows, cols - n_hot, alpha=alpha, group_size=group_size, seed=seed, **kw))
    delta = (rng.standard_normal((rows, cols)) * rng.uniform(0.001, 0.1)).astype(np.float32)
    kept, values = groupwise_dropout(delta, alpha, group_size, seed)
    if encoding == "seeded":
        return seeded.encode((rows, cols), values, bits=bits, alpha=alpha, group_size=group_size, seed=seed)
    if encoding == "seeded_rans":
        return seeded_rans.encode((rows, cols), values, bits=bits, alpha=alpha, group_size=group_size, seed=seed,
                                  rows_per_stream=rows_per_stream)
    r = np.repeat(np.arange(rows), kept.shape[1])
    return csr_parts.encode((rows, cols), r, kept.reshape(-1), values.reshape(-1), bits=bits, parts=parts,
                            alpha=alpha, group_size=group_size, seed=seed)


def write_file(path, specs, rng):
    """specs: list of (name, rows, cols, kwargs for make_delta). Returns an open DDQFile."""
    with Writer(path) as w:
        for name, rows, cols, kw in specs:
            w.add(name, "compressed", (rows, cols), "F16", make_delta(rng, rows, cols, **kw))
    return DDQFile(path)


def write_cases(tmp_path, rng, cases):
    """A file with one entry per (rows, cols, kwargs) case, named t0, t1, ...: (DDQFile, names)."""
    specs = [(f"t{i}", r, c, kw) for i, (r, c, kw) in enumerate(cases)]
    return write_file(tmp_path / "d.ddq", specs, rng), [s[0] for s in specs]


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


CUDA = cuda_available()
DEVICE = "cuda" if CUDA else "cpu"
