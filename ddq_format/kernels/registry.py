"""Which file encodings the kernels serve, and how each one is laid out on the device.

Two registries, keyed by id:
- LAYOUTS (resident layout -> its table row, Triton constants and torch reference decode): `seeded` (packed
  k-bit codes in kept order, mask regenerated from the seed) and `csr_parts` (the file's parts as stored).
- ENCODINGS (file encoding id -> how an entry becomes a resident delta): `seeded` and `csr_parts` upload
  their buffers as stored; `seeded_rans` decodes its rANS streams once at load (on the device when it is a
  GPU) into the `seeded` layout (its codes are identical), so every seeded kernel serves it. Its resident
  bytes are seeded's, about 1.3-1.7x the encoded bytes; `CompressedDelta.encoded_nbytes` keeps the latter.
  `seeded_rans_split` decodes each column class the same way, kept as a seeded delta (layout `split`, no
  kernel of its own: the dispatch runs each class's seeded kernels, the hot class reading x through the hot
  column list, the rest class through its own list or, where that would take the entry past
  KERNEL_RESIDENT_LIMIT x its file bytes, the hot list's complement).

Every use of the encodings package (header checks, numpy decoders) goes through the small adapter below, so
a change to that package's interface touches one place here.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .. import encodings as _encodings
from ..encodings._common import Ctx
from ..errors import EncodingError, UsageError
from ..quantize import check_parts
from ..seeded_mask import group_layout, kept_per_row, width_for
from ..spec import (ENC_CSR_PARTS, ENC_SEEDED, ENC_SEEDED_RANS, ENC_SEEDED_RANS_SPLIT, KERNEL_RESIDENT_LIMIT,
                    KIND_COMPRESSED, RANS_STATE_LOW)
from . import reference
from .common import (COL_OFFSET_FIELD, COLMAP_FIELD, COMPLEMENT_FIELD, GROUP_OFFSET_FIELD, KIND_FIELD,
                     LOCAL_COLS_FIELD, NF, ROW_OFFSET_FIELD, SEARCH_STEPS_FIELD, f32_bits, next_pow2)

# Buffers travel as bit-identical signed views (Triton and older torch lack unsigned 16/32-bit types);
# readers mask them back to unsigned.
_VIEW = {"U8": torch.uint8, "U16": torch.int16, "U32": torch.int32, "U64": torch.int64}
UMASK = {"U8": 0xFF, "U16": 0xFFFF, "U32": 0xFFFFFFFF, "U64": None}


def upload(buf, dtype: str | None, device) -> torch.Tensor:
    """File bytes -> a flat device tensor (typed view for U16/U32/U64)."""
    t = torch.from_numpy(np.array(buf, dtype=np.uint8, copy=True).reshape(-1))
    if dtype is not None and dtype in _VIEW and dtype != "U8":
        t = t.view(_VIEW[dtype])
    return t.to(device)


# -- adapter to the encodings package ------------------------------------------------------------------
def _encoding(enc: str):
    return _encodings.get(enc)


def host_decode(entry, bufs) -> np.ndarray:
    """The numpy reader's float32 decode (the oracle of every kernel)."""
    return _encoding(entry["encoding"]).decode(entry, bufs)


def host_decode_into(entry, bufs, columns: np.ndarray, out: np.ndarray) -> None:
    """A seeded entry's numpy decode written into columns `columns` of out (float32 [rows, W])."""
    _encoding(ENC_SEEDED).module.decode(entry, bufs, columns=columns, out=out)


def _rans_codes(entry, bufs) -> np.ndarray:
    return _encoding(ENC_SEEDED_RANS).parts(entry, bufs, None)  # the code matrix, as seeded stores it


def _split():
    """The seeded_rans_split module: its column classes and their sub-entries."""
    return _encoding(ENC_SEEDED_RANS_SPLIT).module


def _csr_validate(entry, bufs, ctx) -> None:
    _encoding(ENC_CSR_PARTS).parts(entry, bufs, ctx)  # offsets monotone, columns in range


# -- resident layouts ------------------------------------------------------------------------------------
SHARD_KEYS = ("row_offset", "group_offset", "col_offset", "full_cols")  # params of a seeded shard (shards.py)


class SeededLayout:
    """Packed k-bit codes, rows x kept_per_row in kept order (SPEC §9.3); buffer `codes`.

    A tensor-parallel shard (shards.seeded_shard) is rows [row_offset, +rows) x the groups from
    group_offset of a tensor `full_cols` wide, its first `col_offset` columns cut off (and columns past
    its width): it keeps those groups' codes, and its mask keys take the global row and group index."""
    name = "seeded"
    encoding = ENC_SEEDED  # the file encoding whose reader decodes this layout as stored
    kind = 1

    def setup(self, d) -> None:
        p = d.params
        G, alpha = p["group_size"], p["alpha"]
        d.row0, d.g0, d.col0 = (int(p.get(k, 0)) for k in SHARD_KEYS[:3])
        n_cols = int(p.get("full_cols", d.shape[1]))
        d.sharded = (d.row0, d.g0, d.col0, n_cols) != (0, 0, 0, d.shape[1])
        full, keep, tail, keep_tail = group_layout(n_cols, G, alpha)
        c0 = d.g0 * G + d.col0
        c1 = c0 + d.shape[1]
        if min(d.row0, d.g0, d.col0) < 0 or d.col0 >= G or c1 > n_cols:
            raise UsageError(f"shard columns {c0}..{c1} (group offset {d.g0}, column offset {d.col0}) outside the "
                             f"tensor's {n_cols}", tensor=d.name, field="params")
        g_end = -(-c1 // G) if d.shape[1] else d.g0  # one past the last group the shard overlaps
        has_tail = bool(tail) and g_end == full + 1
        d.groups = (g_end - d.g0 - has_tail, keep, tail if has_tail else 0, keep_tail if has_tail else 0)
        d.kept_per_row = d.groups[0] * keep + d.groups[3]
        d.clip = d.col0 > 0 or c1 < min(g_end * G, n_cols)  # a group cut by the shard's edges

    def blocks(self, d) -> list[tuple[int, int, int, int]]:
        """(first local group, groups, kept per group, group length): the full groups, then the tail."""
        full, keep, tail, keep_tail = d.groups
        out = [(0, full, keep, d.params["group_size"])] if full and keep else []
        return out + ([(full, 1, keep_tail, tail)] if keep_tail else [])

    def table_row(self, d) -> list[int]:
        p = d.params
        full, keep, tail, keep_tail = d.groups
        row = [d.buffers["codes"].data_ptr(), p["seed"] & 0xFFFFFFFF, f32_bits(p["scale"]), p["zero"], p["bits"],
               p["group_size"], keep, full, tail, keep_tail, width_for(p["group_size"]),
               width_for(tail) if tail else 1, d.kept_per_row]
        row += [0] * (NF - len(row))
        row[ROW_OFFSET_FIELD], row[GROUP_OFFSET_FIELD], row[COL_OFFSET_FIELD] = d.row0, d.g0, d.col0
        if d.columns is not None:  # a column class of a split delta: x is read through its column list
            row[COLMAP_FIELD], row[LOCAL_COLS_FIELD] = d.columns.data_ptr(), d.shape[1]
            if d.complement:
                row[COMPLEMENT_FIELD], row[SEARCH_STEPS_FIELD] = d.columns.numel(), d.columns.numel().bit_length()
        return row

    def consts(self, deltas) -> dict:
        """Triton constants shared by a launch over `deltas`: padded kept per group (KP, at most 64, a loop
        covers more), groups per scatter-decode step (GPC), whether any group needs cycle-walking, the padded
        group width (GP, at most 512; a loop covers more), the group size, the (padded) group count and
        whether any delta is a shard (SHARD: offsets read) and any shard cuts a group (CLIP: columns are
        range-checked), and whether every code lies in one byte (BYTE: every bit width divides 8)."""
        if max(d.kept_per_row * d.params["bits"] for d in deltas) >= 2**31 - 8:
            raise UsageError("rows of more than 2^31 code bits exceed the kernels' 32-bit offsets; use "
                             "backend='torch'", tensor=deltas[0].name, field="shape")
        keep = max(max(d.groups[1], d.groups[3]) for d in deltas)
        kp = min(64, next_pow2(max(keep, 1)))
        G = max(d.params["group_size"] for d in deltas)
        gp = min(512, next_pow2(G))
        # no walk only where every group length L is exactly 2^w (w = width_for(L) >= 1): a one-column group
        # has w = 1, so its permutation may give 1 and walks back to 0
        walk = any(not _exact_width(d.params["group_size"]) or (d.groups[2] and not _exact_width(d.groups[2]))
                   for d in deltas)
        groups = max(d.groups[0] + (d.groups[2] > 0) for d in deltas)
        return {"KP": kp, "GPC": max(1, min(8, 64 // kp)), "WALK": walk, "GP": gp,
                "GROUPS": next_pow2(groups), "G": G, "CLIP": any(d.clip for d in deltas),
                "SHARD": any(d.sharded for d in deltas), "COLMAP": _colmap_bytes(deltas),
                "SEARCH": any(d.complement and d.columns is not None for d in deltas),
                "BYTE": all(8 % d.params["bits"] == 0 for d in deltas),
                "BLOCK_COLS": next_pow2(max(d.shape[1] for d in deltas))}

    def reference_decode(self, d) -> torch.Tensor:
        return reference.decode_seeded(d)

    def column_index(self, d) -> torch.Tensor:
        """int64 input column of each of a column class's columns: its list read as unsigned, or the columns
        not in it (a complement class), or its own columns (no list)."""
        if d.columns is None:
            return torch.arange(d.shape[1], device=d.device)
        listed = d.columns.to(torch.int64) & UMASK[COLUMN_DTYPES[d.columns.element_size()]]
        if not d.complement:
            return listed
        # the kernels' mapping, c + #{i : list[i] - i <= c}: no host sync, nothing kept beside the list
        local = torch.arange(d.shape[1], device=listed.device)
        return local + torch.searchsorted(listed - torch.arange(listed.numel(), device=listed.device), local,
                                          right=True)

    def reference_rows(self, d, rows) -> torch.Tensor:
        return reference.decode_seeded(d, rows)


class CsrLayout:
    """The csr_parts buffers as stored (SPEC §9.2): row_offsets, col_indices, values."""
    name = "csr_parts"
    encoding = ENC_CSR_PARTS
    kind = 2

    def setup(self, d) -> None:
        d.part_bits = check_parts(d.params["bits"], d.params["parts"])
        ro = d.row_offsets_i64()
        ends = ro[:, -1].tolist()
        d.part_starts = [int(sum(ends[:j])) for j in range(len(ends))]
        d.part_maxlen = (ro[:, 1:] - ro[:, :-1]).amax(dim=1).contiguous() if d.shape[0] else \
            torch.zeros(len(ends), dtype=torch.int64, device=ro.device)
        d.part_starts_dev = torch.tensor(d.part_starts, dtype=torch.int64, device=ro.device)

    def table_row(self, d) -> list[int]:
        p = d.params
        return [d.buffers["row_offsets"].data_ptr(), d.buffers["col_indices"].data_ptr(),
                d.buffers["values"].data_ptr(), f32_bits(p["scale"]), p["zero"], d.part_bits, p["parts"],
                (1 << p["bits"]) // p["parts"], d.part_starts_dev.data_ptr(), d.part_maxlen.data_ptr()]

    def consts(self, deltas) -> dict:
        ro64 = {d.dtypes["row_offsets"] == "U64" for d in deltas}
        cib = {d.buffers["col_indices"].element_size() for d in deltas}
        if len(ro64) != 1 or len(cib) != 1:
            raise UsageError("csr_parts deltas of one batch must share row-offset and column-index dtypes")
        return {"RO64": ro64.pop(), "CI_BYTES": cib.pop(), "BYTE": all(8 % d.part_bits == 0 for d in deltas),
                "BLOCK_COLS": next_pow2(max(d.shape[1] for d in deltas))}

    def reference_decode(self, d) -> torch.Tensor:
        return reference.decode_csr(d)

    def reference_rows(self, d, rows) -> torch.Tensor:
        return reference.csr_rows(d, rows)


def _exact_width(length: int) -> bool:
    """The mask's permutation width covers exactly `length` (2^width_for(length) == length)."""
    return 1 << width_for(length) == length


def _colmap_bytes(deltas) -> int:
    """The column lists' element size in a launch (0: no column class; one size per launch)."""
    sizes = {d.columns.element_size() for d in deltas if d.columns is not None}
    if len(sizes) > 1:
        raise UsageError("column classes of one batch must share a column-list dtype", tensor=deltas[0].name,
                         field="columns")
    return sizes.pop() if sizes else 0


COLUMN_DTYPES = {2: "U16", 4: "U32"}  # a column list's element size -> its dtype (inputs up to 2^16 wide: U16)


def column_list(cols: np.ndarray, n_cols: int, device) -> tuple[torch.Tensor, str]:
    """(device tensor, dtype) of a column class's input columns: U16 (as int16 bits) when every column of
    the tensor fits, else U32."""
    dtype = "U16" if n_cols <= 1 << 16 else "U32"
    return upload(np.ascontiguousarray(cols, "<u2" if dtype == "U16" else "<u4").view(np.uint8), dtype,
                  device), dtype


class SplitLayout:
    """seeded_rans_split: its column classes, each a seeded-layout delta [rows, class width] (`d.parts`, in the
    file's class order, empty classes left out). Buffers `hot_codes`, `rest_codes`, `hot_columns` (U16 or
    U32: the hot class's input columns, ascending) and, where the load chose it (rest_list_fits),
    `rest_columns`. The hot class reads x through its list; the rest class through its own, or else through
    the complement of the hot list (a binary search, COMPLEMENT_FIELD), which keeps a tenth of the lists'
    bytes. No kernel reads this layout: the dispatch runs each class's own kernels (COLMAP_FIELD) and puts
    decoded columns back (`assemble`)."""
    name = "split"
    encoding = ENC_SEEDED_RANS_SPLIT
    kind = None

    def setup(self, d) -> None:
        hot, own = d.buffers["hot_columns"], d.buffers.get("rest_columns")
        widths = {"hot": hot.numel(), "rest": d.shape[1] - hot.numel()}
        # (list, complement) per class; no hot column (some shards): the rest class reads x as it is
        lists = {"hot": (hot, False), "rest": (own, False) if own is not None else (hot, True)} if hot.numel() else \
            {"rest": (None, False)}
        d.parts = tuple(
            type(d)(ENC_SEEDED_RANS, (d.shape[0], widths[cls]), d.params[cls], {"codes": d.buffers[f"{cls}_codes"]},
                    {"codes": "PACKED"}, f"{d.name} ({cls} columns)", columns=lists[cls][0],
                    complement=lists[cls][1])
            for cls in _split().CLASSES if widths[cls])

    def assemble(self, d, part_fn, n_rows: int, dtype) -> torch.Tensor:
        """[n_rows, in] from each class's [n_rows, class width] (part_fn(part)) put back at its columns."""
        out = torch.zeros((n_rows, d.shape[1]), dtype=dtype, device=d.device)
        for p in d.parts:
            out.index_copy_(1, SEEDED.column_index(p), part_fn(p).to(dtype))
        return out

    def reference_decode(self, d) -> torch.Tensor:
        return self.assemble(d, reference.decode, d.shape[0], torch.float32)

    def reference_rows(self, d, rows) -> torch.Tensor:
        return self.assemble(d, lambda p: reference.decode_rows(p, rows), rows.numel(), torch.float32)


SEEDED = SeededLayout()
CSR = CsrLayout()
SPLIT = SplitLayout()
LAYOUTS = {SEEDED.name: SEEDED, CSR.name: CSR}  # the layouts a kernel reads (a table row's kind)


def table_row(d) -> list[int]:
    row = d.layout.table_row(d)
    row += [0] * (NF - len(row))
    row[KIND_FIELD] = d.layout.kind
    return row


# -- file encodings ---------------------------------------------------------------------------------------
class StoredAsIs:
    """An encoding whose file buffers are its resident layout."""

    def __init__(self, encoding: str, layout):
        self.encoding, self.layout = encoding, layout

    def validate(self, entry, buffers, ctx) -> None:
        _encoding(self.encoding).check(entry, ctx)
        _check_lengths(entry, buffers, ctx)
        if self.layout is CSR:
            _csr_validate(entry, buffers, ctx)  # kernels index memory by these offsets and columns

    def resident(self, entry, buffers, device, backend):
        """(params, device buffers, dtypes) of the resident layout."""
        dtypes = {role: b["dtype"] for role, b in entry["buffers"].items()}
        return dict(entry["params"]), {r: upload(buffers[r], dtypes[r], device) for r in dtypes}, dtypes

    def code_matrix(self, entry, buffers) -> np.ndarray:
        """uint8 [rows, kept_per_row]: a seeded layout's codes in kept order."""
        return _encoding(self.encoding).parts(entry, as_numpy(buffers), None)

    def shard(self, entry, buffers, rows: tuple, cols: tuple, device, path=None):
        """(params, device buffers, dtypes, shape, share of the kept elements) of rows [r0, r1) x
        cols [c0, c1) of a validated entry (shards.py)."""
        from . import shards
        (r0, r1), (c0, c1) = rows, cols
        shape = [r1 - r0, c1 - c0]
        if self.layout is CSR:
            parts = _encoding(self.encoding).parts(entry, as_numpy(buffers), ctx_of(entry, path))
            sub, bufs = shards.csr_shard(entry, parts, np.arange(r0, r1, dtype=np.int64), c0, c1)
            params, dev, dtypes = StoredAsIs.resident(self, sub, bufs, device, None)
            return params, dev, dtypes, shape, sub["params"]["nnz"] / max(entry["params"]["nnz"], 1)
        codes = self.code_matrix(entry, buffers)
        params, sub = shards.seeded_shard(entry, codes, rows, cols)
        packed = reference.pack_codes(torch.from_numpy(sub).to(device), params["bits"])
        return params, {"codes": packed}, {"codes": "PACKED"}, shape, sub.size / max(codes.size, 1)


class RansToSeeded(StoredAsIs):
    """seeded_rans: streams decoded once at load into seeded's packed codes (bit-identical codes)."""

    def code_matrix(self, entry, buffers) -> np.ndarray:
        return _rans_codes(entry, as_numpy(buffers))

    def resident(self, entry, buffers, device, backend):
        codes = rans_codes(entry, buffers, device, backend)
        params = dict(entry["params"])
        return params, {"codes": reference.pack_codes(codes, params["bits"])}, {"codes": "PACKED"}


def _check_lengths(entry, buffers, ctx) -> None:
    for role, b in entry["buffers"].items():
        if role not in buffers or len(buffers[role]) != b["length"]:
            raise EncodingError(f"buffer has {len(buffers.get(role, ()))} bytes, entry says {b['length']}",
                                path=ctx.path, tensor=ctx.name, field=f"buffers.{role}")


class SplitToSeeded(StoredAsIs):
    """seeded_rans_split: each column class's streams decoded once at load into seeded packed codes (as
    RansToSeeded does), the column lists beside them (SplitLayout). Resident bytes: the classes' seeded
    codes plus 2 bytes (4 past 2^16 columns) per input column, or per hot column where that would exceed
    KERNEL_RESIDENT_LIMIT x the file's bytes (rest_list_fits). Validated as StoredAsIs (header, lengths);
    the streams are checked as they are decoded."""

    def _classes(self, entry, buffers, codes_fn):
        """(class, columns, sub-entry, its codes) per class; a class's stream error named as this entry's."""
        split = _split()
        for cls, cols, e, b in split.classes(entry, buffers):
            try:
                yield cls, cols, e, codes_fn(e, b)
            except EncodingError as err:
                raise split.class_error(entry, cls, err) from None

    def resident(self, entry, buffers, device, backend):
        params, bufs, dtypes = dict(entry["params"]), {}, {}
        for cls, cols, e, codes in self._classes(entry, buffers,
                                                 lambda e, b: rans_codes(e, b, device, backend)):
            bufs[f"{cls}_codes"], dtypes[f"{cls}_codes"] = reference.pack_codes(codes, e["params"]["bits"]), "PACKED"
            self._add_list(bufs, dtypes, cls, cols, entry["shape"][1], device)
        self._drop_rest_list(bufs, dtypes, entry_bytes(entry))
        return params, bufs, dtypes

    def shard(self, entry, buffers, rows: tuple, cols: tuple, device, path=None):
        """Rows [r0, r1) x columns [c0, c1): in each class, the run of its (ascending) columns inside
        [c0, c1) as a seeded shard of its sub-matrix, its column list shifted by c0."""
        from . import shards
        (r0, r1), (c0, c1) = rows, cols
        params, bufs, dtypes, kept, total = dict(entry["params"]), {}, {}, 0, 0
        for cls, cl, e, codes in self._classes(entry, buffers, lambda e, b: _rans_codes(e, as_numpy(b))):
            a, z = (int(v) for v in np.searchsorted(cl, [c0, c1]))
            params[cls], sub = shards.seeded_shard(e, codes, rows, (a, z))
            if cls == "hot":
                params["hot_columns"] = (cl[a:z] - c0).tolist()
            bufs[f"{cls}_codes"] = reference.pack_codes(torch.from_numpy(sub).to(device), e["params"]["bits"])
            dtypes[f"{cls}_codes"] = "PACKED"
            self._add_list(bufs, dtypes, cls, cl[a:z] - c0, c1 - c0, device)
            kept, total = kept + sub.size, total + codes.size
        share = kept / max(total, 1)
        self._drop_rest_list(bufs, dtypes, round(entry_bytes(entry) * share))
        return params, bufs, dtypes, [r1 - r0, c1 - c0], share

    @staticmethod
    def _add_list(bufs, dtypes, cls, cols, n_cols, device) -> None:
        bufs[f"{cls}_columns"], dtypes[f"{cls}_columns"] = column_list(cols, n_cols, device)

    @staticmethod
    def _drop_rest_list(bufs, dtypes, encoded: int) -> None:
        """Keep the rest class's own list only where rest_list_fits; else it reads the hot list's complement
        (and with no hot column, as in some shards, it reads x as it is)."""
        if not bufs["hot_columns"].numel() or not rest_list_fits(sum(t.numel() * t.element_size()
                                                                     for t in bufs.values()), encoded):
            del bufs["rest_columns"], dtypes["rest_columns"]


SPLIT_COLUMNS_ENV = "DDQ_SPLIT_COLUMNS"  # auto (default), direct or complement: the rest class's column list


def rest_list_fits(resident: int, encoded: int) -> bool:
    """Whether a split delta keeps its rest class's own column list (one load per kept element; else the
    complement of the hot list, a binary search): when its resident bytes, that list included, stay within KERNEL_RESIDENT_LIMIT x its bytes in the file. $DDQ_SPLIT_COLUMNS=direct|complement forces
    either (benchmarks compare them)."""
    mode = os.environ.get(SPLIT_COLUMNS_ENV, "auto")
    if mode not in ("auto", "direct", "complement"):
        raise UsageError(f"${SPLIT_COLUMNS_ENV} must be auto, direct or complement, got {mode!r}")
    if mode != "auto":
        return mode == "direct"
    return resident <= KERNEL_RESIDENT_LIMIT * encoded


def entry_bytes(entry) -> int:
    """The entry's bytes in the file (its buffers' lengths): what encoded_nbytes and the resident limit count."""
    return sum(int(b["length"]) for b in entry["buffers"].values())


def rans_codes(entry, buffers, device, backend) -> torch.Tensor:
    """uint8 codes [rows * kept_per_row] of a seeded_rans entry on `device`: the Triton lane decoder for GPU
    tensors (or when forced), else the numpy reader's decoder."""
    from . import dispatch
    dev = torch.device(device)
    p = entry["params"]
    rows, cols = entry["shape"]
    per_row = kept_per_row(cols, p["group_size"], p["alpha"])
    b = p["rows_per_stream"]
    ns = -(-rows // b)
    on_device = dispatch.select("load", entry["encoding"], dispatch.choose(dev, backend)).startswith("triton")
    if not on_device or ns == 0 or per_row == 0:
        return torch.from_numpy(np.ascontiguousarray(_rans_codes(entry, as_numpy(buffers))).reshape(-1)).to(dev)
    from . import triton_rans
    odt = entry["buffers"]["stream_offsets"]["dtype"]
    off = np.frombuffer(np.asarray(buffers["stream_offsets"], np.uint8).tobytes(), "<u4" if odt == "U32" else "<u8")
    raw = np.asarray(buffers["streams"], np.uint8).reshape(-1)
    last = (rows - (ns - 1) * b) * per_row
    _check_stream_offsets(entry, off.astype(np.int64), raw.size, b * per_row, last)
    words = upload(raw, "U16", dev)
    off_w = torch.from_numpy(off.astype(np.int64) // 2).to(dev)
    table = torch.from_numpy(triton_rans.decoder_table(p["freqs"])).to(dev)
    codes, state = triton_rans.decode_lanes(words, off_w, table, ns, b * per_row, last)
    bad = (state[:, 0] != RANS_STATE_LOW) | (state[:, 1] != off_w[1:])
    if bool(bad.any()):  # one sync at load time
        j = int(bad.nonzero()[0, 0])
        raise EncodingError(f"stream {j} is corrupt: it does not end in state {RANS_STATE_LOW} exactly at its last "
                            "byte", tensor=entry.get("name"), field="buffers.streams")
    return codes


def _check_stream_offsets(entry, off, nbytes, per_stream, last) -> None:
    """Offsets start at 0, end at the buffer's length, and every stream is an even 4..4+2*codes bytes, so no
    lane can read outside its own stream."""
    lengths = np.diff(off)
    counts = np.full(lengths.size, per_stream, np.int64)
    counts[-1] = last
    bad = (lengths < 4) | (lengths % 2 == 1) | (lengths > 4 + 2 * counts)
    if off[0] != 0 or off[-1] != nbytes or bad.any():
        where = f"stream {int(np.flatnonzero(bad)[0])}" if bad.any() else "offsets"
        raise EncodingError(f"{where}: stream offsets do not cut {nbytes} bytes into even streams of 4.."
                            "4+2*codes bytes", tensor=entry.get("name"), field="buffers.stream_offsets")


def as_numpy(buffers) -> dict:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in buffers.items()}


ENCODINGS = {ENC_SEEDED: StoredAsIs(ENC_SEEDED, SEEDED), ENC_CSR_PARTS: StoredAsIs(ENC_CSR_PARTS, CSR),
             ENC_SEEDED_RANS: RansToSeeded(ENC_SEEDED_RANS, SEEDED),
             ENC_SEEDED_RANS_SPLIT: SplitToSeeded(ENC_SEEDED_RANS_SPLIT, SPLIT)}
KERNEL_ENCODINGS = tuple(ENCODINGS)


def supports(entry: dict) -> bool:
    """A compressed entry the kernels keep resident, decode and multiply directly (every other entry,
    baselines included, decodes through the numpy reader)."""
    return entry.get("kind") == KIND_COMPRESSED and entry.get("encoding") in ENCODINGS


def for_entry(entry: dict, path=None):
    if not supports(entry):
        raise UsageError(f"only compressed {'/'.join(KERNEL_ENCODINGS)} entries can be kept compressed, got kind "
                         f"{entry.get('kind')!r} encoding {entry.get('encoding')!r}", path=path,
                         tensor=entry.get("name"), field="encoding")
    return ENCODINGS[entry["encoding"]]


def ctx_of(entry, path=None) -> Ctx:
    return Ctx(path, entry.get("name"))
