"""Hugging Face checkpoints -> .ddq: delta, group-wise dropout, group-size search, quantization, baselines."""
