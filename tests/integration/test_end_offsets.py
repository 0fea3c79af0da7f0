"""End offsets read from the log (``stream.faustapp.log_end_offsets``) on the real broker: the
embedded broker reports the end of a partition as the first offset of its last record batch
+ 1, so a worker's table recovery must not trust it (docs/streaming.md, "Recovery reads to the
true end of the changelog")."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from faust.types import TP
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from stream.faustapp import log_end_offsets

pytestmark = pytest.mark.integration


def test_end_offsets_come_from_the_records_not_the_broker_report(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("ends")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=200)
    for batch in (5, 3):  # two record batches in partition 0: offsets 0-4 and 5-7
        for i in range(batch):
            producer.send(topic, key=b"k", value=b"%d" % i, partition=0)
        producer.flush(timeout=30)
    producer.send(topic, key=b"k", value=b"only", partition=1)
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    reported = consumer.end_offsets(partitions)  # Tansu: 6 and 1; Apache Kafka: 8 and 1
    consumer.close()
    by_tp = {TP(tp.topic, tp.partition): end for tp, end in reported.items()}

    ends = asyncio.run(log_end_offsets(kafka_bootstrap, by_tp))

    assert ends == {TP(topic, 0): 8, TP(topic, 1): 1}, f"broker reported {reported}"
