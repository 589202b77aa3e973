"""`seeded`: the dropout mask is regenerated from a seed (SPEC.md §seeded); only k-bit codes are stored.

Buffer `codes`: rows * kept_per_row codes of k bits, row-major, each row in kept order (group by group,
kept index i = 0..n_g-1 within a group). Element (r, e) dequantizes to s * (Q - z) at column
mask_columns(seed, ...)[r, e].
"""
from __future__ import annotations

import numpy as np

from .. import accel, bitpack
from ..quantize import Quantizer, dequantize, fit, quantize
from ..seeded_mask import kept_per_row, mask_columns
from ..spec import ENC_SEEDED, MAX_BITS, MAX_SEED, PACKED
from . import Encoded
from ._common import alpha_group, buffer, matrix_shape, param

ID = ENC_SEEDED
ROLES = {"codes": "values"}
KEPT_ORDER = True  # the mask is regenerated from the seed; only codes are stored, in kept order


def encode(shape, values: np.ndarray, *, bits: int, alpha: int, group_size: int, seed: int,
           quantizer: Quantizer | None = None) -> Encoded:
    """values: float32 [rows, kept_per_row], the kept (rescaled) values in kept order."""
    n_rows, n_cols = shape
    per_row = kept_per_row(n_cols, group_size, alpha)
    values = np.asarray(values, np.float32).reshape(n_rows, per_row)
    qz = quantizer or fit(values, bits)
    params = {"alpha": int(alpha), "group_size": int(group_size), "bits": int(bits), "scale": qz.scale,
              "zero": qz.zero, "seed": int(seed)}
    return Encoded(ENC_SEEDED, params, {"codes": (PACKED, bitpack.pack(quantize(values, qz), bits))})


def check_params(entry, ctx) -> tuple[int, int]:
    """The mask and quantizer params every seeded-mask encoding shares; returns (bits, codes in the entry)."""
    n_rows, n_cols = matrix_shape(entry, ctx)
    alpha, group = alpha_group(entry, ctx, n_cols)
    bits = param(entry, "bits", ctx, int, 1, MAX_BITS)
    param(entry, "scale", ctx, float, 0.0)
    param(entry, "zero", ctx, int, 0, (1 << bits) - 1)  # fit() keeps 0 inside [min, max]
    param(entry, "seed", ctx, int, 0, MAX_SEED)
    return bits, n_rows * kept_per_row(n_cols, group, alpha)


def check(entry, ctx):
    bits, count = check_params(entry, ctx)
    buffer(entry, "codes", ctx, (PACKED,), bitpack.packed_nbytes(count, bits))


def codes_of(entry, bufs) -> np.ndarray:
    p = entry["params"]
    n_rows, n_cols = entry["shape"]
    per_row = kept_per_row(n_cols, p["group_size"], p["alpha"])
    return bitpack.unpack(bufs["codes"], p["bits"], n_rows * per_row).reshape(n_rows, per_row)


def parts(entry, bufs, ctx=None) -> np.ndarray:
    """The code matrix [rows, kept_per_row] in kept order."""
    return codes_of(entry, bufs)


def scatter(entry, codes: np.ndarray, *, columns: np.ndarray | None = None,
            out: np.ndarray | None = None) -> np.ndarray:
    """The dense float32 delta from the code matrix: each code dequantized to its column of the seeded mask.
    columns (int64, one per column) and out (float32 [rows, W], C-contiguous): column c goes to
    out[:, columns[c]] instead (a seeded_rans_split class into the whole tensor), and out is returned."""
    p = entry["params"]
    n_rows, n_cols = entry["shape"]
    k = accel.kernels()
    if k is not None:  # the mask regenerated row by row while each output row is in cache
        return k.seeded_scatter(codes, k.code_lut(p["scale"], p["zero"]), p["seed"], n_rows, n_cols,
                                p["group_size"], p["alpha"], columns=columns, out=out)
    width = n_cols if columns is None else out.shape[1]
    flat = mask_columns(p["seed"], n_rows, n_cols, p["group_size"], p["alpha"])
    if columns is not None:
        flat = np.asarray(columns, np.int64)[flat]
    flat += np.arange(n_rows, dtype=np.int64)[:, None] * width
    dest = np.zeros(n_rows * n_cols, np.float32) if columns is None else out.reshape(-1)
    dest[flat.reshape(-1)] = dequantize(codes, p["scale"], p["zero"]).reshape(-1)  # put_along_axis is 10x slower
    return dest.reshape(n_rows, width)


def decode(entry, bufs, *, columns: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """The dense float32 delta (columns, out: into those columns of out, as scatter)."""
    k = accel.kernels()
    if k is not None:  # the packed codes read in place, no unpacked copy
        p = entry["params"]
        n_rows, n_cols = entry["shape"]
        count = n_rows * kept_per_row(n_cols, p["group_size"], p["alpha"])
        packed = bitpack.packed_view(bufs["codes"], p["bits"], count)
        return k.seeded_scatter(packed, k.code_lut(p["scale"], p["zero"]), p["seed"], n_rows, n_cols,
                                p["group_size"], p["alpha"], bits=p["bits"], columns=columns, out=out)
    return scatter(entry, codes_of(entry, bufs), columns=columns, out=out)
