"""`ddq inspect` and `ddq verify` on crafted headers (issue 12 faults 4 and 5): any file the reader accepts
renders; any it refuses is one `error:` line. Never a traceback, whatever the header holds."""
from __future__ import annotations

import copy
import json
import math

import pytest
from typer.testing import CliRunner

from ddq_testing import assemble, split_file
from ddq_format import DDQFile
from ddq_format.cli import app
from ddq_format.errors import DDQError

runner = CliRunner()


def _entry(header, name):
    return next(e for e in header["tensors"] if e["name"] == name)


def _bin_params(h):
    _entry(h, "b.seeded")["params"]["note"] = b"\x00\xff"


def _bin_algorithm(h):
    h["algorithm"] = {"alpha": 4, "blob": b"\x01\x02", "nested": {"x": [b"\x03", {"y": b""}]}}


def _search_non_numeric_errors(h):
    h["algorithm"] = {"method": "deltadq", "group_size_search": {"candidates": [8, 16], "errors": ["a", None],
                                                                 "chosen": 8}}


def _search_int_candidates(h):
    h["algorithm"] = {"group_size_search": {"candidates": 5, "errors": 3.5, "chosen": b"z"}}


def _search_not_a_map(h):
    h["algorithm"] = {"group_size_search": [1, 2, 3]}


def _bin_base(h):
    h["base"] = {"architecture": b"\x00\x01", "fingerprint_scheme": 5, "name": {"a": 1}}


def _bin_metadata(h):
    h["metadata"] = {"producer": b"\xff" * 40, "note": ["x" * 500, 1.5]}


def _markup_in_values(h):
    """Header strings are data: rich markup in them must print as is (an unmatched `[/x]` would raise)."""
    h["metadata"] = {"note": "[/bold] [link=x]y[/link] [red]"}
    h["base"] = {"architecture": "[/]", "name": "a[b]c"}
    h["algorithm"] = {"[/k]": "[/v]", "group_size_search": {"proxy": "[/p]"}}


def _markup_in_encoding(h):
    """Refused (unknown encoding in a 1.0 file); the error line quotes it, markup and all."""
    _entry(h, "a.csr")["encoding"] = "[/enc]"


def _non_finite(h):
    h["algorithm"] = {"nominal_ratio": math.nan, "alpha": math.inf, "x": -math.inf}


def _algorithm_not_a_map(h):
    h["algorithm"] = ["deltadq", 8]


def _huge_value(h):
    h["metadata"] = {"long": "y" * 200_000}


def _same_buffers_nil(h):
    _entry(h, "e.same")["buffers"] = None


def _removed_buffers_nil(h):
    _entry(h, "g.removed")["buffers"] = None


CASES = [_bin_params, _bin_algorithm, _search_non_numeric_errors, _search_int_candidates, _search_not_a_map,
         _bin_base, _bin_metadata, _markup_in_values, _markup_in_encoding,
         _non_finite, _algorithm_not_a_map, _huge_value, _same_buffers_nil,
         _removed_buffers_nil]


@pytest.fixture(params=CASES, ids=lambda f: f.__name__.strip("_"))
def crafted(request, sample_file, tmp_path):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    request.param(header)
    p = tmp_path / "crafted.ddq"
    p.write_bytes(assemble(header, data))
    try:
        with DDQFile(p):
            accepted = True
    except DDQError:
        accepted = False
    return p, accepted


def _clean(res, codes):
    """Exit code in `codes`; no traceback; a refusal is exactly one `error:` line."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in codes, res.output
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr


@pytest.mark.parametrize("args", [[], ["--tensors"]], ids=["summary", "tensors"])
def test_inspect_renders_or_refuses(crafted, args):
    path, accepted = crafted
    res = runner.invoke(app, ["inspect", str(path), *args])
    _clean(res, (0, 2))
    if not accepted:
        assert res.exit_code == 2


def test_inspect_json_is_valid_json(crafted):
    path, accepted = crafted
    res = runner.invoke(app, ["inspect", str(path), "--json"])
    _clean(res, (0, 2))
    if res.exit_code == 0:
        rep = json.loads(res.stdout)  # strict JSON: no NaN/Infinity literals, no bytes
        assert rep["file_bytes"] == path.stat().st_size
        json.dumps(rep, allow_nan=False)


def test_verify_finishes_with_a_summary(crafted):
    path, _ = crafted
    res = runner.invoke(app, ["verify", str(path)])
    _clean(res, (0, 1, 2))
    if res.exit_code in (0, 1):
        assert res.stdout.strip().startswith(("OK", "FAILED")), res.output


def test_markup_in_header_values_prints_verbatim(sample_file, tmp_path):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    h = copy.deepcopy(header)
    h["metadata"] = {"note": "[/bold] [red]x"}
    h["base"] = {"name": "a[/]b"}
    p = tmp_path / "m.ddq"
    p.write_bytes(assemble(h, data))
    res = runner.invoke(app, ["inspect", str(p)])
    assert res.exit_code == 0, res.output
    assert "[/bold] [red]x" in res.stdout and "a[/]b" in res.stdout


def test_inspect_bin_values_become_hex_in_json(sample_file, tmp_path):
    header, data = split_file(sample_file)
    header = copy.deepcopy(header)
    _bin_algorithm(header)
    p = tmp_path / "b.ddq"
    p.write_bytes(assemble(header, data))
    res = runner.invoke(app, ["inspect", str(p), "--json"])
    assert res.exit_code == 0, res.output
    alg = json.loads(res.stdout)["algorithm"]
    assert alg["blob"] == {"hex": "0102"} and alg["nested"] == {"x": [{"hex": "03"}, {"y": {"hex": ""}}]}
    summary = runner.invoke(app, ["inspect", str(p)])
    assert summary.exit_code == 0 and "<2 bytes: 0102>" in summary.stdout
