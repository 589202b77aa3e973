"""The numba backend: numpy-level entry points over the jitted kernels of _kernels.py.

Callers validate their inputs first (the kernels do no bounds checks); each function here returns exactly
what the numpy function named in its docstring returns.
"""
from __future__ import annotations

import functools

import numpy as np
import numba  # noqa: F401  (ImportError here = no accelerated path)

from . import _kernels as _k, _threads
from .llvmlite_guard import guard
from ._kernels import NONFINITE_BASE, NONFINITE_DELTA, NONFINITE_FT  # noqa: F401


guard()  # numba has loaded llvmlite: see llvmlite_guard

_EXP_MASK = {"F32": 0x7F800000, "F16": 0x7C00, "BF16": 0x7F80}  # NaN or inf: exponent bits all ones
_DUMMY_LUT = np.zeros(1, np.float32)


@functools.cache
def _lut16(dtype: str) -> np.ndarray:
    """float32 value of every 16-bit pattern of F16 or BF16 (what converters.checkpoint.to_f32 computes)."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    if dtype == "BF16":
        return (bits << np.uint32(16)).view(np.float32)
    return bits.astype(np.uint16).view(np.float16).astype(np.float32)


def _source(bits: np.ndarray, dtype: str):
    """(flat bit-pattern array, float32 table, exponent mask) of one weight as Checkpoint.read returns it;
    the array's integer type tells the kernels the format (see _k.to_f32)."""
    flat = np.ascontiguousarray(bits).reshape(-1)
    view = {"F32": np.uint32, "BF16": np.uint16, "F16": np.int16}[dtype]
    return flat.view(view), _lut16("F16") if dtype == "F16" else _DUMMY_LUT, np.uint64(_EXP_MASK[dtype])


def code_lut(scale: float, zero: int, offset: int = 0) -> np.ndarray:
    """float32 [256]: the decoded value of every uint8 code, by quantize.dequantize itself (bit-identical)."""
    from ..quantize import dequantize
    return dequantize(np.arange(256, dtype=np.uint8), scale, zero, offset)


# -- mask, bit packing -----------------------------------------------------------------------------
def mask_columns(seed, rows, cols, group_size, alpha, row_stride=0) -> np.ndarray:
    """seeded_mask.mask_columns."""
    from ..seeded_mask import kept_per_row
    out = np.empty((rows, kept_per_row(cols, group_size, alpha)), np.int64)
    _k.mask_columns(int(seed) & 0xFFFFFFFF, rows, cols, group_size, alpha, row_stride, out)
    return out


def pack(codes: np.ndarray, bits: int) -> np.ndarray | None:
    """bitpack.pack for 1 <= bits <= 7 (None when a code does not fit: the caller raises)."""
    codes = np.ascontiguousarray(codes).reshape(-1)
    out = np.empty((codes.size * bits + 7) // 8, np.uint8)
    return out if _k.pack(codes, bits, out) else None


def unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """bitpack.unpack for 1 <= bits <= 7 (the caller checked the length)."""
    out = np.empty(count, np.uint8)
    _k.unpack(_padded(data), bits, count, out)
    return out


# -- decode ----------------------------------------------------------------------------------------
def seeded_scatter(codes: np.ndarray, lut: np.ndarray, seed, rows, cols, group_size, alpha, *,
                   bits: int = 8, columns: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """encodings.seeded.scatter (lut = code_lut(scale, zero); sign_scale passes its own two values).
    codes: uint8 codes (bits=8), or the packed `bits`-bit stream itself (unpacked on the fly).
    columns (int64 [cols]) and out (float32 [rows, W], C-contiguous): write column c into out[:, columns[c]]
    (elsewhere out is left as it is) and return out."""
    seed = int(seed) & 0xFFFFFFFF
    if columns is None:
        flat = np.zeros(rows * cols, np.float32)
        _k.seeded_scatter(_padded(codes), bits, lut, seed, rows, cols, group_size, alpha, flat, cols, None)
        return flat.reshape(rows, cols)
    _k.seeded_scatter(_padded(codes), bits, lut, seed, rows, cols, group_size, alpha, out.reshape(-1), out.shape[1],
                      np.ascontiguousarray(columns, np.int64))
    return out


def seeded_products(codes: np.ndarray, scale, zero, seed, rows, cols, group_size, alpha, bits: int,
                    xt: np.ndarray, y: np.ndarray, columns=None) -> np.ndarray:
    """y (float32 [T, rows], C-contiguous) += x · Dᵀ of the seeded delta these packed codes store, without
    forming it: xt = xᵀ (float32 [in, T], C-contiguous). columns: None, or (list: U16/U32 bit patterns, complement)
    of a split delta's class: column c of D reads row input_columns(...)[c] of xt. Returns y."""
    colmap = None
    if columns is not None:
        listed, complement = columns
        listed = np.ascontiguousarray(listed)
        colmap = _k.input_columns(listed.reshape(-1).view(np.uint8), listed.itemsize, bool(complement), cols)
    _k.seeded_products(np.ascontiguousarray(codes, np.uint8).reshape(-1), bits, float(scale), int(zero),
                       int(seed) & 0xFFFFFFFF, rows, cols, group_size, alpha, xt, y, colmap)
    return y


def product_table(arrays: list) -> "numba.typed.List":
    """The byte arrays (packed codes, raw column lists) of a seeded_products_multi table, as numba's list."""
    from numba.typed import List
    out = List()
    for a in arrays:
        out.append(np.ascontiguousarray(a, np.uint8).reshape(-1))
    return out


def seeded_products_multi(arrays, parts: np.ndarray, scales: np.ndarray, slot_parts: np.ndarray, runs: np.ndarray,
                          order: np.ndarray, x: np.ndarray, y: np.ndarray, threads: int = 1,
                          min_work: int = 0) -> int:
    """y (float32 [B, out], any strides) += each run's tokens of x (float32 [B, in]) times its slot's parts,
    straight from their codes (_kernels.seeded_products_multi; arrays from product_table), on up to `threads`
    threads when the call's work is at least min_work (the same bits on any number). Returns the work."""
    nt = _threads.usable(threads)  # first, even for one thread: it picks numba's layer before any compile
    return _k.seeded_products_multi(arrays, parts, scales, slot_parts, runs, order, x, y, nt, min_work)


def _padded(packed: np.ndarray) -> np.ndarray:
    """The packed stream plus one zero byte, so the kernels read every code's 16-bit window in bounds."""
    flat = np.ascontiguousarray(packed, np.uint8).reshape(-1)
    out = np.empty(flat.size + 1, np.uint8)
    out[:-1] = flat
    out[-1] = 0
    return out


def csr_scatter(row_offsets: np.ndarray, col_indices, packed, bits, luts, rows, cols) -> np.ndarray:
    """encodings.csr_parts.decode from validated parts: row_offsets int64 [m, rows+1], the packed `bits`-bit
    codes (bits >= 1), luts float32 [m, 256]."""
    part_start = np.concatenate([[0], np.cumsum(row_offsets[:, -1])[:-1]]).astype(np.int64)
    out = np.zeros(rows * cols, np.float32)
    _k.csr_scatter(np.ascontiguousarray(row_offsets), part_start, col_indices, _padded(packed), bits, luts, rows,
                   cols, out)
    return out.reshape(rows, cols)


def csr_f16_scatter(row_offsets, col_indices, values_f16, rows, cols) -> np.ndarray:
    """encodings.csr_f16.decode from validated arrays."""
    out = np.zeros(rows * cols, np.float32)
    _k.csr_f16_scatter(row_offsets, col_indices, values_f16.view(np.uint16), _lut16("F16"), rows, cols, out)
    return out.reshape(rows, cols)


@functools.lru_cache(maxsize=64)
def _rans_table(freqs: tuple) -> np.ndarray:
    f = np.asarray(freqs, np.uint64)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.uint64)
    sym = np.repeat(np.arange(f.size, dtype=np.uint64), f.astype(np.int64))
    slot = np.arange(sym.size, dtype=np.uint64)
    return sym | ((slot - cum[sym]) << np.uint64(8)) | (f[sym] << np.uint64(20))


def rans_decode(words: np.ndarray, word_offsets: np.ndarray, symbols: np.ndarray, freqs) -> tuple[np.ndarray, int]:
    """(codes of every stream back to back, index of the first invalid stream or -1). word_offsets [n+1]
    int64 validated (0 .. len(words), every stream at least 2 words); freqs sum to 4096."""
    out = np.empty(int(symbols.sum()), np.uint8)
    bad = _k.rans_decode(words, word_offsets, symbols.astype(np.int64), _rans_table(tuple(freqs)), out)
    return out, int(bad)


# -- encode ----------------------------------------------------------------------------------------
def gather_kept(ft, ft_dtype, base, base_dtype, seed, group_size, alpha, factors, sort_columns=False):
    """The fused convert pass: (flags, values [rows, K] float32, columns [rows, K] or None) with
    values = dropout.groupwise_dropout_blocked(float32(ft) - float32(base), ...) values (sort_columns as
    there). base None: ft is the float32 delta itself. flags: NONFINITE_FT / NONFINITE_BASE when an element
    of ft or base, kept or not, is NaN or inf (an overflow of the subtraction is the caller's to test)."""
    rows, cols = ft.shape
    f, lut_f, em_f = _source(ft, ft_dtype)
    if base is None:
        b, lut_b, em_b, has_base = f, lut_f, em_f, False
    else:
        b, lut_b, em_b = _source(base, base_dtype)
        has_base = True
    per_row = factors.size
    vals = np.empty(rows * per_row, np.float32)
    kept = np.empty(rows * per_row if sort_columns else 1, np.uint16 if cols <= 1 << 16 else np.uint32)
    flags = _k.gather_kept(f, lut_f, em_f, b, lut_b, em_b, has_base, int(seed) & 0xFFFFFFFF, rows, cols,
                           group_size, alpha, factors, sort_columns, vals, kept)
    return (int(flags), vals.reshape(rows, per_row), kept.reshape(rows, per_row) if sort_columns else None)


def delta(ft, ft_dtype, base, base_dtype, out_dtype, in_place=False):
    """(flags, fine-tune - base in float32 stored as out_dtype F32 or BF16 bits), as tensor_work.delta_blocks.
    in_place (F32 fine-tune, F32 out): the delta overwrites the fine-tune's array."""
    f, lut_f, em_f = _source(ft, ft_dtype)
    b, lut_b, em_b = _source(base, base_dtype)
    if out_dtype == "F32":
        out = f.view(np.float32) if in_place and ft_dtype == "F32" else np.empty(f.size, np.float32)
    else:
        out = np.empty(f.size, np.uint16)
    flags = _k.delta(f, lut_f, em_f, b, lut_b, em_b, out)
    return int(flags), out.reshape(ft.shape)


def quantize(values: np.ndarray, scale: float, zero: int, bits: int) -> np.ndarray:
    """quantize.quantize for scale > 0 (None when a value is NaN: the caller takes the numpy path)."""
    v = np.ascontiguousarray(values, np.float32)
    out = np.empty(v.shape, np.uint8)
    return out if _k.quantize(v.reshape(-1), scale, zero, (1 << bits) - 1, out.reshape(-1)) else None


def csr_rows(kept_cols, codes, part_bits, parts, idx_np):
    """(row_offsets int64 [parts, rows+1], col_indices, stored codes) in csr_rows.encode_rows' order."""
    rows, per_row = codes.shape
    row_offsets = np.zeros((parts, rows + 1), np.int64)
    col_out = np.empty(codes.size, idx_np)
    code_out = np.empty(codes.size, np.uint8)
    _k.csr_rows(kept_cols.reshape(-1), codes.reshape(-1), rows, per_row, part_bits, parts, row_offsets,
                     col_out, code_out)
    return row_offsets, col_out, code_out


def rans_encode(codes: np.ndarray, stream_symbols: np.ndarray, freqs: np.ndarray):
    """(words uint16, word count per stream) as seeded_rans._encode_lanes over every stream."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    scratch = np.empty(flat.size + 2 * stream_symbols.size, np.uint16)
    counts = np.empty(stream_symbols.size, np.int64)
    used = _k.rans_encode(flat, stream_symbols.astype(np.int64), np.asarray(freqs, np.int64), scratch, counts)
    return scratch[:used], counts
