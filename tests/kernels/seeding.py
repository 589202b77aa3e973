"""Test inputs seeded from a test's name by a hash that does not change between processes (Python's
hash() of a str is salted per process: PYTHONHASHSEED)."""
from __future__ import annotations

import zlib

import numpy as np


def stable_rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))
