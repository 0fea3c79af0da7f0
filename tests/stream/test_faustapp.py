"""Pins the faust-streaming behaviour the worker relies on or works around: inside
``take_events`` batches there is no current event, so a plain table write fails
(faust-streaming #497) and ``write_in_event_context`` works; the worker's recovery seeks the
stream partitions before any of their records is fetched (faust-streaming #216); one more
reference to a message keeps it unacked past ``take_events`` until the agent drops it (the
pipelined agent's deferred ack)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from typing import cast

import faust
import pytest
from faust.streams import Stream
from faust.types import TP, EventT

from stream.faustapp import (
    OffsetGaps,
    SeekBeforeFetchRecovery,
    SeekBeforeFetchTableManager,
    drop_start_up_spinner_logging,
    write_in_event_context,
)


@pytest.fixture
async def app() -> AsyncIterator[faust.App]:
    test_app = faust.App("context-test", store="memory://", key_serializer="raw",
                         value_serializer="raw", web_enabled=False)  # fmt: skip
    test_app.finalize()
    test_app.flow_control.resume()
    yield test_app
    gc.collect()  # collect the agent's leftovers while their event loop is still open


async def test_table_writes_in_take_events_need_the_event_context(app: faust.App) -> None:
    table = app.Table("counts", key_type=bytes, value_type=bytes, partitions=4, default=None)
    topic = app.topic("source", key_type=bytes, value_type=bytes, partitions=4)
    failures: list[str] = []

    @app.agent(topic)
    async def count(stream: faust.StreamT[bytes]) -> AsyncIterator[bytes]:
        async for batch in cast(Stream[bytes], stream).take_events(8, within=0.05):
            for event in batch:
                key = cast(bytes, event.key)
                try:
                    table[key] = b"plain"
                except TypeError as error:
                    failures.append(str(error))
                previous = table.get(key)
                total = 1 if previous in (None, b"plain") else int(previous) + 1
                write_in_event_context(table, event, key, str(total).encode())
                yield key

    async with count.test_context() as agent:
        for i, key in enumerate([b"a", b"b", b"c", b"a", b"b", b"a", b"c", b"a"]):
            await agent.put(b"x", key=key, partition=i % 4)
    assert failures and "outside of stream iteration" in failures[0]
    assert {k: table[k] for k in (b"a", b"b", b"c")} == {b"a": b"4", b"b": b"2", b"c": b"2"}


async def test_an_extra_message_reference_holds_back_the_take_events_ack(app: faust.App) -> None:
    topic = app.topic("held", key_type=bytes, value_type=bytes, partitions=1)
    held: list[EventT] = []
    seen_by_next_batch: list[bool] = []  # acked, as the next batch finds them
    after_release: list[bool] = []

    @app.agent(topic)
    async def hold(stream: faust.StreamT[bytes]) -> AsyncIterator[int]:
        async for batch in cast(Stream[bytes], stream).take_events(4, within=0.05):
            seen_by_next_batch.extend(event.message.acked for event in held)
            for event in held:
                event.ack()  # what the agent's completion does
            after_release.extend(event.message.acked for event in held)
            held[:] = batch
            for event in batch:
                # ``agent.put`` bypasses the conductor, which takes one reference per stream
                # reading the topic; take that one here, then the agent's own
                event.message.incref()
                event.message.incref()
            yield len(batch)

    async with hold.test_context() as agent:
        for _ in range(8):
            await agent.put(b"x", key=b"k", partition=0)
    # every batch but the last was looked at again by the next one
    assert len(seen_by_next_batch) == len(after_release) >= 4
    assert not any(seen_by_next_batch)  # take_events has returned them: still unacked
    assert all(after_release)


class RecordingConsumer:
    """Records the order of the calls ``Recovery.on_recovery_completed`` makes, and whether the
    consumer's flow (its fetch loop) was running at each."""

    def __init__(self, assignment: set[TP]) -> None:
        self._assignment = assignment
        self.flow_active = True
        self.calls: list[tuple[str, bool]] = []

    def assignment(self) -> set[TP]:
        return self._assignment

    def stop_flow(self) -> None:
        self.flow_active = False

    def resume_flow(self) -> None:
        self.calls.append(("resume_flow", self.flow_active))
        self.flow_active = True

    def resume_partitions(self, tps: set[TP]) -> None:
        self.calls.append(("resume_partitions", self.flow_active))

    async def perform_seek(self) -> None:
        self.calls.append(("perform_seek", self.flow_active))

    async def maybe_start(self) -> None:  # the app's fetcher: records fetched from here on
        self.calls.append(("fetcher.maybe_start", self.flow_active))


async def test_recovery_fetches_no_stream_record_before_the_seek_to_committed() -> None:
    """faust-streaming #216: with the flow running, records fetched between resuming the stream
    partitions and the seek are dropped and their offsets committed (a restarted worker lost
    ~70 events per partition). The worker's recovery stops the flow first."""
    app = faust.App("recovery-test", store="memory://", web_enabled=False,
                    TableManager=SeekBeforeFetchTableManager)  # fmt: skip
    app.finalize()
    recovery = cast(SeekBeforeFetchTableManager, app.tables).recovery
    assert isinstance(recovery, SeekBeforeFetchRecovery)
    consumer = RecordingConsumer({TP("interactions", 0), TP("interactions", 1)})
    app._consumer = consumer  # type: ignore[assignment]
    app.__dict__["_fetcher"] = consumer  # a cached property

    await recovery.on_recovery_completed(app.consumer_generation_id)

    assert consumer.calls == [
        ("resume_partitions", False),
        ("perform_seek", False),
        ("resume_flow", False),
        ("fetcher.maybe_start", True),
    ]
    assert consumer.flow_active


def test_offset_gaps_counts_offsets_skipped_within_a_generation() -> None:
    gaps = OffsetGaps()
    assert [gaps.observe("in", 0, 1, offset) for offset in (5, 6, 7)] == [0, 0, 0]
    assert gaps.observe("in", 1, 1, 40) == 0  # partitions are tracked apart
    assert gaps.observe("in", 0, 1, 10) == 2  # 8 and 9 never arrived
    assert gaps.observe("in", 0, 1, 9) == 0  # a seek back within the generation: re-read
    assert gaps.observe("in", 0, 1, 11) == 0  # expected next is still 11
    assert gaps.observe("in", 0, 2, 30) == 0  # a new generation starts at its committed offset
    assert gaps.observe("in", 0, 2, 32) == 1
    assert gaps.missing == 3


def test_the_start_up_spinner_no_longer_enables_debug_records(app: faust.App) -> None:
    # a stand-in root logger, configured as `faust ... -l warn worker` configures the real one
    root = logging.Logger("stand-in-root")
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    root.addHandler(console)
    worker = faust.Worker(app, loglevel="warn")
    worker.on_setup_root_logger(root, logging.WARNING)
    assert root.isEnabledFor(logging.DEBUG)  # what Faust leaves behind: a record per debug call

    drop_start_up_spinner_logging(root)

    assert root.handlers == [console]
    assert root.level == logging.WARNING and not root.isEnabledFor(logging.INFO)
