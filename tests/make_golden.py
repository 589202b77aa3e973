"""Regenerate the golden .ddq files in tests/data/ deterministically (SPEC.md test vectors).

    python -m tests.make_golden          # or: python tests/make_golden.py [OUT_DIR]

Inputs are built from integer arithmetic (no random generator whose stream could change between numpy
versions), so the same code always writes the same bytes. tests/test_golden.py checks that it does, and
that the committed files decode byte-for-byte to the committed .npy arrays.
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ddq_format import DDQFile, Writer  # noqa: E402
from ddq_format.binding import binding  # noqa: E402
from ddq_format.converters.dropout import groupwise_dropout  # noqa: E402
from ddq_format.encodings import csr_parts, raw, seeded, seeded_rans  # noqa: E402
from ddq_format.encodings.raw import to_bf16_bits  # noqa: E402
from ddq_format.seeded_mask import fmix32, mask_columns  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def det_matrix(rows: int, cols: int, salt: int, scale: float = 0.02) -> np.ndarray:
    """float32 [rows, cols]: u_i = ((i·2654435761 + salt·40503) mod 2^32) / 2^32, x = (u − 0.5)·scale, then
    every 7th element (i mod 7 = 3) set to 0.0. Exact in float64 before the single rounding to float32."""
    i = np.arange(rows * cols, dtype=np.uint64)
    u = ((i * np.uint64(2654435761) + np.uint64(salt * 40503)) % np.uint64(2**32)).astype(np.float64) / 2**32
    x = ((u - 0.5) * scale).astype(np.float32)
    x[(i % np.uint64(7)) == np.uint64(3)] = 0.0
    return x.reshape(rows, cols)


# name -> (encoding, shape, alpha, group_size, bits, parts, seed, salt); dtype F16 for all
COMPRESSED = {
    "csr_k4_m8": ("csr_parts", (8, 40), 4, 16, 4, 8, 1234, 1),  # tail group of 8 columns keeps 2
    "csr_k3_m2": ("csr_parts", (6, 24), 2, 8, 3, 2, 7, 2),
    "seeded_k4": ("seeded", (8, 40), 4, 16, 4, 1, 1234, 1),  # same input and mask as csr_k4_m8
    "seeded_k2": ("seeded", (5, 19), 2, 8, 2, 1, 2**32 - 1, 3),  # tail group of 3 columns keeps 2
    "seeded_rans_k4": ("seeded_rans", (8, 40), 4, 16, 4, 1, 1234, 1),  # seeded_k4's codes, rANS-coded (1.1)
}
RANS_ROWS_PER_STREAM = 3  # seeded_rans_k4: streams of 3, 3 and 2 rows (a shorter last stream)
CONFIG_JSON = b'{"architectures": ["ToyForCausalLM"], "model_type": "toy", "hidden_size": 8}\n'


def _write_compressed(path: Path, enc, shape, alpha, group, bits, parts, seed, salt):
    delta = det_matrix(*shape, salt)
    kept, vals = groupwise_dropout(delta, alpha, group, seed)
    algorithm = {"method": "deltadq", "alpha": alpha, "group_size": group, "bits": bits, "parts": parts,
                 "seed": seed}
    with Writer(path, metadata={"golden": path.stem}, algorithm=algorithm) as w:
        if enc == "csr_parts":
            rows = np.repeat(np.arange(shape[0]), kept.shape[1])
            e = csr_parts.encode(shape, rows, kept.reshape(-1), vals.reshape(-1), bits=bits, parts=parts,
                                 alpha=alpha, group_size=group, seed=seed)
        elif enc == "seeded_rans":
            e = seeded_rans.encode(shape, vals, bits=bits, alpha=alpha, group_size=group, seed=seed,
                                   rows_per_stream=RANS_ROWS_PER_STREAM)
        else:
            e = seeded.encode(shape, vals, bits=bits, alpha=alpha, group_size=group, seed=seed)
        w.add("w", "compressed", shape, "F16", e)


def _write_mixed(path: Path, major: int = 1):
    norm = det_matrix(1, 16, 4, scale=0.5).reshape(16)
    embed = det_matrix(4, 8, 5, scale=4.0)
    base_embed = to_bf16_bits(det_matrix(3, 8, 6, scale=4.0))  # the base had 3 rows: the fine-tune resized it
    base_norm = det_matrix(1, 16, 7, scale=1.0).reshape(16).astype(np.float16).view(np.uint16)
    with Writer(path, metadata={"golden": "mixed"}, base={"architecture": "ToyForCausalLM"},
                algorithm={"method": "deltadq"}, major=major) as w:
        w.add("norm.weight", "dense", [16], "F16", raw.encode(norm, "F16"), base=binding(base_norm, [16], "F16"))
        w.add("embed.weight", "replace", [4, 8], "BF16", raw.encode(embed, "BF16"),
              base=binding(base_embed, [3, 8], "BF16"))
        w.add("lm_head.weight", "tied", [4, 8], "BF16", tied_to="embed.weight")
        w.add("layers.0.same.weight", "same", [3, 3], "F16")
        w.add("old.bias", "removed", [4], "F32")
        w.add_file("config.json", CONFIG_JSON)


def build(out: Path) -> dict[str, dict]:
    """Write every golden .ddq and its expected decoded arrays (.npy) into `out`; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, spec in COMPRESSED.items():
        _write_compressed(out / f"{name}.ddq", *spec)
    _write_mixed(out / "mixed.ddq")
    _write_mixed(out / "mixed_v2.ddq", major=2)
    for name in list(COMPRESSED) + ["mixed", "mixed_v2"]:
        path = out / f"{name}.ddq"
        blob = path.read_bytes()
        arrays = {}
        with DDQFile(path) as f:
            for t in f.names:
                arr = f.decode(t)
                np.save(out / f"{name}__{t}.npy", arr, allow_pickle=False)
                arrays[t] = (list(arr.shape), zlib.crc32(np.ascontiguousarray(arr).tobytes()))
            files = list(f.files)
        manifest[name] = {"bytes": len(blob), "crc32": zlib.crc32(blob), "arrays": arrays, "files": files}
    return manifest


def hash_vectors() -> list[tuple[str, str]]:
    """Seeded-mask test vectors quoted in README.md (and SPEC.md)."""
    xs = [0, 1, 2, 0xDEADBEEF, 0xFFFFFFFF]
    vec = [(f"fmix32(0x{x:08X})", f"0x{int(fmix32(np.uint32(x))):08X}") for x in xs]
    for args in [(42, 2, 10, 4, 2), (7, 1, 20, 8, 4), (2**32 - 1, 3, 6, 6, 3)]:
        vec.append((f"mask_columns(seed={args[0]}, rows={args[1]}, cols={args[2]}, group_size={args[3]}, "
                    f"alpha={args[4]})", str(mask_columns(*args).tolist())))
    for name, (_, shape, alpha, group, _, _, seed, _) in COMPRESSED.items():
        if name.startswith("seeded"):
            vec.append((f"{name}: mask_columns(seed={seed}, rows={shape[0]}, cols={shape[1]}, "
                        f"group_size={group}, alpha={alpha})[0]",
                        str(mask_columns(seed, shape[0], shape[1], group, alpha)[0].tolist())))
    return vec


def readme(manifest: dict) -> str:
    lines = [
        "# Golden .ddq files (format test vectors)",
        "",
        "Generated by `python -m tests.make_golden` from fixed inputs; `tests/test_golden.py` checks that the",
        "files decode byte-for-byte to the `.npy` arrays beside them (float32, little-endian, load with",
        "`allow_pickle=False`) and that regenerating gives identical bytes. Do not edit by hand.",
        "",
        "Inputs: `det_matrix(rows, cols, salt, scale)` in `tests/make_golden.py`: element i (row-major) is",
        "`(((i*2654435761 + salt*40503) mod 2^32) / 2^32 - 0.5) * scale` rounded once to float32, and 0.0",
        "where `i mod 7 == 3`. Compressed entries: `groupwise_dropout(delta, alpha, group_size, seed)`, then",
        "the reference quantizer (SPEC.md §8.2). Every compressed file holds one tensor `w` (dtype F16).",
        "",
        "| file | encoding | shape | alpha | group_size | bits k | parts m | seed | input salt | bytes | crc32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (enc, shape, alpha, group, bits, parts, seed, salt) in COMPRESSED.items():
        m = manifest[name]
        lines.append(f"| `{name}.ddq` | {enc} | {shape[0]}×{shape[1]} | {alpha} | {group} | {bits} | "
                     f"{parts if enc == 'csr_parts' else '—'} | {seed} | {salt} | {m['bytes']} | "
                     f"`{m['crc32']:08x}` |")
    m = manifest["mixed"]
    lines += [
        f"| `mixed.ddq` | raw | — | — | — | — | — | — | — | {m['bytes']} | `{m['crc32']:08x}` |",
        f"| `mixed_v2.ddq` | raw | — | — | — | — | — | — | — | {manifest['mixed_v2']['bytes']} | "
        f"`{manifest['mixed_v2']['crc32']:08x}` |",
        "",
        "Notes:",
        "- `csr_k4_m8` and `seeded_k4` share input, mask and quantizer, so they decode to the same array; the",
        "  40 columns with group_size 16 leave a tail group of 8 columns that keeps 2.",
        "- `seeded_k2`: 19 columns, group_size 8, alpha 2: a tail group of 3 columns keeps ceil(3/2) = 2,",
        "  rescaled by 3/2. Seed 2^32 − 1 (the largest).",
        f"- `seeded_rans_k4` (format 1.1, SPEC.md §9.5): `seeded_k4`'s codes entropy-coded with rANS, "
        f"rows_per_stream = {RANS_ROWS_PER_STREAM}",
        "  (streams of 3, 3 and 2 rows); it decodes to the same array as `seeded_k4` and `csr_k4_m8`.",
        "- `mixed.ddq`: `norm.weight` dense F16 [16] (det_matrix(1,16,4,0.5)) bound to a base tensor;",
        "  `embed.weight` replace BF16 [4,8] (det_matrix(4,8,5,4.0), bound to a [3,8] base: resized);",
        "  `lm_head.weight` tied to `embed.weight`; `layers.0.same.weight` same F16 [3,3]; `old.bias`",
        "  removed F32 [4]; aux file `config.json`.",
        "- `mixed_v2.ddq` (format 2.0, SPEC.md §3.3): the same entries and buffer bytes in the compact",
        "  container: buffers aligned to 16, the header zlib-compressed (level 9; a reader accepts any zlib",
        "  stream that inflates to the same msgpack). It decodes to the same arrays as `mixed.ddq`.",
        "",
        "Expected arrays (`<file>__<tensor>.npy`, shape, crc32 of the float32 bytes):",
        "",
        "| file | tensor | shape | crc32 of decoded float32 bytes |",
        "|---|---|---|---|",
    ]
    for name, m in manifest.items():
        for t, (shape, crc) in m["arrays"].items():
            lines.append(f"| `{name}.ddq` | `{t}` | {shape} | `{crc:08x}` |")
    lines += ["", "Seeded-mask hash vectors (SPEC.md §9.3.2):", "", "| expression | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in hash_vectors()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else DATA
    manifest = build(out)
    (out / "README.md").write_text(readme(manifest))
    for name, m in manifest.items():
        print(f"{name}.ddq  {m['bytes']:6d} bytes  crc32 {m['crc32']:08x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
