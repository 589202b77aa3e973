"""seeded_rans on the device: the Triton lane decoder gives the numpy reader's codes exactly, rejects what
the reader rejects, and the codes pack to seeded's layout bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernel_builders import DEVICE, make_delta

from ddq_format import bitpack
from ddq_format.encodings import seeded_rans
from ddq_format.errors import EncodingError
from ddq_format.kernels import CompressedDelta, registry, triton_rans
from ddq_format.kernels.reference import pack_codes


def _entry(rng, rows, cols, encoding="seeded_rans", **kw):
    enc = make_delta(rng, rows, cols, encoding=encoding, **kw)
    entry = {"name": "t", "kind": "compressed", "shape": [rows, cols], "dtype": "F16", "encoding": enc.encoding,
             "params": enc.params, "buffers": {k: {"dtype": dt, "length": int(a.nbytes)}
                                               for k, (dt, a) in enc.buffers.items()}}
    return entry, {k: np.ascontiguousarray(a).view(np.uint8).reshape(-1).copy() for k, (_, a) in enc.buffers.items()}


@pytest.mark.parametrize("rows,cols,kw", [
    (9, 64, dict(alpha=4, group_size=32, bits=4, rows_per_stream=2)),  # short last stream
    (5, 90, dict(alpha=3, group_size=30, bits=1, rows_per_stream=1)),
    (4, 40, dict(alpha=1, group_size=40, bits=8, rows_per_stream=4)),  # one stream, 256 symbols
    (33, 16, dict(alpha=4, group_size=16, bits=2, rows_per_stream=None)),  # the writer's default B
])
def test_lanes_match_the_reader(rng, rows, cols, kw, triton_kernels):
    entry, bufs = _entry(rng, rows, cols, **kw)
    want = seeded_rans.codes_of(entry, bufs).reshape(-1)
    got = registry.rans_codes(entry, bufs, DEVICE, "triton")
    assert got.dtype == torch.uint8 and np.array_equal(got.cpu().numpy(), want)


def test_single_symbol_streams(rng, triton_kernels):
    """All codes equal (f = 4096 for one symbol, state never renormalises): each stream is its 4 bytes."""
    values = np.full((6, 16), 0.25, np.float32)
    enc = seeded_rans.encode((6, 64), values, bits=3, alpha=4, group_size=16, seed=1, rows_per_stream=2)
    entry = {"name": "c", "kind": "compressed", "shape": [6, 64], "dtype": "F16", "encoding": enc.encoding,
             "params": enc.params, "buffers": {k: {"dtype": dt, "length": int(a.nbytes)}
                                               for k, (dt, a) in enc.buffers.items()}}
    bufs = {k: np.ascontiguousarray(a).view(np.uint8).reshape(-1) for k, (_, a) in enc.buffers.items()}
    assert max(enc.params["freqs"]) == 4096
    got = registry.rans_codes(entry, bufs, DEVICE, "triton")
    assert np.array_equal(got.cpu().numpy(), seeded_rans.codes_of(entry, bufs).reshape(-1))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_corrupt_streams_rejected(rng, backend, triton_kernels):
    """A flipped byte ends a stream in the wrong state or position: an EncodingError naming the stream, on
    the device as in the reader; offsets that could send a lane outside its stream fail before any launch."""
    entry, bufs = _entry(rng, 8, 64, alpha=4, group_size=32, bits=4, rows_per_stream=2)
    bad = dict(bufs)
    bad["streams"] = bufs["streams"].copy()
    bad["streams"][9] ^= 0x5A
    with pytest.raises(EncodingError, match="stream"):
        CompressedDelta.from_entry(entry, bad, DEVICE, backend=backend)
    off = np.frombuffer(bufs["stream_offsets"].tobytes(), "<u4").copy()
    off[1] += 1  # odd stream length
    bad = {**bufs, "stream_offsets": off.view(np.uint8)}
    with pytest.raises(EncodingError, match="stream"):
        CompressedDelta.from_entry(entry, bad, DEVICE, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("cls", ["hot", "rest"])
def test_corrupt_split_class_named_as_its_buffer(rng, backend, cls, triton_kernels):
    """seeded_rans_split: a class's corrupt stream fails the load with the entry's own field name
    (buffers.hot_streams / buffers.rest_streams), on the device as in the reader."""
    entry, bufs = _entry(rng, 8, 64, "seeded_rans_split", alpha=4, group_size=32, bits=4, rows_per_stream=2,
                         hot=(8, 2, 8))
    bad = {**bufs, f"{cls}_streams": bufs[f"{cls}_streams"].copy()}
    bad[f"{cls}_streams"][5] ^= 0x5A
    with pytest.raises(EncodingError, match=f"{cls} columns: stream") as err:
        CompressedDelta.from_entry(entry, bad, DEVICE, backend=backend)
    assert err.value.field == f"buffers.{cls}_streams" and err.value.tensor == "t"
    d = CompressedDelta.from_entry(entry, bufs, DEVICE, backend=backend)
    assert np.array_equal(d.to_dense(backend=backend).cpu().numpy(),
                          registry.host_decode(entry, bufs))


def test_decoder_table_is_the_readers_lookup(rng):
    freqs = seeded_rans.quantize_freqs(rng.integers(0, 50, 16))
    packed = triton_rans.decoder_table(freqs).view(np.uint32)
    sym, f, bias = seeded_rans._tables(freqs)
    assert np.array_equal(packed & 0xFF, sym) and np.array_equal(((packed >> 8) & 0xFFF) + 1, f)
    assert np.array_equal(packed >> 20, bias)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_codes_is_bitpack(rng, bits):
    for n in (0, 1, 7, 8, 61):
        codes = rng.integers(0, 1 << bits, n).astype(np.uint8)
        assert np.array_equal(pack_codes(torch.from_numpy(codes), bits).numpy(), bitpack.pack(codes, bits))
