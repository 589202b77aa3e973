"""Constants and small helpers shared by the host code and the Triton kernels (no triton import here)."""
from __future__ import annotations

import struct

NF = 20  # int64 fields per parameter-table row
KIND_FIELD = 15  # table field holding the resident layout's kind (0: no delta in this slot)
# seeded shards (tensor parallelism): the mask keys take the GLOBAL row and group index
ROW_OFFSET_FIELD = 13  # global row of local row 0
GROUP_OFFSET_FIELD = 14  # global group of local group 0
COL_OFFSET_FIELD = 16  # columns of local group 0 before the shard's first column (0 <= . < h_g)
# a column class of seeded_rans_split: the products read x through its column list
COLMAP_FIELD = 17  # address of the int32 column list (global input column of each local column); 0: none
LOCAL_COLS_FIELD = 18  # the class's own width (its local columns)


def f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def is_pow2(n: int) -> bool:
    return n & (n - 1) == 0
