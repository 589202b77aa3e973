"""`ddq repack`: the same entries, buffers and files in another container major version (1.x <-> 2.0).

Every buffer is copied byte for byte (checksums verified as it is read) and every entry keeps its keys, so the
new file decodes to exactly the same arrays; only the header's storage and the version label change (SPEC.md
§2: 2.0 is 1.3 with a zlib-compressed header). The way to hand a 2.0 file to a runtime that reads 1.x only.
"""
from __future__ import annotations

from pathlib import Path

from .encodings import Encoded
from .errors import EncodingError
from .reader import DDQFile
from .writer import Writer

ENTRY_KEYS = ("name", "kind", "shape", "dtype", "encoding", "params", "buffers", "base", "tied_to")


def repack(src, out, major: int) -> Path:
    """Write `src`'s contents to `out` as format `major` (the writer labels the minor). An entry whose encoding
    this library does not know (a newer minor) is refused: its checks cannot be run."""
    with DDQFile(src) as f:
        if f.unsupported:
            name = sorted(f.unsupported)[0]
            raise EncodingError(f"encoding {f.entries[name]['encoding']!r} is newer than this library; it "
                                f"cannot be checked or repacked", path=f.path, tensor=name, field="encoding")
        h = f.header
        with Writer(out, metadata=h.get("metadata"), base=h.get("base"), algorithm=h.get("algorithm"),
                    major=major) as w:
            # files interleaved with the entries by offset: a file the reference wrote comes back byte for byte
            files = sorted(h.get("files", []), key=lambda r: r["offset"])
            for e in h["tensors"]:
                first = min((b["offset"] for b in e.get("buffers", {}).values()), default=None)
                while files and first is not None and files[0]["offset"] < first:
                    w.add_file(files[0]["name"], f.file(files.pop(0)["name"]))
                enc = None
                if e.get("buffers"):
                    enc = Encoded(e["encoding"], e.get("params", {}),
                                  {role: (b["dtype"], f.buffer(e["name"], role)) for role, b in e["buffers"].items()})
                extra = {k: v for k, v in e.items() if k not in ENTRY_KEYS}  # keys of a later minor: kept
                w.add(e["name"], e["kind"], e["shape"], e["dtype"], enc, base=e.get("base"),
                      tied_to=e.get("tied_to"), extra=extra)
            for r in files:
                w.add_file(r["name"], f.file(r["name"]))
    return Path(out)
