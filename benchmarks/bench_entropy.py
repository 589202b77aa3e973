"""seeded vs seeded_rans (SPEC.md §9.5) on the built-in example pair: true bytes and numpy decode time.

    python benchmarks/bench_entropy.py [--settings 8:4,32:4,64:4,8:3] [--group-size auto] [--tensor NAME]

Both encodings store the same k-bit codes (same mask, quantizer, params), so accuracy is identical by
construction; only the bytes and the decode time differ. For each alpha:k setting the pair is converted
twice with `ddq_format.converters.convert(..., embeddings="compressed")` and the script prints the true
ratio over the compressed tensors and over the whole file, the mean coded bits per code, and the median
numpy decode time (DDQFile.decode, checksums verified) of one tensor in both files.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddq_format import DDQFile  # noqa: E402
from ddq_format.accounting import report  # noqa: E402
from ddq_format.encodings import seeded_rans  # noqa: E402
from ddq_format.seeded_mask import kept_per_row  # noqa: E402
from ddq_format.converters import convert  # noqa: E402
from ddq_format.example.build import build_example  # noqa: E402
from _common import median_seconds  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="8:4,32:4,64:4,8:3", help="comma-separated alpha:k")
    ap.add_argument("--group-size", default="auto")
    ap.add_argument("--tensor", default="model.layers.0.mlp.down_proj.weight", help="decode-timed tensor")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stream-sweep", default="128,256,512,1024,2048,4096",
                    help="symbols-per-stream targets re-encoded from the first setting's seeded codes ('' skips)")
    args = ap.parse_args(argv)
    pair = build_example()
    print(f"| alpha | k | encoding | group_size | compressed bytes | true ratio (compressed) | true ratio (file) "
          f"| nominal | bits/code | decode {args.tensor.split('.', 2)[-1]} ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings.split(","):
            alpha, k = (int(v) for v in setting.split(":"))
            for enc in ("seeded", "seeded_rans"):
                out = Path(tmp) / f"{enc}-{alpha}-{k}.ddq"
                s = convert(pair.base, pair.finetuned, out, alpha=alpha, bits=k, encoding=enc,
                            group_size=args.group_size, embeddings="compressed", progress=False, quiet=True)
                with DDQFile(out) as f:
                    rep = report(f)
                    tot = rep["totals"]
                    comp = [t for t in rep["tensors"] if t["kind"] == "compressed"]
                    codes = sum(e["shape"][0] * kept_per_row(e["shape"][1], e["params"]["group_size"], alpha)
                                for e in f.entries.values() if e["kind"] == "compressed")
                    value_bits = 8 * sum(t["components"]["values"] for t in comp)
                    shape = f.entries[args.tensor]["shape"]
                    ms = median_seconds(lambda: f.decode(args.tensor), args.repeats) * 1e3
                print(f"| {alpha} | {k} | {enc} | {s.group_size} | {tot['compressed_stored_bytes']:,} | "
                      f"{tot['compressed_true_ratio']:.1f} | {tot['true_ratio']:.1f} | {tot['nominal_ratio']:.0f} | "
                      f"{value_bits / codes:.2f} | {ms:.1f} ({shape[0]}×{shape[1]}) |", flush=True)
                if enc == "seeded" and args.stream_sweep and setting == args.settings.split(",")[0]:
                    sweep_src = out
        if args.stream_sweep:
            stream_sweep(sweep_src, args)
    return 0


def stream_sweep(path, args):
    """Stream size trade-off: the seeded file's codes re-encoded with each symbols-per-stream target; bytes
    are streams + offsets summed over the compressed tensors (no padding or header), decode is one tensor."""
    print(f"\nstream length sweep on {path.name} (codes of every compressed tensor re-encoded)\n")
    print("| symbols/stream target | streams | stream + offset bytes | of which offsets + states | vs seeded codes "
          f"| {args.tensor.split('.', 2)[-1]} codes decode ms |")
    print("|---|---|---|---|---|---|")
    with DDQFile(path) as f:
        names = [n for n, e in f.entries.items() if e["kind"] == "compressed"]
        codes = {n: f.parts(n) for n in names}
        bits = f.entries[names[0]]["params"]["bits"]
        packed = sum(f.entries[n]["buffers"]["codes"]["length"] for n in names)
    for target in (int(v) for v in args.stream_sweep.split(",")):
        total = fixed = ns = 0
        for n, c in codes.items():
            b = seeded_rans.default_rows_per_stream(c.shape[0], c.shape[1], target)
            _, streams, offsets, _ = seeded_rans.encode_codes(c, bits, b)
            total += streams.nbytes + offsets.nbytes
            fixed += offsets.nbytes + 4 * (offsets.size - 1)
            ns += offsets.size - 1
        c = codes[args.tensor]
        b = seeded_rans.default_rows_per_stream(c.shape[0], c.shape[1], target)
        freqs, streams, offsets, dt = seeded_rans.encode_codes(c, bits, b)
        entry = {"name": args.tensor, "shape": [c.shape[0], c.shape[1]],
                 "params": {"rows_per_stream": b, "freqs": freqs, "group_size": 1, "alpha": 1},  # K = cols
                 "buffers": {"stream_offsets": {"dtype": dt}}}
        bufs = {"streams": streams, "stream_offsets": offsets.view("u1")}
        ms = median_seconds(lambda: seeded_rans.codes_of(entry, bufs), args.repeats) * 1e3
        print(f"| {target} | {ns:,} | {total:,} | {fixed:,} | {total / packed:.3f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
