"""Pure-torch reference paths (any device): bit unpacking, the seeded mask hash, decode and delta matmuls.

The seeded hash runs in int64 tensors masked to 32 bits; products are split into 16-bit halves so no
intermediate exceeds 2^48 (no reliance on signed-overflow wrap). It is bit-exact with seeded_mask.py.
"""
from __future__ import annotations

import torch

from ..seeded_mask import width_for
from ..spec import FMIX_C1, FMIX_C2, GOLDEN, PERM_ROUNDS, SEED_SALT

M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """(a * c) mod 2^32 for a in [0, 2^32) and a constant c in [0, 2^32)."""
    lo = a * (c & 0xFFFF)
    hi = ((a * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & M32


def fmix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, FMIX_C1)
    x = x ^ (x >> 13)
    x = _mul32(x, FMIX_C2)
    return x ^ (x >> 16)


def _keys(seed: int, rows: torch.Tensor, groups: torch.Tensor):
    h0 = fmix32(torch.tensor((seed & M32) ^ SEED_SALT, dtype=torch.int64, device=rows.device))
    h1 = fmix32(h0 ^ rows)
    h2 = fmix32((h1 + _mul32(groups, GOLDEN)) & M32)
    keys = [fmix32((h2 + ((t + 1) * GOLDEN & M32)) & M32) for t in range(PERM_ROUNDS + 1)]
    return keys[:PERM_ROUNDS], keys[PERM_ROUNDS]


def _permute(x, round_keys, w: int):
    mask = (1 << w) - 1
    shift = (w + 1) >> 1
    for k in round_keys:
        x = (x + (k & mask)) & mask
        x = (x * ((k >> 8) | 1)) & mask  # x < 2^31, multiplier < 2^24: no overflow
        x = x ^ (x >> shift)
    return x


def positions(seed: int, rows, groups, index, length: int) -> torch.Tensor:
    """int64 offsets within the group, as seeded_mask.positions."""
    round_keys, rot = _keys(seed, rows, groups)
    w = width_for(length)
    x = _permute(index, round_keys, w)
    if length & (length - 1):  # cycle-walking, as the spec (never when 2^w == length: no host sync then)
        todo = x >= length
        while bool(todo.any()):
            x = torch.where(todo, _permute(x, round_keys, w), x)
            todo = x >= length
    return (x + rot % length) % length


def seeded_columns(d, rows: torch.Tensor | None = None, positions_fn=positions):
    """Local columns (int64 [R, kept_per_row], kept order) of a `seeded`-layout delta's rows (local row
    indices; None: all), and whether each is inside the delta (None when no shard edge cuts a group). The
    keys take the global row and group index (shards). positions_fn(seed, rows [R,1,1], groups [1,n,1],
    index [1,1,k], length) -> int64 [R, n, k]: this module's `positions`, or the numpy reader's (host.py)."""
    p = d.params
    r = torch.arange(d.shape[0], dtype=torch.int64, device=d.device) if rows is None else rows.to(torch.int64)
    rg = (r + d.row0)[:, None, None]
    G = p["group_size"]
    out = []
    for g_first, n_groups, keep, length in d.layout.blocks(d):
        g = torch.arange(g_first, g_first + n_groups, dtype=torch.int64, device=d.device)[None, :, None]
        i = torch.arange(keep, dtype=torch.int64, device=d.device)[None, None, :]
        pos = positions_fn(p["seed"], rg, g + d.g0, i, length)
        out.append((pos + g * G).reshape(r.numel(), n_groups * keep))
    cols = torch.cat(out, 1) if out else torch.zeros((r.numel(), 0), dtype=torch.int64, device=d.device)
    if not d.clip:
        return cols, None
    cols = cols - d.col0
    return cols, (cols >= 0) & (cols < d.shape[1])


def unpack(data: torch.Tensor, bits: int, count: int, start: int = 0) -> torch.Tensor:
    """Codes start..start+count-1 of an LSB-first packed uint8 stream, as int64 (16-bit window read)."""
    return unpack_at(data, bits, torch.arange(count, dtype=torch.int64, device=data.device) + start)


def unpack_at(data: torch.Tensor, bits: int, idx: torch.Tensor) -> torch.Tensor:
    """Codes number idx (int64) of an LSB-first packed uint8 stream, as int64 (16-bit window read)."""
    if bits == 0 or idx.numel() == 0:
        return torch.zeros(idx.shape, dtype=torch.int64, device=data.device)
    d = data.to(torch.int64)
    bit = idx * bits
    byte = bit >> 3
    hi = d[(byte + 1).clamp(max=d.numel() - 1)] * ((byte + 1) < d.numel())
    window = d[byte] | (hi << 8)
    return (window >> (bit & 7)) & ((1 << bits) - 1)


def dequantize(codes: torch.Tensor, scale: float, zero: int, offset: int = 0) -> torch.Tensor:
    """float32(s) * float32(Q - z - o): one binary32 multiply of exact operands, as quantize.dequantize."""
    return (codes - (zero + offset)).to(torch.float32) * torch.tensor(scale, dtype=torch.float32, device=codes.device)


def seeded_codes(d, rows: torch.Tensor | None = None) -> torch.Tensor:
    """int64 codes [R, kept_per_row] of local rows (None: all)."""
    per, bits = d.kept_per_row, d.params["bits"]
    if rows is None:
        return unpack(d.buffers["codes"], bits, d.shape[0] * per).reshape(d.shape[0], per)
    idx = (rows.to(torch.int64)[:, None] * per + torch.arange(per, dtype=torch.int64, device=d.device)).reshape(-1)
    return unpack_at(d.buffers["codes"], bits, idx).reshape(rows.numel(), per)


def decode_seeded(d, rows: torch.Tensor | None = None, positions_fn=positions) -> torch.Tensor:
    """Dense float32 of a resident `seeded`-layout delta (its local rows `rows`, None: all)."""
    p = d.params
    cols_idx, inside = seeded_columns(d, rows, positions_fn)
    vals = dequantize(seeded_codes(d, rows), p["scale"], p["zero"])
    out = torch.zeros((cols_idx.shape[0], d.shape[1] + (inside is not None)), dtype=torch.float32, device=d.device)
    if inside is not None:  # cut-off elements land in a spare last column
        cols_idx = torch.where(inside, cols_idx, d.shape[1])
    out.scatter_(1, cols_idx, vals)
    return out[:, :d.shape[1]] if inside is not None else out


def csr_rows_cols(d):
    """(row, column, stored code, part) of every stored element, int64, parts concatenated in order."""
    rows, cols = d.shape
    p = d.params
    ro = d.row_offsets_i64()
    ci = d.col_indices_i64()
    codes = unpack(d.buffers["values"], d.part_bits, p["nnz"])
    counts = (ro[:, 1:] - ro[:, :-1]).reshape(-1)
    row_of = torch.arange(rows, dtype=torch.int64, device=d.device).repeat(p["parts"])
    part_of = torch.arange(p["parts"], dtype=torch.int64, device=d.device).repeat_interleave(rows)
    return row_of.repeat_interleave(counts), ci, codes, part_of.repeat_interleave(counts)


def decode_csr(d) -> torch.Tensor:
    rows, cols = d.shape
    p = d.params
    r, c, codes, part = csr_rows_cols(d)
    offsets = torch.tensor(p["offsets"], dtype=torch.int64, device=d.device)
    out = torch.zeros(rows * cols, dtype=torch.float32, device=d.device)
    out[r * cols + c] = dequantize(codes - offsets[part], p["scale"], p["zero"])
    return out.reshape(rows, cols)


def csr_rows(d, rows: torch.Tensor) -> torch.Tensor:
    """Dense float32 [R, cols] of local rows `rows` of a csr_parts delta (only their elements are read)."""
    p = d.params
    rows = rows.to(torch.int64)
    ro = d.row_offsets_i64()
    starts = ro[:, rows] + d.part_starts_dev[:, None]  # [parts, R]: first element of each (part, row)
    counts = (ro[:, rows + 1] - ro[:, rows]).reshape(-1)
    first = torch.repeat_interleave(starts.reshape(-1), counts)
    run_start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    elem = first + torch.arange(first.numel(), dtype=torch.int64, device=d.device) - run_start
    grid = torch.arange(rows.numel(), dtype=torch.int64, device=d.device).repeat(p["parts"])
    out_row = torch.repeat_interleave(grid, counts)
    part = torch.repeat_interleave(torch.arange(p["parts"], device=d.device).repeat_interleave(rows.numel()), counts)
    offsets = torch.tensor(p["offsets"], dtype=torch.int64, device=d.device)
    vals = dequantize(unpack_at(d.buffers["values"], d.part_bits, elem) - offsets[part], p["scale"], p["zero"])
    out = torch.zeros((rows.numel(), d.shape[1]), dtype=torch.float32, device=d.device)
    out[out_row, d.col_indices_i64()[elem]] = vals
    return out


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (each < 2^bits) -> the LSB-first packed stream of SPEC §7 (bitpack.pack), on their device."""
    codes = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return codes.clone()
    n = codes.numel()
    shifts = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    place = torch.arange(8, dtype=torch.int16, device=codes.device)  # no host tensor: CUDA-graph safe
    return (stream.reshape(-1, 8).to(torch.int16) << place).sum(1).to(torch.uint8)[: (n * bits + 7) // 8]


def decode(d) -> torch.Tensor:
    return d.layout.reference_decode(d)


def decode_rows(d, rows: torch.Tensor) -> torch.Tensor:
    """Dense float32 [R, cols] of the delta's local rows `rows` (int64 on its device)."""
    return d.layout.reference_rows(d, rows)


def _matmul_f32(d, x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) @ decode(d).T  # a transient dense float32 matrix


def matmul(d, x: torch.Tensor) -> torch.Tensor:
    """x @ dense.T with float32 accumulation, in x.dtype."""
    return _matmul_f32(d, x).to(x.dtype)


def multi_matmul(x: torch.Tensor, deltas, index: torch.Tensor, add_to=None) -> torch.Tensor:
    """Row b times deltas[index[b]] (None deltas and index -1 or out of range: nothing), added to `add_to`
    when given."""
    rows = next(d for d in deltas if d is not None).shape[0] if any(d is not None for d in deltas) else 0
    out = add_to if add_to is not None else torch.zeros((x.shape[0], rows), dtype=x.dtype, device=x.device)
    for i in torch.unique(index).tolist():
        if not 0 <= i < len(deltas) or deltas[i] is None:
            continue
        sel = (index == i).nonzero().reshape(-1)
        out[sel] = (out[sel].to(torch.float32) + _matmul_f32(deltas[i], x[sel])).to(out.dtype)
    return out
