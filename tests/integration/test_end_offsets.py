"""End offsets read from the log on the real broker (``stream.faustapp.topic_end_offsets``,
through ``log_end_offsets``, which the worker's table recovery uses): the embedded broker
reports the end of a partition as the first offset of its last record batch + 1, so recovery
must not trust it (docs/streaming.md, "Recovery reads to the true end of the changelog")."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from stream.faustapp import topic_end_offsets

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

    # the broker reports 6 and 1 on Tansu (8 and 1 on Apache Kafka); the log holds 8 and 1
    assert topic_end_offsets(kafka_bootstrap, topic) == {0: 8, 1: 1}
