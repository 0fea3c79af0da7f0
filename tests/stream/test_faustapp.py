"""Pins the faust-streaming behaviour the worker relies on: inside ``take_events`` batches there
is no current event, so a plain table write fails (faust-streaming #497); writing through
``write_in_event_context`` works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import faust
import pytest
from faust.streams import Stream

from stream.faustapp import write_in_event_context


@pytest.fixture
async def app() -> AsyncIterator[faust.App]:
    test_app = faust.App("context-test", store="memory://", key_serializer="raw",
                         value_serializer="raw", web_enabled=False)  # fmt: skip
    test_app.finalize()
    test_app.flow_control.resume()
    yield test_app


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
