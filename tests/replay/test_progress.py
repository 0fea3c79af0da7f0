"""Progress display: rich on a terminal, nothing with --quiet or without a TTY."""

from __future__ import annotations

import io

from rich.console import Console

from replay.progress import NoProgress, RichProgress, choose_progress


def test_rich_progress_shows_count_rate_cursor_and_eta() -> None:
    buffer = io.StringIO()
    progress = RichProgress(Console(file=buffer, force_terminal=True, width=140))
    progress.start(total=2_000, planned_s=None)
    progress.update(1_000, 970620734.0)  # throttled redraw: the final update always draws
    progress.update(2_000, 975628800.0)
    progress.stop()
    text = buffer.getvalue()
    assert "2000/2000" in text
    assert "ev/s" in text and "ETA 0:00:00" in text
    assert "at 2000-12-01 00:00" in text  # the event-time cursor


def test_quiet_or_no_terminal_means_no_progress() -> None:
    assert isinstance(choose_progress(quiet=True), NoProgress)
    assert isinstance(choose_progress(quiet=False), NoProgress)  # pytest captures stdout: no TTY
