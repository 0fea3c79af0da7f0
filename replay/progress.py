"""Progress of a replay on a terminal: events sent, rate, event-time cursor, ETA (rich)."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from replay.select import iso

REFRESH_S = 0.1


class ProgressSink(Protocol):
    def start(self, total: int, planned_s: float | None) -> None: ...

    def update(self, sent: int, cursor_time: float) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int, planned_s: float | None) -> None:
        pass

    def update(self, sent: int, cursor_time: float) -> None:
        pass

    def stop(self) -> None:
        pass


class RichProgress:
    """A one-line rich progress bar; ETA follows the plan when paced, the rate at max speed."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.progress = Progress(
            TextColumn("[bold]replay"),
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("at {task.fields[cursor]}"),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self.task: TaskID | None = None
        self.started = 0.0
        self.total = 0
        self.planned_s: float | None = None
        self.last_update = 0.0

    def start(self, total: int, planned_s: float | None) -> None:
        self.total, self.planned_s = total, planned_s
        self.started = time.monotonic()
        self.progress.start()
        self.task = self.progress.add_task("replay", total=total, rate="-", cursor="-", eta="-")

    def update(self, sent: int, cursor_time: float) -> None:
        now = time.monotonic()
        if self.task is None or (now - self.last_update < REFRESH_S and sent < self.total):
            return  # paced replays call this for every event: redraw at most 10 times a second
        self.last_update = now
        elapsed = max(now - self.started, 1e-9)
        rate = sent / elapsed
        if self.planned_s is not None:
            remaining = max(self.planned_s - elapsed, 0.0)
        else:
            remaining = (self.total - sent) / rate if rate > 0 else 0.0
        self.progress.update(
            self.task,
            completed=sent,
            rate=f"{rate:,.0f} ev/s",
            cursor=iso(cursor_time)[:16].replace("T", " "),
            eta=_clock(remaining),
        )

    def stop(self) -> None:
        self.progress.stop()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def choose_progress(quiet: bool) -> ProgressSink:
    """Rich progress only on a terminal and when not ``--quiet``."""
    if quiet or not sys.stdout.isatty():
        return NoProgress()
    return RichProgress()
