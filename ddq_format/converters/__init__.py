"""Hugging Face checkpoints -> .ddq: delta, group-wise dropout, group-size search, quantization, baselines.

    from ddq_format.converters import convert
    summary = convert("base/", "finetuned/", "out.ddq", alpha=8, bits=4, parts=8)
"""


def convert(base, finetuned, out, **options):
    """See ddq_format.converters.pipeline.convert (imported lazily: rich, threads and checkpoints)."""
    from .pipeline import convert as _convert
    return _convert(base, finetuned, out, **options)
