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


# ---- full digest (format 1.2) and verify --full ---------------------------------------------------------------
import hashlib  # noqa: E402
import struct  # noqa: E402

from ddq_format.binding import digest_bits  # noqa: E402


def test_digest_is_sha256_of_the_storage_bytes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert digest_bits(x, "F32") == "sha256:" + hashlib.sha256(x.astype("<f4").tobytes()).hexdigest()
    assert digest_bits(x.view(np.uint32), "F32") == digest_bits(x, "F32")
    h = x.astype(np.float16)
    assert digest_bits(h, "F16") == "sha256:" + hashlib.sha256(h.astype("<f2").tobytes()).hexdigest()
    assert "digest" not in binding(x, x.shape, "F32") and binding(x, x.shape, "F32", digest=True)["digest"]


@pytest.fixture
def bound(tmp_path):
    """A base checkpoint, and a delta bound to it with full digests; the second base differs from the first in
    one element the sampled fingerprint never reads."""
    from safetensors.numpy import save_file
    from ddq_format import Writer
    from ddq_format.encodings import raw
    w0 = np.random.default_rng(3).standard_normal((64, 100)).astype(np.float32)
    unsampled = next(i for i in range(w0.size) if i not in set(sample_indices(w0.size).tolist()))
    w1 = w0.copy()
    w1.reshape(-1)[unsampled] += 1
    for name, w in (("base", w0), ("other", w1)):
        (tmp_path / name).mkdir()
        save_file({"w": w}, str(tmp_path / name / "model.safetensors"))
    out = tmp_path / "d.ddq"
    with Writer(out) as wr:
        wr.add("w", "dense", w0.shape, "F32", raw.encode(np.ones_like(w0), "F32"),
               base=binding(w0, w0.shape, "F32", digest=True))
    return tmp_path, out


def test_full_digest_catches_a_base_that_differs_in_an_unsampled_element(bound):
    from ddq_format.verify import verify
    tmp, out = bound
    blob = out.read_bytes()
    assert struct.unpack_from("<HH", blob, 8) == (1, 2)  # a base digest is a 1.2 feature
    assert verify(out, tmp / "base", full=True) == []
    assert verify(out, tmp / "other") == []  # the sampled fingerprint cannot see the change
    faults = verify(out, tmp / "other", full=True)
    assert len(faults) == 1 and "'base.digest'" in faults[0] and "differs" in faults[0]


def test_full_check_without_a_recorded_digest_says_what_it_could_not_check(tmp_path):
    from safetensors.numpy import save_file
    from ddq_format import Writer
    from ddq_format.encodings import raw
    from ddq_format.verify import verify
    w0 = np.ones((4, 4), np.float32)
    (tmp_path / "base").mkdir()
    save_file({"w": w0}, str(tmp_path / "base" / "model.safetensors"))
    with Writer(tmp_path / "d.ddq") as wr:
        wr.add("w", "dense", w0.shape, "F32", raw.encode(w0, "F32"), base=binding(w0, w0.shape, "F32"))
    assert verify(tmp_path / "d.ddq", tmp_path / "base") == []
    faults = verify(tmp_path / "d.ddq", tmp_path / "base", full=True)
    assert len(faults) == 1 and "'base.digest': absent" in faults[0]
