"""Base fingerprints hash bit patterns: the same for a float array and its raw bits, in every dtype."""
import numpy as np
import pytest

from ddq_format.binding import binding, check_binding, fingerprint, fingerprint_bits, sample_indices
from ddq_format.encodings.raw import to_bf16_bits
from ddq_format.errors import BindingError


@pytest.mark.parametrize("dtype,np_dtype,bits_dtype", [("F32", np.float32, np.uint32), ("F16", np.float16, np.uint16)])
def test_float_array_and_its_bits_fingerprint_alike(dtype, np_dtype, bits_dtype):
    x = (np.random.default_rng(0).standard_normal((64, 100)) * 3).astype(np_dtype)
    assert fingerprint_bits(x, dtype) == fingerprint_bits(x.view(bits_dtype), dtype) == fingerprint(x, dtype)


def test_bf16_fingerprint_from_floats_or_bits():
    x = np.random.default_rng(1).standard_normal((10, 500)).astype(np.float32)
    bits = to_bf16_bits(x)
    assert fingerprint(x, "BF16") == fingerprint_bits(bits, "BF16")


def test_fingerprint_distinguishes_small_changes_in_sampled_elements():
    x = np.random.default_rng(2).standard_normal(100_000).astype(np.float32)
    y = x.copy()
    y[sample_indices(x.size)[7]] += 1e-3
    assert fingerprint(x, "F32") != fingerprint(y, "F32")


def test_sample_indices_spread_evenly():
    idx = sample_indices(10_000)
    assert idx.size == 4096 and idx[0] == 0 and idx[-1] == 4095 * 10_000 // 4096
    assert np.array_equal(sample_indices(100), np.arange(100))


def test_check_binding_names_the_field():
    x = np.ones((3, 4), np.float32)
    rec = binding(x, x.shape, "F32")
    check_binding(rec, (3, 4), "F32", fingerprint(x, "F32"))
    with pytest.raises(BindingError) as e:
        check_binding(rec, (3, 4), "F32", fingerprint(x + 1, "F32"), path="d.ddq", tensor="w")
    assert e.value.field == "base.fingerprint" and "w" in str(e.value)
    with pytest.raises(BindingError, match="shape"):
        check_binding(rec, (4, 3), "F32", None)
    with pytest.raises(BindingError, match="dtype"):
        check_binding(rec, (3, 4), "BF16", None)
