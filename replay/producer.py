"""Kafka side of the replay: topics, the producer, and what it sends.

- ``interactions`` (name configurable): created if missing with the configured partition count;
  an existing topic with another count is an error (the worker's tables must match it). Records:
  key = ``schema.user_key(user)``, value = ``schema.encode(Interaction)``, sent with an explicit
  partition from ``replay.partition.partition_for_user`` (= Kafka's default murmur2 partitioner),
  Kafka record timestamp = wall clock (event time is in the payload). After the last event, one
  ``EndOfStream`` per partition (key ``None``, explicit partition).
- ``items`` (name configurable): one partition, ``cleanup.policy=compact``, key = item id, value =
  ``schema.encode_item(ItemFirstSeen)``: each item's first event id and time in the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.errors import KafkaError, TopicAlreadyExistsError

from replay.schema import EndOfStream, ItemFirstSeen, encode, encode_item, item_key

ADMIN_TIMEOUT_MS = 15_000


class TopicMismatch(RuntimeError):
    """The topic exists with a partition count other than the one asked for."""


class PublishError(RuntimeError):
    """The broker rejected or never acknowledged some records."""


@dataclass(frozen=True)
class ProducerSettings:
    """kafka-python producer settings used by the replayer (and by the benchmark's bare loop)."""

    acks: str = "all"
    linger_ms: int = 5
    batch_size: int = 256 * 1024
    max_block_ms: int = 30_000
    request_timeout_ms: int = 30_000
    compression_type: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def make_producer(bootstrap: str, settings: ProducerSettings | None = None) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="shiftstream-replay",
        **(settings or ProducerSettings()).kwargs(),
    )


def topic_partitions(admin: KafkaAdminClient, topic: str) -> int | None:
    """Partition count of ``topic``, or ``None`` when it does not exist."""
    for description in admin.describe_topics([topic]):
        if description.get("name") == topic and description.get("error_code", 0) == 0:
            return len(description.get("partitions") or [])
    return None


def ensure_topic(
    bootstrap: str, topic: str, partitions: int, configs: dict[str, str] | None = None
) -> bool:
    """Create ``topic`` with ``partitions`` if missing; return whether it was created.

    Raises ``TopicMismatch`` when it exists with another partition count.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="shiftstream-replay-admin",
        request_timeout_ms=ADMIN_TIMEOUT_MS,
    )
    try:
        existing = topic_partitions(admin, topic)
        created = False
        if existing is None:
            request = {
                topic: {
                    "num_partitions": partitions,
                    "replication_factor": 1,
                    "configs": configs or {},
                }
            }
            try:
                admin.create_topics(request, timeout_ms=ADMIN_TIMEOUT_MS, wait_for_metadata=True)
                created = True
            except TopicAlreadyExistsError:  # created by someone else meanwhile
                pass
            existing = topic_partitions(admin, topic)
        if existing != partitions:
            raise TopicMismatch(
                f"topic {topic!r} already exists with {existing} partitions, but --partitions is "
                f"{partitions}; the worker's state must match the topic, so use --partitions "
                f"{existing}, another --topic, or delete the topic first"
            )
        return created
    except KafkaError as error:
        raise PublishError(f"could not create or inspect topic {topic!r}: {error}") from error
    finally:
        admin.close()


class FailureCounter:
    """Errback target: counts records the broker did not acknowledge, keeps the first error."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None

    def __call__(self, error: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = error

    def check(self, what: str) -> None:
        if self.count:
            raise PublishError(f"{self.count} {what} were not acknowledged: {self.first!r}")


def publish_items(
    producer: KafkaProducer, topic: str, records: Iterable[ItemFirstSeen], timeout_s: float = 60.0
) -> int:
    """Send the items' first-seen records and wait for them; returns how many were sent."""
    failures = FailureCounter()
    count = 0
    for record in records:
        future = producer.send(topic, key=item_key(record.item), value=encode_item(record))
        future.add_errback(failures)
        count += 1
    producer.flush(timeout=timeout_s)
    failures.check("item records")
    return count


def send_end_markers(
    producer: KafkaProducer,
    topic: str,
    partition_events: list[int],
    total_events: int,
    timeout_s: float = 60.0,
) -> None:
    """One ``EndOfStream`` to every partition (explicit partition), then flush."""
    failures = FailureCounter()
    partitions = len(partition_events)
    for partition, count in enumerate(partition_events):
        marker = EndOfStream(
            partition=partition,
            partitions=partitions,
            total_events=total_events,
            partition_events=count,
        )
        future = producer.send(topic, key=None, value=encode(marker), partition=partition)
        future.add_errback(failures)
    producer.flush(timeout=timeout_s)
    failures.check("end-of-stream markers")
