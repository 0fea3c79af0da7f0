"""``freeze_start_up_heap``: what a process has loaded leaves the collector's passes, and
start-up garbage is collected rather than kept."""

from __future__ import annotations

import gc
import weakref

from stream.processes import freeze_start_up_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_freeze_collects_start_up_garbage_then_keeps_the_rest_out_of_the_passes() -> None:
    loaded = [_Node() for _ in range(100)]  # what a process keeps: models, modules, the app
    cycle = _Node()
    cycle.other = _Node()
    cycle.other.other = cycle  # unreachable once dropped: start-up garbage
    dropped = weakref.ref(cycle)
    del cycle
    try:
        freeze_start_up_heap()
        assert dropped() is None  # collected, not frozen
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(node) in tracked for node in loaded)
        assert gc.get_freeze_count() >= len(loaded)
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
    tracked = {id(o) for o in gc.get_objects()}
    assert all(id(node) in tracked for node in loaded)
