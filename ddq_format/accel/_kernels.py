"""All numba kernels of the accelerated path, in one module on purpose: numba's on-disk cache (cache=True)
revalidates a compiled function against its own source file only, so a helper inlined from another file
could change without invalidating its callers' cached machine code.

Sections: u32 arithmetic and bit patterns; bit packing (SPEC.md §7); the seeded mask hash (§9.3.2);
decode; convert. Kernels are single-threaded and release the GIL; callers validate inputs first (no
bounds checks here). u32 arithmetic is done in uint64 and masked: numba widens uint32 products to 64 bits
and only the low 32 bits matter (wrap-around). Every constant is a np.uint64 so no operand is promoted to
float64 (numba's rule for uint64 op int64).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ..spec import FMIX_C1, FMIX_C2, GOLDEN, PERM_ROUNDS, SEED_SALT

assert PERM_ROUNDS == 3  # permute() unrolls the three rounds

U64 = np.uint64
M32 = U64(0xFFFFFFFF)
C1, C2, GOLD, SALT = U64(FMIX_C1), U64(FMIX_C2), U64(GOLDEN), U64(SEED_SALT)
S8, S13, S16, ONE = U64(8), U64(13), U64(16), U64(1)
GOLD1, GOLD2, GOLD3, GOLD4 = (U64((t * GOLDEN) & 0xFFFFFFFF) for t in (1, 2, 3, 4))
B8, FF = U64(8), U64(0xFF)
NONFINITE_FT, NONFINITE_BASE, NONFINITE_DELTA = 1, 2, 4  # flags returned by the convert kernels


# -- u32 arithmetic and bit patterns -----------------------------------------------------------------
def _intrinsic(accepts, result, emit):
    """A one-argument numba intrinsic: accepts(numba type) -> bool, result(numba type) -> return type,
    emit(builder, llvm value, numba type) -> llvm value."""
    def typer(typingctx, x):
        if not accepts(x):
            return None

        def codegen(context, builder, sig, args):
            return emit(builder, args[0], x)
        return result(x)(x), codegen
    return intrinsic(typer)


# The float32 whose bits are the low 32 bits of an integer (no conversion).
u32_as_f32 = _intrinsic(lambda x: isinstance(x, types.Integer) and x.bitwidth >= 32, lambda x: types.float32,
                        lambda b, v, x: b.bitcast(v if x.bitwidth == 32 else b.trunc(v, ir.IntType(32)),
                                                  ir.FloatType()))
# The uint32 bit pattern of a float32.
f32_as_u32 = _intrinsic(lambda x: x == types.float32, lambda x: types.uint32,
                        lambda b, v, x: b.bitcast(v, ir.IntType(32)))
# Trailing zero bits of a non-zero uint64.
cttz = _intrinsic(lambda x: x == types.uint64, lambda x: types.uint64,
                  lambda b, v, x: b.cttz(v, ir.Constant(ir.IntType(1), 1)))


def to_f32(bits, lut):
    """float32 value of one element given as its bit pattern. The array's integer type says the format:
    uint16 = bfloat16 (the high half of a float32), int16 = float16 (through `lut`, 65536 float32 values),
    uint32 = float32."""


@overload(to_f32, inline="always")
def _to_f32(bits, lut):
    if bits == types.uint16:
        return lambda bits, lut: u32_as_f32(np.uint32(bits) << np.uint32(16))
    if bits == types.int16:
        return lambda bits, lut: lut[np.uint16(bits)]
    if bits == types.uint32:
        return lambda bits, lut: u32_as_f32(bits)
    return None


# -- bit packing ----------------------------------------------------------------------------------
@njit(nogil=True, cache=True)
def pack(codes, bits, out):
    """out = codes packed LSB-first at `bits` bits each (1 <= bits <= 8). Returns False (out then undefined)
    when a code does not fit in `bits` bits."""
    acc = U64(0)
    have = U64(0)
    seen = U64(0)
    j = 0
    b = U64(bits)
    for i in range(codes.size):
        c = U64(codes[i])
        seen |= c
        acc |= c << have
        have += b
        if have >= B8:
            out[j] = acc & FF
            j += 1
            acc >>= B8
            have -= B8
    if have:
        out[j] = acc & FF
    return (seen >> b) == 0


# -- the seeded mask hash -------------------------------------------------------------------------
@njit(inline="always", nogil=True, cache=True)
def fmix32(x):
    x ^= x >> S16
    x = (x * C1) & M32
    x ^= x >> S13
    x = (x * C2) & M32
    x ^= x >> S16
    return x


@njit(inline="always", nogil=True, cache=True)
def seed_hash(seed):
    """h0 of group_keys: depends on the seed only."""
    return fmix32((U64(seed) & M32) ^ SALT)


@njit(inline="always", nogil=True, cache=True)
def row_hash(h0, r):
    return fmix32(h0 ^ (U64(r) & M32))


@njit(inline="always", nogil=True, cache=True)
def group_keys(h1, g):
    """(a0, m0, a1, m1, a2, m2, rot): per round the add key and the odd multiplier, and the rotation key."""
    h2 = fmix32((h1 + U64(g) * GOLD) & M32)
    k0 = fmix32((h2 + GOLD1) & M32)
    k1 = fmix32((h2 + GOLD2) & M32)
    k2 = fmix32((h2 + GOLD3) & M32)
    rot = fmix32((h2 + GOLD4) & M32)
    return k0, (k0 >> S8) | ONE, k1, (k1 >> S8) | ONE, k2, (k2 >> S8) | ONE, rot


@njit(inline="always", nogil=True, cache=True)
def permute(x, a0, m0, a1, m1, a2, m2, mask, sh):
    x = ((x + a0) * m0) & mask  # the mask after the add is not needed: 2^w divides 2^64
    x ^= x >> sh
    x = ((x + a1) * m1) & mask
    x ^= x >> sh
    x = ((x + a2) * m2) & mask
    x ^= x >> sh
    return x


@njit(inline="always", nogil=True, cache=True)
def width_for(length):
    w = 1
    while (1 << w) < length:
        w += 1
    return w


@njit(inline="always", nogil=True, cache=True)
def group_positions(h1, g, length, n, out):
    """out[0:n] = column offsets within group g (of `length` columns) of kept elements 0..n-1 (uint64).
    Three passes so the first and the last vectorize: the permutation, the cycle-walk of the few values
    >= length (none when length is a power of two), the rotation."""
    a0, m0, a1, m1, a2, m2, rot = group_keys(h1, g)
    w = width_for(length)
    mask = U64((1 << w) - 1)
    sh = U64((w + 1) >> 1)
    L = U64(length)
    r = rot % L
    for i in range(n):
        out[i] = permute(U64(i), a0, m0, a1, m1, a2, m2, mask, sh)
    if (1 << w) != length:
        for i in range(n):
            x = out[i]
            while x >= L:
                x = permute(x, a0, m0, a1, m1, a2, m2, mask, sh)
            out[i] = x
    for i in range(n):
        x = out[i] + r  # < 2 * length
        out[i] = x - L if x >= L else x


@njit(inline="always", nogil=True, cache=True)
def _layout(cols, group, alpha):
    """(full groups, kept per full group, tail length, kept in the tail, kept per row): SPEC.md §9.3.1."""
    full = cols // group
    tail = cols - full * group
    keep = group // alpha
    keep_tail = (tail + alpha - 1) // alpha
    return full, keep, tail, keep_tail, full * keep + keep_tail


# -- decode ---------------------------------------------------------------------------------------
# Hot loops index through views (a[s:e][i], i from range()) or with unsigned indices: numba then knows the
# index is not negative, skips its wrap-around select, and the loops vectorize.
@njit(inline="always", nogil=True, cache=True)
def _code(padded, bits, mask, index):
    """Code `index` of an LSB-first stream of `bits`-bit codes (padded: the stream plus one zero byte)."""
    b = U64(index) * U64(bits)
    byte = b >> U64(3)
    window = U64(padded[byte]) | (U64(padded[byte + ONE]) << B8)
    return (window >> (b & U64(7))) & mask


@njit(nogil=True, cache=True)
def unpack(padded, bits, count, out):
    """out[0:count] = the first `count` codes of an LSB-first stream of `bits`-bit codes (padded, see _code)."""
    mask = U64((1 << bits) - 1)
    for i in range(count):
        out[i] = _code(padded, bits, mask, i)


@njit(nogil=True, cache=True)
def seeded_scatter(padded, bits, lut, seed, rows, cols, group, alpha, out, out_cols, colmap):
    """out [rows*out_cols] float32, all zero (np.zeros: pages the OS hands over zeroed, no second zeroing pass)
    = lut[code] at each kept column of the seeded mask, row by row; colmap None (out_cols = cols), or int64
    [cols]: column c goes to column colmap[c] of out's rows (a seeded_rans_split class into its tensor).
    padded: the packed codes (rows*K of `bits` bits, kept order, K = kept_per_row) plus one zero byte, read
    in place (no unpacked copy); bits = 8 also serves unpacked uint8 codes. lut: float32, one per code."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    pos = np.empty(max(keep, keep_tail, 1), np.uint64)
    mask = U64((1 << bits) - 1)
    h0 = seed_hash(seed)
    for r in range(rows):
        orow = out[r * out_cols:(r + 1) * out_cols]
        h1 = row_hash(h0, r)
        for g in range(full + (1 if keep_tail else 0)):
            n = keep if g < full else keep_tail
            group_positions(h1, g, group if g < full else tail, n, pos)
            e = r * per_row + g * keep
            if colmap is None:  # resolved when numba compiles: one loop per signature
                og = orow[g * group:]
                for i in range(n):
                    og[pos[i]] = lut[_code(padded, bits, mask, e + i)]
            else:
                cg = colmap[g * group:]
                for i in range(n):
                    orow[cg[pos[i]]] = lut[_code(padded, bits, mask, e + i)]


@njit(inline="always", nogil=True, cache=True)
def _code_at(codes, last, bits, mask, index):
    """_code on the packed stream itself (no padding byte): the high byte of the window is clamped to the
    last byte, whose bits above a code lying in it the mask drops."""
    b = U64(index) * U64(bits)
    byte = b >> U64(3)
    hi = byte + ONE if byte < last else last
    window = U64(codes[byte]) | (U64(codes[hi]) << B8)
    return (window >> (b & U64(7))) & mask


@njit(nogil=True, cache=True)
def _products(codes, bits, scale, zero, seed, rows, cols, group, alpha, xt, colmap, y, dest):
    """y[dest[t], r] += (x · Dᵀ)[t, r] for the T = xt.shape[1] tokens, D the seeded delta [rows, cols] of
    these packed codes (value of a code: scale * (code - zero) in binary32, as quantize.dequantize), x
    given as xt [in, T] (C-contiguous: a kept column's tokens are adjacent); colmap None (in = cols) or
    int64 [cols]: column c reads row colmap[c] of xt. Nothing dense is formed: per kept element one code
    and T multiply-adds, float32 accumulation per row."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    m = max(keep, keep_tail, 1)
    pos = np.empty(m, np.uint64)
    vals = np.empty(m, np.float32)
    mask = U64((1 << bits) - 1)
    last = U64(max(codes.size, 1) - 1)
    h0 = seed_hash(seed)
    s = np.float32(scale)
    z = np.int64(zero)
    T = xt.shape[1]
    acc = np.zeros(T, np.float32)
    for r in range(rows):
        h1 = row_hash(h0, r)
        acc[:] = 0
        for g in range(full + (1 if keep_tail else 0)):
            n = keep if g < full else keep_tail
            group_positions(h1, g, group if g < full else tail, n, pos)
            e = r * per_row + g * keep
            # separate passes: the hash and the code unpacking vectorize, the gather not; only a group whose
            # codes reach the stream's last byte reads it clamped (a branch per code would stop the vectors)
            if ((U64(e + n) * U64(bits) + U64(7)) >> U64(3)) < last + ONE:
                for i in range(n):
                    vals[i] = s * np.float32(np.int64(_code(codes, bits, mask, e + i)) - z)
            else:
                for i in range(n):
                    vals[i] = s * np.float32(np.int64(_code_at(codes, last, bits, mask, e + i)) - z)
            base = U64(g * group)
            if T == 1:  # decode steps: scalar accumulators the compiler keeps in registers
                a = np.float32(0)
                for i in range(n):
                    c = base + pos[i]
                    if colmap is not None:  # resolved when numba compiles
                        c = U64(colmap[c])
                    a += vals[i] * xt[c, 0]
                acc[0] += a
            elif T == 2:
                a, b = np.float32(0), np.float32(0)
                for i in range(n):
                    c = base + pos[i]
                    if colmap is not None:
                        c = U64(colmap[c])
                    a += vals[i] * xt[c, 0]
                    b += vals[i] * xt[c, 1]
                acc[0] += a
                acc[1] += b
            else:
                for i in range(n):
                    c = base + pos[i]
                    if colmap is not None:
                        c = U64(colmap[c])
                    xr = xt[c]
                    v = vals[i]
                    for t in range(T):
                        acc[t] += v * xr[t]
        for t in range(T):
            y[dest[t], r] += acc[t]


@njit(nogil=True, cache=True)
def seeded_products(codes, bits, scale, zero, seed, rows, cols, group, alpha, xt, y, colmap):
    """y [T, rows] float32 += x · Dᵀ (_products, token t into row t of y)."""
    _products(codes, bits, scale, zero, seed, rows, cols, group, alpha, xt, colmap, y,
              np.arange(xt.shape[1]))


# Columns of one part of a grouped product's table (seeded_products_multi): its packed codes and its
# column list are arrays CODES and LIST of the table's byte arrays (LIST -1: no list).
P_CODES, P_LIST, P_LIST_BYTES, P_LIST_LEN, P_COMPLEMENT, P_BITS, P_ZERO, P_SEED, P_ROWS, P_COLS, P_GROUP, \
    P_ALPHA, P_FIELDS = range(13)


@njit(inline="always", nogil=True, cache=True)
def _list_at(raw, nbytes, i):
    """Element i of a little-endian unsigned column list of nbytes-byte (2 or 4) elements, as raw bytes."""
    j = i * nbytes
    v = np.int64(raw[j]) | (np.int64(raw[j + 1]) << 8)
    if nbytes == 4:
        v |= (np.int64(raw[j + 2]) << 16) | (np.int64(raw[j + 3]) << 24)
    return v


@njit(nogil=True, cache=True)
def _part_columns(raw, nbytes, n, complement, width, out):
    """out[0:width] = the input column of each local column of a split delta's class. raw: the bytes of its
    list (n unsigned little-endian elements of nbytes bytes, ascending), or, complement, of the other class's
    list, whose complement it is (a merge: the columns below width + n that the list skips)."""
    if not complement:
        for c in range(width):
            out[c] = _list_at(raw, nbytes, c)
        return
    j, col = 0, np.int64(0)
    for c in range(width):
        while j < n and _list_at(raw, nbytes, j) == col:
            j += 1
            col += 1
        out[c] = col
        col += 1


@njit(nogil=True, cache=True)
def input_columns(raw, nbytes, complement, width):
    """int64 [width]: _part_columns into a new array (raw: the list's bytes, nbytes per element)."""
    out = np.empty(width, np.int64)
    _part_columns(raw, nbytes, raw.size // nbytes, complement, width, out)
    return out


@njit(nogil=True, cache=True)
def seeded_products_multi(arrays, parts, scales, slot_parts, runs, order, x, y):
    """The grouped product on the host, in one call: for each run (slot, start, count) of the step's tokens
    sorted by slot (order[start:start + count] are its token ids), y[token] += x[token] · D_part^T for every
    part of the slot (a seeded delta, or a column class of a split one: parts[slot_parts[slot]:
    slot_parts[slot + 1]], columns P_* of `parts`, scales float64). x float32 [B, in], y float32 [B, out]
    (any strides). Each run's tokens are gathered once, transposed (xt [in, count])."""
    width = x.shape[1]
    cmap = np.empty(width, np.int64)
    for q in range(runs.shape[0]):
        slot, start, count = runs[q, 0], runs[q, 1], runs[q, 2]
        dest = order[start:start + count]
        xt = np.empty((width, count), np.float32)
        for t in range(count):
            row = x[dest[t]]
            for c in range(width):
                xt[c, t] = row[c]
        for p in range(slot_parts[slot], slot_parts[slot + 1]):
            f = parts[p]
            codes = arrays[f[P_CODES]]
            if f[P_LIST] < 0:
                _products(codes, f[P_BITS], scales[p], f[P_ZERO], f[P_SEED], f[P_ROWS], f[P_COLS], f[P_GROUP],
                          f[P_ALPHA], xt, None, y, dest)
            else:
                cols = cmap[:f[P_COLS]]
                _part_columns(arrays[f[P_LIST]], f[P_LIST_BYTES], f[P_LIST_LEN], f[P_COMPLEMENT] != 0, f[P_COLS],
                              cols)
                _products(codes, f[P_BITS], scales[p], f[P_ZERO], f[P_SEED], f[P_ROWS], f[P_COLS], f[P_GROUP],
                          f[P_ALPHA], xt, cols, y, dest)


@njit(nogil=True, cache=True)
def mask_columns(seed, rows, cols, group, alpha, row_stride, out):
    """out [rows, K] int64 = seeded_mask.mask_columns(...) (+ r * row_stride)."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    pos = np.empty(max(keep, keep_tail, 1), np.uint64)
    h0 = seed_hash(seed)
    for r in range(rows):
        h1 = row_hash(h0, r)
        orow = out[r]
        for g in range(full + (1 if keep_tail else 0)):
            n = keep if g < full else keep_tail
            group_positions(h1, g, group if g < full else tail, n, pos)
            o = r * row_stride + g * group
            og = orow[g * keep:]
            for i in range(n):
                og[i] = o + np.int64(pos[i])


@njit(nogil=True, cache=True)
def csr_scatter(row_offsets, part_start, col_indices, padded, bits, luts, rows, cols, out):
    """csr_parts: out [rows*cols] float32, all zero, = luts[j, code] at each stored column, parts j = 0..m-1
    (a later write wins, as in the numpy decoder). row_offsets [m, rows+1] int64, validated by the caller;
    padded: the packed `bits`-bit codes plus one zero byte (see _code)."""
    m = row_offsets.shape[0]
    mask = U64((1 << bits) - 1)
    for r in range(rows):
        orow = out[r * cols:(r + 1) * cols]
        for j in range(m):
            s = part_start[j] + row_offsets[j, r]
            e = part_start[j] + row_offsets[j, r + 1]
            ci = col_indices[s:e]
            lut = luts[j]
            for t in range(e - s):
                orow[ci[t]] = lut[_code(padded, bits, mask, s + t)]


@njit(nogil=True, cache=True)
def csr_f16_scatter(row_offsets, col_indices, values, lut, rows, cols, out):
    """csr_f16: out [rows*cols] float32, all zero, = lut[fp16 bits] at each stored column (fp16 -> float32)."""
    for r in range(rows):
        orow = out[r * cols:(r + 1) * cols]
        s, e = row_offsets[r], row_offsets[r + 1]
        ci = col_indices[s:e]
        v = values[s:e]
        for t in range(e - s):
            orow[ci[t]] = lut[v[t]]


RANS_LOW, RANS_SLOT = U64(1 << 16), U64(4095)


@njit(inline="always", nogil=True, cache=True)
def _rans_step(x, p, w, last, table):
    """One decode step (SPEC.md §9.5) without branches: the next word is always loaded (from a clamped
    position) and taken when the state fell below L. Returns (symbol, state, words read so far)."""
    e = table[x & RANS_SLOT]
    x = (e >> U64(20)) * (x >> U64(12)) + ((e >> B8) & RANS_SLOT)
    need = x < RANS_LOW
    v = U64(w[min(p, last)])
    x = ((x << S16) | v) if need else x
    return e & FF, x, p + need


@njit(inline="always", nogil=True, cache=True)
def _rans_start(words, word_offsets, j):
    w = words[word_offsets[j]:word_offsets[j + 1]]
    return w, U64(w[0]) | (U64(w[1]) << S16)


@njit(inline="always", nogil=True, cache=True)
def _rans_valid(x0, x, p, w):
    """Initial state >= L, final state L, and exactly the stream's words read (a read past its end left
    p beyond it)."""
    return x0 >= RANS_LOW and x == RANS_LOW and p == w.size


@njit(nogil=True, cache=True)
def rans_decode(words, word_offsets, symbols, table, out):
    """Decode every stream (SPEC.md §9.5). words: the streams as uint16; word_offsets [n+1] int64 (validated:
    0, even byte offsets / 2, increasing, every stream >= 2 words); symbols [n] codes per stream; table
    [4096] uint64 packing symbol | (t - cum) << 8 | f << 20. out: the codes, stream after stream. Returns
    the first invalid stream (initial state < L, a read past its end, or not ending in state L exactly at
    its last word), or -1. Four streams of equal length are decoded in lockstep: their steps are
    independent, so the core overlaps four dependency chains."""
    ns = symbols.size
    o = 0
    j = 0
    while j < ns:
        n = symbols[j]
        if j + 4 <= ns and symbols[j + 3] == n and symbols[j + 1] == n and symbols[j + 2] == n:
            wa, ia = _rans_start(words, word_offsets, j)
            wb, ib = _rans_start(words, word_offsets, j + 1)
            wc, ic = _rans_start(words, word_offsets, j + 2)
            wd, id_ = _rans_start(words, word_offsets, j + 3)
            xa, xb, xc, xd = ia, ib, ic, id_
            pa = pb = pc = pd = 2
            da, db, dc, dd = out[o:o + n], out[o + n:o + 2 * n], out[o + 2 * n:o + 3 * n], out[o + 3 * n:o + 4 * n]
            la, lb, lc, ld = wa.size - 1, wb.size - 1, wc.size - 1, wd.size - 1
            for i in range(n):
                sa, xa, pa = _rans_step(xa, pa, wa, la, table)
                sb, xb, pb = _rans_step(xb, pb, wb, lb, table)
                sc, xc, pc = _rans_step(xc, pc, wc, lc, table)
                sd, xd, pd = _rans_step(xd, pd, wd, ld, table)
                da[i] = sa
                db[i] = sb
                dc[i] = sc
                dd[i] = sd
            for k, (x0, x, p, w) in enumerate(((ia, xa, pa, wa), (ib, xb, pb, wb), (ic, xc, pc, wc),
                                              (id_, xd, pd, wd))):
                if not _rans_valid(x0, x, p, w):
                    return j + k
            o += 4 * n
            j += 4
            continue
        w, x0 = _rans_start(words, word_offsets, j)
        x = x0
        p = 2
        last = w.size - 1
        dst = out[o:o + n]
        for i in range(n):
            dst[i], x, p = _rans_step(x, p, w, last, table)
        if not _rans_valid(x0, x, p, w):
            return j
        o += n
        j += 1
    return -1


# -- convert --------------------------------------------------------------------------------------
def abs_bits(x):
    """The bit pattern without its sign bit, in x's own integer type (uint16, int16 or uint32)."""


@overload(abs_bits, inline="always")
def _abs_bits(x):
    if x == types.uint16:
        return lambda x: x & np.uint16(0x7FFF)
    if x == types.int16:
        return lambda x: x & np.int16(0x7FFF)
    if x == types.uint32:
        return lambda x: x & np.uint32(0x7FFFFFFF)
    return None


@njit(inline="always", nogil=True, cache=True)
def _nonfinite(a, em):
    """Whether the (non-empty) view a holds a NaN or inf: its largest magnitude pattern reaches the
    all-ones exponent em. A max in the array's own type, which vectorizes."""
    m = abs_bits(a[0])
    for i in range(a.size):
        m = max(m, abs_bits(a[i]))
    return U64(m) >= em


@njit(inline="always", nogil=True, cache=True)
def _flags(ft, base, em_ft, em_base):
    """NONFINITE_FT / NONFINITE_BASE of two equal-length non-empty views."""
    flags = 0
    if _nonfinite(ft, em_ft):
        flags |= NONFINITE_FT
    if _nonfinite(base, em_base):
        flags |= NONFINITE_BASE
    return flags


@njit(inline="always", nogil=True, cache=True)
def _sort_positions(pos, n, length, bitmap):
    """pos[0:n] (distinct values < length) in ascending order: set their bits, then read the bits back
    word by word (O(n + length / 64), no comparisons). bitmap: uint64 [>= ceil(length / 64)], all zero,
    left all zero."""
    for i in range(n):
        bitmap[pos[i] >> U64(6)] |= ONE << (pos[i] & U64(63))
    k = 0
    for w in range((length + 63) // 64):
        word = bitmap[w]
        bitmap[w] = 0
        while word:
            pos[k] = U64(w * 64) + cttz(word)
            k += 1
            word &= word - ONE


@njit(nogil=True, cache=True)
def gather_kept(ft, lut_ft, em_ft, base, lut_base, em_base, has_base, seed, rows, cols, group, alpha, factors,
                sort_columns, vals, kept_cols):
    """The kept, rescaled delta values of group-wise dropout, straight from the two weights' bit patterns,
    row by row: the finite test of the whole row, then the delta of its kept elements while it is in cache.

    ft, base: [rows*cols] bit patterns (see to_f32); em_*: the all-ones exponent of their format.
    has_base=False: ft already is the float32 delta (uint32 bits), base is not read, and no flags are set.
    vals [rows*K] float32 = float32(ft - base) * factors[e], in the spec's kept order, or with sort_columns
    in ascending column order (kept_cols [rows*K] then gets the columns).
    Returns the NONFINITE_FT / NONFINITE_BASE flags of every element (kept or not) of both weights."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    pos = np.empty(max(keep, keep_tail, 1), np.uint64)
    bitmap = np.zeros((group + 63) // 64 if sort_columns else 1, np.uint64)
    h0 = seed_hash(seed)
    flags = 0
    for r in range(rows):
        frow = ft[r * cols:(r + 1) * cols]
        brow = base[r * cols:(r + 1) * cols]
        if has_base:
            flags |= _flags(frow, brow, em_ft, em_base)
        vrow = vals[r * per_row:(r + 1) * per_row]
        h1 = row_hash(h0, r)
        for g in range(full + (1 if keep_tail else 0)):
            length = group if g < full else tail
            n = keep if g < full else keep_tail
            group_positions(h1, g, length, n, pos)
            if sort_columns:
                _sort_positions(pos, n, length, bitmap)
                kc = kept_cols[r * per_row + g * keep:]
                for i in range(n):
                    kc[i] = U64(g * group) + pos[i]
            fg = frow[g * group:]
            bg = brow[g * group:]
            vg = vrow[g * keep:]
            f = factors[g * keep]  # one factor per group: alpha, or the tail's
            if has_base:
                for i in range(n):
                    vg[i] = (to_f32(fg[pos[i]], lut_ft) - to_f32(bg[pos[i]], lut_base)) * f
            else:
                for i in range(n):
                    vg[i] = to_f32(fg[pos[i]], lut_ft) * f
    return flags


BLOCK = 2048  # elements per block of the dense delta kernels: both inputs stay in L1 between the two loops


def store(out, i, d):
    """out[i] = d: as is for a float32 out, as bfloat16 bits for a uint16 out (round to nearest even, NaN ->
    0x7FC0, as encodings.raw.to_bf16_bits)."""


@overload(store, inline="always")
def _store(out, i, d):
    if out.dtype == types.float32:
        def impl(out, i, d):
            out[i] = d
        return impl
    if out.dtype == types.uint16:
        def impl(out, i, d):
            b = U64(f32_as_u32(d))
            r = (b + U64(0x7FFF) + ((b >> S16) & ONE)) >> S16
            out[i] = U64(0x7FC0) if d != d else r & U64(0xFFFF)
        return impl
    return None


@njit(nogil=True, cache=True)
def delta(ft, lut_ft, em_ft, base, lut_base, em_base, out):
    """out [n] = float32(ft) - float32(base), element by element, stored by store() (out may be ft's own
    memory); returns the NONFINITE_* flags (the finite test runs block by block, on data in cache)."""
    flags = 0
    bad = False
    for s in range(0, ft.size, BLOCK):
        fb = ft[s:s + BLOCK]
        bb = base[s:s + BLOCK]
        ob = out[s:s + BLOCK]
        flags |= _flags(fb, bb, em_ft, em_base)
        for i in range(fb.size):
            d = to_f32(fb[i], lut_ft) - to_f32(bb[i], lut_base)
            bad |= d - d != 0  # NaN or inf (also an overflow of two finite weights)
            store(ob, i, d)
    if bad:
        flags |= NONFINITE_DELTA
    return flags


@njit(nogil=True, cache=True)
def quantize(vals, scale, zero, qmax, out):
    """out = clip(rint(v / s) + z, 0, qmax) as uint8, binary32 throughout (quantize.quantize). Returns False
    when a value is NaN (numpy's cast of NaN is then what counts: the caller falls back to it)."""
    s = np.float32(scale)
    z = np.float32(zero)
    top = np.float32(qmax)
    ok = True
    for i in range(vals.size):
        q = np.rint(vals[i] / s) + z
        ok &= q == q
        out[i] = np.uint8(min(max(q, np.float32(0)), top))
    return ok


@njit(nogil=True, cache=True)
def csr_rows(kept_cols, codes, rows, per_row, part_bits, parts, row_offsets, col_out, code_out):
    """csr_parts from row-major kept elements (columns ascending in each row) and their k-bit codes: part
    j = code >> part_bits; elements ordered by (part, row, column); row_offsets [parts, rows+1] int64."""
    low = (1 << part_bits) - 1
    counts = np.zeros(parts, np.int64)
    for r in range(rows):
        crow = codes[r * per_row:(r + 1) * per_row]
        for e in range(per_row):
            counts[crow[e] >> part_bits] += 1
        for j in range(parts):
            row_offsets[j, r + 1] = counts[j]
    start = np.zeros(parts, np.int64)
    for j in range(1, parts):
        start[j] = start[j - 1] + counts[j - 1]
    for e in range(codes.size):
        j = codes[e] >> part_bits
        t = start[j]
        col_out[t] = kept_cols[e]
        code_out[t] = codes[e] & low
        start[j] = t + 1


@njit(inline="always", nogil=True, cache=True)
def _rans_put(x, s, freqs, rcp, cum, region, p):
    """One encode step (SPEC.md §9.5, informative encoder) of code s on state x, pushing the renormalisation
    word into region[p - 1] when needed; returns (state, push position). x // f exactly from a float64
    reciprocal: x < 2^32 and f <= 4096, so x * (1/f) is within 2^-20 of x / f and the quotient is off by at
    most one, which the remainder test corrects (an integer division costs ~40 cycles, this ~10)."""
    f = U64(freqs[s])
    need = (x >> U64(20)) >= f
    region[p - 1] = x & U64(0xFFFF)  # harmless when not needed: the slot is overwritten or never read
    p -= need
    x = (x >> S16) if need else x
    q = np.int64(np.float64(x) * rcp[s])
    r = np.int64(x) - q * np.int64(f)
    if r < 0:
        q -= 1
        r += np.int64(f)
    elif r >= np.int64(f):
        q += 1
        r -= np.int64(f)
    return (U64(q) << U64(12)) + U64(r) + cum[s], p


@njit(nogil=True, cache=True)
def rans_encode(codes, stream_symbols, freqs, scratch, word_counts):
    """rANS-encode each stream (codes stream after stream) backwards from x = L (SPEC.md §9.5). Stream j's
    words (state low, state high, then renormalisation words in decode order) go to scratch, back to back;
    word_counts[j] gets their number. scratch holds at least 2 * streams + len(codes) words. Returns the
    words used. Four streams of equal length are encoded in lockstep, each in a region of its own (its
    codes + 2 words), then the regions are packed."""
    cum = np.zeros(freqs.size, np.uint64)
    rcp = np.zeros(freqs.size, np.float64)
    for s in range(freqs.size):
        if s:
            cum[s] = cum[s - 1] + U64(freqs[s - 1])
        rcp[s] = 1.0 / freqs[s] if freqs[s] else 0.0
    ns = stream_symbols.size
    base = np.zeros(ns + 1, np.int64)  # region of stream j: scratch[base[j]:base[j + 1]]
    first = np.zeros(ns + 1, np.int64)  # its first code
    for j in range(ns):
        base[j + 1] = base[j] + stream_symbols[j] + 2
        first[j + 1] = first[j] + stream_symbols[j]
    top = np.zeros(ns, np.int64)  # where each stream's pushed words start in its region
    j = 0
    while j < ns:
        n = stream_symbols[j]
        lanes = 4 if j + 4 <= ns and stream_symbols[j + 3] == n and stream_symbols[j + 1] == n \
            and stream_symbols[j + 2] == n else 1
        if lanes == 4:
            ra, rb = scratch[base[j]:base[j + 1]], scratch[base[j + 1]:base[j + 2]]
            rc, rd = scratch[base[j + 2]:base[j + 3]], scratch[base[j + 3]:base[j + 4]]
            ca, cb = codes[first[j]:first[j + 1]], codes[first[j + 1]:first[j + 2]]
            cc, cd = codes[first[j + 2]:first[j + 3]], codes[first[j + 3]:first[j + 4]]
            xa = xb = xc = xd = RANS_LOW
            pa = pb = pc = pd = n + 2
            for i in range(n - 1, -1, -1):
                xa, pa = _rans_put(xa, ca[i], freqs, rcp, cum, ra, pa)
                xb, pb = _rans_put(xb, cb[i], freqs, rcp, cum, rb, pb)
                xc, pc = _rans_put(xc, cc[i], freqs, rcp, cum, rc, pc)
                xd, pd = _rans_put(xd, cd[i], freqs, rcp, cum, rd, pd)
            for k, (x, p, reg) in enumerate(((xa, pa, ra), (xb, pb, rb), (xc, pc, rc), (xd, pd, rd))):
                reg[0] = x & U64(0xFFFF)
                reg[1] = x >> S16
                top[j + k] = p
        else:
            reg = scratch[base[j]:base[j + 1]]
            cs = codes[first[j]:first[j + 1]]
            x = RANS_LOW
            p = n + 2
            for i in range(n - 1, -1, -1):
                x, p = _rans_put(x, cs[i], freqs, rcp, cum, reg, p)
            reg[0] = x & U64(0xFFFF)
            reg[1] = x >> S16
            top[j] = p
        j += lanes
    w = 0
    for j in range(ns):  # pack: state, then the pushed words, stream after stream (moving down only)
        pushed = base[j + 1] - base[j] - top[j]
        scratch[w] = scratch[base[j]]
        scratch[w + 1] = scratch[base[j] + 1]
        for t in range(pushed):
            scratch[w + 2 + t] = scratch[base[j] + top[j] + t]
        word_counts[j] = 2 + pushed
        w += 2 + pushed
    return w
