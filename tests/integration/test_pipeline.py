"""The whole streaming path on a real broker: replayer -> Faust workers -> sink -> Parquet,
checked event by event against the offline replay of the same pure function, and every user's
final state in the table's changelog against the offline replay's.

Each replay feeds two worker groups side by side (own app id, predictions topic and sink):
micro-batch 1 with two workers, and micro-batch 256 with one worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from replay.datasets import InteractionLog, load_ml1m_dir
from replay.schema import user_key
from replay.synthetic import SyntheticConfig, generate
from stream.aggregate import window_table
from stream.faustapp import topic_end_offsets
from stream.offline import evaluate_offline, interactions, predictions_frame
from stream.pipeline import Group, RunningGroup, run_pipeline
from stream.prequential import ScoringOptions
from stream.runners import SeqRecRunner
from stream.settings import Settings
from stream.sink import PREDICTIONS_FILE, WINDOWS_FILE
from stream.testing import assert_same_snapshot, tiny_checkpoints
from stream.userstate import decode_snapshot, encode_snapshot
from stream.worker import build_runners

pytestmark = pytest.mark.integration

MODELS = ["pop", "sasrec", "ttt4rec"]
EXACT = ["model", "event_id", "user", "item", "time", "rank", "n_candidates", "cold_user",
         "cold_item", "seen_item", "oov_item", "cohort", "shifted"]  # fmt: skip
CLOSE = ["hr@1", "hr@5", "hr@10", "hr@20", "ndcg@10", "ndcg@20", "rr", "shift_score"]
WINDOW_CLOSE = ["hr@1", "hr@5", "hr@10", "hr@20", "ndcg@10", "ndcg@20", "mrr", "hr@10_warm",
                "macro_hr@10", "macro_ndcg@10", "cum_hr@10", "cum_ndcg@10", "cum_mrr",
                "fading_hr@10", "fading_ndcg@10", "fading_mrr"]  # fmt: skip
POISON = [b"not json at all", b'{"v":1,"k":"ev","id":-3}', b'{"v":99,"k":"ev"}', b"\xff\xfe"]
DAY = 86_400.0


def _settings(name: Callable[[str], str], checkpoints: Path, topic: str, **kw: object) -> Settings:
    values: dict[str, object] = {
        "app_id": name("app"),
        "interactions_topic": topic,
        "predictions_topic": name("predictions"),
        "dead_letter_topic": name("dead"),
        "partitions": 3,
        "models": MODELS,
        "checkpoint_dir": str(checkpoints),
        "device": "cpu",
        "torch_threads": 1,
        "window_s": DAY,
        "half_life_s": 3 * DAY,
        "sink_flush_s": 60.0,
        **kw,
    }
    return Settings(**values)  # type: ignore[arg-type]


def _offline(log: InteractionLog, settings: Settings) -> tuple[pl.DataFrame, dict[int, bytes]]:
    runners = build_runners(settings)
    options = ScoringOptions(settings.candidates, settings.exclude_seen)  # type: ignore[arg-type]
    predictions, snapshots = evaluate_offline(
        list(interactions(log)), runners, options, batch_size=64,
        refresh_s=settings.popularity_refresh_s, window_s=settings.popularity_window_s or None,
    )  # fmt: skip
    stateful = {r.name: r for r in runners if hasattr(r, "model")}
    blobs = {u: encode_snapshot(s, stateful) for u, s in snapshots.items()}  # type: ignore[arg-type]
    return predictions_frame(predictions), blobs


def _assert_matches_offline(out_dir: Path, offline: pl.DataFrame, log: InteractionLog) -> None:
    streamed = pl.read_parquet(out_dir / PREDICTIONS_FILE).sort(["model", "event_id"])
    expected = offline.sort(["model", "event_id"])
    # every event exactly once per model
    for model in MODELS:
        ids = streamed.filter(pl.col("model") == model)["event_id"]
        assert ids.to_list() == list(range(log.events.height)), model
    assert streamed.select(EXACT).equals(expected.select(EXACT))
    for column in CLOSE:
        np.testing.assert_allclose(
            streamed[column].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            expected[column].cast(pl.Float64).fill_null(np.nan).to_numpy(),
            atol=1e-6, err_msg=column,
        )  # fmt: skip
    windows = pl.read_parquet(out_dir / WINDOWS_FILE).sort(["model", "window"])
    expected_windows = window_table(expected, size_s=DAY, half_life_s=3 * DAY)
    assert windows["n_events"].sum() == len(MODELS) * log.events.height
    assert windows.select("model", "window", "n_events", "n_users", "n_cold_user",
                          "n_cold_item").equals(
        expected_windows.select("model", "window", "n_events", "n_users", "n_cold_user",
                                "n_cold_item"))  # fmt: skip
    for column in WINDOW_CLOSE:
        np.testing.assert_allclose(
            windows[column].fill_null(np.nan).to_numpy(),
            expected_windows[column].fill_null(np.nan).to_numpy(),
            atol=1e-6, err_msg=column,
        )  # fmt: skip
    assert windows["latency_p50_ms"].is_not_null().all()


def assert_states_match_offline(
    bootstrap: str, settings: Settings, offline_states: dict[int, bytes]
) -> None:
    """Every user's last snapshot in the changelog equals the offline replay's (integer parts
    exactly, floats to rounding: batched kernels may change the last bits)."""
    states = _changelog(bootstrap, f"{settings.app_id}-user-states-changelog")
    assert {int(k) for k in states} == set(offline_states)
    runners = {r.name: r for r in build_runners(settings) if isinstance(r, SeqRecRunner)}
    for user, blob in offline_states.items():
        recovered = decode_snapshot(states[str(user).encode()], runners)
        assert_same_snapshot(recovered, decode_snapshot(blob, runners))


def _replay_twice_and_compare(
    log: InteractionLog,
    tmp_path: Path,
    unique_name: Callable[[str], str],
    kafka_bootstrap: str,
    before_replay: Callable[[str, list[RunningGroup]], None] | None = None,
) -> list[Settings]:
    checkpoints = tmp_path / "checkpoints"
    tiny_checkpoints(checkpoints, log, ["sasrec", "ttt4rec"])
    topic = unique_name("interactions")
    one = _settings(unique_name, checkpoints, topic, batch_size=1, max_wait_ms=20.0)
    many = _settings(unique_name, checkpoints, topic, batch_size=256, max_wait_ms=100.0)
    groups = [Group(one, tmp_path / "b1-w2", workers=2), Group(many, tmp_path / "b256-w1")]
    result = run_pipeline(log, groups, kafka_bootstrap, timeout_s=240, before_replay=before_replay)
    offline, offline_states = _offline(log, one)
    for group, group_result in zip(groups, result.groups, strict=True):
        assert group_result.state.complete()
        _assert_matches_offline(group.out_dir, offline, log)
        assert_states_match_offline(kafka_bootstrap, group.settings, offline_states)
    return [one, many]


def test_synthetic_stream_with_shifts_matches_offline_and_poison_goes_to_dead_letters(
    tmp_path: Path, unique_name: Callable[[str], str], kafka_bootstrap: str
) -> None:
    log = generate(SyntheticConfig(users=50, items=60, events=900, topics=4, span_days=8, seed=5))
    assert log.events["shifted"].any()

    def poison(topic: str, running: list[RunningGroup]) -> None:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for i, value in enumerate(POISON):
            producer.send(topic, key=user_key(i), value=value, partition=i % 3)
        producer.flush(timeout=30)
        producer.close()

    settings = _replay_twice_and_compare(log, tmp_path, unique_name, kafka_bootstrap, poison)
    for group in settings:
        letters = _read_all(kafka_bootstrap, group.dead_letter_topic, len(POISON))
        assert sorted(letter["value"] for letter in letters) == sorted(
            v.decode("utf-8", errors="replace") for v in POISON
        )
        assert all(letter["reason"] for letter in letters)


def test_ml1m_slice_matches_offline(
    tmp_path: Path,
    unique_name: Callable[[str], str],
    kafka_bootstrap: str,
    ml1m_subset_dir: Path,
) -> None:
    full = load_ml1m_dir(ml1m_subset_dir)
    log = InteractionLog(name="ml-1m-slice", events=full.events.head(800))
    _replay_twice_and_compare(log, tmp_path, unique_name, kafka_bootstrap)


def _changelog(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[bytes, bytes]:
    """Last value per key of a (not compacted) changelog topic."""
    ends = {TopicPartition(topic, p): end for p, end in topic_end_offsets(bootstrap, topic).items()}
    assigned = sorted(ends)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        latest: dict[bytes, bytes] = {}
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in assigned):
            assert time.monotonic() < deadline, "changelog read timed out"
            for messages in consumer.poll(timeout_ms=200).values():
                for message in messages:
                    latest[message.key] = message.value
        return latest
    finally:
        consumer.close()


def _read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[dict]:
    import json

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=200).values():
                out += [json.loads(m.value) for m in messages]
        # one more short poll: there must be no extra records
        for messages in consumer.poll(timeout_ms=500).values():
            out += [json.loads(m.value) for m in messages]
        return out
    finally:
        consumer.close()
