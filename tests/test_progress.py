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


def test_a_finished_task_is_reported_once_when_it_finishes():
    buf = io.StringIO()
    with make_progress(Console(file=buf, width=80), interval=60) as bar:
        job = bar.add_task("convert", total=2, what="tensors")
        bar.update(job, advance=2)
        assert "tensors 2/2 (100%)" in buf.getvalue()  # at once, not only when the display stops
    assert buf.getvalue().count("tensors 2/2 (100%)") == 1


def test_uncounted_step_prints_running_lines_then_done():
    from ddq_format.progress import step
    buf = io.StringIO()
    with make_progress(Console(file=buf, width=80), interval=0.05) as bar:
        with step(bar, "loading the base from GGUF"):
            time.sleep(0.18)
    lines = buf.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    running = [ln for ln in lines if re.match(stamp + r" running, elapsed \d:\d\d:\d\d: loading the base", ln)]
    assert len(running) >= 2, lines
    assert re.match(stamp + r" done, elapsed \d:\d\d:\d\d: loading the base from GGUF$", lines[-1]), lines
    assert sum("done" in ln for ln in lines) == 1


def test_step_without_a_display_is_a_no_op():
    from ddq_format.progress import step
    with step(None, "x"):
        pass
