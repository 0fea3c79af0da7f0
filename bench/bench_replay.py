"""Replayer benchmark: throughput at --speed max vs a bare kafka-python loop, and pacing accuracy.

    nice -n 10 python bench/bench_replay.py                       # embedded Tansu broker
    nice -n 10 python bench/bench_replay.py --bootstrap HOST:PORT  # an existing broker

1. Throughput: the same events (ML-1M subset, first --events) are sent (a) by ``replay_log`` at
   ``--speed max`` and (b) by a bare loop over pre-encoded (key, value, partition) tuples with the
   same ``ProducerSettings``, as ``--repeats`` back-to-back pairs (the order alternates), each run
   into a fresh topic with the same partition count. Rate = events / (first send -> flush done).
   Ratio = median over pairs of bare time / replay time (robust to load drifting on a shared
   machine). Because wall-clock rates on a shared 2-core machine swing by 2x between runs, the
   process CPU time per event (main + kafka-python sender thread) is reported as well: its
   bare/replay ratio is the same comparison without the other tenants' noise. Target: >= 0.8.
2. Pacing: a real-clock replay whose plan is ``--pacing-seconds`` long (speed chosen so that the
   first --pacing-events events span that plan); error = (measured - planned) / planned.
   Target: |error| <= 2 %.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from replay.datasets import InteractionLog, load_ml1m_dir
from replay.pacing import SystemClock, parse_speed, planned_seconds
from replay.producer import ProducerSettings, ensure_topic, make_producer
from replay.run import partition_counts, replay_log
from replay.schema import Interaction, encode, user_key
from replay.select import select_events
from replay.synthetic import SyntheticConfig, generate
from stream.broker import EmbeddedBroker

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m-subset"


@contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker(port=0) as address:
        yield address


def load_events(data_dir: Path, events: int) -> InteractionLog:
    if (data_dir / "ratings.dat").is_file():
        log = load_ml1m_dir(data_dir)
    else:
        log = generate(SyntheticConfig(users=3_000, items=3_600, events=max(events, 3_000)))
    return select_events(log, limit=events)


def bare_loop(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]], settings: ProducerSettings
) -> tuple[float, float]:
    """(wall, process CPU) seconds to send pre-encoded records and flush: the floor any replayer
    can reach with this client."""
    producer = make_producer(bootstrap, settings)
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        send = producer.send
        for key, value, partition in records:
            send(topic, key=key, value=value, partition=partition)
        producer.flush()
        return time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        producer.close(timeout=30)


def run_bare(
    bootstrap: str,
    partitions: int,
    records: list[tuple[bytes, bytes, int]],
    settings: ProducerSettings,
) -> tuple[float, float]:
    topic = f"bench-bare-{uuid.uuid4().hex[:8]}"
    ensure_topic(bootstrap, topic, partitions)
    return bare_loop(bootstrap, topic, records, settings)


def run_replay(
    bootstrap: str, log: InteractionLog, partitions: int, settings: ProducerSettings
) -> tuple[float, float, float]:
    result = replay_log(
        log,
        bootstrap,
        topic=f"bench-replay-{uuid.uuid4().hex[:8]}",
        partitions=partitions,
        speed=parse_speed("max"),
        items_topic=f"bench-items-{uuid.uuid4().hex[:8]}",
        settings=settings,
    )
    assert result.sent == log.events.height and result.end_markers_sent
    return result.send_s, result.send_cpu_s, result.wall_s


def throughput(
    bootstrap: str, log: InteractionLog, partitions: int, repeats: int
) -> dict[str, float]:
    settings = ProducerSettings()
    events = log.events
    of_event, _ = partition_counts(events["user"].to_numpy(), partitions)
    columns = ("event_id", "user", "item", "rating", "time", "cohort", "shifted")
    records = [
        (user_key(u), encode(Interaction(e, u, i, r, t, log.name, c, s)), int(p))
        for (e, u, i, r, t, c, s), p in zip(
            events.select(columns).iter_rows(), of_event, strict=True
        )
    ]
    bare: list[tuple[float, float]] = []
    replay: list[tuple[float, float, float]] = []
    for repeat in range(repeats):
        # back-to-back (bare, replay) pairs, alternating which goes first, so neither side
        # always meets a fuller broker or a quieter machine
        if repeat % 2 == 0:
            bare.append(run_bare(bootstrap, partitions, records, settings))
            replay.append(run_replay(bootstrap, log, partitions, settings))
        else:
            replay.append(run_replay(bootstrap, log, partitions, settings))
            bare.append(run_bare(bootstrap, partitions, records, settings))
    n = events.height
    wall_ratios = [b[0] / r[0] for b, r in zip(bare, replay, strict=True)]
    cpu_ratios = [b[1] / r[1] for b, r in zip(bare, replay, strict=True)]
    return {
        "events": n,
        "bare_rate": n / statistics.median(b[0] for b in bare),
        "replay_rate": n / statistics.median(r[0] for r in replay),
        "replay_end_to_end_rate": n / statistics.median(r[2] for r in replay),
        "bare_cpu_us": 1e6 * statistics.median(b[1] for b in bare) / n,
        "replay_cpu_us": 1e6 * statistics.median(r[1] for r in replay) / n,
        "ratio": statistics.median(wall_ratios),
        "ratio_min": min(wall_ratios),
        "ratio_max": max(wall_ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "cpu_ratio_min": min(cpu_ratios),
        "cpu_ratio_max": max(cpu_ratios),
    }


def pacing(bootstrap: str, log: InteractionLog, events: int, target_s: float) -> dict[str, float]:
    part = select_events(log, limit=events)
    times = part.events["time"].to_numpy()
    factor = (times[-1] - times[0]) / target_s
    speed = parse_speed(f"{factor}x")
    planned = planned_seconds(times, speed)
    result = replay_log(
        part,
        bootstrap,
        topic=f"bench-pacing-{uuid.uuid4().hex[:8]}",
        partitions=4,
        speed=speed,
        clock=SystemClock(),
        items_topic=None,
    )
    return {
        "events": part.events.height,
        "speed_factor": factor,
        "planned_s": planned,
        "measured_s": result.send_s,
        "error_pct": 100.0 * (result.send_s - planned) / planned,
    }


def spread(rates: dict[str, float], name: str) -> str:
    low, high = rates[f"{name}_min"], rates[f"{name}_max"]
    return f"{rates[name]:.3f} (pairs {low:.3f}..{high:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=None, help="existing broker; default: embedded")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--events", type=int, default=50_000, help="events for throughput")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9, help="(bare, replay) pairs")
    parser.add_argument("--pacing-events", type=int, default=20_000)
    parser.add_argument("--pacing-seconds", type=float, default=20.0)
    args = parser.parse_args()

    log = load_events(args.data_dir, args.events)
    with broker(args.bootstrap) as bootstrap:
        rates = throughput(bootstrap, log, args.partitions, args.repeats)
        paced = pacing(bootstrap, log, args.pacing_events, args.pacing_seconds)

    rows = [
        ("dataset", f"{log.name} (first {rates['events']:,.0f} events)"),
        (
            "machine",
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        ),
        ("bare kafka-python loop (median)", f"{rates['bare_rate']:,.0f} events/s"),
        ("replay --speed max, send phase (median)", f"{rates['replay_rate']:,.0f} events/s"),
        ("replay end to end (median)", f"{rates['replay_end_to_end_rate']:,.0f} events/s"),
        (
            "throughput ratio replay/bare (target >= 0.8)",
            spread(rates, "ratio"),
        ),
        (
            "client CPU per event: bare / replay",
            f"{rates['bare_cpu_us']:.1f} / {rates['replay_cpu_us']:.1f} us",
        ),
        (
            "CPU-cost ratio bare/replay",
            spread(rates, "cpu_ratio"),
        ),
        ("pacing: events", f"{paced['events']:,.0f} at {paced['speed_factor']:,.0f}x"),
        ("pacing: planned", f"{paced['planned_s']:.3f} s"),
        ("pacing: measured", f"{paced['measured_s']:.3f} s"),
        ("pacing: error (target within 2%)", f"{paced['error_pct']:+.3f} %"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print({**rates, **paced})


if __name__ == "__main__":
    main()
