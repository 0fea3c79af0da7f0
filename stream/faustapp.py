"""The Faust application: topics, the per-user state table, and the thin evaluation agent.

``stream.app`` builds one from ``Settings.load()`` so that ``faust -A stream.app worker`` works;
``create_app`` is the factory. The agent takes micro-batches (``take_events``), decodes them and
hands the model work (``WorkerCore.process``) over: queued to the child processes by default
(``stream.modelproc``), whose outputs a dedicated single-thread executor collects in order, or
run in that executor itself (``model_processes = 0``). It does not wait for the result: while
the models work on one batch, Faust assembles the next (``PIPELINE_DEPTH`` batches at most
between hand-over and completion). Each batch then completes after the one before it, in this
order:

1. its prediction records are sent (one per event, every model's result in it) and the agent
   waits for the broker's acknowledgements;
2. every touched user's snapshot (bytes) is written to the table, inside the current-event
   context of one of that user's events (faust-streaming #497 workaround, see
   ``write_in_event_context``);
3. its end-of-stream markers are forwarded (one per model) to ``predictions``;
4. its events are acked. ``take_events`` acks them when the agent body returns, which is
   before they are done, so the agent holds one more reference to each message
   (``Message.incref``, the count Faust keeps for several streams reading one message) and
   drops it here; only then may Faust commit their offsets. Faust flushes its producer
   (changelog included) before committing, and waits for every delivered message to be acked
   before a rebalance.

A batch handed over while an earlier one still has snapshot writes pending gets ``IN_FLIGHT``
for those users instead of the table's (stale) bytes: the core continues from the snapshot it
made last. A crash anywhere before the commit redelivers the batch: users whose snapshot was
written skip the events (``last_event_id``), the others recompute identical predictions from
the previous snapshot, and the sink drops duplicates by (event id, model). So the predictions
are written before the state: an outbox is not needed. Any unexpected error ends the worker
process (exit 70) rather than letting Faust restart the agent past unacked events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, cast

import faust
from faust.streams import Stream, _current_event
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, AppT, EventT
from faust.utils.terminal.spinners import SpinnerHandler

from replay.schema import EndOfStream, Interaction, MalformedRecord, decode, user_key
from stream.bootstrap import resolve_bootstrap
from stream.modelproc import ModelShards
from stream.processes import freeze_start_up_heap
from stream.records import (
    Prediction,
    PredictionEnd,
    encode_dead_letter,
    encode_end,
    encode_events,
    prediction_key,
)
from stream.settings import Settings
from stream.worker import IN_FLIGHT, BatchOutput, ViewReader, WorkerCore, build_core

log = logging.getLogger(__name__)
PASSTHROUGH_MODEL = "passthrough"
PIPELINE_DEPTH = 2  # micro-batches between hand-over to the models and completion
CRASH_EXIT_CODE = 70


def write_in_event_context(table: Any, event: EventT, key: bytes, value: bytes) -> None:
    """``table[key] = value`` as if ``event`` were the stream's current event.

    Tables take the changelog partition from Faust's current-event context variable, which
    ``take_events`` batches do not set (faust-streaming #497). Setting it to one of the user's
    events puts the write on that event's partition, the same one the user's key maps to.
    Relies on ``faust.streams._current_event`` (private; covered by tests/stream/test_faustapp.py).
    """
    token = _current_event.set(weakref.ref(event))
    try:
        table[key] = value
    finally:
        _current_event.reset(token)


class SeekBeforeFetchRecovery(Recovery):
    """Faust's recovery, except that no stream record is fetched before the seek to committed.

    After reading the changelogs, ``Recovery.on_recovery_completed`` resumes the stream
    partitions while the fetch loop is running, then awaits the seek to the committed offsets,
    then resumes flow control, which clears the stream queues. Records fetched from the old
    position in between reach the queue, advance the consumer's read offsets and are cleared;
    the same offsets fetched again after the seek fall below the read offset and are dropped,
    and the jump is booked as an acknowledged gap, so the commit skips them (faust-streaming
    #216, seen here as a restarted worker that never predicted ~70 events per partition).
    Stopping the consumer's flow first holds every fetch until the seek is done; the base
    method's ``resume_flow`` restarts it.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)

    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """Faust's highwaters (end offset - 1: the last record recovery waits for), checked
        against the log itself (``log_end_offsets``): the embedded broker reports end offsets
        short of the last records of a multi-record batch, and recovery then ended before
        applying them, leaving those users' newest snapshots in a buffer (a restarted worker
        continued from older ones)."""
        await super()._build_highwaters(consumer, tps, destination, title)
        reported = {tp: destination[tp] + 1 for tp in tps if tp in destination}
        ends = await log_end_offsets(broker_address(self.app), reported)
        for tp, end in ends.items():
            destination[tp] = end - 1  # assigned: Counter.update would add


def topic_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> end offset of ``topic``, read from its records (``log_end_offsets``);
    empty when the topic does not exist. For synchronous callers (benchmarks, tests)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        reported = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        consumer.close()
    by_tp = {TP(tp.topic, tp.partition): end for tp, end in reported.items()}
    ends = asyncio.run(log_end_offsets(bootstrap, by_tp))
    return {tp.partition: end for tp, end in ends.items()}


def broker_address(app: AppT) -> str:
    """host:port of the app's first broker URL."""
    url = app.conf.broker[0]
    return f"{url.host}:{url.port}"


async def log_end_offsets(
    bootstrap: str, reported: Mapping[TP, int], timeout_s: float = 10.0
) -> dict[TP, int]:
    """The end offset (last offset + 1) of each partition, read from its records.

    Tansu, the embedded broker, answers ListOffsets(latest) with the first offset of the
    partition's last record batch + 1: 6 for a partition holding a batch of 5 records and then
    a batch of 3 (Apache Kafka: 8). Reading from one before the reported end fetches that last
    batch whole; the consumer's position after it is the true end. ``reported`` are the ends
    the broker gave; a partition whose log does not answer within ``timeout_s`` keeps its own.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    ends = dict(reported)
    tails = {TopicPartition(tp.topic, tp.partition): tp for tp, end in reported.items() if end > 0}
    if not tails:
        return ends
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(tails))
        for kafka_tp, tp in tails.items():
            consumer.seek(kafka_tp, reported[tp] - 1)
        waiting = set(tails)  # no record received yet: the position says nothing so far
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            fetched = await consumer.getmany(timeout_ms=200)
            waiting -= {kafka_tp for kafka_tp, records in fetched.items() if records}
            if not waiting and not any(fetched.values()):
                break  # every partition read, and nothing more came
        for kafka_tp, tp in tails.items():
            if kafka_tp not in waiting:
                ends[tp] = max(reported[tp], await consumer.position(kafka_tp))
    finally:
        await consumer.stop()
    return ends


class SeekBeforeFetchTableManager(TableManager):
    """Faust's table manager with ``SeekBeforeFetchRecovery``."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekBeforeFetchRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


def existing_partitions(bootstrap: str, topic: str, timeout_s: float = 5.0) -> int | None:
    """Partition count of ``topic`` if it exists (None if not, or no broker answered)."""
    try:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000) + 1000
        )
    except Exception:
        return None
    try:
        partitions = consumer.partitions_for_topic(topic)
        return len(partitions) if partitions else None
    finally:
        consumer.close()


class OffsetGaps:
    """Offsets of a partition that never reached the agent within one consumer generation.

    Within a generation a partition's records arrive in offset order from the committed offset
    on, and the interactions topic has no compaction or transaction markers, so a jump means
    records were lost on the way (the recovery race above was one way). Faust commits such a
    jump as if it were acknowledged, so the loss would otherwise be silent. A new generation
    starts afresh: it begins at the committed offset, which may lie before or after.
    """

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], tuple[int | None, int]] = {}
        self.missing = 0

    def observe(self, topic: str, partition: int, generation: int | None, offset: int) -> int:
        """Record one delivered offset; return how many offsets before it were skipped."""
        key = (topic, partition)
        previous = self._next.get(key)
        skipped = 0
        if previous is not None and previous[0] == generation and offset > previous[1]:
            skipped = offset - previous[1]
            log.error(
                "offsets %d..%d of %s[%d] never reached the agent (generation %s)",
                previous[1], offset - 1, topic, partition, generation,
            )  # fmt: skip
            self.missing += skipped
        if previous is None or previous[0] != generation or offset >= previous[1]:
            self._next[key] = (generation, offset + 1)
        return skipped


class EvaluationAgent:
    """Everything the agent does per micro-batch (the async glue around ``WorkerCore``)."""

    def __init__(self, app: faust.App, settings: Settings, table: Any) -> None:
        self.app = app
        self.settings = settings
        self.table = table
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.core: WorkerCore | ModelShards | None = None
        self.model_names: list[str] = [PASSTHROUGH_MODEL]
        self.dead_letters = 0
        self.events = 0
        self.view_reader: ViewReader | None = None
        self.offset_gaps = OffsetGaps()
        # the pipeline: a batch is handed to the models while the one before it completes
        self.in_flight = asyncio.Semaphore(PIPELINE_DEPTH)
        self.completion: asyncio.Future[None] | None = None  # of the last batch handed over
        self.pending_writes: dict[int, int] = {}  # user -> handed-over batches not yet written

    def load_models(self, bootstrap: str) -> None:
        """Load checkpoints (before the worker starts, so a bad checkpoint fails fast): in
        child processes (``model_processes``, users sharded among them) or in this one."""
        if self.settings.passthrough:
            return
        processes = self.settings.model_process_count()
        if processes > 0:
            shards = ModelShards(self.settings, bootstrap, processes)
            self.core, self.model_names = shards, shards.model_names
            return
        core, view = build_core(self.settings)
        self.core, self.model_names = core, [r.name for r in core.runners]
        self.view_reader = ViewReader(bootstrap, self.settings.interactions_topic, view)

    def start_view(self) -> None:
        if isinstance(self.core, ModelShards):
            self.core.start_view()
        elif self.view_reader is not None and not self.view_reader.started:
            self.view_reader.start()

    async def handle(self, batch: Sequence[EventT]) -> None:
        try:
            self.start_view()
            await self._handle(batch)
        except Exception:
            _exit_for_redelivery()

    async def _handle(self, batch: Sequence[EventT]) -> None:
        interactions: list[Interaction] = []
        produced_ms: dict[int, float] = {}
        last_event_of: dict[int, EventT] = {}
        ends: list[EndOfStream] = []
        for event in batch:
            message = event.message
            self.offset_gaps.observe(
                message.topic, message.partition, message.generation_id, message.offset
            )
            try:
                record = decode(event.value)
            except MalformedRecord as error:
                await self._dead_letter(event, str(error))
                continue
            if isinstance(record, EndOfStream):
                ends.append(record)
                continue
            interactions.append(record)
            produced_ms[record.event_id] = float(message.timestamp) * 1000.0
            last_event_of[record.user] = event
        self.events += len(interactions)
        if self.core is None:
            predictions = [_passthrough(e, produced_ms, len(batch)) for e in interactions]
            await self._send_all(encode_events(predictions))
            await self._send_markers(ends)
            return
        await self.in_flight.acquire()
        for event in batch:
            event.message.incref()  # take_events' ack leaves it unacked; _complete acks it
        stored = {
            user: IN_FLIGHT if user in self.pending_writes else self.table.get(user_key(user))
            for user in last_event_of
        }
        for user in last_event_of:
            self.pending_writes[user] = self.pending_writes.get(user, 0) + 1
        loop = asyncio.get_running_loop()
        if isinstance(self.core, ModelShards):  # queued now, collected in order by the executor
            busy = self.core.submit(interactions, stored, produced_ms)
            output = loop.run_in_executor(self.executor, self.core.collect, busy)
        else:
            output = loop.run_in_executor(
                self.executor, self.core.process, interactions, stored, produced_ms
            )
        self.completion = asyncio.ensure_future(
            self._complete(self.completion, output, batch, last_event_of, ends)
        )

    async def _complete(
        self,
        previous: asyncio.Future[None] | None,
        output_future: asyncio.Future[BatchOutput],
        batch: Sequence[EventT],
        last_event_of: dict[int, EventT],
        ends: list[EndOfStream],
    ) -> None:
        """Finish a batch after the one before it: send its predictions and wait for their
        acknowledgements, write its users' snapshots, forward its end markers, then ack its
        events so that Faust may commit them."""
        try:
            if previous is not None:
                await previous
            output = await output_future
            await self._send_all(output.records)
            for user, event in last_event_of.items():
                key = user_key(user)
                if key in output.blobs:
                    write_in_event_context(self.table, event, key, output.blobs[key])
                if self.pending_writes[user] == 1:
                    del self.pending_writes[user]
                else:
                    self.pending_writes[user] -= 1
            await self._send_markers(ends)
            for event in batch:
                event.ack()
        except Exception:
            _exit_for_redelivery()
        finally:
            self.in_flight.release()

    async def _send_markers(self, ends: Sequence[EndOfStream]) -> None:
        markers = [
            PredictionEnd(
                model, end.partition, end.partitions, end.total_events, end.partition_events
            )
            for end in ends
            for model in self.model_names
        ]
        if markers:
            await self._send_all([(prediction_key(m), encode_end(m)) for m in markers])

    async def _send_all(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        producer = self.app.producer
        topic = self.settings.predictions_topic
        pending = [
            await producer.send(topic, key, value, None, None, None) for key, value in records
        ]
        if pending:
            await asyncio.gather(*pending)

    async def _dead_letter(self, event: EventT, reason: str) -> None:
        self.dead_letters += 1
        message = event.message
        log.warning(
            "dead letter #%d from %s[%d]@%d: %s",
            self.dead_letters, message.topic, message.partition, message.offset, reason,
        )  # fmt: skip
        value = message.value if isinstance(message.value, bytes) else None
        payload = encode_dead_letter(
            value, reason, message.topic, message.partition, message.offset
        )
        sent = await self.app.producer.send(
            self.settings.dead_letter_topic, message.key, payload, None, None, None
        )
        await sent


def drop_start_up_spinner_logging(root: logging.Logger | None = None) -> None:
    """Undo what Faust's start-up spinner does to logging. With a level of WARN or above, the
    worker turns the spinner once per log record: it adds a DEBUG handler to the root logger,
    lowers the root level to DEBUG and leaves both there after start-up. Every ``log.debug``
    in aiokafka and Faust then builds a record that no other handler prints (one per record
    sent): 5-8 % of the worker's CPU at full speed. The root level goes back to the lowest
    level the other handlers pass, which is the ``-l`` level."""
    logger = logging.getLogger() if root is None else root
    spinners = [h for h in logger.handlers if isinstance(h, SpinnerHandler)]
    for handler in spinners:
        logger.removeHandler(handler)
    levels = [h.level for h in logger.handlers]
    if spinners and levels and min(levels) > logging.NOTSET:
        logger.setLevel(min(levels))


def _exit_for_redelivery() -> NoReturn:
    """End the worker on an unexpected error (inside ``except``): Faust would otherwise restart
    the agent past the batch's unacked events."""
    log.exception("evaluation failed; exiting so the batch is redelivered")
    logging.shutdown()
    os._exit(CRASH_EXIT_CODE)


def _passthrough(event: Interaction, produced_ms: dict[int, float], batch_size: int) -> Prediction:
    return Prediction(
        event_id=event.event_id,
        user=event.user,
        item=event.item,
        time=event.time,
        model=PASSTHROUGH_MODEL,
        rank=None,
        n_candidates=0,
        produced_ms=produced_ms.get(event.event_id),
        batch_size=batch_size,
    )


def create_app(settings: Settings) -> faust.App:
    bootstrap = resolve_bootstrap(settings.bootstrap or None)
    partitions = existing_partitions(bootstrap, settings.interactions_topic) or settings.partitions
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=partitions,
        topic_replication_factor=1,
        table_standby_replicas=0,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # quick group joins (kafka-notes.md), but a member is not dropped while it is busy:
        # with a short max poll interval a worker whose stream buffer is full stops polling,
        # is removed from the group and Faust can stall after the rejoin (seen under load)
        broker_rebalance_timeout=5.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(1.0, settings.session_timeout_s / 3),
        # Faust stops fetching while its stream buffer is full; a slow model pass over a full
        # buffer must not count as a dead consumer (heartbeats and the session cover liveness)
        broker_max_poll_interval=3600.0,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4_096,
        web_enabled=False,
        TableManager=SeekBeforeFetchTableManager,
        key_serializer="raw",
        value_serializer="raw",
    )
    interactions = app.topic(
        settings.interactions_topic, key_type=bytes, value_type=bytes, partitions=partitions
    )
    app.topic(settings.predictions_topic, key_type=bytes, value_type=bytes, partitions=partitions)
    app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes, partitions=1)
    table = app.Table(
        "user-states", key_type=bytes, value_type=bytes, partitions=partitions, default=None
    )
    agent = EvaluationAgent(app, settings, table)
    agent.load_models(bootstrap)
    app.evaluation = agent  # type: ignore[attr-defined]

    @app.task
    async def _on_start() -> None:
        drop_start_up_spinner_logging()
        freeze_start_up_heap()  # the app and the models (in-thread core) are loaded by now
        agent.start_view()  # the reader starts reading while the group is still joining

    @app.agent(interactions, name="evaluate")
    async def evaluate(stream: faust.StreamT[bytes]) -> None:
        within = settings.max_wait_ms / 1000.0
        batches = cast(Stream[bytes], stream).take_events(settings.batch_size, within=within)
        async for batch in batches:
            await agent.handle(batch)

    return app
