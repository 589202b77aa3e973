"""csr_parts buffers built straight from row-major kept values: the converter's memory-lean fast path.

csr_parts.encode takes COO triplets in any order and sorts them (np.lexsort over int64 keys: about 70 bytes
of temporaries per kept element, 9x the delta's float32 size at alpha=2). The converter's kept values already
come as a [rows, kept_per_row] matrix with columns ascending in each row, so the (part, row, column) order
is one stable pass per part over uint8 codes: ~10 bytes per kept element and no sort. The result is
byte-for-byte what csr_parts.encode returns for the same elements (tests/converters/test_csr_rows.py).
"""
from __future__ import annotations

import numpy as np

from .. import accel, bitpack
from ..encodings import Encoded
from ..quantize import Quantizer, check_parts, fit, part_offsets, quantize
from ..spec import ENC_CSR_PARTS, PACKED, index_dtype_for, offsets_dtype

_NP = {"U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8"}


def encode_rows(shape, cols: np.ndarray, values: np.ndarray, *, bits: int, parts: int, alpha: int,
                group_size: int, seed: int = 0, quantizer: Quantizer | None = None) -> Encoded:
    """cols, values: [rows, kept_per_row], columns strictly ascending within each row."""
    n_rows, n_cols = shape
    part_bits = check_parts(bits, parts)
    values = np.asarray(values, np.float32)
    qz = quantizer or fit(values, bits)
    q = quantize(values, qz)
    nnz = int(values.size)
    off_dtype = offsets_dtype(nnz)
    idx_dtype = index_dtype_for(max(n_cols - 1, 0))
    k = accel.kernels()
    if k is not None:
        row_offsets, col_out, code_out = k.csr_rows(cols, q, part_bits, parts, _NP[idx_dtype])
    else:
        row_offsets, col_out, code_out = _rows_numpy(cols, q, part_bits, parts, _NP[idx_dtype])
    params = {"alpha": int(alpha), "group_size": int(group_size), "bits": int(bits), "parts": int(parts),
              "scale": qz.scale, "zero": qz.zero, "offsets": part_offsets(bits, parts), "nnz": nnz,
              "seed": int(seed)}
    return Encoded(ENC_CSR_PARTS, params, {
        "row_offsets": (off_dtype, np.ascontiguousarray(row_offsets.astype(_NP[off_dtype])).view(np.uint8)),
        "col_indices": (idx_dtype, col_out.view(np.uint8)),
        "values": (PACKED, bitpack.pack(code_out, part_bits)),
    })


def _rows_numpy(cols, q, part_bits, parts, idx_np):
    """(row_offsets int64 [parts, rows+1], col_indices, stored codes): one stable pass per part."""
    n_rows = q.shape[0]
    part = q >> np.uint8(part_bits)
    q = q & np.uint8((1 << part_bits) - 1)  # the stored codes Q_j
    row_offsets = np.zeros((parts, n_rows + 1), np.int64)
    col_out = np.empty(q.size, idx_np)
    code_out = np.empty(q.size, np.uint8)
    start = 0
    for j in range(parts):
        sel = part == j
        np.cumsum(sel.sum(axis=1), out=row_offsets[j, 1:])
        end = start + int(row_offsets[j, -1])
        col_out[start:end] = cols[sel]
        code_out[start:end] = q[sel]
        start = end
        del sel
    return row_offsets, col_out, code_out
