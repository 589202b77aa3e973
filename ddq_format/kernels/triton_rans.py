"""seeded_rans streams decoded on the device: one lane per stream, BLOCK_S streams per program (SPEC §9.5).

Streams are independent, so lanes run in parallel; each lane is a dependent chain of one table lookup and a
few integer operations per symbol. The next renormalisation word is loaded before the state update needs it
(its address depends only on the previous step), so the chain holds one L1 access, not two. The decoder
table packs symbol | (freq - 1) << 8 | (slot - cum) << 20 into one 32-bit word (freq <= 4096, slot - cum
< freq, symbol < 256). Reads never leave a lane's own stream; the final state and read position of every
lane come back so the host rejects a corrupt stream exactly as the numpy reader does.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from ..spec import RANS_PROB_BITS, RANS_STATE_LOW

PROB_BITS = tl.constexpr(RANS_PROB_BITS)
SLOT_MASK = tl.constexpr((1 << RANS_PROB_BITS) - 1)
STATE_LOW = tl.constexpr(RANS_STATE_LOW)
BLOCK_S = 32  # one warp of lanes per program


@triton.jit
def rans_lanes_kernel(words_ptr, off_ptr, table_ptr, out_ptr, state_ptr, n_streams, per_stream, last_count,
                      BLOCK_S: tl.constexpr):
    j = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = j < n_streams
    start = tl.load(off_ptr + j, mask=live, other=0)
    end = tl.load(off_ptr + j + 1, mask=live, other=0)
    n = tl.where(j == n_streams - 1, last_count, per_stream)
    lo = tl.load(words_ptr + start, mask=live & (start < end), other=0).to(tl.uint32) & 0xFFFF
    hi = tl.load(words_ptr + start + 1, mask=live & (start + 1 < end), other=0).to(tl.uint32) & 0xFFFF
    x = lo | (hi << 16)
    ok_start = x >= STATE_LOW
    wp = start + 2
    out = out_ptr + j.to(tl.int64) * per_stream
    for i in range(0, per_stream):
        act = live & (i < n)
        word = tl.load(words_ptr + wp, mask=act & (wp < end), other=0).to(tl.uint32) & 0xFFFF
        e = tl.load(table_ptr + (x & SLOT_MASK), mask=act, other=0).to(tl.uint32)
        xn = (((e >> 8) & 0xFFF) + 1) * (x >> PROB_BITS) + (e >> 20)
        need = xn < STATE_LOW
        x = tl.where(act, tl.where(need, (xn << 16) | word, xn), x)
        wp = tl.where(act & need, wp + 1, wp)
        tl.store(out + i, (e & 0xFF).to(tl.uint8), mask=act)
    tl.store(state_ptr + j * 2, tl.where(ok_start, x, 0).to(tl.int64), mask=live)
    tl.store(state_ptr + j * 2 + 1, wp, mask=live)


def decoder_table(freqs) -> np.ndarray:
    """int32 [2^P]: the packed per-slot decoder entries of a frequency table."""
    f = np.asarray(freqs, np.int64)
    cum = np.concatenate([[0], np.cumsum(f)[:-1]])
    sym = np.repeat(np.arange(f.size), f)
    slot = np.arange(1 << RANS_PROB_BITS)
    packed = sym | (f[sym] - 1) << 8 | (slot - cum[sym]) << 20
    return packed.astype(np.uint32).view(np.int32)


def decode_lanes(streams: torch.Tensor, offsets: torch.Tensor, table: torch.Tensor, n_streams: int,
                 per_stream: int, last_count: int, out: torch.Tensor | None = None):
    """(codes uint8 [(n_streams - 1) * per_stream + last_count], int64 [n_streams, 2] final state and word
    position). `streams`: the stream bytes as int16 words; `offsets`: int64 word offsets [N + 1]; `table`:
    decoder_table on the device. No host sync and no host copy (CUDA-graph safe); the caller checks the
    states. `out` (uint8, at least n_streams * per_stream): where the codes go."""
    dev = streams.device
    total = (n_streams - 1) * per_stream + last_count if n_streams else 0
    codes = out if out is not None else torch.empty(max(n_streams * per_stream, 1), dtype=torch.uint8, device=dev)
    state = torch.empty((n_streams, 2), dtype=torch.int64, device=dev)
    if n_streams:
        rans_lanes_kernel[(triton.cdiv(n_streams, BLOCK_S),)](streams, offsets, table, codes, state, n_streams,
                                                             per_stream, last_count, BLOCK_S=BLOCK_S, num_warps=1)
    return codes[:total], state
