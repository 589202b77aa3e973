"""Progress for long steps, on a terminal and in logs.

On a terminal: a rich bar whose numbers never get squeezed (the description takes what is left). When output
goes to a file or a pipe (CI, nohup, notebooks): plain timestamped lines, one per task at a steady interval
and one when it ends, so a log is never silent for long and never holds one giant line. Both are rich
`Progress` objects (tasks tracked the same way; `disable=True` only hides the live display).
"""
from __future__ import annotations

import threading
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
    count = f"{done:g}/{total:g}" if total is not None else f"{done:g}"
    pct = f" ({100 * done / total:.0f}%)" if total else ""
    eta = f", ETA {_clock(task.time_remaining)}" if total and not task.finished else ""
    what = task.fields.get("what")
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} {what + ' ' if what else ''}{count}{pct}, elapsed {_clock(task.elapsed)}{eta}: {task.description}"


class LogProgress(Progress):
    """A Progress that prints task_line() for every unfinished task each `interval` seconds, and once more
    for every task when it stops."""

    def __init__(self, *, console: Console, interval: float = LOG_INTERVAL_S):
        super().__init__(console=console, disable=True)
        self.interval = interval
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    def _print(self, only_unfinished: bool):
        for task in list(self.tasks):
            if task.visible and not (only_unfinished and task.finished):
                self.console.print(task_line(task), markup=False, highlight=False, soft_wrap=True)

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
