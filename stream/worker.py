"""The worker's synchronous core and the global-view reader; no Faust here.

``WorkerCore.process`` runs in the agent's dedicated executor thread: it decodes the stored user
snapshots it does not hold yet, waits until the global view is complete through the batch,
calls the pure ``prequential_batch`` and encodes the touched users' new snapshots and the
prediction records (one per event), so the event loop only sends bytes.

Decoded snapshots stay in ``WorkerCore`` (on the model device: on a GPU the users' states stay
resident there) keyed by user, each with the exact bytes it was decoded from or encoded to. A
cached snapshot is used only while the table still holds those very bytes; after a restart,
a rebalance or another worker's write the bytes differ and the snapshot is decoded again.
``IN_FLIGHT`` in place of the bytes means "the snapshot you made last": the agent hands a batch
over before the previous batch's table writes are done (see ``stream.faustapp``).

``ViewReader`` fills a ``GlobalView`` from every partition of the interactions topic with a
group-less kafka-python consumer in a daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from replay.schema import EndOfStream, Interaction, MalformedRecord, decode, user_key
from stream.globalview import GlobalView
from stream.prequential import ScoringOptions, prequential_batch
from stream.records import encode_events
from stream.runners import ModelSpec, Runner, SeqRecRunner, load_runner, resolve_device
from stream.settings import Settings
from stream.userstate import UserSnapshot, decode_snapshot, encode_snapshot

log = logging.getLogger(__name__)


IN_FLIGHT = b""  # stored value: the snapshot this core made last (its table write is pending)


class ViewTimeout(RuntimeError):
    """The global view did not catch up with a batch in time."""


@dataclass
class BatchOutput:
    blobs: dict[bytes, bytes]  # table key -> new snapshot bytes
    records: list[tuple[bytes, bytes]]  # (key, value) for ``predictions``, one per event
    redelivered: list[int] = field(default_factory=list)
    compute_s: float = 0.0
    wait_s: float = 0.0


def build_runners(settings: Settings) -> list[Runner]:
    device = resolve_device(settings.device)
    dtype = torch.float64 if settings.dtype == "float64" else torch.float32
    runners = []
    for entry in settings.models:
        spec = ModelSpec.parse(entry)
        checkpoint = settings.checkpoint_for(spec.base) if spec.stateful else None
        runners.append(load_runner(spec, checkpoint, dtype=dtype, device=device))
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is configured twice: {names}")
    return runners


def build_view(settings: Settings) -> GlobalView:
    window = settings.popularity_window_s or None
    return GlobalView(refresh_s=settings.popularity_refresh_s, window_s=window)


def build_core(settings: Settings) -> tuple[WorkerCore, GlobalView]:
    """The configured models (checkpoints loaded) around an empty global view."""
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    view = build_view(settings)
    options = ScoringOptions(settings.candidates, settings.exclude_seen)  # type: ignore[arg-type]
    core = WorkerCore(build_runners(settings), view, options, settings.view_timeout_s)
    return core, view


class WorkerCore:
    def __init__(
        self,
        runners: Sequence[Runner],
        view: GlobalView,
        options: ScoringOptions,
        view_timeout_s: float = 120.0,
        clock_ms: Callable[[], float] = lambda: time.time() * 1000.0,
    ) -> None:
        self.runners = list(runners)
        self.stateful = {r.name: r for r in runners if isinstance(r, SeqRecRunner)}
        self.view = view
        self.options = options
        self.view_timeout_s = view_timeout_s
        self.clock_ms = clock_ms
        self._cache: dict[int, tuple[bytes, UserSnapshot]] = {}

    def snapshot(self, user: int, stored: bytes | None) -> UserSnapshot | None:
        cached = self._cache.get(user)
        if stored == IN_FLIGHT:
            if cached is None:
                raise RuntimeError(f"user {user}: told to follow a snapshot this core never made")
            return cached[1]
        if stored is None:
            self._cache.pop(user, None)
            return None
        if cached is not None and cached[0] == stored:
            return cached[1]
        snapshot = decode_snapshot(stored, self.stateful)
        self._cache[user] = (stored, snapshot)
        return snapshot

    def process(
        self,
        events: Sequence[Interaction],
        stored: Mapping[int, bytes | None],
        produced_ms: Mapping[int, float] | None = None,
        batch_size: int | None = None,
    ) -> BatchOutput:
        started = time.perf_counter()
        snapshots = {}
        for user, blob in stored.items():
            snapshot = self.snapshot(user, blob)
            if snapshot is not None:
                snapshots[user] = snapshot
        waited = 0.0
        if events:
            needed = max(e.event_id for e in events) - 1
            wait_started = time.perf_counter()
            if not self.view.wait_complete_through(needed, self.view_timeout_s):
                raise ViewTimeout(
                    f"global view complete through {self.view.complete_through()} only, "
                    f"batch needs {needed}: is every partition of the interactions topic "
                    f"readable, and did the replayer finish with end-of-stream markers?"
                )
            waited = time.perf_counter() - wait_started
        result = prequential_batch(
            events, snapshots, self.runners, self.view, self.options, produced_ms, self.clock_ms,
            batch_size,
        )  # fmt: skip
        blobs = {}
        for user, snapshot in result.snapshots.items():
            blob = encode_snapshot(snapshot, self.stateful)
            self._cache[user] = (blob, snapshot)
            blobs[user_key(user)] = blob
        return BatchOutput(
            blobs=blobs,
            records=encode_events(result.predictions),
            redelivered=result.redelivered,
            compute_s=time.perf_counter() - started - waited,
            wait_s=waited,
        )

    def forget(self, users: Iterable[int]) -> None:
        """Drop the decoded snapshots of users another core now serves."""
        for user in users:
            self._cache.pop(user, None)

    def users_resident(self) -> int:
        return len(self._cache)


class ViewReader:
    """Reads every partition of the interactions topic into a ``GlobalView`` (daemon thread)."""

    def __init__(
        self, bootstrap: str, topic: str, view: GlobalView, start_timeout_s: float = 60.0
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.view = view
        self.start_timeout_s = start_timeout_s
        self.malformed = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="global-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.is_alive() or self._thread.ident is not None

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        try:
            self._consume()
        except BaseException as error:  # reported through .error and the log
            self.error = error
            log.exception("global view reader failed")

    def _consume(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_bytes=16 * 1024 * 1024,
            max_poll_records=10_000,
        )
        try:
            deadline = time.monotonic() + self.start_timeout_s
            partitions = consumer.partitions_for_topic(self.topic)
            while not partitions:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise TimeoutError(f"topic {self.topic!r} did not appear")
                time.sleep(0.2)
                consumer.topics(exclude_internal_topics=True)  # refresh metadata
                partitions = consumer.partitions_for_topic(self.topic)
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            self.view.set_partitions(len(assigned))
            while not self._stop.is_set():
                for tp, messages in consumer.poll(timeout_ms=200).items():
                    self._observe(tp.partition, [message.value for message in messages])
        finally:
            consumer.close()

    def _observe(self, partition: int, values: Sequence[bytes | None]) -> None:
        """One poll's records of a partition, in offset order."""
        event_ids: list[int] = []
        items: list[int] = []
        times: list[float] = []
        ended = False
        for value in values:
            try:
                record = decode(value)
            except MalformedRecord:
                self.malformed += 1  # the agent dead-letters it; here it is simply not an event
                continue
            if isinstance(record, EndOfStream):
                ended = True
            else:
                event_ids.append(record.event_id)
                items.append(record.item)
                times.append(record.time)
        self.view.observe_many(partition, event_ids, items, times)
        if ended:
            self.view.end_partition(partition)
