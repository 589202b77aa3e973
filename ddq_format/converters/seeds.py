"""Per-tensor seeds derived from the run's --seed and the tensor name (SPEC.md §Converter)."""
from __future__ import annotations

import hashlib


def tensor_seed(seed: int, name: str) -> int:
    """uint32: the first 4 bytes (little-endian) of sha256(f"{seed}:{name}")."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()[:4], "little")
