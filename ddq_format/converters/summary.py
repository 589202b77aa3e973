"""Last stage of a conversion: the Summary it returns and the table it prints."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..spec import ALIGNMENT, align_up


@dataclass
class Summary:
    out: str
    method: str
    alpha: int
    bits: int
    parts: int
    encoding: str
    group_size: int | None
    group_size_search: dict | None
    nominal_ratio: float
    true_ratio_compressed: float
    true_ratio_file: float
    compressed_fp16_bytes: int
    compressed_stored_bytes: int
    file_bytes: int
    kinds: dict = field(default_factory=dict)
    seconds: float = 0.0
    search_seconds: float = 0.0
    resumed_tensors: int = 0
    seed_trials: int = 1
    seed_search_seconds: float = 0.0  # calibration forward pass (trials themselves run inside the tensor work)
    settings: str = ""  # planned conversions: what was chosen, in words (alpha, k, ... are per tensor there)

    def as_dict(self):
        return asdict(self)


def stored_bytes(entry: dict, alignment: int = ALIGNMENT) -> int:
    return sum(align_up(b["length"], alignment) for b in entry.get("buffers", {}).values())


def print_summary(console, s: Summary):
    from rich.table import Table
    t = Table(title=f"ddq convert -> {s.out}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("method", f"{s.method} ({s.settings})" if s.settings else
              f"{s.method} (alpha={s.alpha}, k={s.bits}, m={s.parts}, {s.encoding})"
              if s.method == "deltadq" else f"{s.method} (alpha={s.alpha})")
    t.add_row("group size h_g", "n/a" if s.group_size is None else str(s.group_size))
    t.add_row("nominal ratio", "n/a" if math.isnan(s.nominal_ratio) else f"{s.nominal_ratio:.1f}x")
    t.add_row("true ratio, compressed tensors", f"{s.true_ratio_compressed:.2f}x "
              f"({s.compressed_fp16_bytes:,} fp16 bytes -> {s.compressed_stored_bytes:,} bytes)")
    t.add_row("true ratio, whole file", f"{s.true_ratio_file:.2f}x ({s.file_bytes:,} bytes)")
    t.add_row("tensors", ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items())))
    t.add_row("time", f"{s.seconds:.2f} s (group-size search {s.search_seconds:.2f} s)"
              + (f", resumed after {s.resumed_tensors} tensors" if s.resumed_tensors else "")
              + (f", seed search x{s.seed_trials} (calibration {s.seed_search_seconds:.2f} s)"
                 if s.seed_trials > 1 else ""))
    console.print(t)
