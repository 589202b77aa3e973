"""`seeded_rans` (format 1.1): the `seeded` encoding's k-bit codes, entropy-coded with rANS (SPEC.md §9.5).

Same mask, quantizer and params as `seeded`, plus a per-tensor frequency table `freqs` (2^k ints summing to
2^P) and `rows_per_stream` B. Rows are cut into streams of B rows (the last may be shorter); each stream
codes its rows' codes row-major in kept order, with its own 32-bit rANS state renormalised 16 bits at a
time. Streams are independent, so a decoder runs them in parallel: numpy vectorizes across streams here,
a GPU kernel would give each stream a thread.

Why blocks of rows and not one stream per row: a stream costs about 3 bytes of state slack plus a 4-byte
offset, while a row of the example model at alpha=64 holds ~10 codes (~3.3 bytes after coding); per-row
streams would be larger than plain `seeded`. The writer picks B so a stream holds ~1024 codes (~2%
overhead).

Buffers: `streams` (U8, the streams back to back) and `stream_offsets` (U32, or U64 when the stream bytes
reach 2^32): n_streams + 1 byte offsets into `streams`. Stream bytes: the encoder's final state as u32
little-endian, then u16 little-endian renormalisation words in the order the decoder reads them.
"""
from __future__ import annotations

import math

import numpy as np

from .. import accel
from ..errors import EncodingError
from ..quantize import Quantizer, fit, quantize
from ..seeded_mask import kept_per_row
from ..spec import (ENC_SEEDED_RANS, NP_DTYPES, OFFSET_DTYPES, RANS_MAX_STREAM_SYMBOLS, RANS_PROB_BITS, RANS_STATE_LOW,
                    RANS_SYMBOLS_PER_STREAM, offsets_dtype)
from . import Encoded
from ._common import as_bytes, buffer, param, view
from .seeded import check_params, scatter

ID = ENC_SEEDED_RANS
ROLES = {"streams": "values", "stream_offsets": "row_offsets"}  # coded codes; stream starts
KEPT_ORDER = True
ENTROPY_CODED = True  # parts() decodes the streams to seeded's code matrix

P = RANS_PROB_BITS
M = 1 << P
L = RANS_STATE_LOW
_RENORM_SHIFT = 32 - P  # encoder: renormalise while (x >> (32 - P)) >= f, i.e. x >= f * 2^(32-P)


# -- layout ----------------------------------------------------------------------------------------
def default_rows_per_stream(n_rows: int, per_row: int, symbols: int = RANS_SYMBOLS_PER_STREAM) -> int:
    return max(1, min(max(n_rows, 1), -(-symbols // max(per_row, 1))))


def n_streams(n_rows: int, rows_per_stream: int) -> int:
    return -(-n_rows // rows_per_stream)


def stream_symbols(n_rows: int, per_row: int, rows_per_stream: int) -> np.ndarray:
    """Codes in each stream: B * K, and (rows mod B) * K for a shorter last stream."""
    ns = n_streams(n_rows, rows_per_stream)
    out = np.full(ns, rows_per_stream * per_row, np.int64)
    if ns and n_rows % rows_per_stream:
        out[-1] = (n_rows % rows_per_stream) * per_row
    return out


# -- frequency table -------------------------------------------------------------------------------
def quantize_freqs(counts: np.ndarray) -> np.ndarray:
    """Counts of the 2^k symbols -> frequencies summing to 2^P, every occurring symbol >= 1 (writer's choice,
    informative): floor(c * 2^P / n), occurring symbols raised to 1, then the rounding error added to or taken
    from the most frequent symbols one at a time."""
    counts = np.asarray(counts, np.int64)
    n = int(counts.sum())
    f = np.zeros(counts.size, np.int64)
    if n == 0:
        f[0] = M  # no symbols at all: any table summing to 2^P will do
        return f
    f = counts * M // n
    f[(counts > 0) & (f == 0)] = 1
    diff = M - int(f.sum())
    if diff > 0:
        f[int(np.argmax(counts))] += diff
    while diff < 0:  # at most 2^k steps: only the symbols raised to 1 can overshoot
        i = int(np.argmax(f))
        take = min(-diff, int(f[i]) - 1)
        f[i] -= take
        diff += take
    return f


def _tables(freqs: np.ndarray):
    """Per slot t in [0, 2^P): symbol, its frequency, and t - cum[symbol] (the decoder's lookups)."""
    f = np.asarray(freqs, np.int64)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]])
    sym = np.repeat(np.arange(f.size), f)
    slot = np.arange(M)
    return (sym.astype(np.uint8), f[sym].astype(np.uint32), (slot - cum[sym]).astype(np.uint32))


# -- rANS over lanes (one lane = one stream) --------------------------------------------------------
def _encode_lanes(syms: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """syms: uint8 [lanes, n] -> the lanes' streams as uint16 words [lanes, 2 + words] flattened lane by
    lane (state low, state high, then renormalisation words in decode order) and the word count per lane."""
    lanes, n = syms.shape
    f = np.asarray(freqs, np.uint64)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]]).astype(np.uint64)
    x = np.full(lanes, L, np.uint64)
    flags = np.zeros((lanes, n + 2), bool)
    words = np.zeros((lanes, n + 2), np.uint16)
    flags[:, :2] = True
    for i in range(n - 1, -1, -1):  # rANS encodes backwards so the decoder reads forwards
        s = syms[:, i]
        fs = f[s]
        out = (x >> np.uint64(_RENORM_SHIFT)) >= fs
        words[:, i + 2] = x & np.uint64(0xFFFF)
        flags[:, i + 2] = out
        x = np.where(out, x >> np.uint64(16), x)
        x = (x // fs << np.uint64(P)) + x % fs + cum[s]
    words[:, 0] = x & np.uint64(0xFFFF)
    words[:, 1] = x >> np.uint64(16)
    return words[flags], flags.sum(axis=1)


SCALAR_LANES = 32  # up to this many lanes, a plain Python loop per lane beats numpy's per-step overhead


def _decode_scalar(words: np.ndarray, start: int, n: int, tables) -> tuple[bytearray, int, int]:
    """One lane of _decode_lanes in plain Python (~0.5 us per symbol instead of ~20 us of numpy calls on
    one-element arrays): a file with one long stream decodes in seconds, not minutes."""
    sym, fsym, bias = (t.tolist() for t in tables)
    w = memoryview(np.ascontiguousarray(words, np.uint16))  # native order: Python ints on indexing
    last = len(w) - 1
    x = w[min(start, last)] | w[min(start + 1, last)] << 16
    bad_start = x < L
    wp = start + 2
    out = bytearray(n)
    for i in range(n):
        t = x & (M - 1)
        out[i] = sym[t]
        x = fsym[t] * (x >> P) + bias[t]
        if x < L:
            x = x << 16 | w[min(wp, last)]
            wp += 1
    return out, 0 if bad_start else x, wp


def _decode_lanes(words: np.ndarray, start: np.ndarray, n: int, tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode n symbols from each lane whose stream starts at word index `start`. Reads never leave `words`
    (indices are clipped); a lane that ran past its own stream is caught by the caller's end check.
    Returns (symbols uint8 [n, lanes], final states, word positions after the last read)."""
    if start.size <= SCALAR_LANES:
        lanes = [_decode_scalar(words, int(s), n, tables) for s in start]
        out = np.frombuffer(b"".join(o for o, _, _ in lanes), np.uint8).reshape(start.size, n).T
        return out, np.array([x for _, x, _ in lanes], np.uint32), np.array([p for _, _, p in lanes], np.int64)
    sym, fsym, bias = tables
    x = (words.take(start, mode="clip").astype(np.uint32)
         | (words.take(start + 1, mode="clip").astype(np.uint32) << np.uint32(16)))
    wp = start + 2
    out = np.empty((n, start.size), np.uint8)
    low, mask, shift = np.uint32(L), np.uint32(M - 1), np.uint32(P)
    bad_start = x < low
    for i in range(n):
        t = x & mask
        out[i] = sym[t]
        x = fsym[t] * (x >> shift) + bias[t]  # < 2^32 for any x < 2^32: never wraps
        need = x < low
        x = np.where(need, (x << np.uint32(16)) | words.take(wp, mode="clip"), x)
        wp += need
    x[bad_start] = 0  # an initial state below L is invalid even if the walk happens to end at L
    return out, x, wp


def _encode_streams(flat: np.ndarray, counts: np.ndarray, freqs: np.ndarray):
    """numpy: (words of every stream back to back, word count per stream), full streams as lanes."""
    full = int(np.count_nonzero(counts == counts[0])) if counts.size else 0
    pieces, lengths = [], []
    if full:
        n = int(counts[0])
        w, c = _encode_lanes(flat[: full * n].reshape(full, n), freqs)
        pieces.append(w)
        lengths.append(c)
    if counts.size > full:  # the shorter last stream
        w, c = _encode_lanes(flat[full * int(counts[0]):].reshape(1, -1), freqs)
        pieces.append(w)
        lengths.append(c)
    words = np.concatenate(pieces) if pieces else np.zeros(0, np.uint16)
    return words, (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))


def encode_codes(codes: np.ndarray, bits: int, rows_per_stream: int):
    """codes uint8 [rows, K] -> (freqs list, streams uint8, offsets uint32/uint64 [n_streams + 1])."""
    n_rows, per_row = codes.shape
    freqs = quantize_freqs(np.bincount(codes.reshape(-1), minlength=1 << bits)[: 1 << bits])
    counts = stream_symbols(n_rows, per_row, rows_per_stream)
    flat = codes.reshape(-1)
    k = accel.kernels()
    words, lengths = (_encode_streams if k is None else k.rans_encode)(flat, counts, freqs)
    nbytes = 2 * lengths.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(nbytes)]).astype(np.uint64)
    dt = offsets_dtype(int(offsets[-1]))
    return [int(v) for v in freqs], as_bytes(words, "U16"), as_bytes(offsets, dt).view(NP_DTYPES[dt]), dt


# -- the encoding's interface ----------------------------------------------------------------------
def encode(shape, values: np.ndarray, *, bits: int, alpha: int, group_size: int, seed: int,
           quantizer: Quantizer | None = None, rows_per_stream: int | None = None,
           symbols_per_stream: int = RANS_SYMBOLS_PER_STREAM) -> Encoded:
    """values: float32 [rows, kept_per_row], the kept (rescaled) values in kept order (as seeded.encode).
    A row of more than RANS_MAX_STREAM_SYMBOLS codes cannot be one stream's worth (SPEC.md §9.5): such a
    tensor is stored as `seeded`, the same codes without entropy coding, rather than failing the conversion."""
    n_rows, n_cols = shape
    per_row = kept_per_row(n_cols, group_size, alpha)
    if per_row > RANS_MAX_STREAM_SYMBOLS:
        from . import seeded
        return seeded.encode(shape, values, bits=bits, alpha=alpha, group_size=group_size, seed=seed,
                             quantizer=quantizer)
    values = np.asarray(values, np.float32).reshape(n_rows, per_row)
    qz = quantizer or fit(values, bits)
    b = min(rows_per_stream, max(n_rows, 1)) if rows_per_stream else default_rows_per_stream(
        n_rows, per_row, symbols_per_stream)
    freqs, streams, offsets, odt = encode_codes(quantize(values, qz), bits, b)
    params = {"alpha": int(alpha), "group_size": int(group_size), "bits": int(bits), "scale": qz.scale,
              "zero": qz.zero, "seed": int(seed), "rows_per_stream": int(b), "freqs": freqs}
    return Encoded(ENC_SEEDED_RANS, params, {"streams": ("U8", streams), "stream_offsets": (odt, offsets)})


def check(entry, ctx):
    """Header-only checks (SPEC.md §9.5, §11): params, the frequency table, the symbols per stream and every
    buffer length bound."""
    bits, count = check_params(entry, ctx)
    n_rows = entry["shape"][0]
    per_row = count // n_rows if n_rows else 0
    b = param(entry, "rows_per_stream", ctx, int, 1, max(n_rows, 1))
    if b * per_row > RANS_MAX_STREAM_SYMBOLS:  # a stream decodes sequentially: this bounds one tensor's latency
        raise ctx.fail(f"{b} rows of {per_row} codes make {b * per_row} symbols per stream, more than "
                       f"{RANS_MAX_STREAM_SYMBOLS}", "params.rows_per_stream")
    freqs = entry["params"].get("freqs")
    if (not isinstance(freqs, list) or len(freqs) != 1 << bits
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= M for v in freqs)):
        raise ctx.fail(f"must be a list of 2^k = {1 << bits} integers in 0..{M}", "params.freqs")
    if sum(freqs) != M:
        raise ctx.fail(f"frequencies sum to {sum(freqs)}, not 2^{P} = {M}", "params.freqs")
    ns = n_streams(n_rows, b)
    st = buffer(entry, "streams", ctx, ("U8",))
    lo, hi = 4 * ns, 4 * ns + 2 * count  # state + at most one word per code
    if not lo <= st["length"] <= hi or st["length"] % 2:
        raise ctx.fail(f"length {st['length']} is not an even number in {lo}..{hi}", "buffers.streams.length")
    buffer(entry, "stream_offsets", ctx, OFFSET_DTYPES, count=ns + 1, holds=st["length"], what="stream offset")


def _fail(entry, msg, field):
    return EncodingError(msg, tensor=entry.get("name"), field=field)


def codes_of(entry, bufs) -> np.ndarray:
    """The k-bit codes [rows, kept_per_row], decoded from the streams; identical to seeded's `codes`."""
    p = entry["params"]
    n_rows, n_cols = entry["shape"]
    per_row = kept_per_row(n_cols, p["group_size"], p["alpha"])
    b = p["rows_per_stream"]
    counts = stream_symbols(n_rows, per_row, b)
    ns = counts.size
    off = view(bufs["stream_offsets"], entry["buffers"]["stream_offsets"]["dtype"]).astype(np.int64)
    raw = np.asarray(bufs["streams"], np.uint8).reshape(-1)
    if off.size != ns + 1 or raw.size % 2:
        raise _fail(entry, "stream buffers do not match the header", "buffers")
    lengths = np.diff(off)
    if off[0] != 0 or off[-1] != raw.size:
        raise _fail(entry, f"offsets must run from 0 to {raw.size}, got {off[0]}..{off[-1]}", "buffers.stream_offsets")
    if ns and (np.any(lengths < 4) or np.any(lengths % 2) or np.any(lengths > 4 + 2 * counts)):
        j = int(np.flatnonzero((lengths < 4) | (lengths % 2 == 1) | (lengths > 4 + 2 * counts))[0])
        raise _fail(entry, f"stream {j} has {lengths[j]} bytes: not even, or outside 4..{4 + 2 * counts[j]}",
                    "buffers.stream_offsets")
    codes = np.empty((n_rows, per_row), np.uint8)
    if ns == 0 or per_row == 0:
        if ns and np.any(lengths != 4) or ns and np.any(raw.view("<u4") != L):
            raise _fail(entry, "an empty stream must hold exactly the state L", "buffers.streams")
        return codes
    words = raw.view("<u2")
    k = accel.kernels()
    if k is not None:
        out, bad = k.rans_decode(words, off // 2, counts, p["freqs"])
        if bad >= 0:
            raise _fail(entry, f"stream {bad} is corrupt: it does not end in state {L} exactly at its last byte",
                        "buffers.streams")
        return out.reshape(n_rows, per_row)
    tables = _tables(np.asarray(p["freqs"], np.int64))
    full = n_rows // b
    flat = codes.reshape(-1)
    groups = [(0, full, b * per_row)] if full else []
    if ns > full:
        groups.append((full, ns, int(counts[-1])))
    for j0, j1, n in groups:
        out, x, wp = _decode_lanes(words, off[j0:j1] // 2, n, tables)
        bad = (x != L) | (wp != off[j0 + 1:j1 + 1] // 2)
        if bad.any():
            j = j0 + int(np.flatnonzero(bad)[0])
            raise _fail(entry, f"stream {j} is corrupt: it does not end in state {L} exactly at its last byte",
                        "buffers.streams")
        flat[j0 * b * per_row: j0 * b * per_row + out.size] = out.T.reshape(-1)
    return codes


def parts(entry, bufs, ctx=None) -> np.ndarray:
    return codes_of(entry, bufs)


def decode(entry, bufs) -> np.ndarray:
    return scatter(entry, codes_of(entry, bufs))


def nominal_ratio(entry) -> float:
    """The paper's formula for k-bit codes, 16 alpha / k: the true ratio shows what entropy coding gains."""
    p = entry.get("params", {})
    return p["alpha"] * 16 / p["bits"] if {"alpha", "bits"} <= p.keys() else math.nan
