"""`seeded_rans_split` (formats 1.4 and 2.1): `seeded_rans` over two classes of input columns (SPEC.md §9.8).

Group-wise dropout at rate 1/alpha leaves output noise sum_j D_ij^2 x_j^2 (alpha - 1) in y = x D^T: the input
columns whose activations carry the most energy carry most of the noise. This layout lists those "hot" columns
and stores the tensor as two `seeded_rans` sub-matrices, the hot columns [rows, n_hot] and the others
[rows, cols - n_hot] (each in ascending column order), each with its own params (alpha, group size, seed,
quantizer, frequency table), so the hot columns can be kept more often at the same bytes. Readers need nothing
but seeded_rans: decode both and put their columns back.

Params: `hot_columns` (n_hot >= 1 strictly ascending column indices, fewer than the tensor's columns: in the
header, where the tensors reading one input, which share the list, cost it once in a zlib-compressed 2.x
header), and `hot` and `rest`, each a complete seeded_rans params map for its sub-matrix. Buffers: the
sub-matrices' under the prefixes `hot_` and `rest_` (`hot_streams`, `hot_stream_offsets`, `rest_streams`,
`rest_stream_offsets`).
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import EncodingError
from ..seeded_mask import kept_per_row
from ..spec import ENC_SEEDED_RANS, ENC_SEEDED_RANS_SPLIT
from . import Encoded
from . import seeded, seeded_rans
from ._common import matrix_shape

ID = ENC_SEEDED_RANS_SPLIT
CLASSES = ("hot", "rest")
ROLES = {"hot_streams": "values", "hot_stream_offsets": "row_offsets",
         "rest_streams": "values", "rest_stream_offsets": "row_offsets"}
ENTROPY_CODED = True


class _Within:
    """The sub-matrix's error context: its fields named as this entry's (params.hot.seed, buffers.hot_streams)."""

    def __init__(self, ctx, cls: str):
        self.ctx, self.cls = ctx, cls
        self.path, self.name = getattr(ctx, "path", None), getattr(ctx, "name", None)

    def fail(self, msg, field=None):
        if isinstance(field, str) and field.startswith("params."):
            field = f"params.{self.cls}.{field[7:]}"
        elif isinstance(field, str) and field.startswith("buffers."):
            field = f"buffers.{self.cls}_{field[8:]}"
        return self.ctx.fail(f"{self.cls} columns: {msg}", field)


def _sub(entry: dict, cls: str, n_cols: int, bufs: dict | None = None):
    """The class's sub-matrix as a seeded_rans entry (and its buffers)."""
    e = {"name": entry.get("name"), "kind": entry.get("kind"), "shape": [entry["shape"][0], n_cols],
         "dtype": entry.get("dtype"), "encoding": ENC_SEEDED_RANS, "params": entry["params"][cls],
         "buffers": {r: entry["buffers"][f"{cls}_{r}"] for r in ("streams", "stream_offsets")}}
    if bufs is None:
        return e
    return e, {r: bufs[f"{cls}_{r}"] for r in ("streams", "stream_offsets")}


def _n_hot(entry) -> int:
    return len(entry["params"]["hot_columns"])


def encode(shape, hot_columns: np.ndarray, hot: Encoded, rest: Encoded) -> Encoded:
    """hot_columns: ascending column indices; hot, rest: seeded_rans encodings of delta[:, hot_columns] and of
    the other columns (in ascending order)."""
    n_rows, n_cols = shape
    cols = np.asarray(hot_columns, np.int64)
    if not 1 <= cols.size < n_cols or np.any(np.diff(cols) <= 0) or cols[0] < 0 or cols[-1] >= n_cols:
        raise ValueError(f"hot columns must be 1..{n_cols - 1} ascending indices below {n_cols}")
    if hot.encoding != ENC_SEEDED_RANS or rest.encoding != ENC_SEEDED_RANS:
        raise ValueError("both classes must be seeded_rans encodings (a row too long for one rANS stream is not)")
    buffers = {}
    for cls, enc in (("hot", hot), ("rest", rest)):
        buffers.update({f"{cls}_{role}": b for role, b in enc.buffers.items()})
    return Encoded(ID, {"hot_columns": [int(c) for c in cols], "hot": hot.params, "rest": rest.params}, buffers)


def check(entry, ctx):
    """Header-only checks: the column list's dtype and size, then each class as a seeded_rans entry."""
    n_rows, n_cols = matrix_shape(entry, ctx)
    params = entry.get("params", {})  # a map when present (header.py); absent: each class is missing
    for cls in CLASSES:
        if not isinstance(params.get(cls), dict):
            raise ctx.fail("missing or not a map", f"params.{cls}")
    cols = params.get("hot_columns")
    if not isinstance(cols, list) or not 1 <= len(cols) < n_cols:
        raise ctx.fail(f"must be a list of 1..{n_cols - 1} column indices", "params.hot_columns")
    prev = -1
    for c in cols:
        if not isinstance(c, int) or isinstance(c, bool) or not prev < c < n_cols:
            raise ctx.fail(f"must be strictly ascending integers below {n_cols}", "params.hot_columns")
        prev = c
    n_hot = len(cols)
    for cls, n in (("hot", n_hot), ("rest", n_cols - n_hot)):
        for r in ("streams", "stream_offsets"):
            if f"{cls}_{r}" not in entry.get("buffers", {}):
                raise ctx.fail("missing buffer", f"buffers.{cls}_{r}")
        seeded_rans.check(_sub(entry, cls, n), _Within(ctx, cls))


def columns(entry, bufs=None) -> tuple[np.ndarray, np.ndarray]:
    """(hot columns, the other columns), both ascending int64; refuses a list out of order or out of range."""
    n_cols = entry["shape"][1]
    hot = np.asarray(entry["params"]["hot_columns"], np.int64)  # checked by check()
    rest = np.setdiff1d(np.arange(n_cols, dtype=np.int64), hot, assume_unique=True)
    return hot, rest


def classes(entry, bufs):
    """(class, its columns ascending, its sub-matrix as a seeded_rans entry, that entry's buffers) per class:
    what a reader (or a kernel's loader) decodes and puts back."""
    for cls, cols in zip(CLASSES, columns(entry, bufs)):
        yield (cls, cols, *_sub(entry, cls, cols.size, bufs))


def class_error(entry, cls: str, err: EncodingError) -> EncodingError:
    """A sub-matrix's error named as this entry's field (buffers.streams -> buffers.hot_streams)."""
    return _Within(_Named(entry), cls).fail(err.reason, err.field)


def decode(entry, bufs) -> np.ndarray:
    out = np.zeros(entry["shape"], np.float32)
    for cls, cols, e, b in classes(entry, bufs):
        try:
            codes = seeded_rans.codes_of(e, b)
        except EncodingError as err:
            raise class_error(entry, cls, err) from None
        seeded.scatter(e, codes, columns=cols, out=out)  # each class straight into its columns
    return out


class _Named:
    def __init__(self, entry):
        self.entry = entry

    def fail(self, msg, field=None):
        return EncodingError(msg, tensor=self.entry.get("name"), field=field)


def kept(entry) -> int:
    """Elements the two classes keep."""
    n_rows, n_cols = entry["shape"]
    n_hot = _n_hot(entry)
    return n_rows * sum(kept_per_row(n, entry["params"][c]["group_size"], entry["params"][c]["alpha"])
                        for c, n in (("hot", n_hot), ("rest", n_cols - n_hot)))


def nominal_ratio(entry) -> float:
    """The paper's 16 alpha / k with alpha the elements per kept element of the two classes together."""
    try:
        k, bits = kept(entry), entry["params"]["rest"]["bits"]
    except (KeyError, TypeError):
        return math.nan
    n = entry["shape"][0] * entry["shape"][1]
    return math.inf if k == 0 else 16 * n / (k * bits)
