"""Rendering `accounting.report()` for people: the concise summary (`ddq inspect`, and `ddq convert` after it
writes), the full per-tensor table (`ddq inspect --tensors`) and JSON that never fails.

Every figure comes from the report dict, so convert and inspect print the same numbers for the same file.
Any header the reader accepts must render: values are turned into short strings defensively (msgpack bin,
nested maps, non-finite floats), never assumed to be of the type the converter writes.
"""
from __future__ import annotations

import json
import math

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .accounting import json_safe
from .cli_common import tagged
from .spec import CONVERT_WARN_TENSOR_SHARE, KIND_COMPRESSED

SUMMARY_WIDTH = 80  # the default summary fits an 80-column terminal
LARGEST = 5  # tensors listed in the summary
VALUE_CHARS = 160  # a header value longer than this is cut in the summary (--json has it whole)


# -- values ----------------------------------------------------------------------------------------------
def short(v, limit: int = VALUE_CHARS) -> str:
    """One line for any header value."""
    if isinstance(v, dict) and set(v) == {"hex"} and isinstance(v["hex"], str):  # msgpack bin (accounting)
        v = bytes.fromhex(v["hex"]) if len(v["hex"]) % 2 == 0 else v["hex"].encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        s = f"<{len(b)} bytes: {b[:16].hex()}{'…' if len(b) > 16 else ''}>"
    elif isinstance(v, str):
        s = v
    elif isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, (dict, list, tuple)):
        s = json.dumps(json_safe(v), separators=(", ", ": "), allow_nan=False)
    else:
        s = str(v)
    s = s.replace("\n", " ").replace("\r", " ")
    return s if len(s) <= limit else s[:limit - 1] + "…"


def nbytes(n) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def ratio(r) -> str:
    if not isinstance(r, (int, float)) or isinstance(r, bool):
        return "-"
    if math.isinf(r):
        return "inf"
    return f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -- derived totals ----------------------------------------------------------------------------------------
def tensors_true_ratio(rep: dict):
    """All-tensor true ratio: every tensor's fp16 delta / every byte the tensors take, i.e. the file without
    its copied config/tokenizer files (DESIGN.md §3). The report's own figure when it has one."""
    tot = rep["totals"]
    if "tensors_true_ratio" in tot:
        return tot["tensors_true_ratio"]
    tensor_bytes = rep["file_bytes"] - tot["components"].get("files", 0)
    return tot["delta_fp16_bytes"] / tensor_bytes if tensor_bytes > 0 and tot["delta_fp16_bytes"] else None


def wider_than_fp16(t: dict) -> bool:
    """The tensor's data (buffers and scalars) takes more bytes than its fp16 delta: stored wider than fp16.
    Its header entry and alignment padding are left out here (they are in its true ratio): every small
    tensor has them, and a dense fp16 delta is the fp16 size, not a fault."""
    c = t["components"]
    return t["delta_fp16_bytes"] > 0 and t["stored_bytes"] - c["header"] - c["padding"] > t["delta_fp16_bytes"]


def below_one(rep: dict) -> list[dict]:
    """Tensors stored wider than their fp16 delta (wider_than_fp16), largest first."""
    return sorted((t for t in rep["tensors"] if wider_than_fp16(t)), key=lambda t: -t["stored_bytes"])


def dominant(rep: dict) -> dict | None:
    """The tensor taking more than CONVERT_WARN_TENSOR_SHARE of the file, if any."""
    if not rep["tensors"] or not rep["file_bytes"]:
        return None
    t = max(rep["tensors"], key=lambda t: t["stored_bytes"])
    return t if t["stored_bytes"] > CONVERT_WARN_TENSOR_SHARE * rep["file_bytes"] else None


# -- the summary -------------------------------------------------------------------------------------------
def _algorithm_lines(alg: dict) -> list[tuple[str, str]]:
    """(key, value) rows; the converter's usual fields first, in one line, then every other field."""
    if not isinstance(alg, dict) or not alg:
        return []
    rows, rest = [], dict(alg)
    main = [k for k in ("method", "encoding", "alpha", "bits", "parts", "group_size", "seed", "embeddings")
            if k in rest]
    if main:
        first = [short(rest.pop("method"))] if "method" in main else []
        first += [short(rest.pop("encoding"))] if "encoding" in main else []
        names = {"alpha": "alpha", "bits": "k", "parts": "m", "group_size": "h_g", "seed": "seed",
                 "embeddings": "embeddings"}
        first += [f"{names[k]}={short(rest.pop(k), 20)}" for k in main if k in rest]
        rows.append(("algorithm", " ".join(first)))
    if "nominal_ratio" in rest:
        rest.pop("nominal_ratio")  # shown in the size table
    gs = rest.pop("group_size_search", None)
    if gs is not None:
        rows.append(("h_g search", _search_line(gs)))
    configs, choice = rest.get("configs"), rest.get("choice")
    if isinstance(configs, list) and isinstance(choice, list) and all(
            type(i) is int and 0 <= i < len(configs) for i in choice):  # a planned conversion: choices per entry
        del rest["configs"], rest["choice"]
        counts = {i: choice.count(i) for i in sorted(set(choice), key=lambda i: -choice.count(i))}
        rows.append(("chosen", short("; ".join(f"{short(configs[i], 48)}: {n}" for i, n in counts.items()), 400)))
    if isinstance(rest.get("rescale"), dict):
        rows.append(("rescale", _rescale_line(rest.pop("rescale"))))
    for k, v in rest.items():
        rows.append((short(k, 20), short(v)))
    return rows


def _rescale_line(r: dict) -> str:
    """`c=0.002: dropout deltas x 1/(1 + c (alpha - 1)); weighted KL 0.957 -> 0.685 on 1024 calib tokens` when
    the record is what the converter writes; why it was skipped; the raw value otherwise."""
    if "skipped" in r:
        return "none: " + short(r["skipped"], 120)
    c, grid, tok = r.get("c"), r.get("grid"), r.get("tokens")
    if not _number(c):
        return short(r)
    line = f"c={short(c, 12)}"
    roles = r.get("roles")
    if isinstance(roles, dict) and roles and all(_number(v) for v in roles.values()):
        line += f" (per role, {len(roles)} roles: {min(roles.values()):g}-{max(roles.values()):g})"
    line += ": dropout deltas x 1/(1 + c (alpha - 1))"
    least = r.get("least") if _number(r.get("least")) else grid.get(f"{c:g}") if isinstance(grid, dict) else None
    if isinstance(grid, dict) and _number(grid.get("0")) and _number(least):
        line += f"; weighted KL {grid['0']:.4g} -> {least:.4g}"
        if _number(tok):
            line += f" on {short(tok, 10)} calib tokens"
    return line


def _search_line(gs) -> str:
    """`chosen 8 of 8, 16, ..., 576 (layer-0 attention proxy)` when the record is what the converter writes;
    the raw value otherwise."""
    if not isinstance(gs, dict):
        return short(gs)
    cands = gs.get("candidates")
    if gs.get("fallback"):
        return f"none: fixed h_g={short(gs.get('chosen'), 12)} ({short(gs.get('reason', ''), 40)})"
    if isinstance(cands, list) and cands and all(_number(c) for c in cands):
        listed = ", ".join(short(c, 8) for c in cands)
        if len(listed) > 36:
            listed = f"{short(cands[0], 8)}, {short(cands[1], 8)}, ..., {short(cands[-1], 8)}"
        tok = gs.get("tokens")
        return (f"chosen {short(gs.get('chosen'), 12)} of {listed}"
                + (f" ({short(tok, 8)} calib tokens)" if _number(tok) else ""))
    return short(gs)


def summary_rows(rep: dict) -> list[tuple[str, str]]:
    """(key, value) rows: what the file is, the base it is bound to, how it was made."""
    kinds = rep.get("kinds") or {}
    packed = rep.get("header_msgpack_bytes", rep["header_bytes"]) != rep["header_bytes"]
    header = (f"; header zlib-compressed, {nbytes(rep['header_bytes'])} of {nbytes(rep['header_msgpack_bytes'])}"
              if packed else "")
    rows = [("format", f".ddq {rep['format_version']}, {nbytes(rep['file_bytes'])} ({rep['file_bytes']:,} bytes)"
             + header),
            ("tensors", f"{len(rep['tensors'])}" + (": " + ", ".join(f"{v} {k}" for k, v in kinds.items())
                                                   if kinds else ""))]
    base = rep.get("base")
    if isinstance(base, dict) and base:
        known = {"name": "{}", "architecture": "{}", "model_type": "{}", "dtype": "{}", "num_tensors": "{} tensors",
                 "fingerprint_scheme": "fingerprints {}"}
        parts = [known[k].format(short(base[k], 40)) for k in known if base.get(k) is not None]
        parts += [f"{short(k, 20)}={short(v, 30)}" for k, v in base.items() if k not in known]
        rows.append(("base", ", ".join(parts)))
    elif base:
        rows.append(("base", short(base)))
    meta = rep.get("metadata")
    if isinstance(meta, dict):
        rows += [(short(k, 16), short(v)) for k, v in meta.items()]
    rows += _algorithm_lines(rep.get("algorithm"))
    files = rep.get("files") or []
    if files:
        names = ", ".join(f["name"] for f in files)
        rows.append(("files", f"{len(files)}, {nbytes(sum(f['bytes'] for f in files))}: {short(names, 120)}"))
    return rows


def summary_grid(rep: dict) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for k, v in summary_rows(rep):
        grid.add_row(Text(k), Text(v))  # header values are data, never markup
    return grid


def size_table(rep: dict) -> Table:
    """Nominal, true (compressed tensors), all-tensor and whole-file ratios, with what each counts."""
    tot = rep["totals"]
    comp = [t for t in rep["tensors"] if t["kind"] == KIND_COMPRESSED]
    t = Table(box=box.SIMPLE_HEAD, title="size", title_justify="left", pad_edge=False, show_edge=False)
    t.add_column("counts", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("ratio", justify="right", no_wrap=True)
    t.add_column("what the ratio counts", overflow="fold")
    if comp:
        t.add_row(f"compressed tensors ({len(comp)})", nbytes(tot["compressed_stored_bytes"]),
                  ratio(tot["compressed_true_ratio"]), "true: fp16 delta / bytes stored")
        t.add_row("", "", ratio(tot["nominal_ratio"]), "nominal: paper's 16a/(k-log2 m)")
    files = tot["components"].get("files", 0)
    t.add_row(f"all tensors ({len(rep['tensors'])})", nbytes(rep["file_bytes"] - files), ratio(tensors_true_ratio(rep)),
              "true: fp16 delta / tensor bytes")
    t.add_row("whole file", nbytes(rep["file_bytes"]), ratio(tot["true_ratio"]), "true: fp16 delta / file bytes")
    return t


def components_line(rep: dict) -> str:
    c = rep["totals"]["components"]
    idx = c.get("col_indices", 0) + c.get("row_offsets", 0)
    hdr = c.get("header", 0) + c.get("scalars", 0)
    return (f"bytes: values {nbytes(c.get('values', 0))}, indices {nbytes(idx)}, dense {nbytes(c.get('dense', 0))}, "
            f"padding {nbytes(c.get('padding', 0))}, header {nbytes(hdr)} (scalars {nbytes(c.get('scalars', 0))} "
            f"of it), files {nbytes(c.get('files', 0))}")


def largest_table(rep: dict, n: int = LARGEST) -> Table | None:
    if not rep["tensors"]:
        return None
    top = sorted(rep["tensors"], key=lambda t: -t["stored_bytes"])[:n]
    t = Table(box=box.SIMPLE_HEAD, title=f"largest tensors (of {len(rep['tensors'])}; --tensors lists all)",
              title_justify="left", pad_edge=False, show_edge=False)
    t.add_column("tensor", overflow="fold", ratio=1)
    t.add_column("stored as", no_wrap=True)
    t.add_column("bytes", justify="right", no_wrap=True)
    t.add_column("file", justify="right", no_wrap=True)
    t.add_column("true", justify="right", no_wrap=True)
    for x in top:
        share = x["stored_bytes"] / rep["file_bytes"] if rep["file_bytes"] else 0
        t.add_row(Text(x["name"]), Text(x["encoding"] or x["kind"]), nbytes(x["stored_bytes"]), f"{share:.1%}",
                  ratio(x["true_ratio"]))
    return t


def warnings(rep: dict) -> list[str]:
    """Warnings any file may earn (convert adds its own about the inputs)."""
    out = []
    big = dominant(rep)
    if big is not None:
        out.append(f"{big['name']} takes {big['stored_bytes'] / rep['file_bytes']:.0%} of the file "
                   f"({nbytes(big['stored_bytes'])}, {big['kind']}"
                   f"{', ' + big['encoding'] if big['encoding'] else ''}, true ratio {ratio(big['true_ratio'])})"
                   + ("; `--embeddings compressed` compresses it" if big["kind"] != KIND_COMPRESSED else ""))
    bad = below_one(rep)
    if bad:
        worst = bad[0]
        out.append(f"{len(bad)} tensor(s) take more bytes than their fp16 delta (data wider than fp16; "
                   f"{nbytes(sum(t['stored_bytes'] for t in bad))} in all), e.g. {worst['name']} "
                   f"{ratio(worst['true_ratio'])} ({worst['kind']}); `ddq inspect --tensors` marks them with !")
    return out


def print_summary(console: Console, rep: dict, *, title: str | None = None):
    """The concise view: what the file is, how it was made, its sizes and ratios, its largest tensors."""
    width = min(console.width, SUMMARY_WIDTH)
    console.print(title or str(rep["path"]), highlight=False, markup=False, width=width)
    console.print(summary_grid(rep), width=width)
    console.print()
    console.print(size_table(rep), width=width)
    console.print("true ratios count every byte: indices, scalars, padding, header; tensor bytes = the file "
                  "less its copied config/tokenizer files", highlight=False, width=width)
    console.print(components_line(rep), highlight=False, markup=False, width=width)
    top = largest_table(rep)
    if top is not None:
        console.print()
        console.print(top, width=width)
    for w in warnings(rep):
        console.print(tagged("warning:", "yellow", w), highlight=False, width=width)


# -- the full table -----------------------------------------------------------------------------------------
def tensor_table(rep: dict) -> Table:
    """Every tensor, with its bytes by component and both ratios; tensors stored wider than fp16 marked `!`."""
    t = Table(box=box.SIMPLE_HEAD, title="tensors (bytes in the file)", title_justify="left", pad_edge=False,
              show_edge=False)
    cols = [("tensor", "left"), ("kind", "left"), ("encoding", "left"), ("shape", "left"), ("values", "right"),
            ("indices", "right"), ("dense", "right"), ("pad", "right"), ("entry", "right"), ("stored", "right"),
            ("nominal", "right"), ("true", "right")]
    for name, justify in cols:
        t.add_column(name, justify=justify, no_wrap=True)
    for x in rep["tensors"]:
        c = x["components"]
        low = wider_than_fp16(x)
        t.add_row(Text(x["name"]), x["kind"], Text(x["encoding"] or "-"), "x".join(map(str, x["shape"])) or "scalar",
                  nbytes(c["values"]), nbytes(c["col_indices"] + c["row_offsets"]), nbytes(c["dense"]),
                  nbytes(c["padding"]), nbytes(c["header"] + c["scalars"]), nbytes(x["stored_bytes"]),
                  ratio(x["nominal_ratio"]), Text.assemble(("! ", "red") if low else "", ratio(x["true_ratio"])))
    return t


def print_tensor_table(console: Console, rep: dict):
    """At its natural width even on a narrow terminal (lines wrap; no figure is cut to `…`)."""
    table = tensor_table(rep)
    need = Console(width=10_000).measure(table).maximum
    console.print(table, width=max(console.width, need))
    console.print("entry: the tensor's header entry, its scalars included; ! marks data stored wider than its fp16 delta",
                  highlight=False)
