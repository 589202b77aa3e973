"""Progress for long steps, on a terminal and in logs.

On a terminal: a rich bar whose numbers never get squeezed (the description takes what is left). When output
goes to a file or a pipe (CI, nohup, notebooks): plain timestamped lines, one per task at a steady interval
and one when it ends, so a log is never silent for long and never holds one giant line. Both are rich
`Progress` objects (tasks tracked the same way; `disable=True` only hides the live display).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Column

LOG_INTERVAL_S = 10.0  # seconds between plain progress lines when output is not a terminal


def _clock(seconds) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def task_line(task) -> str:
    """One plain line for a rich Task: time, what is counted, count, percent, elapsed, ETA, description.
    A task may carry a field `what` (e.g. add_task(name, total=n, what="tensors")) naming its unit."""
    done, total = task.completed, task.total
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    if task.fields.get("step"):  # an uncounted step: only whether it is still running
        state = "done" if task.finished else "running"
        return f"{stamp} {state}, elapsed {_clock(task.elapsed)}: {task.description}"
    count = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
    pct = f" ({100 * done / total:.0f}%)" if total else ""
    eta = f", ETA {_clock(task.time_remaining)}" if total and not task.finished else ""
    what = task.fields.get("what")
    return f"{stamp} {what + ' ' if what else ''}{count}{pct}, elapsed {_clock(task.elapsed)}{eta}: {task.description}"


@contextmanager
def step(progress: Progress | None, description: str):
    """A long step that cannot be counted (loading a model, an evaluation): a pulsing bar on a terminal, a
    `running` line each interval in a log, so the log is never silent while it runs. None: no display."""
    if progress is None:
        yield
        return
    task = progress.add_task(description, total=None, step=True)
    try:
        yield
    finally:
        progress.update(task, total=1, completed=1)


class LogProgress(Progress):
    """A Progress that prints task_line() for every unfinished task each `interval` seconds, once when a task
    finishes, and once when it stops for every task not yet reported finished."""

    def __init__(self, *, console: Console, interval: float = LOG_INTERVAL_S):
        super().__init__(console=console, disable=True)
        self.interval = interval
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: set = set()  # tasks whose final line is printed

    def _emit(self, lines):
        for ln in lines:
            self.console.print(ln, markup=False, highlight=False, soft_wrap=True)

    def _print(self, only_unfinished: bool):
        lines = []
        with self._lock:  # the timer thread and update() must not both report a task's final line
            for task in self._tasks.values():
                if not task.visible or task.id in self._reported or (only_unfinished and task.finished):
                    continue
                if task.finished:
                    self._reported.add(task.id)
                lines.append(task_line(task))
        self._emit(lines)

    def update(self, task_id, **kwargs):
        super().update(task_id, **kwargs)
        self._report_if_finished(task_id)

    def advance(self, task_id, advance: float = 1):
        super().advance(task_id, advance)
        self._report_if_finished(task_id)

    def _report_if_finished(self, task_id):
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or not task.finished or not task.visible or task_id in self._reported:
                return
            self._reported.add(task_id)
            line = task_line(task)
        self._emit([line])

    def _run(self):
        while not self._stop_event.wait(self.interval):
            self._print(only_unfinished=True)

    def start(self):
        super().start()
        if self._thread is None:
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._run, name="ddq-progress", daemon=True)
            self._thread.start()

    def stop(self):
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join()
            self._thread = None
            self._print(only_unfinished=False)
        super().stop()


def make_progress(console: Console | None = None, *, enabled: bool = True, transient: bool = False,
                  interval: float = LOG_INTERVAL_S) -> Progress:
    """The progress display for `console` (default: stderr): a bar on a terminal, log lines otherwise,
    nothing at all when not enabled (tasks are still tracked)."""
    console = console or Console(stderr=True)
    if not enabled or console.quiet:
        return Progress(console=console, disable=True)
    if not console.is_terminal:
        return LogProgress(console=console, interval=interval)
    fixed = dict(no_wrap=True)
    return Progress(
        TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis",
                                                             min_width=8)),
        BarColumn(bar_width=20, table_column=Column(**fixed)),
        MofNCompleteColumn(table_column=Column(**fixed)),
        TimeElapsedColumn(table_column=Column(**fixed)),
        TextColumn("ETA", table_column=Column(**fixed)),
        TimeRemainingColumn(table_column=Column(**fixed)),
        console=console, transient=transient, expand=True)
