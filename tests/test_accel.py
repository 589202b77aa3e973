"""The numba path (ddq_format.accel) against the numpy path, bit for bit: every kernel, every encoding's decode
and encode, the converter's output bytes. Skipped cleanly when numba is not installed (`pip install
'ddq[accel]'`); the numpy half of each comparison is the reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ddq_format import DDQFile, accel, bitpack, seeded_mask
from ddq_format.converters import dropout, methods, tensor_work
from ddq_format.encodings import csr_f16, csr_parts, seeded, seeded_rans, sign_scale
from ddq_format.quantize import fit, quantize
from ddq_testing import small_delta

DATA = Path(__file__).resolve().parent / "data"


pytest.importorskip("numba")


def both(fn, *args, **kw):
    """(numpy result, numba result) of fn(*args, **kw)."""
    with accel.use("numpy"):
        a = fn(*args, **kw)
    with accel.use("numba"):
        b = fn(*args, **kw)
    return a, b


def same(a, b) -> bool:
    """Equal dtype, shape and bytes (floats compared as bit patterns: -0.0 and NaN payloads count)."""
    if isinstance(a, (tuple, list, type({}.values()))):
        a, b = list(a), list(b)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return a == b


def test_backend_selection(monkeypatch):
    assert accel.available()
    monkeypatch.setenv(accel.ENV, "numpy")
    assert accel.backend() == "numpy" and accel.kernels() is None
    monkeypatch.setenv(accel.ENV, "numba")
    assert accel.backend() == "numba" and accel.kernels() is not None
    with accel.use("numpy"):
        assert accel.kernels() is None
    monkeypatch.setenv(accel.ENV, "fortran")
    with pytest.raises(ValueError, match="DDQ_ACCEL"):
        accel.backend()


# -- kernels ---------------------------------------------------------------------------------------
MASKS = [(2, 20, 8, 4), (1, 13, 12, 3), (3, 4096, 128, 8), (2, 1000, 96, 8), (3, 77, 77, 7), (2, 31, 1, 1),
         (1, 70001, 70000, 2), (4, 19, 8, 2), (2, 5, 5, 5), (3, 100, 48, 16),
         (70, 50, 12, 4), (33, 64, 64, 8)]  # the last two: several blocks of rows, a partial one


@pytest.mark.parametrize("rows,cols,group,alpha", MASKS)
@pytest.mark.parametrize("seed", [0, 42, 2**32 - 1])
def test_mask_columns(rows, cols, group, alpha, seed):
    for stride in (0, cols):
        a, b = both(seeded_mask.mask_columns, seed, rows, cols, group, alpha, row_stride=stride)
        assert same(a, b)


@given(bits=st.integers(0, 8), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack(bits, n, seed):
    codes = np.random.default_rng(seed).integers(0, 1 << bits, n).astype(np.uint8)
    packed = both(bitpack.pack, codes, bits)
    assert same(*packed)
    assert same(*both(bitpack.unpack, packed[0], bits, n))


@pytest.mark.parametrize("bits", range(1, 9))
def test_product_values_equal_dequantize(bits):
    """The products' code reader (_kernels._values: byte by byte for 2-, 4- and 8-bit codes starting on a byte,
    windows otherwise, clamped at the stream's end) gives the bits of quantize.dequantize(bitpack.unpack())
    for ranges starting on a block (multiples of 32 codes) or anywhere, of every length mod 8, up to the
    stream's last code."""
    from ddq_format.accel import _kernels
    from ddq_format.quantize import dequantize
    rng = np.random.default_rng(bits)
    for start in (0, 32, 96, 1, 5, 37):
        for n, tail in ((0, 3), (1, 0), (7, 2), (31, 0), (64, 5), (97, 0), (98, 1)):
            total = start + n + tail  # tail 0: the range ends on the stream's last code
            packed = bitpack.pack(rng.integers(0, 1 << bits, total).astype(np.uint8), bits)
            scale, zero = float(rng.uniform(1e-3, 1.0)), int(rng.integers(0, 1 << bits))
            want = dequantize(bitpack.unpack(packed, bits, total), scale, zero)[start:start + n]
            vals = np.full(n + 1, np.nan, np.float32)
            _kernels._values(packed, np.uint64(max(packed.size, 1) - 1), bits, np.uint64((1 << bits) - 1),
                             _kernels._lut(bits, scale, zero), start, n, vals)
            assert np.array_equal(vals[:n].view(np.uint32), want.view(np.uint32)), (start, n, tail)
            assert np.isnan(vals[n])


@pytest.mark.parametrize("bad", [np.array([0, 16, 1], np.uint8), np.array([3, -1], np.int64)])
def test_pack_rejects_out_of_range_codes_on_both_paths(bad):
    for name in accel.BACKENDS:
        with accel.use(name), pytest.raises(ValueError, match="out of range"):
            bitpack.pack(bad, 4)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # numpy's cast of the NaN
@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_quantize(bits):
    v = small_delta(64, 50, seed=bits).reshape(-1)
    qz = fit(v, bits)
    halves = (np.arange(-600, 600, dtype=np.float32) * np.float32(0.5)) * np.float32(qz.scale)
    special = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, np.nan], np.float32)
    for x in (v, halves, special):
        assert same(*both(quantize, x, qz))


# -- decode of every encoding ----------------------------------------------------------------------
def _decode_all(path):
    with DDQFile(path) as f:
        return [f.decode(n) for n in f.names]


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.ddq")))
def test_golden_files_decode_identically(name):
    a, b = both(_decode_all, DATA / f"{name}.ddq")
    assert same(a, b)


CASES = [((7, 40), 4, 16), ((5, 19), 2, 8), ((64, 300), 8, 96), ((3, 1), 1, 1), ((9, 33), 3, 33),
         ((2, 66000), 64, 128), ((70, 50), 4, 12)]


def _entry(enc, shape):
    return {"name": "w", "shape": list(shape), "encoding": enc.encoding, "params": enc.params,
            "buffers": {r: {"dtype": dt} for r, (dt, _) in enc.buffers.items()}}


def _bufs(enc):
    return {r: np.asarray(b).view(np.uint8).reshape(-1) for r, (_, b) in enc.buffers.items()}


@pytest.mark.parametrize("shape,alpha,group", CASES)
@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_encode_and_decode_seeded_family(shape, alpha, group, bits):
    delta = small_delta(*shape, seed=bits)
    kept, vals = dropout.groupwise_dropout(delta, alpha, group, 11)
    for mod, kw in ((seeded, {}), (seeded_rans, {}), (seeded_rans, {"rows_per_stream": 1}),
                    (seeded_rans, {"rows_per_stream": max(1, shape[0] // 2)})):
        enc_np, enc_nb = both(mod.encode, shape, vals, bits=bits, alpha=alpha, group_size=group, seed=11, **kw)
        assert enc_np.params == enc_nb.params
        assert same(_bufs(enc_np).values(), _bufs(enc_nb).values())
        assert same(*both(mod.decode, _entry(enc_np, shape), _bufs(enc_np)))
    signs = sign_scale.encode(shape, vals, alpha=alpha, group_size=group, seed=11)
    if alpha > 1:
        assert same(*both(sign_scale.decode, _entry(signs, shape), _bufs(signs)))


@pytest.mark.parametrize("alpha", [4, 8])
def test_split_decode_writes_each_class_into_its_columns(alpha):
    """seeded_rans_split's decode (each class scattered straight into the tensor's columns): numba and numpy
    give the same bytes, and each class's columns are its seeded_rans decode."""
    from ddq_format.converters import budget
    from ddq_format.encodings import seeded_rans_split
    shape = (23, 200)
    delta = small_delta(*shape, seed=alpha)
    moments = np.exp(2 * np.random.default_rng(alpha).standard_normal(shape[1]))
    enc = budget.split_encode(budget.Config("split", alpha=alpha), delta, 7, moments)
    entry, bufs = _entry(enc, shape), _bufs(enc)
    a, b = both(seeded_rans_split.decode, entry, bufs)
    assert same(a, b)
    for cls, cols, e, bb in seeded_rans_split.classes(entry, bufs):
        assert np.array_equal(a[:, cols], seeded_rans.decode(e, bb)), cls


@given(st.integers(2, 300), st.data())
def test_input_columns_of_a_list_and_of_its_complement(n_cols, data):
    """The column map of a split delta's class (the direct products' input columns): a U16 list read as
    unsigned (int16 bit patterns), and the complement of the hot list: every column the list skips, in order."""
    from ddq_format.accel import _kernels
    hot = np.array(sorted(data.draw(st.sets(st.integers(0, n_cols - 1), min_size=1, max_size=n_cols - 1))))
    bits = (hot + 65536 - n_cols).astype(np.uint16).view(np.int16)  # values up to 65535: negative as int16
    assert np.array_equal(_kernels.input_columns(bits.view(np.uint8), 2, False, hot.size), hot + 65536 - n_cols)
    rest = np.setdiff1d(np.arange(n_cols), hot)
    got = _kernels.input_columns(hot.astype(np.uint16).view(np.uint8), 2, True, rest.size)
    assert np.array_equal(got, rest)


@pytest.mark.parametrize("shape,alpha,group", CASES)
@pytest.mark.parametrize("bits,parts", [(4, 1), (4, 8), (3, 2), (2, 4), (8, 16)])
def test_encode_and_decode_csr_parts(shape, alpha, group, bits, parts):
    delta = small_delta(*shape, seed=parts)
    cols, vals = dropout.groupwise_dropout_blocked(delta, alpha, group, 5, sort_columns=True)
    from ddq_format.converters.csr_rows import encode_rows
    enc_np, enc_nb = both(encode_rows, shape, cols, vals, bits=bits, parts=parts, alpha=alpha, group_size=group,
                          seed=5)
    assert enc_np.params == enc_nb.params and same(_bufs(enc_np).values(), _bufs(enc_nb).values())
    assert same(*both(csr_parts.decode, _entry(enc_np, shape), _bufs(enc_np)))


def test_csr_parts_duplicates_resolve_like_numpy():
    """A file may repeat a column (in a part, or across parts): the later write wins on both paths."""
    shape = (2, 6)
    rows = np.array([0, 0, 0, 1, 1])
    cols = np.array([1, 1, 4, 2, 2])
    vals = np.array([0.5, -0.25, 0.125, 1.0, -1.0], np.float32)
    enc = csr_parts.encode(shape, rows, cols, vals, bits=4, parts=2, alpha=1, group_size=1)
    assert same(*both(csr_parts.decode, _entry(enc, shape), _bufs(enc)))
    enc = csr_f16.encode(shape, rows, cols, vals, method="dare", alpha=2)
    assert same(*both(csr_f16.decode, _entry(enc, shape), _bufs(enc)))


def test_csr_f16_decode():
    d = small_delta(30, 70, seed=4)
    d[0, :3] = [np.inf, -0.0, 6e-8]  # inf, negative zero, an fp16 subnormal
    rows, cols, vals = methods.dare(d, 3, seed=2)
    enc = csr_f16.encode(d.shape, rows, cols, vals, method="dare", alpha=3)
    assert same(*both(csr_f16.decode, _entry(enc, d.shape), _bufs(enc)))


@pytest.mark.parametrize("case", ["one symbol", "a symbol of frequency 1", "k=8 skewed", "k=1"])
@pytest.mark.parametrize("rows_per_stream", [1, 2, 3, 7])
def test_rans_encode_extreme_tables(case, rows_per_stream):
    """The numba encoder divides by f through a float64 reciprocal: exact for f = 4096 (one symbol), f = 1
    and everything between, like the integer division of the numpy encoder."""
    rng = np.random.default_rng(rows_per_stream)
    if case == "one symbol":
        codes, bits = np.full((9, 13), 3, np.uint8), 2
    elif case == "a symbol of frequency 1":
        codes, bits = np.zeros((9, 50), np.uint8), 8
        codes[4, 7] = 255
    elif case == "k=8 skewed":
        codes, bits = rng.geometric(0.05, (11, 40)).clip(0, 255).astype(np.uint8), 8
    else:
        codes, bits = (rng.random((9, 31)) < 0.1).astype(np.uint8), 1
    a, b = both(seeded_rans.encode_codes, codes, bits, rows_per_stream)
    assert a[0] == b[0] and a[3] == b[3] and same(a[1:3], b[1:3])


def _rans_entry(shape=(40, 64), rows_per_stream=3):
    kept, vals = dropout.groupwise_dropout(small_delta(*shape, seed=9), 4, 16, 1)
    enc = seeded_rans.encode(shape, vals, bits=4, alpha=4, group_size=16, seed=1, rows_per_stream=rows_per_stream)
    return _entry(enc, shape), _bufs(enc)


def _errors(fn, *args):
    """The exception text of each path (None when it decoded)."""
    out = []
    for name in accel.BACKENDS:
        with accel.use(name):
            try:
                fn(*args)
                out.append(None)
            except Exception as e:  # the comparison is the point: same type and message
                out.append(f"{type(e).__name__}: {e}")
    return out


@pytest.mark.parametrize("where", [0, 1, 2, 5, 37, -2, -1])
@pytest.mark.parametrize("value", [0, 1, 255])
def test_rans_corrupt_streams_fail_the_same_way(where, value):
    entry, bufs = _rans_entry()
    streams = bufs["streams"].copy()
    streams[where] = value
    bufs["streams"] = streams
    a, b = _errors(seeded_rans.codes_of, entry, bufs)
    assert a == b


def test_rans_one_long_stream():
    """Issue 12 fault 9: one stream holding every code. Both paths decode it (the numpy path with a scalar
    loop per lane, no longer ~23 us per symbol) to the codes of the lanes path."""
    entry, bufs = _rans_entry(shape=(600, 64), rows_per_stream=600)
    assert entry["params"]["rows_per_stream"] == 600  # 9600 codes in one stream
    a, b = both(seeded_rans.codes_of, entry, bufs)
    assert same(a, b)
    vals = dropout.groupwise_dropout(small_delta(600, 64, seed=9), 4, 16, 1)[1]
    assert same(a, quantize(vals, fit(vals, 4)))


# -- convert ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fdt,bdt", [("BF16", "BF16"), ("F16", "F16"), ("F32", "F32"), ("BF16", "F32"),
                                     ("F16", "BF16")])
@pytest.mark.parametrize("sort", [False, True])
def test_fused_gather_equals_delta_then_dropout(fdt, bdt, sort):
    from ddq_format.encodings.raw import to_bf16_bits
    shape, alpha, group = (37, 300), 8, 96  # a tail group of 12 columns

    def bits(x, dt):
        return {"F32": x, "F16": x.astype(np.float16).view(np.uint16), "BF16": to_bf16_bits(x)}[dt]
    base = small_delta(*shape, seed=1) * np.float32(50)
    ft = base + small_delta(*shape, seed=2)
    ft[3, :4] = [0.0, -0.0, 1e-40, -1e-42]  # zeros of both signs and subnormals
    fb, bb = bits(ft, fdt), bits(base, bdt)
    with accel.use("numpy"):
        delta = tensor_work.delta_blocks(fb, fdt, bb, bdt, "F32")
        cols, vals = dropout.groupwise_dropout_blocked(delta, alpha, group, 3, sort_columns=sort)
    k = accel.kernels()
    factors = dropout.rescale_factors(shape[1], group, alpha)
    flags, v2, c2 = k.gather_kept(fb, fdt, bb, bdt, 3, group, alpha, factors, sort)
    assert flags == 0 and same(vals, v2)
    if sort:
        assert same(cols, c2)
    assert same(*both(dropout.groupwise_dropout_blocked, delta, alpha, group, 3, sort_columns=sort))


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the inputs overflow on purpose
@pytest.mark.parametrize("out", ["F32", "BF16", "F16"])
def test_dense_delta(out):
    from ddq_format.encodings.raw import to_bf16_bits
    x = small_delta(50, 90, seed=3)
    x[0, :5] = [np.nan, np.inf, -np.inf, 3e38, -3e38]
    y = small_delta(50, 90, seed=4)
    y[0, 3:5] = [-3e38, 3e38]  # their difference overflows to +-inf
    for fdt, bdt in (("BF16", "BF16"), ("F32", "BF16"), ("F16", "F32")):
        fb = {"F32": x, "F16": x.astype(np.float16).view(np.uint16), "BF16": to_bf16_bits(x)}[fdt]
        bb = {"F32": y, "F16": y.astype(np.float16).view(np.uint16), "BF16": to_bf16_bits(y)}[bdt]
        assert same(*both(tensor_work.delta_blocks, fb, fdt, bb, bdt, out))


OPTS = [methods.Options("deltadq", 8, 4, 1, "seeded"), methods.Options("deltadq", 4, 3, 1, "seeded_rans"),
        methods.Options("deltadq", 8, 4, 8, "csr_parts"), methods.Options("deltadq", 2, 2, 2, "csr_parts"),
        methods.Options("bitdelta", 4), methods.Options("bitdelta", 1), methods.Options("dare", 4),
        methods.Options("magnitude", 4), methods.Options("lowrank", rank=3)]


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: f"{o.method}-{o.encoding}-a{o.alpha}-k{o.bits}-m{o.parts}")
def test_compress_and_reconstruct(opts):
    from ddq_format.encodings.raw import to_bf16_bits
    shape, group = (33, 200), 40
    base = to_bf16_bits(small_delta(*shape, seed=5) * np.float32(40))
    ft = to_bf16_bits(small_delta(*shape, seed=6) * np.float32(40))
    with accel.use("numpy"):
        delta = tensor_work.delta_blocks(ft, "BF16", base, "BF16", "F32")
    enc_np, enc_nb = both(lambda: methods.compress(delta.copy(), opts, 7, group))
    assert enc_np.params == enc_nb.params and same(_bufs(enc_np).values(), _bufs(enc_nb).values())
    with accel.use("numba"):
        fused = methods.compress_bits(ft, "BF16", base, "BF16", opts, 7, group)
    assert (fused is None) == (not opts.uses_groups)
    if fused is not None:
        assert fused.params == enc_np.params and same(_bufs(fused).values(), _bufs(enc_np).values())
        assert same(*both(methods.reconstruct, delta, opts, 7, group))


def test_llvmlite_lib_has_no_dunder_attributes():
    """vLLM's CPU worker start calls vars() on every module attribute with a __dict__; llvmlite's library
    wrapper claimed one (any name resolved to a C-function wrapper) and vllm.LLM crashed in every process
    that had decoded with numba first. The accelerated path refuses dunder names there."""
    from llvmlite.binding import ffi
    accel.kernels()  # imports the numba backend, which installs the guard
    assert not hasattr(ffi.lib, "__dict__")
    assert callable(ffi.lib.LLVMPY_GetVersionInfo)  # real symbols still resolve
