"""The embedded broker: a real Kafka-compatible server, exercised with kafka-python."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from stream.bootstrap import (
    BrokerUnreachable,
    ensure_reachable,
    resolve_bootstrap,
)
from stream.broker import BrokerStartError, EmbeddedBroker, free_port

N_RECORDS = 1_000


@pytest.mark.integration
def test_thousand_keyed_records_round_trip_through_a_consumer_group(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    topic, group = unique_name("roundtrip"), unique_name("group")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    sent: dict[bytes, list[int]] = {f"user-{i % 37}".encode(): [] for i in range(N_RECORDS)}
    for i in range(N_RECORDS):
        key = f"user-{i % 37}".encode()
        producer.send(topic, key=key, value=str(i).encode())
        sent[key].append(i)
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        max_poll_interval_ms=5000,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        consumer_timeout_ms=30_000,
    )
    received: dict[bytes, list[int]] = {key: [] for key in sent}
    count = 0
    for message in consumer:
        received[message.key].append(int(message.value))
        count += 1
        if count == N_RECORDS:
            break
    consumer.commit()
    consumer.close()

    assert count == N_RECORDS
    assert received == sent  # every record once, and each key's records in send order


def test_taken_port_gives_a_clear_error_naming_the_port() -> None:
    port = free_port()
    with EmbeddedBroker(port=port) as bootstrap:
        assert bootstrap == f"127.0.0.1:{port}"
        with pytest.raises(BrokerStartError, match=f"port {port} .* already in use"):
            EmbeddedBroker(port=port).start()


def test_cli_prints_bootstrap_line_when_ready_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stream.broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == f"bootstrap=127.0.0.1:{port}"
        ensure_reachable(line.removeprefix("bootstrap="), timeout_s=5)
        process.terminate()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    with pytest.raises(BrokerUnreachable):
        ensure_reachable(f"127.0.0.1:{port}", timeout_s=0.5)


def test_cli_exits_nonzero_on_taken_port() -> None:
    port = free_port()
    with EmbeddedBroker(port=port):
        result = subprocess.run(
            [sys.executable, "-m", "stream.broker", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert f"port {port}" in result.stderr and "already in use" in result.stderr


def test_bootstrap_resolution_order() -> None:
    env = {"KAFKA_BOOTSTRAP": "envhost:1234"}
    assert resolve_bootstrap("flag:1", env) == "flag:1"
    assert resolve_bootstrap(None, env) == "envhost:1234"
    assert resolve_bootstrap(None, {}) == "127.0.0.1:9092"
    assert resolve_bootstrap("  ", {}) == "127.0.0.1:9092"


def test_unreachable_broker_fails_fast_with_a_hint() -> None:
    fake_now = [0.0]

    def clock() -> float:
        return fake_now[0]

    def sleep(seconds: float) -> None:
        fake_now[0] += seconds

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnreachable, match=address) as raised:
        ensure_reachable(address, timeout_s=3, clock=clock, sleep=sleep)
    assert "python -m stream.broker" in str(raised.value)
