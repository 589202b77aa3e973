"""Constants of the .ddq container, format v1. The single source of truth: SPEC.md documents these
values and every other module imports them from here."""
from __future__ import annotations

from dataclasses import dataclass

FORMAT_MAJOR = 1
FORMAT_MINOR = 4  # the newest minor this library reads; writers record the lowest minor a file needs
# 2.0 (SPEC.md §2, §3.3): the 1.3 container with its msgpack header stored zlib-compressed (RFC 1950). On a 512x
# file of a 135M model the header entries are ~20% of the bytes; compressed, ~3%. Major 2 defines every key,
# kind and encoding of 1.3, so its minors count from 0 again.
COMPACT_MAJOR = 2
COMPACT_MINOR = 1  # the newest minor of major 2 this library reads (2.1 = 2.0 + 1.4's encoding)
HEADER_ZLIB_LEVEL = 9  # writers' choice; readers accept any valid zlib stream

# File layout: preamble | data section (aligned buffers) | header (msgpack) | footer.
MAGIC = b"\x89DDQ\r\n\x1a\n"  # PNG-style: catches text-mode transfers and truncation to 7 bits
FOOTER_MAGIC = b"DDQFOOT\x00"
PREAMBLE_SIZE = 64  # magic(8) major(u16) minor(u16) then zeros; also the data section's start
FOOTER_SIZE = 32  # header_offset(u64) header_length(u64) header_crc32(u32) major(u16) minor(u16) magic(8)
ALIGNMENT = 64  # 1.x: every buffer's offset is a multiple of this (relative to the data section)
# 2.x: the smallest alignment a header may declare, and the one writers use: a multiple of every element size
# (U64, F32, F16...) and of 16-byte vector loads; on a 512x file of a 135M model, 64 puts 3% of the bytes in
# padding, 16 under 1%
COMPACT_ALIGNMENT = 16

# Caps applied to untrusted input before anything is allocated (SPEC.md §3.3, §5.1).
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32  # nesting of maps and arrays in the header; the top-level map is depth 1
MAX_HEADER_OBJECTS = 2**23  # msgpack values in the whole header (every key, value and element counts once)
MAX_SECTION_OBJECTS = 2**18  # msgpack values in all top-level values other than `tensors`, together
MAX_TOP_KEYS = 1024  # keys of the top-level map
MAX_ENTRY_BYTES = 2**16  # the msgpack encoding of one tensor entry
MAX_TENSORS = 2**17  # 131 072 entries: room for per-expert weights of very large MoE (61 x 384 x 3 = 70 272)
MAX_NDIM = 8
MAX_DIM = 2**31 - 1
MAX_NAME_BYTES = 1024
MAX_DECODED_BYTES = 2**36  # shape cap: a decoded float32 tensor (zero dims skipped) of at most 64 GiB
MAX_STRING = 16 * 1024 * 1024
MAX_ARRAY = MAX_TENSORS
MAX_MAP = MAX_TENSORS
MAX_FILES = 256  # auxiliary files (config.json, tokenizer files)
MAX_ALPHA = 65536
MAX_BITS = 8  # k: bits of a quantizer code (codes fit in a byte)
MAX_SEED = 2**32 - 1  # per-entry seeds are uint32: the mask hash takes 32 bits
MAX_DARE_SEED = 2**64 - 1  # csr_f16's informative sampler seed (numpy PCG64 takes 64 bits)
MAX_ALIGNMENT = 2**20  # largest buffer alignment a header may declare
MAX_FILE_NAME_BYTES = 255  # auxiliary file names (a relative path), in UTF-8 bytes

# The reader's default decode budget (SPEC.md §11, max_decoded_bytes): a decode may allocate up to
# max(FLOOR, RATIO x the entry's stored bytes) for its float32 result unless the caller sets a bound. RATIO is
# above every DeltaDQ setting the paper uses (1024x at its 512x nominal), so only a file crafted to amplify
# (66 KB -> GiBs) is refused by default.
DECODE_BUDGET_FLOOR = 2**28
DECODE_BUDGET_RATIO = 4096

CHECKSUM = "crc32"  # zlib/ISO-HDLC CRC-32 over a buffer's bytes

# Entry kinds.
KIND_COMPRESSED = "compressed"  # a linear-layer delta in a compressed encoding
KIND_DENSE = "dense"  # a delta stored dense (norms, biases, small tensors)
KIND_REPLACE = "replace"  # the full fine-tuned tensor (shape changed, or only in the fine-tune)
KIND_SAME = "same"  # unchanged: zero bytes
KIND_TIED = "tied"  # same storage as another entry (tied embeddings)
KIND_REMOVED = "removed"  # present in the base, absent from the fine-tune
KINDS = (KIND_COMPRESSED, KIND_DENSE, KIND_REPLACE, KIND_SAME, KIND_TIED, KIND_REMOVED)

# Encoding ids. An id is never reused or redefined; new encodings get new ids (SPEC.md §Encodings).
ENC_RAW = "raw"
ENC_CSR_PARTS = "csr_parts"
ENC_SEEDED = "seeded"
# Baselines (converter --method dare|magnitude, bitdelta, lowrank), stored through the same container.
ENC_CSR_F16 = "csr_f16"
ENC_SIGN_SCALE = "sign_scale"
ENC_LOWRANK = "lowrank"
# 1.1: the codes of `seeded`, entropy-coded with rANS (SPEC.md §9.5).
ENC_SEEDED_RANS = "seeded_rans"
# 1.3: the seed papers' baselines (SPEC.md §9.6, §9.7): Delta-CoMe/DeltaMix quantized low rank, DeltaZip n:m.
ENC_LOWRANK_Q = "lowrank_q"
ENC_NM_Q = "nm_q"
# 1.4 / 2.1 (SPEC.md §9.8): seeded_rans over two classes of input columns, each with its own alpha: the columns
# whose inputs carry the most energy kept more often (group-wise dropout's output noise is sum_j D_ij^2 x_j^2).
ENC_SEEDED_RANS_SPLIT = "seeded_rans_split"
ENC_DENSE_Q = "dense_q"  # 1.3: small dense deltas (norms, biases) as k-bit codes (SPEC.md §9.8)
ENCODINGS_BY_KIND = {
    KIND_COMPRESSED: (ENC_CSR_PARTS, ENC_SEEDED, ENC_CSR_F16, ENC_SIGN_SCALE, ENC_LOWRANK, ENC_SEEDED_RANS,
                      ENC_LOWRANK_Q, ENC_NM_Q, ENC_SEEDED_RANS_SPLIT),
    KIND_DENSE: (ENC_RAW, ENC_DENSE_Q),
    KIND_REPLACE: (ENC_RAW,),
}
# Encodings this version of the library can decode; baselines add theirs (SPEC.md table).
ENCODING_SINCE = {ENC_RAW: (1, 0), ENC_CSR_PARTS: (1, 0), ENC_SEEDED: (1, 0), ENC_CSR_F16: (1, 0),
                  ENC_SIGN_SCALE: (1, 0), ENC_LOWRANK: (1, 0), ENC_SEEDED_RANS: (1, 1),
                  ENC_LOWRANK_Q: (1, 3), ENC_NM_Q: (1, 3), ENC_DENSE_Q: (1, 3), ENC_SEEDED_RANS_SPLIT: (1, 4)}
COMPACT_SINCE = {ENC_SEEDED_RANS_SPLIT: 1}  # the 2.x minor of each encoding newer than 1.3 (2.0 defines 1.3's)

# seeded_rans (SPEC.md §9.5): rANS with a 32-bit state renormalised 16 bits at a time.
RANS_PROB_BITS = 12  # P: the frequency table sums to 2^P
RANS_STATE_LOW = 1 << 16  # L: the state lives in [L, 2^32); the encoder starts and the decoder ends at L
RANS_SYMBOLS_PER_STREAM = 1024  # writer default: rows_per_stream = ceil(this / kept_per_row)
RANS_MAX_STREAM_SYMBOLS = 2**16  # rows_per_stream * kept_per_row: a stream decodes sequentially, so this bounds
# the latency of one tensor whatever the lanes (SPEC.md §9.5)

# Element types of buffers and tensors, little-endian: the one dtype table of the project.
@dataclass(frozen=True)
class DType:
    name: str  # the spec's name (also safetensors' name)
    size: int  # bytes per element
    numpy: str  # numpy storage dtype; BF16 is stored as its uint16 bit patterns
    torch: str  # attribute of the torch module (torch is never imported here)
    float: bool = False
    bits: str | None = None  # floats: the unsigned numpy dtype of the same width (bit patterns)


DTYPES = {d.name: d for d in (
    DType("F32", 4, "<f4", "float32", True, "<u4"), DType("F16", 2, "<f2", "float16", True, "<u2"),
    DType("BF16", 2, "<u2", "bfloat16", True, "<u2"),
    DType("U8", 1, "u1", "uint8"), DType("U16", 2, "<u2", "uint16"), DType("U32", 4, "<u4", "uint32"),
    DType("U64", 8, "<u8", "uint64"), DType("I8", 1, "i1", "int8"), DType("I16", 2, "<i2", "int16"),
    DType("I32", 4, "<i4", "int32"), DType("I64", 8, "<i8", "int64"), DType("BOOL", 1, "u1", "bool"))}
DTYPE_SIZES = {n: d.size for n, d in DTYPES.items()}
NP_DTYPES = {n: d.numpy for n, d in DTYPES.items()}
FLOAT_DTYPES = ("F32", "F16", "BF16")
INDEX_DTYPES = ("U8", "U16", "U32", "U64")
OFFSET_DTYPES = ("U32", "U64")  # row offsets / stream offsets: U64 only when the count reaches 2^32


def dtype_max(name: str) -> int:
    """Largest value an unsigned integer dtype holds (U8 -> 255)."""
    return 2 ** (8 * DTYPES[name].size) - 1


def offsets_dtype(total: int) -> str:
    """U32 for offsets below 2^32, else U64 (csr_parts, csr_f16, seeded_rans)."""
    return "U32" if total < 2**32 else "U64"


PACKED = "PACKED"  # bit-packed codes; the bit width is in the entry's params

# The seeded mask hash (SPEC.md §Seeded mask). Changing any of these changes every seeded file.
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35
GOLDEN = 0x9E3779B9
SEED_SALT = 0x5DD9A11B
PERM_ROUNDS = 3

# Base-model fingerprint: crc32 over up to this many elements sampled evenly (SPEC.md §Base binding).
FINGERPRINT_SAMPLES = 4096
FINGERPRINT_SCHEME = "sample4096-crc32"
# Optional full digest of a base tensor (format 1.2, SPEC.md §5.3): SHA-256 of all its storage bytes.
DIGEST_SCHEME = "sha256"

# Features beyond encodings and the minor version that defines them (writers label files with the lowest
# minor covering every feature used, SPEC.md §2).
BASE_DIGEST_SINCE = (1, 2)


def min_alignment(major: int) -> int:
    """The smallest buffer alignment a header of this major may declare (and the one the writer uses)."""
    return ALIGNMENT if major == FORMAT_MAJOR else COMPACT_ALIGNMENT


def newest_minor(major: int) -> int | None:
    """The newest minor of `major` this library reads; None for a major it does not read."""
    return {FORMAT_MAJOR: FORMAT_MINOR, COMPACT_MAJOR: COMPACT_MINOR}.get(major)


def minor_needed(tensors, major: int = FORMAT_MAJOR) -> int:
    """The lowest minor version of `major` that defines every encoding and feature these entries use (2.0
    defines all of 1.3's, 2.1 adds 1.4's)."""
    minor = 0
    if major != FORMAT_MAJOR:
        for e in tensors:
            enc = e.get("encoding") if e.get("kind") in ENCODINGS_BY_KIND else None
            minor = max(minor, COMPACT_SINCE.get(enc, 0) if isinstance(enc, str) else 0)
        return minor
    for e in tensors:
        enc = e.get("encoding") if e.get("kind") in ENCODINGS_BY_KIND else None  # other kinds ignore the key
        if isinstance(enc, str):
            minor = max(minor, ENCODING_SINCE.get(enc, (1, 0))[1])
        if isinstance(e.get("base"), dict) and "digest" in e["base"]:
            minor = max(minor, BASE_DIGEST_SINCE[1])
    return minor

def index_dtype_for(max_value: int) -> str:
    """Narrowest unsigned dtype that holds values 0..max_value."""
    for name, bits in (("U8", 8), ("U16", 16), ("U32", 32), ("U64", 64)):
        if max_value < 2**bits:
            return name
    raise ValueError(f"value {max_value} does not fit in 64 bits")

def align_up(n: int, a: int = ALIGNMENT) -> int:
    return (n + a - 1) // a * a

# Kernels (ddq_format/kernels): a device layout chosen at load may take at most this many times the entry's
# bytes in the file (seeded_rans_split's rest class reads its columns through the complement of the hot list,
# a binary search, where its own list would break it; issue 10).
KERNEL_RESIDENT_LIMIT = 2.0

# Converter (ddq convert) defaults, SPEC.md §Converter.
CONVERT_FALLBACK_GROUP_SIZE = 256  # h_g for architectures without an adapter (rounded up to a multiple of alpha)
CONVERT_DENSE_1D_BITS = 8  # 1-D dense deltas (norms, biases) as dense_q codes: below their fp16 size (issue 11)
CONVERT_CALIB_MAX_TOKENS = 512  # calibration tokens used by the group-size search
ENTRY_PLACEHOLDER_MAX = 2**32 - 1  # size estimates: offsets/CRCs at their widest msgpack uint32 form
# --target-ratio's seeded_rans_split candidates: this share of a tensor's input columns, those with the most
# sum_i D_ij^2 E[x_j^2] on the calibration text, form the hot class (benchmarks/results/quality.md)
CONVERT_SPLIT_HOT_SHARE = 0.1
CONVERT_PLAN_1D_SHARE = 0.05  # --target-ratio: 1-D deltas take 4-bit codes where 8 bits would take more of the budget
CONVERT_PLAN_CALIB_MAX_TOKENS = 2048  # --target-ratio and the calibrated baselines (deltacome, deltazip, bitdelta-distill)
# --target-ratio's rescale (converters/rescale.py): dropout entries store t = 1 / (1 + c (alpha - 1)) x their
# delta, c the smallest of this grid whose KL to the fine-tune, weighted per token by KL(fine-tune || base), on
# CONVERT_RESCALE_TOKENS calibration tokens is within CONVERT_RESCALE_TOLERANCE of the least one.
CONVERT_RESCALE_TOKENS = 1024
CONVERT_RESCALE_GRID = (0.0, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006, 0.008, 0.012, 0.016, 0.024, 0.032)
CONVERT_RESCALE_TOLERANCE = 0.01
# then per role (a tensor name with its layer index as '*'), from that c, neighbouring grid steps while the
# criterion falls by more than CONVERT_RESCALE_ROLE_GAIN, up to CONVERT_RESCALE_SWEEPS sweeps over the roles;
# a model with more roles than CONVERT_RESCALE_ROLES_MAX keeps the one c (the passes grow with the roles).
CONVERT_RESCALE_ROLE_GAIN = 0.002
CONVERT_RESCALE_SWEEPS = 2
CONVERT_RESCALE_ROLES_MAX = 16
CONVERT_SEED_DERIVATION = "sha256(f'{seed}:{name}')[:4] little-endian uint32"
# --seed-trials: candidate seeds per tensor (trial 0 is the seed above, so N = 1 changes nothing).
CONVERT_SEED_TRIAL_DERIVATION = ("trial 0: sha256(f'{seed}:{name}')[:4], trial i>0: sha256(f'{seed}:{name}:{i}')[:4], "
                                 "little-endian uint32")
# --ratio presets: nominal ratio -> (alpha, bits k, parts m), nominal = 16 * alpha / (k - log2 m).
CONVERT_RATIO_PRESETS = {8: (2, 4, 1), 16: (4, 4, 1), 32: (8, 4, 1), 64: (8, 4, 4), 128: (8, 4, 8),
                         256: (16, 4, 8), 512: (32, 4, 8)}

# What `ddq convert BASE FINETUNED -o X` does with no options: the recommended file. One table, so that a new
# recommendation (e.g. issue 11's --target-ratio) changes it here only. Chosen from the quality benchmark on
# the example pair (benchmarks/results/quality.md, entropy.md): DeltaDQ at alpha=8, k=4 keeps 90.6% exact
# match of the fine-tune's 95.3%, best of every method from 8x to ~250x true; seeded_rans stores the same
# codes as seeded (identical accuracy) in 1.3-1.7x fewer bytes; embeddings compressed, since a dense
# embedding delta alone would be most of the file.
CONVERT_DEFAULTS = {"method": "deltadq", "encoding": ENC_SEEDED_RANS, "alpha": 8, "bits": 4, "parts": 1,
                    "embeddings": "compressed", "group_size": "auto"}
CONVERT_DEFAULTS_WHY = ("the quality benchmark's best accuracy per true byte on the example pair: 90.6% of the "
                        "fine-tune's 95.3% exact match; seeded_rans stores seeded's codes in 1.3-1.7x fewer bytes")
# Warnings after a conversion (ddq convert): one tensor taking more than this share of the file; a delta
# touching less than this share of the model's elements (tiny: wrong pair?).
CONVERT_WARN_TENSOR_SHARE = 0.5
CONVERT_WARN_CHANGED_SHARE = 0.01
