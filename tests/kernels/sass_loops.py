"""Where in a kernel's SASS its spills are (tests/kernels/aot_check.py; no triton import here)."""
from __future__ import annotations

import re


def loop_spills(sass: str) -> int:
    """Spill loads and stores (LDL/STL) inside a loop: between a backward branch's target and the branch.
    Spills outside every loop hold loop-invariant values, written and read once per program."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = [(int(t.group(1), 16), a) for a, text in ins
             if (t := re.search(r"\bBRA\b[^;]*?0x([0-9a-f]+)", text)) and int(t.group(1), 16) <= a]
    return sum(1 for a, text in ins if re.search(r"\b(LDL|STL)\b", text) and any(lo <= a <= hi for lo, hi in loops))
