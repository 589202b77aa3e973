"""CompressedDelta: one compressed 2-D linear delta kept resident on a device, and the public products."""
from __future__ import annotations

import torch

from ..errors import UsageError
from ..spec import ENC_SEEDED
from . import dispatch, registry
from .registry import KERNEL_ENCODINGS, UMASK, supports  # noqa: F401  (public names)
from .segments import DeltaSegments


class CompressedDelta:
    """A device-resident compressed delta of one linear weight [out, in].

    `encoding` is the file's encoding id; `layout` the resident layout its kernels read (registry.LAYOUTS):
    seeded and csr_parts keep their buffers exactly as stored, seeded_rans is re-laid once at load as
    seeded's packed codes, seeded_rans_split as one such seeded delta per column class (`parts`, each with
    its column list). `nbytes` counts the resident bytes, `encoded_nbytes` the bytes in the file."""

    def __init__(self, encoding: str, shape, params: dict, buffers: dict, dtypes: dict, name=None, *,
                 encoded_nbytes: int | None = None, columns: torch.Tensor | None = None, complement: bool = False):
        if encoding not in registry.ENCODINGS:
            raise UsageError(f"no kernels for encoding {encoding!r}", tensor=name, field="encoding")
        self.encoding = encoding
        self.layout = registry.ENCODINGS[encoding].layout
        self.shape = (int(shape[0]), int(shape[1]))
        self.params = dict(params)
        self.buffers = buffers  # role -> torch tensor of the resident layout (typed views, registry.upload)
        self.dtypes = dtypes  # role -> dtype name of the resident buffer
        self.name = name
        self.columns = columns  # a split delta's column class reads x at these columns (U16/U32 bits)...
        self.complement = complement  # ... or, complement: at the columns of [0, in + len) not in them
        self.parts = (self,)  # what the kernels run: this delta, or a split delta's column classes
        self.encoded_nbytes = self.nbytes if encoded_nbytes is None else int(encoded_nbytes)
        self._table = None  # the Triton kernels' parameter row, built on first use
        self.layout.setup(self)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_entry(cls, entry: dict, buffers: dict, device="cpu", *, path=None, backend: str | None = None,
                   rows: tuple | None = None, cols: tuple | None = None):
        """From a reader entry and its buffers (DDQFile.entry / DDQFile.buffers); validated before upload.

        rows=(r0, r1), cols=(c0, c1): only that shard of the tensor (tensor parallelism; kernels/shards.py),
        resident and served by the same kernels; its encoded_nbytes is its share of the file's bytes."""
        kern = registry.for_entry(entry, path)
        kern.validate(entry, buffers, registry.ctx_of(entry, path))
        encoded = registry.entry_bytes(entry)
        n_rows, n_cols = (int(v) for v in entry["shape"])
        rows = (0, n_rows) if rows is None else (int(rows[0]), int(rows[1]))
        cols = (0, n_cols) if cols is None else (int(cols[0]), int(cols[1]))
        if not (0 <= rows[0] <= rows[1] <= n_rows and 0 <= cols[0] <= cols[1] <= n_cols):
            raise UsageError(f"shard rows {rows} x cols {cols} outside the tensor {[n_rows, n_cols]}", path=path,
                             tensor=entry.get("name"), field="shape")
        if (rows, cols) == ((0, n_rows), (0, n_cols)):
            params, bufs, dtypes = dispatch.load(entry, buffers, device, backend)
            shape = entry["shape"]
        else:
            params, bufs, dtypes, shape, share = kern.shard(entry, buffers, rows, cols, device, path)
            encoded = round(encoded * share)
        return cls(entry["encoding"], shape, params, bufs, dtypes, name=entry.get("name"), encoded_nbytes=encoded)

    # -- properties -------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(iter(self.buffers.values())).device

    @property
    def nbytes(self) -> int:
        """Resident bytes on the device (the buffers the kernels read)."""
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    @property
    def list_nbytes(self) -> int:
        """Resident bytes of a split delta's column lists (part of nbytes; 0 for other layouts)."""
        return sum(t.numel() * t.element_size() for role, t in self.buffers.items() if role.endswith("_columns"))

    def map_buffers(self, fn) -> "CompressedDelta":
        """A copy with every buffer passed through fn (device moves; nn.Module._apply functions leave integer
        buffers' dtypes alone)."""
        return CompressedDelta(self.encoding, self.shape, self.params, {k: fn(v) for k, v in self.buffers.items()},
                               self.dtypes, self.name, encoded_nbytes=self.encoded_nbytes,
                               columns=None if self.columns is None else fn(self.columns), complement=self.complement)

    def to(self, device) -> "CompressedDelta":
        return self.map_buffers(lambda t: t.to(device))

    def __repr__(self):
        return (f"CompressedDelta({self.name!r}, {self.encoding}, shape={self.shape}, nbytes={self.nbytes}, "
                f"encoded_nbytes={self.encoded_nbytes}, device={self.device})")

    # -- typed access for the reference path -------------------------------------------------------
    def row_offsets_i64(self) -> torch.Tensor:
        t = self.buffers["row_offsets"].to(torch.int64)
        m = UMASK[self.dtypes["row_offsets"]]
        return (t & m if m else t).reshape(self.params["parts"], self.shape[0] + 1)

    def col_indices_i64(self) -> torch.Tensor:
        t = self.buffers["col_indices"].to(torch.int64)
        m = UMASK[self.dtypes["col_indices"]]
        return t & m if m else t

    # -- compute ----------------------------------------------------------------------------------
    def to_dense(self, dtype=torch.float32, *, backend: str | None = None) -> torch.Tensor:
        """Dense [out, in]; float32 is bit-identical to DDQFile.decode."""
        return dispatch.decode(self, dtype, backend)

    def rows(self, index: torch.Tensor, dtype=torch.float32, *, backend: str | None = None) -> torch.Tensor:
        """Dense rows `index` (int64 [R], this delta's rows, on its device) -> [R, in]: only their mask and
        codes are computed (an embedding's tokens); float32 bit-identical to those rows of DDQFile.decode."""
        index = index.reshape(-1).to(torch.int64)
        return dispatch.rows(self, index, dtype, backend)

    def matmul(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        """x [..., in] -> x @ dense.T with float32 accumulation, in x.dtype."""
        lead = self._check_x(x)
        y = dispatch.matmul(self, x.reshape(-1, self.shape[1]), backend)
        return y.reshape(*lead, self.shape[0])

    def _check_x(self, x):
        if x.shape[-1] != self.shape[1]:
            raise UsageError(f"input has {x.shape[-1]} features, delta expects {self.shape[1]}",
                             tensor=self.name, field="shape")
        return x.shape[:-1]


def decode_dense(entry: dict, buffers: dict, device="cpu", dtype=torch.float32, *, backend: str | None = None):
    """Decode one compressed entry straight to a dense tensor on `device`.

    On CPU, unless a backend is forced, the numpy reader's decoder does the work: bit-identical and several
    times faster there than the torch reference (benchmarks/bench_kernels.py, CPU section). seeded_rans on a
    GPU decodes its streams to 8-bit codes and the seeded decode reads those directly."""
    kern = registry.for_entry(entry)
    name = dispatch.decode_entry_kernel(entry, device, backend)
    if name == "load, then decode":
        return CompressedDelta.from_entry(entry, buffers, device, backend=backend).to_dense(dtype, backend=backend)
    kern.validate(entry, buffers, registry.ctx_of(entry))
    if name == "numpy reader decode":
        return torch.from_numpy(registry.host_decode(entry, registry.as_numpy(buffers))).to(dtype)
    codes = registry.rans_codes(entry, buffers, device, backend)  # "triton rans_lanes -> seeded_rows"
    d = CompressedDelta(ENC_SEEDED, entry["shape"], {**entry["params"], "bits": 8}, {"codes": codes},
                        {"codes": "PACKED"}, entry.get("name"))
    return d.to_dense(dtype, backend=backend)


def delta_linear(x: torch.Tensor, weight: torch.Tensor, bias, delta: CompressedDelta, *,
                 backend: str | None = None) -> torch.Tensor:
    """x [..., in] -> x · Wᵀ + bias + x · ΔŴᵀ in x.dtype: one fused kernel for small batches on the GPU
    (the dispatch's "linear" rule), else F.linear plus the delta product. W_base + ΔŴ is never formed."""
    lead = delta._check_x(x)
    if tuple(weight.shape) != delta.shape:
        raise UsageError(f"weight {tuple(weight.shape)} does not match the delta {delta.shape}", tensor=delta.name,
                         field="shape")
    y = dispatch.linear(x.reshape(-1, delta.shape[1]), weight, bias, delta, backend)
    return y.reshape(*lead, delta.shape[0])


def multi_delta_matmul(x: torch.Tensor, deltas, index: torch.Tensor, *, backend: str | None = None,
                       check_index: bool = True, segments: DeltaSegments | None = None,
                       add_to: torch.Tensor | None = None):
    """Row b of x [B, in] times deltas[index[b]] -> [B, out] in x.dtype (SGMV on the GPU).

    index -1, or a slot whose delta is None, means no delta (zeros, or add_to's row unchanged).
    check_index=False skips the range check (a host sync); out-of-range values then also mean no delta.
    segments: delta_segments(index, len(deltas)) computed once per forward pass and shared by every layer
    (else built here). add_to [B, out] (contiguous rows, e.g. the base layer's output): the products are
    added to it in place and it is returned."""
    rows = _check_slice(x, deltas)
    if add_to is None:
        add_to = torch.zeros((x.shape[0], rows), dtype=x.dtype, device=x.device)
    elif tuple(add_to.shape) != (x.shape[0], rows):
        raise UsageError(f"add_to must be [{x.shape[0]}, {rows}], got {tuple(add_to.shape)}", field="add_to")
    return multi_delta_matmul_sliced(x, [(0, deltas)], index, add_to=add_to, backend=backend,
                                     check_index=check_index, segments=segments)


def multi_delta_matmul_sliced(x: torch.Tensor, slices, index: torch.Tensor, *, add_to: torch.Tensor,
                              backend: str | None = None, check_index: bool = True,
                              segments: DeltaSegments | None = None):
    """multi_delta_matmul for the output slices of one packed layer (q, k, v; gate, up) in one call:
    slices [(column offset, [delta or None per slot])], every slice over the same slots and the same input;
    row b of add_to [B, out] (contiguous rows) gets, at columns off .. off + rows - 1 of each slice, x[b] times
    that slice's delta of slot index[b] (a column two slices of one slot cover gets their sum). Returns add_to.
    On the CPU every slice's products run in one compiled call; on the GPU one grouped launch per slice."""
    if not slices:
        raise UsageError("multi_delta_matmul needs at least one slice of deltas")
    n = len(slices[0][1])
    for off, deltas in slices:
        rows = _check_slice(x, deltas)
        if len(deltas) != n:
            raise UsageError(f"every slice needs one entry per slot: {len(deltas)} != {n}", field="slices")
        if not 0 <= off <= add_to.shape[-1] - rows:
            raise UsageError(f"a slice of {rows} rows at column {off} does not fit add_to's {add_to.shape[-1]}",
                             field="slices")
    if index.shape != (x.shape[0],):
        raise UsageError(f"index must be [B={x.shape[0]}], got {tuple(index.shape)}")
    if index.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8):
        raise UsageError(f"index must be an integer tensor, got {index.dtype}", field="index")
    if check_index and index.numel():
        lo, hi = int(index.min()), int(index.max())  # one sync
        if lo < -1 or hi >= n:
            raise UsageError(f"index values must lie in -1..{n - 1}, got {lo}..{hi}", field="index")
    if segments is not None and (segments.n_deltas != n or segments.batch != x.shape[0]):
        raise UsageError(f"segments were built for {segments.batch} tokens and {segments.n_deltas} deltas, not "
                         f"{x.shape[0]} and {n}", field="segments")
    if add_to.dim() != 2 or add_to.shape[0] != x.shape[0] or add_to.stride(1) != 1 or add_to.device != x.device:
        raise UsageError(f"add_to must be [{x.shape[0]}, out] with contiguous rows on {x.device}", field="add_to")
    return dispatch.multi(x, [(off, list(deltas)) for off, deltas in slices], index, segments, add_to, backend)


def _check_slice(x: torch.Tensor, deltas) -> int:
    """The rows of a slot list's deltas (all of one shape; x [B, in] must match); UsageError otherwise."""
    present = [d for d in deltas if d is not None]
    if not present:
        raise UsageError("multi_delta_matmul needs at least one delta")
    shape = present[0].shape
    for d in present:
        if d.shape != shape:
            raise UsageError(f"all deltas must share one shape: {d.shape} != {shape}", tensor=d.name,
                             field="shape")
    if x.dim() != 2 or x.shape[1] != shape[1]:
        raise UsageError(f"x must be [B, {shape[1]}], got {tuple(x.shape)}")
    return shape[0]
