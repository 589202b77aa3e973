"""Progress in logs (issue 14 item 5): plain timestamped lines when output is not a terminal; a bar whose
numbers are never truncated on a narrow terminal."""
import io
import re
import time

from rich.console import Console

from ddq_format.progress import LogProgress, make_progress


def test_log_lines_at_a_steady_interval_and_at_the_end():
    buf = io.StringIO()
    with make_progress(Console(file=buf, width=80), interval=0.05) as bar:
        assert isinstance(bar, LogProgress)
        job = bar.add_task("start", total=4, what="tensors")
        for i in range(4):
            time.sleep(0.06)
            bar.update(job, advance=1, description=f"model.layers.{i}.mlp.down_proj.weight")
    lines = buf.getvalue().splitlines()
    assert len(lines) >= 3  # some while running, one at the end
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert all(re.match(stamp + r" tensors \d+/4 \(\d+%\), elapsed ", ln) for ln in lines), lines
    assert lines[-1].endswith("4/4 (100%), elapsed 0:00:00: model.layers.3.mlp.down_proj.weight") or \
        re.search(r"tensors 4/4 \(100%\), elapsed \d:\d\d:\d\d: model.layers.3.mlp.down_proj.weight$", lines[-1])
    assert all(len(ln) < 200 for ln in lines)


def test_disabled_prints_nothing_but_tracks():
    buf = io.StringIO()
    with make_progress(Console(file=buf), enabled=False) as bar:
        job = bar.add_task("x", total=2)
        bar.update(job, advance=2)
        assert bar.tasks[0].finished
    assert buf.getvalue() == ""


def test_terminal_bar_keeps_its_numbers_at_80_columns():
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None)
    with make_progress(console) as bar:
        job = bar.add_task("model.layers.10.self_attn.q_proj.weight_with_a_long_suffix", total=272, what="tensors")
        bar.update(job, advance=100)
        bar.refresh()
    last = [ln for ln in buf.getvalue().replace("\r", "\n").splitlines() if "/272" in ln][-1]
    assert "100/272" in last and "ETA" in last and "…" in last
