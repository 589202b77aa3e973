"""CompressedDelta: one compressed 2-D linear delta kept resident on a device, in its file encoding."""
from __future__ import annotations

import numpy as np
import torch

from ..encodings import csr_parts as _csr
from ..encodings import seeded as _seeded
from ..encodings._common import Ctx
from ..errors import EncodingError, UsageError
from ..quantize import check_parts
from ..seeded_mask import group_layout
from ..spec import ENC_CSR_PARTS, ENC_SEEDED, KIND_COMPRESSED
from . import dispatch

# Buffers travel as bit-identical signed views (Triton and older torch lack unsigned 16/32-bit types);
# readers mask them back to unsigned.
_VIEW = {"U8": torch.uint8, "U16": torch.int16, "U32": torch.int32, "U64": torch.int64}
_UMASK = {"U8": 0xFF, "U16": 0xFFFF, "U32": 0xFFFFFFFF, "U64": None}


def _to_device(buf: np.ndarray, dtype: str | None, device) -> torch.Tensor:
    t = torch.from_numpy(np.array(buf, dtype=np.uint8, copy=True).reshape(-1))
    if dtype is not None and dtype in _VIEW and dtype != "U8":
        t = t.view(_VIEW[dtype])
    return t.to(device)


# Encodings with kernels; the baselines' encodings decode through the numpy reader (ddq_format.loaders).
KERNEL_ENCODINGS = (ENC_CSR_PARTS, ENC_SEEDED)


class CompressedDelta:
    """A device-resident compressed delta of one linear weight [out, in] (encodings csr_parts, seeded).

    Buffers stay packed exactly as in the file; decode and matmul read them directly."""

    def __init__(self, encoding: str, shape, params: dict, buffers: dict, dtypes: dict, name=None):
        self.encoding = encoding
        self.shape = (int(shape[0]), int(shape[1]))
        self.params = dict(params)
        self.buffers = buffers  # role -> torch tensor (typed views, see _VIEW)
        self.dtypes = dtypes  # role -> file dtype name
        self.name = name
        self._triton_table = None  # per-delta parameter table for the Triton kernels, built on first use
        if encoding == ENC_SEEDED:
            full, keep, tail, keep_tail = group_layout(self.shape[1], params["group_size"], params["alpha"])
            self.layout = (full, keep, tail, keep_tail)
            self.kept_per_row = full * keep + keep_tail
        else:
            self.part_bits = check_parts(params["bits"], params["parts"])
            ro = self.row_offsets_i64().cpu()
            ends = ro[:, -1].tolist()
            self.part_starts = [int(sum(ends[:j])) for j in range(len(ends))]

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_entry(cls, entry: dict, buffers: dict, device="cpu", *, path=None) -> "CompressedDelta":
        """From a reader entry and its buffers (DDQFile.entry / DDQFile.buffers); validated before upload."""
        name = entry.get("name")
        ctx = Ctx(path, name)
        if entry.get("kind") != KIND_COMPRESSED or entry.get("encoding") not in KERNEL_ENCODINGS:
            raise UsageError(f"only compressed csr_parts/seeded entries can be kept compressed, got kind "
                             f"{entry.get('kind')!r} encoding {entry.get('encoding')!r}", path=path, tensor=name,
                             field="encoding")
        enc = entry["encoding"]
        mod = _csr if enc == ENC_CSR_PARTS else _seeded
        mod.check(entry, ctx)
        for role, b in entry["buffers"].items():
            if role not in buffers or len(buffers[role]) != b["length"]:
                raise EncodingError(f"buffer has {len(buffers.get(role, ()))} bytes, entry says {b['length']}",
                                    path=path, tensor=name, field=f"buffers.{role}")
        if enc == ENC_CSR_PARTS:
            _csr.parts_of(entry, buffers, ctx)  # offsets monotone, columns in range: kernels index by them
        dtypes = {role: b["dtype"] for role, b in entry["buffers"].items()}
        dev = {role: _to_device(buffers[role], dtypes[role], device) for role in entry["buffers"]}
        return cls(enc, entry["shape"], entry["params"], dev, dtypes, name=name)

    # -- properties -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers.values())).device

    @property
    def nbytes(self) -> int:
        """Resident bytes on the device: the packed buffers exactly as stored in the file."""
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    def to(self, device) -> "CompressedDelta":
        return CompressedDelta(self.encoding, self.shape, self.params,
                               {k: v.to(device) for k, v in self.buffers.items()}, self.dtypes, self.name)

    def __repr__(self):
        return (f"CompressedDelta({self.name!r}, {self.encoding}, shape={self.shape}, nbytes={self.nbytes}, "
                f"device={self.device})")

    # -- typed access for the reference path -------------------------------------------------------
    def row_offsets_i64(self) -> torch.Tensor:
        t = self.buffers["row_offsets"].to(torch.int64)
        m = _UMASK[self.dtypes["row_offsets"]]
        return (t & m if m else t).reshape(self.params["parts"], self.shape[0] + 1)

    def col_indices_i64(self) -> torch.Tensor:
        t = self.buffers["col_indices"].to(torch.int64)
        m = _UMASK[self.dtypes["col_indices"]]
        return t & m if m else t

    # -- compute ----------------------------------------------------------------------------------
    def to_dense(self, dtype=torch.float32, *, backend: str | None = None) -> torch.Tensor:
        """Dense [out, in]; float32 is bit-identical to DDQFile.decode."""
        return dispatch.decode(self, dtype, backend)

    def matmul(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        """x [..., in] -> x @ dense.T with float32 accumulation, in x.dtype."""
        if x.shape[-1] != self.shape[1]:
            raise UsageError(f"input has {x.shape[-1]} features, delta expects {self.shape[1]}",
                             tensor=self.name, field="shape")
        lead = x.shape[:-1]
        y = dispatch.matmul(self, x.reshape(-1, self.shape[1]), backend)
        return y.reshape(*lead, self.shape[0])


def decode_dense(entry: dict, buffers: dict, device="cpu", dtype=torch.float32, *, backend: str | None = None):
    """Decode one compressed entry straight to a dense tensor on `device`.

    On CPU, unless a backend is forced, the numpy reference decoder does the work: it is bit-identical and
    several times faster there than the torch reference (benchmarks/bench_kernels.py, CPU section)."""
    if torch.device(device).type == "cpu" and dispatch.unforced(backend):
        mod = {ENC_CSR_PARTS: _csr, ENC_SEEDED: _seeded}.get(entry.get("encoding"))
        if entry.get("kind") == KIND_COMPRESSED and mod is not None:
            mod.check(entry, Ctx(None, entry.get("name")))
            bufs = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in buffers.items()}
            return torch.from_numpy(mod.decode(entry, bufs)).to(dtype)
    return CompressedDelta.from_entry(entry, buffers, device).to_dense(dtype, backend=backend)


def multi_delta_matmul(x: torch.Tensor, deltas, index: torch.Tensor, *, backend: str | None = None,
                       check_index: bool = True):
    """Row b of x [B, in] times deltas[index[b]] (index -1: no delta, zeros) -> [B, out] in x.dtype.

    check_index=False skips the range check (a host sync) when the caller guarantees -1 <= index < N."""
    if not deltas:
        raise UsageError("multi_delta_matmul needs at least one delta")
    shape = deltas[0].shape
    for d in deltas:
        if d.shape != shape:
            raise UsageError(f"all deltas must share one shape: {d.shape} != {shape}", tensor=d.name,
                             field="shape")
    if x.dim() != 2 or x.shape[1] != shape[1]:
        raise UsageError(f"x must be [B, {shape[1]}], got {tuple(x.shape)}")
    if index.shape != (x.shape[0],):
        raise UsageError(f"index must be [B={x.shape[0]}], got {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8):
        raise UsageError(f"index must be an integer tensor, got {index.dtype}", field="index")
    if check_index and index.numel():
        lo, hi = int(index.min()), int(index.max())  # one sync; kernels index delta tables by it
        if lo < -1 or hi >= len(deltas):
            raise UsageError(f"index values must lie in -1..{len(deltas) - 1}, got {lo}..{hi}", field="index")
    return dispatch.multi_matmul(x, list(deltas), index, backend)
