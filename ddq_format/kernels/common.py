"""Constants and small helpers shared by the host code and the Triton kernels (no triton import here)."""
from __future__ import annotations

import struct

NF = 21  # int64 fields per parameter-table row
KIND_FIELD = 15  # table field holding the resident layout's kind (0: no delta in this slot)
# seeded shards (tensor parallelism): the mask keys take the GLOBAL row and group index
ROW_OFFSET_FIELD = 13  # global row of local row 0
GROUP_OFFSET_FIELD = 14  # global group of local group 0
COL_OFFSET_FIELD = 16  # columns of local group 0 before the shard's first column (0 <= . < h_g)
# a column class of seeded_rans_split: the products read x through its column list
COLMAP_FIELD = 17  # address of the class's column list (U16/U32 input columns, ascending); 0: none
LOCAL_COLS_FIELD = 18  # the class's own width (its local columns)
# The rest class reads the HOT class's list as its complement: local column c is input column
# c + #{i : list[i] - i <= c} (a binary search), so only the hot list (a tenth of the columns) is resident.
COMPLEMENT_FIELD = 19  # n: the class is the complement of its n-long list (0: the list holds its columns)
SEARCH_STEPS_FIELD = 20  # n.bit_length(): the search's steps, a table field so no count is a compile constant


def f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())

