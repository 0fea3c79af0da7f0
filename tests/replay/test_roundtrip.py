"""Real broker round trips: every event once, in per-user order, end markers with exact counts."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from typer.testing import CliRunner

from replay.cli import app
from replay.datasets import InteractionLog
from replay.inject import InjectConfig
from replay.pacing import FakeClock, parse_speed, planned_offsets
from replay.partition import partition_for_user
from replay.producer import TopicMismatch, ensure_topic
from replay.run import ML1M, first_seen_items, load, prepare, replay_log
from replay.schema import EndOfStream, Interaction, decode, decode_item
from replay.synthetic import SyntheticConfig, generate

PARTITIONS = 4
SMALL = SyntheticConfig(users=60, items=90, events=3_000, topics=4, seed=5)


def consume(
    bootstrap: str,
    topic: str,
    partitions: int,
    expected: int | None = None,
    timeout_s: float = 30,
) -> dict[int, list[tuple[bytes | None, bytes]]]:
    """Manual assignment from the beginning. Stop once every partition delivered its end marker
    or, with ``expected``, once that many records arrived and one more poll brought nothing."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    received: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in range(partitions)}
    done: set[int] = set()
    count = 0
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            if expected is not None and count >= expected and not batch:
                break
            for tp, messages in batch.items():
                for message in messages:
                    received[tp.partition].append((message.key, message.value))
                    count += 1
                    if expected is None and isinstance(decode(message.value), EndOfStream):
                        done.add(tp.partition)
            if expected is None and len(done) == partitions:
                break
    finally:
        consumer.close()
    return received


def check_stream(
    log: InteractionLog, received: dict[int, list[tuple[bytes | None, bytes]]]
) -> None:
    """Every event exactly once, per-user order, one marker per partition (last), exact counts."""
    events: list[Interaction] = []
    for partition, records in received.items():
        decoded = [decode(value) for _, value in records]
        markers = [r for r in decoded if isinstance(r, EndOfStream)]
        assert len(markers) == 1 and decoded[-1] == markers[0], f"partition {partition}"
        mine = [r for r in decoded if isinstance(r, Interaction)]
        marker = markers[0]
        assert marker.partition == partition and marker.partitions == len(received)
        assert marker.total_events == log.events.height
        assert marker.partition_events == len(mine)
        for (key, _), record in zip(records, decoded, strict=True):
            if isinstance(record, Interaction):
                assert key == str(record.user).encode()
                assert partition_for_user(record.user, len(received)) == partition
        ids = [r.event_id for r in mine]
        assert ids == sorted(ids)  # partition order = global order, hence per-user order
        events.extend(mine)
    assert sorted(e.event_id for e in events) == list(range(log.events.height))
    by_id = {e.event_id: e for e in events}
    for event_id, user, item, time_s, cohort, shifted in log.events.select(
        "event_id", "user", "item", "time", "cohort", "shifted"
    ).iter_rows():
        event = by_id[event_id]
        assert (event.user, event.item, event.time, event.cohort, event.shifted) == (
            user,
            item,
            time_s,
            cohort,
            shifted,
        )
        assert event.dataset == log.name


@pytest.mark.integration
def test_replay_round_trip_with_markers_and_items(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    log = generate(SMALL)
    topic, items_topic = unique_name("interactions"), unique_name("items")
    result = replay_log(
        log, kafka_bootstrap, topic=topic, partitions=PARTITIONS, items_topic=items_topic
    )
    assert result.sent == log.events.height and result.end_markers_sent
    assert not result.interrupted and result.next_event_id == log.events.height
    assert sum(result.partition_events) == log.events.height
    check_stream(log, consume(kafka_bootstrap, topic, PARTITIONS))

    items = consume(kafka_bootstrap, items_topic, 1, expected=result.items_published)[0]
    decoded = [decode_item(value) for _, value in items]
    assert decoded == first_seen_items(log)
    assert all(key == str(r.item).encode() for (key, _), r in zip(items, decoded, strict=True))
    first_ids = [r.first_event_id for r in decoded]
    assert first_ids == sorted(first_ids) and first_ids[0] == 0


class InterruptAt:
    """A progress sink that presses Ctrl-C at its first update (after 1,024 events)."""

    def start(self, total: int, planned_s: float | None) -> None:
        pass

    def update(self, sent: int, cursor_time: float) -> None:
        raise KeyboardInterrupt

    def stop(self) -> None:
        pass


@pytest.mark.integration
def test_ctrl_c_flushes_and_from_event_resumes(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    log = generate(SMALL)
    topic = unique_name("interactions")
    first = replay_log(
        log,
        kafka_bootstrap,
        topic=topic,
        partitions=PARTITIONS,
        items_topic=None,
        progress=InterruptAt(),
    )
    assert first.interrupted and not first.end_markers_sent
    assert first.sent == first.next_event_id == 1024
    flushed = consume(kafka_bootstrap, topic, PARTITIONS, expected=1024)
    assert sum(len(records) for records in flushed.values()) == 1024  # all flushed, no markers
    second = replay_log(
        log,
        kafka_bootstrap,
        topic=topic,
        partitions=PARTITIONS,
        items_topic=None,
        from_event=first.next_event_id,
    )
    assert second.sent == log.events.height - 1024 and second.end_markers_sent
    check_stream(log, consume(kafka_bootstrap, topic, PARTITIONS))


@pytest.mark.integration
def test_paced_replay_uses_the_injected_clock_and_topic_mismatch_is_refused(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    log = generate(SMALL)
    topic = unique_name("interactions")
    clock = FakeClock()
    speed = parse_speed("100000x")
    result = replay_log(
        log,
        kafka_bootstrap,
        topic=topic,
        partitions=PARTITIONS,
        items_topic=None,
        speed=speed,
        max_gap_s=5.0,
        clock=clock,
    )
    offsets = planned_offsets(log.events["time"].to_numpy(), speed, 5.0)
    assert result.planned_s == pytest.approx(offsets[-1])
    assert sum(clock.sleeps) == pytest.approx(offsets[-1], abs=0.011)  # nothing really slept
    assert max(clock.sleeps) <= 5.0
    check_stream(log, consume(kafka_bootstrap, topic, PARTITIONS))
    with pytest.raises(TopicMismatch, match=f"already exists with {PARTITIONS} partitions"):
        ensure_topic(kafka_bootstrap, topic, 2)


@pytest.mark.integration
def test_cli_replays_to_a_real_broker(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique_name("interactions")
    description = tmp_path / "run" / "stream.json"
    result = CliRunner().invoke(
        app,
        [
            "synthetic",
            "--users",
            "30",
            "--items",
            "40",
            "--events",
            "500",
            "--seed",
            "2",
            "--bootstrap",
            kafka_bootstrap,
            "--topic",
            topic,
            "--items-topic",
            unique_name("items"),
            "--partitions",
            "2",
            "--quiet",
            "--describe",
            str(description),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sent 500 events" in result.stdout
    document = json.loads(description.read_text())
    assert document["result"]["sent"] == 500 and document["config"]["partitions"] == 2
    truth = Path(document["ground_truth"])
    assert truth.parent == description.parent and truth.is_file()
    log = generate(SyntheticConfig(users=30, items=40, events=500, seed=2))
    check_stream(log, consume(kafka_bootstrap, topic, 2))


def end_offsets(bootstrap: str, topic: str, partitions: int) -> int:
    """Sum of the partitions' end offsets (Tansu's can lag: used only to see the first record)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        offsets = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(offsets.values())
    finally:
        consumer.close()


@pytest.mark.integration
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_stops_cleanly_and_the_printed_resume_point_completes_the_stream(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path, signum: int
) -> None:
    topic = unique_name("interactions")
    args = [
        "synthetic",
        "--users",
        "60",
        "--items",
        "90",
        "--events",
        "3000",
        "--seed",
        "5",
        "--topics",
        "4",
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--items-topic",
        "",
        "--quiet",
        "--describe",
        str(tmp_path / "s.json"),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "replay", *args, "--speed", "500000x"],  # a ~30 s plan
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if end_offsets(kafka_bootstrap, topic, PARTITIONS) > 0:
                    break
            except Exception:  # topic not created yet
                pass
            time.sleep(0.2)  # polling the broker for the first record, bounded by the deadline
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 130, stderr
    match = re.search(r"resume with --from-event (\d+)", stderr)
    assert match, stderr
    resume = int(match.group(1))
    assert 0 < resume < 3000
    flushed = consume(kafka_bootstrap, topic, PARTITIONS, expected=resume)
    assert sum(len(records) for records in flushed.values()) == resume  # all flushed, no more
    result = CliRunner().invoke(app, [*args, "--from-event", str(resume)])
    assert result.exit_code == 0, result.output
    log = generate(SyntheticConfig(users=60, items=90, events=3000, seed=5, topics=4))
    check_stream(log, consume(kafka_bootstrap, topic, PARTITIONS))


@pytest.mark.integration
def test_real_subset_with_injection_round_trips_with_its_flags(
    kafka_bootstrap: str, unique_name: Callable[[str], str], ml1m_subset_dir: Path
) -> None:
    log = prepare(
        load(ML1M(data_dir=ml1m_subset_dir)),
        InjectConfig(kind="genre-swap", at="0.005", cohort_frac=0.5, seed=1),  # t* ~ event 2,438
        limit=5_000,
    )
    assert log.events["shifted"].sum() > 0
    topic = unique_name("interactions")
    result = replay_log(log, kafka_bootstrap, topic=topic, partitions=3, items_topic=None)
    assert result.sent == 5_000 and result.end_markers_sent
    check_stream(log, consume(kafka_bootstrap, topic, 3))
