"""`csr_parts`: the paper's separate quantization stored as m CSR parts (SPEC.md §csr_parts).

Buffers: row_offsets [m, rows+1] (U32, or U64 when nnz >= 2^32), offsets within each part; col_indices
[nnz] in the narrowest unsigned type that holds cols-1, parts concatenated in order j = 0..m-1;
values: nnz codes Q_j of b = k - log2 m bits, bit-packed as one stream in the same order.
Element e of part j dequantizes to s * (Q_j - z - o_j).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import accel, bitpack
from ..quantize import Quantizer, check_parts, dequantize, fit, part_offsets, quantize, split_parts
from ..spec import ENC_CSR_PARTS, INDEX_DTYPES, MAX_BITS, MAX_SEED, OFFSET_DTYPES, PACKED, index_dtype_for, offsets_dtype
from . import Encoded
from ._common import alpha_group, as_bytes, buffer, matrix_shape, nbytes, param, view

ID = ENC_CSR_PARTS
ROLES = {"row_offsets": "row_offsets", "col_indices": "col_indices", "values": "values"}
KEPT_ORDER = False  # positions are stored, columns ascending within each part's rows
SEPARATE_PARTS = True


@dataclass
class Part:
    """One part j: CSR arrays and its stored codes; dense value = scale * (codes - zero - offset)."""
    row_offsets: np.ndarray
    col_indices: np.ndarray
    codes: np.ndarray
    offset: int


def encode(shape, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, *, bits: int, parts: int,
           alpha: int, group_size: int, seed: int = 0, quantizer: Quantizer | None = None) -> Encoded:
    """Encode the sparse matrix given by COO triplets (any order, no duplicates) of kept, rescaled values."""
    n_rows, n_cols = shape
    part_bits = check_parts(bits, parts)
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    values = np.asarray(values, np.float32)
    qz = quantizer or fit(values, bits)
    part, code = split_parts(quantize(values, qz), bits, parts)
    # Order: part, then row, then column; np.lexsort sorts by the last key first.
    order = np.lexsort((cols, rows, part))
    part, rows, cols, code = part[order], rows[order], cols[order], code[order]
    nnz = int(values.size)
    off_dtype = offsets_dtype(nnz)
    counts = np.zeros((parts, n_rows), np.int64)
    np.add.at(counts, (part, rows), 1)
    row_offsets = np.zeros((parts, n_rows + 1), np.int64)
    np.cumsum(counts, axis=1, out=row_offsets[:, 1:])
    idx_dtype = index_dtype_for(max(n_cols - 1, 0))
    params = {"alpha": int(alpha), "group_size": int(group_size), "bits": int(bits), "parts": int(parts),
              "scale": qz.scale, "zero": qz.zero, "offsets": part_offsets(bits, parts), "nnz": nnz,
              "seed": int(seed)}
    return Encoded(ENC_CSR_PARTS, params, {
        "row_offsets": (off_dtype, as_bytes(row_offsets, off_dtype)),
        "col_indices": (idx_dtype, as_bytes(cols, idx_dtype)),
        "values": (PACKED, bitpack.pack(code, part_bits)),
    })


def check(entry, ctx):
    n_rows, n_cols = matrix_shape(entry, ctx)
    alpha_group(entry, ctx, n_cols)
    bits = param(entry, "bits", ctx, int, 1, MAX_BITS)
    parts = param(entry, "parts", ctx, int, 1, 1 << bits)
    try:
        part_bits = check_parts(bits, parts)
    except ValueError as e:
        raise ctx.fail(str(e), "params.parts") from None
    param(entry, "scale", ctx, float, 0.0)
    param(entry, "zero", ctx, int, 0, (1 << bits) - 1)  # fit() keeps 0 inside [min, max]
    param(entry, "seed", ctx, int, 0, MAX_SEED)
    nnz = param(entry, "nnz", ctx, int, 0, n_rows * n_cols)
    offsets = entry["params"].get("offsets")
    if not isinstance(offsets, list) or any(type(o) is not int for o in offsets) or offsets != part_offsets(bits, parts):
        raise ctx.fail(f"must be {part_offsets(bits, parts)} for k={bits}, m={parts}", "params.offsets")
    # Offsets run up to nnz; column indices up to cols - 1 (only stored when nnz > 0).
    buffer(entry, "row_offsets", ctx, OFFSET_DTYPES, count=parts * (n_rows + 1), holds=nnz, what="row offset")
    buffer(entry, "col_indices", ctx, INDEX_DTYPES, count=nnz, holds=n_cols - 1 if nnz else None,
           what="column index")
    buffer(entry, "values", ctx, (PACKED,), bitpack.packed_nbytes(nnz, part_bits))


def _arrays(entry, bufs, ctx, unpacked=True):
    """(row_offsets int64 [m, rows+1], col_indices, stored codes), validated (offsets monotone and consistent
    with nnz, columns in range). unpacked=False: the codes as their packed bytes."""
    from ._common import Ctx
    ctx = ctx or Ctx(None, entry.get("name"))
    p = entry["params"]
    n_rows, n_cols = entry["shape"]
    m, nnz = p["parts"], p["nnz"]
    ro = view(bufs["row_offsets"], entry["buffers"]["row_offsets"]["dtype"]).reshape(m, n_rows + 1).astype(np.int64)
    if (ro[:, 0] != 0).any() or (np.diff(ro, axis=1) < 0).any():
        raise ctx.fail("row offsets must start at 0 and never decrease", "buffers.row_offsets")
    if (ro[:, -1] > nnz).any() or int(ro[:, -1].sum()) != nnz:  # first test keeps the int64 sum from wrapping
        raise ctx.fail(f"row offsets add up to {int(ro[:, -1].sum())} elements, params.nnz is {nnz}",
                       "buffers.row_offsets")
    ci = view(bufs["col_indices"], entry["buffers"]["col_indices"]["dtype"])
    if nnz and int(ci.max()) >= n_cols:
        raise ctx.fail(f"column index {int(ci.max())} out of range for {n_cols} columns", "buffers.col_indices")
    part_bits = p["bits"] - (m.bit_length() - 1)
    codes = (bitpack.unpack if unpacked else bitpack.packed_view)(bufs["values"], part_bits, nnz)
    return ro, ci, codes


def parts(entry, bufs, ctx=None) -> list[Part]:
    """The raw parts, validated (offsets monotone and consistent with nnz, columns in range)."""
    ro, ci, codes = _arrays(entry, bufs, ctx)
    out, start = [], 0
    for j, offset in enumerate(entry["params"]["offsets"]):
        end = start + int(ro[j, -1])
        out.append(Part(ro[j], ci[start:end], codes[start:end], offset))
        start = end
    return out


parts_of = parts  # the name kernels and tests know


def decode(entry, bufs) -> np.ndarray:
    p = entry["params"]
    n_rows, n_cols = entry["shape"]
    k = accel.kernels()
    part_bits = p["bits"] - (p["parts"].bit_length() - 1)
    if k is not None and part_bits:  # row by row over the parts: each output row written once, while in cache
        ro, ci, packed = _arrays(entry, bufs, None, unpacked=False)
        luts = np.stack([k.code_lut(p["scale"], p["zero"], o) for o in p["offsets"]])
        return k.csr_scatter(ro, ci, packed, part_bits, luts, n_rows, n_cols)
    out = np.zeros(n_rows * n_cols, np.float32)
    for part in parts(entry, bufs):
        if not part.codes.size:
            continue
        row = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(part.row_offsets))
        out[row * n_cols + part.col_indices] = dequantize(part.codes, p["scale"], p["zero"], part.offset)
    return out.reshape(n_rows, n_cols)
