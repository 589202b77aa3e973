"""All numba kernels of the accelerated path, in one module on purpose: numba's on-disk cache (cache=True)
revalidates a compiled function against its own source file only, so a helper inlined from another file
could change without invalidating its callers' cached machine code.

Sections: u32 arithmetic and bit patterns; bit packing (SPEC.md §7); the seeded mask hash (§9.3.2);
decode; convert. Kernels are single-threaded and release the GIL, except seeded_products_multi past a
given amount of work (numba threads, where accel._threads allows); callers validate inputs first (no bounds
checks here). Bit work outside the mask hash is done in uint64 (masked where 32 bits are meant):
numba widens uint32 operands to 64 bits, and every constant is a np.uint64 so no operand is promoted to
float64 (numba's rule for uint64 op int64). The mask hash casts each uint32 result back (see its section).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ..spec import FMIX_C1, FMIX_C2, GOLDEN, MAX_BITS, PERM_ROUNDS, SEED_SALT

assert PERM_ROUNDS == 3  # permute() unrolls the three rounds

U64 = np.uint64
M32 = U64(0xFFFFFFFF)
S16, ONE = U64(16), U64(1)
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
# In uint32 (numba computes a uint32 op in 64 bits; the cast back lets LLVM narrow it): 32-bit lanes are
# what the row-parallel passes of block_positions vectorize over.
W32 = np.uint32
C1w, C2w, GOLDw, SALTw = W32(FMIX_C1), W32(FMIX_C2), W32(GOLDEN), W32(SEED_SALT)
W8, W13, W16, W1 = W32(8), W32(13), W32(16), W32(1)
GOLDw1, GOLDw2, GOLDw3, GOLDw4 = (W32((t * GOLDEN) & 0xFFFFFFFF) for t in (1, 2, 3, 4))


@njit(inline="always", nogil=True, cache=True)
def fmix32(x):
    x = W32(x ^ (x >> W16))
    x = W32(x * C1w)
    x = W32(x ^ (x >> W13))
    x = W32(x * C2w)
    return W32(x ^ (x >> W16))


@njit(inline="always", nogil=True, cache=True)
def seed_hash(seed):
    """h0 of group_keys: depends on the seed only."""
    return fmix32(W32(U64(seed) & M32) ^ SALTw)


@njit(inline="always", nogil=True, cache=True)
def row_hash(h0, r):
    return fmix32(W32(h0 ^ W32(U64(r) & M32)))


@njit(inline="always", nogil=True, cache=True)
def group_keys(h1, g):
    """(a0, m0, a1, m1, a2, m2, rot): per round the add key and the odd multiplier, and the rotation key."""
    h2 = fmix32(W32(h1 + W32(W32(U64(g) & M32) * GOLDw)))
    k0 = fmix32(W32(h2 + GOLDw1))
    k1 = fmix32(W32(h2 + GOLDw2))
    k2 = fmix32(W32(h2 + GOLDw3))
    rot = fmix32(W32(h2 + GOLDw4))
    return k0, (k0 >> W8) | W1, k1, (k1 >> W8) | W1, k2, (k2 >> W8) | W1, rot


@njit(inline="always", nogil=True, cache=True)
def permute(x, a0, m0, a1, m1, a2, m2, mask, sh):
    x = W32(W32(x + a0) * m0) & mask  # the mask after the add is not needed: 2^w divides 2^32
    x = W32(x ^ (x >> sh))
    x = W32(W32(x + a1) * m1) & mask
    x = W32(x ^ (x >> sh))
    x = W32(W32(x + a2) * m2) & mask
    return W32(x ^ (x >> sh))


@njit(inline="always", nogil=True, cache=True)
def width_for(length):
    w = 1
    while (1 << w) < length:
        w += 1
    return w


@njit(inline="always", nogil=True, cache=True)
def _perm_params(length):
    """(mask, shift, length) of the permutation of a group of `length` columns, as uint32."""
    w = width_for(length)
    return W32((1 << w) - 1), W32((w + 1) >> 1), W32(length)


@njit(inline="always", nogil=True, cache=True)
def group_positions(h1, g, length, n, out):
    """out[0:n] = column offsets within group g (of `length` columns) of kept elements 0..n-1 (uint32).
    Three passes so the first and the last vectorize: the permutation, the cycle-walk of the few values
    >= length (none when length is a power of two), the rotation."""
    a0, m0, a1, m1, a2, m2, rot = group_keys(h1, g)
    mask, sh, L = _perm_params(length)
    r = rot % L
    for i in range(n):
        out[i] = permute(W32(i), a0, m0, a1, m1, a2, m2, mask, sh)
    if mask + W1 != L:
        for i in range(n):
            x = out[i]
            while x >= L:
                x = permute(x, a0, m0, a1, m1, a2, m2, mask, sh)
            out[i] = x
    for i in range(n):
        x = W32(out[i] + r)  # < 2 * length
        out[i] = x - L if x >= L else x


# Rows per block of the mask passes: their loops run across the block's rows (one lane per row), so they
# vectorize however few columns a group keeps (8 at h_g = 64, alpha = 8: too few for a loop over a group).
RB = 32


@njit(nogil=True, cache=True)
def _group_permuted(keep, e0, a0, m0, a1, m1, a2, m2, rr, mask, sh, L, pos):
    """pos[e0 + i, j] = position of kept element i < keep in row j's group, given the group's keys of each
    row j < RB (a0 .. m2, rr = rot mod L). Its own function, the key rows passed as arrays: inlined into
    block_positions (or given views made per element: atomic reference counts) the loops do not vectorize."""
    for i in range(keep):
        e = e0 + i
        if mask + W1 == L:  # a power of two: no cycle walk, one pass
            for j in range(RB):
                x = W32(permute(W32(i), a0[j], m0[j], a1[j], m1[j], a2[j], m2[j], mask, sh) + rr[j])
                pos[e, j] = x - L if x >= L else x
            continue
        for j in range(RB):
            pos[e, j] = permute(W32(i), a0[j], m0[j], a1[j], m1[j], a2[j], m2[j], mask, sh)
        for j in range(RB):
            x = pos[e, j]
            while x >= L:
                x = permute(x, a0[j], m0[j], a1[j], m1[j], a2[j], m2[j], mask, sh)
            x = W32(x + rr[j])
            pos[e, j] = x - L if x >= L else x


@njit(nogil=True, cache=True)
def block_positions(h0, r0, cols, group, alpha, keys, pos):
    """pos[e, j] (uint32 [>= K, RB], K = kept per row) = column offset within its group of kept element e of
    row r0 + j, for the RB rows from r0 (rows past the matrix are computed too, never read).
    keys: uint32 [8, RB] scratch. Per full group the keys of every row in one pass, then the positions of
    its kept elements in every row (_group_permuted); the tail group, one per row, on its own."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    a0, m0, a1, m1, a2, m2, rr, h1 = keys[0], keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7]
    for j in range(RB):
        h1[j] = row_hash(h0, r0 + j)
    mask, sh, L = _perm_params(group)
    fL = np.float64(group)
    for g in range(full):
        for j in range(RB):
            a0[j], m0[j], a1[j], m1[j], a2[j], m2[j], rot = group_keys(h1[j], g)
            # rot % L without an integer division (none in vector form): exact, as rot < 2^53
            rr[j] = W32(np.float64(rot) - np.floor(np.float64(rot) / fL) * fL)
        _group_permuted(keep, g * keep, a0, m0, a1, m1, a2, m2, rr, mask, sh, L, pos)
    if keep_tail:
        t = np.empty(keep_tail, np.uint32)
        for j in range(RB):
            group_positions(h1[j], full, tail, keep_tail, t)
            for i in range(keep_tail):
                pos[full * keep + i, j] = t[i]


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


@njit(inline="always", nogil=True, cache=True)
def _mask_scratch(per_row):
    """(keys, pos) scratch of block_positions for rows of per_row kept elements."""
    return np.empty((8, RB), np.uint32), np.empty((max(per_row, 1), RB), np.uint32)


@njit(nogil=True, cache=True)
def seeded_scatter(padded, bits, lut, seed, rows, cols, group, alpha, out, out_cols, colmap):
    """out [rows*out_cols] float32, all zero (np.zeros: pages the OS hands over zeroed, no second zeroing pass)
    = lut[code] at each kept column of the seeded mask, row by row; colmap None (out_cols = cols), or int64
    [cols]: column c goes to column colmap[c] of out's rows (a seeded_rans_split class into its tensor).
    padded: the packed codes (rows*K of `bits` bits, kept order, K = kept_per_row) plus one zero byte, read
    in place (no unpacked copy); bits = 8 also serves unpacked uint8 codes. lut: float32, one per code."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    keys, pos = _mask_scratch(per_row)
    mask = U64((1 << bits) - 1)
    h0 = seed_hash(seed)
    for r0 in range(0, rows, RB):
        block_positions(h0, r0, cols, group, alpha, keys, pos)
        for r in range(r0, min(r0 + RB, rows)):
            j = r - r0
            orow = out[r * out_cols:(r + 1) * out_cols]
            for g in range(full + (1 if keep_tail else 0)):
                n = keep if g < full else keep_tail
                e = g * keep
                c0 = r * per_row + e
                if colmap is None:  # resolved when numba compiles: one loop per signature
                    og = orow[g * group:]
                    for i in range(n):
                        og[pos[e + i, j]] = lut[_code(padded, bits, mask, c0 + i)]
                else:
                    cg = colmap[g * group:]
                    for i in range(n):
                        orow[cg[pos[e + i, j]]] = lut[_code(padded, bits, mask, c0 + i)]


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
def _lut(bits, scale, zero):
    """float32 [2**bits]: scale * (code - zero) of every code, binary32 as quantize.dequantize."""
    out = np.empty(1 << bits, np.float32)
    s, z = np.float32(scale), np.int64(zero)
    for c in range(1 << bits):
        out[c] = s * np.float32(np.int64(c) - z)
    return out


@njit(inline="always", nogil=True, cache=True)
def _values(codes, last, bits, mask, lut, e0, n, vals):
    """vals[0:n] = lut[code] of codes e0 .. e0 + n - 1 of the packed stream (no padding byte). 2-, 4- and
    8-bit codes starting on a byte (every block does: e0 is a multiple of RB codes) are read byte by byte,
    several codes per byte (about 2x faster than a 16-bit window per code); other widths read windows, and
    only a range reaching the stream's last byte reads it clamped (a branch per code would stop the loop's
    vectors)."""
    if bits == 8:
        cs = codes[e0:e0 + n]
        for i in range(n):
            vals[i] = lut[cs[i]]
    elif bits == 4 and e0 % 2 == 0:
        cs = codes[e0 // 2:]
        for q in range(n // 2):
            c = cs[q]
            vals[2 * q] = lut[c & 15]
            vals[2 * q + 1] = lut[c >> 4]
        if n % 2:
            vals[n - 1] = lut[cs[n // 2] & 15]
    elif bits == 2 and e0 % 4 == 0:
        cs = codes[e0 // 4:]
        for q in range(n // 4):
            c = cs[q]
            vals[4 * q] = lut[c & 3]
            vals[4 * q + 1] = lut[(c >> 2) & 3]
            vals[4 * q + 2] = lut[(c >> 4) & 3]
            vals[4 * q + 3] = lut[c >> 6]
        for i in range(n - n % 4, n):
            vals[i] = lut[(cs[i // 4] >> (2 * (i % 4))) & 3]
    elif ((U64(e0 + n) * U64(bits) + U64(7)) >> U64(3)) < last + ONE:
        for i in range(n):
            vals[i] = lut[_code(codes, bits, mask, e0 + i)]
    else:
        for i in range(n):
            vals[i] = lut[_code_at(codes, last, bits, mask, e0 + i)]


@njit(inline="always", nogil=True, cache=True)
def _col(base, pos, e, j, colmap):
    """Input column (row of xt) of kept element e of row j of a block."""
    c = base + U64(pos[e, j])
    if colmap is not None:  # resolved when numba compiles
        c = U64(colmap[c])
    return c


@njit(inline="always", nogil=True, cache=True)
def _rows_products(vals, pos, nb, full, keep, keep_tail, group, xt, colmap, y, dest, r0, acc):
    """y[dest[t], r0 + j] += row r0 + j's products with the T = xt.shape[1] tokens, j < nb: vals[j * K:] its
    kept values (K per row), pos[:, j] their offsets in their groups (block_positions), xt [in, T] (a kept
    column's tokens adjacent); colmap None or int64: column c reads row colmap[c] of xt. float32 sums in a
    fixed order, with independent partial sums so consecutive multiply-adds do not wait on each other: per
    group 4 (T = 1) or 2 per token (T = 2) in registers; beyond, acc (float32 [T] scratch) for the whole row,
    whose adds across tokens are independent already. One loop over the block's rows here (a function per
    row would pay reference counts)."""
    T = xt.shape[1]
    per_row = full * keep + keep_tail
    for j in range(nb):
        v0 = j * per_row
        a_row, b_row = np.float32(0), np.float32(0)
        if T > 2:
            acc[:] = 0
        for g in range(full + (1 if keep_tail else 0)):
            n = keep if g < full else keep_tail
            base = U64(g * group)
            e = g * keep
            if T == 1:
                s0, s1, s2, s3 = np.float32(0), np.float32(0), np.float32(0), np.float32(0)
                i = 0
                while i + 4 <= n:
                    s0 += vals[v0 + e + i] * xt[_col(base, pos, e + i, j, colmap), 0]
                    s1 += vals[v0 + e + i + 1] * xt[_col(base, pos, e + i + 1, j, colmap), 0]
                    s2 += vals[v0 + e + i + 2] * xt[_col(base, pos, e + i + 2, j, colmap), 0]
                    s3 += vals[v0 + e + i + 3] * xt[_col(base, pos, e + i + 3, j, colmap), 0]
                    i += 4
                while i < n:
                    s0 += vals[v0 + e + i] * xt[_col(base, pos, e + i, j, colmap), 0]
                    i += 1
                a_row += (s0 + s1) + (s2 + s3)
            elif T == 2:
                a0, a1, b0, b1 = np.float32(0), np.float32(0), np.float32(0), np.float32(0)
                i = 0
                while i + 2 <= n:
                    c, d = _col(base, pos, e + i, j, colmap), _col(base, pos, e + i + 1, j, colmap)
                    a0 += vals[v0 + e + i] * xt[c, 0]
                    b0 += vals[v0 + e + i] * xt[c, 1]
                    a1 += vals[v0 + e + i + 1] * xt[d, 0]
                    b1 += vals[v0 + e + i + 1] * xt[d, 1]
                    i += 2
                if i < n:
                    c = _col(base, pos, e + i, j, colmap)
                    a0 += vals[v0 + e + i] * xt[c, 0]
                    b0 += vals[v0 + e + i] * xt[c, 1]
                a_row += a0 + a1
                b_row += b0 + b1
            else:
                for i in range(n):
                    xr = xt[_col(base, pos, e + i, j, colmap)]
                    v = vals[v0 + e + i]
                    for t in range(T):
                        acc[t] += v * xr[t]
        r = r0 + j
        if T > 2:
            for t in range(T):
                y[dest[t], r] += acc[t]
        else:
            y[dest[0], r] += a_row
            if T == 2:
                y[dest[1], r] += b_row


@njit(inline="always", nogil=True, cache=True)
def _block_products(codes, bits, lut, rows, cols, group, alpha, r0, pos, vals, xt, colmap, y, dest, acc):
    """_rows_products of rows r0 .. r0 + RB - 1 (those below `rows`), pos from block_positions, lut = _lut()."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    nb = min(RB, rows - r0)
    _values(codes, U64(max(codes.size, 1) - 1), bits, U64((1 << bits) - 1), lut, r0 * per_row, nb * per_row, vals)
    _rows_products(vals, pos, nb, full, keep, keep_tail, group, xt, colmap, y, dest, r0, acc)


@njit(inline="always", nogil=True, cache=True)
def _strided_products(codes, bits, lut, h0, rows, cols, group, alpha, xt, colmap, y, dest, keys, pos, vals, acc,
                      k, nt):
    """_block_products of the blocks k, k + nt, k + 2 nt, ... of RB rows (a thread's share: the same rows
    whatever else it does, so no two threads write one element of y)."""
    for r0 in range(k * RB, rows, nt * RB):
        block_positions(h0, r0, cols, group, alpha, keys, pos)
        _block_products(codes, bits, lut, rows, cols, group, alpha, r0, pos, vals, xt, colmap, y, dest, acc)


@njit(nogil=True, cache=True)
def _products(codes, bits, scale, zero, seed, rows, cols, group, alpha, xt, colmap, y, dest):
    """y[dest[t], r] += (x · Dᵀ)[t, r] for the T = xt.shape[1] tokens, D the seeded delta [rows, cols] of
    these packed codes, x given as xt [in, T] (C-contiguous: a kept column's tokens are adjacent); colmap
    None (in = cols) or int64 [cols]: column c reads row colmap[c] of xt. Nothing dense is formed: per kept
    element one code and T multiply-adds, float32 accumulation per row, RB rows at a time."""
    keys, pos = _mask_scratch(_layout(cols, group, alpha)[4])
    vals, acc = np.empty(RB * pos.shape[0], np.float32), np.empty(xt.shape[1], np.float32)
    _strided_products(codes, bits, _lut(bits, scale, zero), seed_hash(seed), rows, cols, group, alpha, xt, colmap,
                      y, dest, keys, pos, vals, acc, 0, 1)


@njit(nogil=True, cache=True)
def seeded_products(codes, bits, scale, zero, seed, rows, cols, group, alpha, xt, y, colmap):
    """y [T, rows] float32 += x · Dᵀ (_products, token t into row t of y)."""
    _products(codes, bits, scale, zero, seed, rows, cols, group, alpha, xt, colmap, y,
              np.arange(xt.shape[1]))


# Columns of one part of a grouped product's table (seeded_products_multi): its packed codes and its
# column list are arrays CODES and LIST of the table's byte arrays (LIST -1: no list); its output rows are
# columns OUT .. OUT + ROWS - 1 of y (the output slices of a packed layer, e.g. q, k and v, in one call).
# Parts of equal P_MASK have the same mask (seed, shape, group size, alpha): the call generates it once for
# all of them (every fine-tune of one base converted at the same run seed has the same masks).
P_CODES, P_LIST, P_LIST_BYTES, P_LIST_LEN, P_COMPLEMENT, P_BITS, P_ZERO, P_SEED, P_ROWS, P_COLS, P_GROUP, \
    P_ALPHA, P_MASK, P_OUT, P_FIELDS = range(15)


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


@njit(inline="always", nogil=True, cache=True)
def _gathered(x, runs, order):
    """(xt, off): the tokens of every run gathered once and transposed, run q's as the C-contiguous [in, count]
    block xt[off[q] * in:off[q + 1] * in] (float32; a kept column's tokens adjacent, the block no wider)."""
    width = x.shape[1]
    off = np.zeros(runs.shape[0] + 1, np.int64)
    for q in range(runs.shape[0]):
        off[q + 1] = off[q] + runs[q, 2]
    xt = np.empty(max(off[-1], 1) * width, np.float32)
    for q in range(runs.shape[0]):
        count = runs[q, 2]
        block = xt[off[q] * width:off[q + 1] * width]
        for t in range(count):
            row = x[order[runs[q, 1] + t]]
            for c in range(width):
                block[c * count + t] = row[c]
    return xt, off


@njit(inline="always", nogil=True, cache=True)
def _run_tokens(xt, off, runs, order, width, q):
    """(xt [in, count] of run q, its token ids): views into _gathered's xt and the step's order."""
    return (xt[off[q] * width:off[q + 1] * width].reshape((width, runs[q, 2])),
            order[runs[q, 1]:runs[q, 1] + runs[q, 2]])


@njit(nogil=True, cache=True)
def _items(arrays, parts, scales, slot_parts, runs):
    """The (run, part) items of a grouped call, sorted by mask: (part, run, column map row or -1, order by
    mask, first item of each mask and n, column maps, code value tables, the widest row's kept count, the
    call's work: kept elements x (tokens + 2), the mask and code read of a kept element costing about two
    multiply-adds)."""
    n = 0
    for q in range(runs.shape[0]):
        n += slot_parts[runs[q, 0] + 1] - slot_parts[runs[q, 0]]
    item_part, item_run, item_map = np.empty(n, np.int64), np.empty(n, np.int64), np.full(n, -1, np.int64)
    masks = np.empty(n, np.int64)
    luts = np.empty((max(n, 1), 1 << MAX_BITS), np.float32)
    i, lists, per_row, width, work = 0, 0, 1, 1, 0
    for q in range(runs.shape[0]):
        for p in range(slot_parts[runs[q, 0]], slot_parts[runs[q, 0] + 1]):
            item_part[i], item_run[i], masks[i] = p, q, parts[p, P_MASK]
            luts[i, :1 << parts[p, P_BITS]] = _lut(parts[p, P_BITS], scales[p], parts[p, P_ZERO])
            if parts[p, P_LIST] >= 0:
                item_map[i] = lists
                lists += 1
                width = max(width, parts[p, P_COLS])
            kept = _layout(parts[p, P_COLS], parts[p, P_GROUP], parts[p, P_ALPHA])[4]
            per_row = max(per_row, kept)
            work += parts[p, P_ROWS] * kept * (runs[q, 2] + 2)
            i += 1
    cmaps = np.empty((max(lists, 1), width), np.int64)
    for i in range(n):
        f = parts[item_part[i]]
        if item_map[i] >= 0:
            _part_columns(arrays[f[P_LIST]], f[P_LIST_BYTES], f[P_LIST_LEN], f[P_COMPLEMENT] != 0, f[P_COLS],
                          cmaps[item_map[i]])
    by = np.argsort(masks, kind="mergesort")
    starts = [0]
    for i in range(1, n + 1):
        if i == n or masks[by[i]] != masks[by[i - 1]]:
            starts.append(i)
    return item_part, item_run, item_map, by, np.array(starts, np.int64), cmaps, luts, per_row, work


@njit(nogil=True, cache=True)
def _share(arrays, parts, runs, order, x, y, xt, off, item_part, item_run, item_map, by, starts, cmaps, luts,
           per_row, k, nt):
    """Thread k of nt's share of a grouped call: every item's row blocks k, k + nt, ... (_strided_products),
    mask by mask; each block of rows of a mask generated once, then multiplied by every item of that mask."""
    keys, pos = _mask_scratch(per_row)
    vals = np.empty(RB * per_row, np.float32)
    acc = np.empty(max(runs[:, 2].max(), 1) if runs.shape[0] else 1, np.float32)
    for s in range(starts.size - 1):
        lo, hi = starts[s], starts[s + 1]
        f = parts[item_part[by[lo]]]
        rows, cols, group, alpha = f[P_ROWS], f[P_COLS], f[P_GROUP], f[P_ALPHA]
        h0 = seed_hash(f[P_SEED])
        if hi - lo == 1:  # a mask of one item: its views made once, not per block
            m = by[lo]
            xq, dest = _run_tokens(xt, off, runs, order, x.shape[1], item_run[m])
            ys = y[:, f[P_OUT]:f[P_OUT] + rows]
            codes, bits = arrays[f[P_CODES]], f[P_BITS]
            if item_map[m] < 0:  # colmap None or an array at each call: resolved when numba compiles
                _strided_products(codes, bits, luts[m], h0, rows, cols, group, alpha, xq, None, ys, dest, keys, pos,
                                  vals, acc, k, nt)
            else:
                _strided_products(codes, bits, luts[m], h0, rows, cols, group, alpha, xq, cmaps[item_map[m], :cols],
                                  ys, dest, keys, pos, vals, acc, k, nt)
            continue
        for r0 in range(k * RB, rows, nt * RB):
            block_positions(h0, r0, cols, group, alpha, keys, pos)
            for it in range(lo, hi):
                m = by[it]
                f = parts[item_part[m]]
                xq, dest = _run_tokens(xt, off, runs, order, x.shape[1], item_run[m])
                ys = y[:, f[P_OUT]:f[P_OUT] + rows]
                codes, bits = arrays[f[P_CODES]], f[P_BITS]
                if item_map[m] < 0:
                    _block_products(codes, bits, luts[m], rows, cols, group, alpha, r0, pos, vals, xq, None, ys, dest,
                                    acc)
                else:
                    _block_products(codes, bits, luts[m], rows, cols, group, alpha, r0, pos, vals, xq,
                                    cmaps[item_map[m], :cols], ys, dest, acc)


@njit(parallel=True, nogil=True, cache=True)
def _threaded(arrays, parts, runs, order, x, y, xt, off, item_part, item_run, item_map, by, starts, cmaps, luts,
              per_row, nt):
    """_share on nt threads. Nothing else here: under parallel=True numba turns array allocations in the
    function itself (inlined helpers included) into parallel loops too, which would launch threads even on
    the single-threaded path (and abort a forked child of a GNU OpenMP process)."""
    for k in prange(nt):
        _share(arrays, parts, runs, order, x, y, xt, off, item_part, item_run, item_map, by, starts, cmaps, luts,
               per_row, k, nt)


@njit(nogil=True, cache=True)
def seeded_products_multi(arrays, parts, scales, slot_parts, runs, order, x, y, nt, min_work):
    """The grouped product on the host, in one call: for each run (slot, start, count) of the step's tokens
    sorted by slot (order[start:start + count] are its token ids), y[token] += x[token] · D_part^T for every
    part of the slot (a seeded delta, or a column class of a split one: parts[slot_parts[slot]:
    slot_parts[slot + 1]], columns P_* of `parts`, scales float64), into y's columns P_OUT .. P_OUT + P_ROWS - 1.
    x float32 [B, in], y float32 [B, out] (any strides): each item adds its row sums into y. A token with two
    parts on one output column (a split delta's classes) gets the same bits whichever is added first only if
    its row of y starts zero (host.multi then passes a zeroed scratch). The (run, part) items are taken mask
    by mask (P_MASK): each block of rows of a mask is generated once, then multiplied by every item of it.
    On nt threads when the call's work (returned) is at least min_work, with the same bits: thread k takes
    row blocks k, k + nt, ... of every item, in the same item order, so each element of y gets the same sums
    in the same order, and no two threads write one element. nt > 1 only where accel._threads allows."""
    xt, off = _gathered(x, runs, order)
    item_part, item_run, item_map, by, starts, cmaps, luts, per_row, work = _items(arrays, parts, scales, slot_parts,
                                                                                   runs)
    if nt < 2 or work < min_work:
        _share(arrays, parts, runs, order, x, y, xt, off, item_part, item_run, item_map, by, starts, cmaps, luts,
               per_row, 0, 1)
    else:
        _threaded(arrays, parts, runs, order, x, y, xt, off, item_part, item_run, item_map, by, starts, cmaps, luts,
                  per_row, nt)
    return work


@njit(parallel=True, nogil=True, cache=True)
def threads_probe(n):
    """A parallel launch that does nothing: starts numba's threading layer (accel._threads)."""
    out = np.zeros(n, np.int64)
    for k in prange(n):
        out[k] = k
    return out


@njit(nogil=True, cache=True)
def mask_columns(seed, rows, cols, group, alpha, row_stride, out):
    """out [rows, K] int64 = seeded_mask.mask_columns(...) (+ r * row_stride)."""
    full, keep, tail, keep_tail, per_row = _layout(cols, group, alpha)
    keys, pos = _mask_scratch(per_row)
    h0 = seed_hash(seed)
    for r0 in range(0, rows, RB):
        block_positions(h0, r0, cols, group, alpha, keys, pos)
        for r in range(r0, min(r0 + RB, rows)):
            orow = out[r]
            for g in range(full + (1 if keep_tail else 0)):
                n = keep if g < full else keep_tail
                o = r * row_stride + g * group
                e = g * keep
                for i in range(n):
                    orow[e + i] = o + np.int64(pos[e + i, r - r0])


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
    pos = np.empty(max(keep, keep_tail, 1), np.uint32)
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
