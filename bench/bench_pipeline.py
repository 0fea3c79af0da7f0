"""End-to-end throughput, latency and memory per user of the streaming evaluation.

Two pipelines on one broker, one after the other, replaying the same log at ``--speed max``:

1. a *passthrough* worker: the same Faust app and agent loop, decode + one trivial record per
   event, no models, no table;
2. the evaluation worker with ``--models`` (default pop, SASRec, TTT4Rec at their default sizes,
   seeded and untrained: the cost of a step does not depend on training), once per TTT4Rec
   streaming policy in ``--ttt4rec-policies`` (default both: ``windowed``, the paper's, which
   re-encodes the last 50 items at every event, and ``recurrent``, O(1) per event).

A last run replays the log *paced* at about half the model throughput of the first policy (at most
the log over 45 s); its latency (events produced once the worker is up) is the latency of a worker
that keeps up.

Throughput is measured in the steady state: 80 % of the events over the time between the 10 % and
90 % quantiles of "prediction written" (the Kafka timestamp of the prediction record), so worker
start-up and group join do not count. Latency is produced -> prediction written per event; at
``--speed max`` it is dominated by the backlog (every event is produced within a second).
Memory per user is the size of the serialized user snapshot (the table value) and of each model's
state, averaged over the users. CPU per event is the CPU time (user + system, from ``/proc``) each
part of a run used in the steady window the throughput is measured over, divided by the events
written in it: the worker's main process, its model processes (split into their main threads,
which run the model step, and their other threads, the global-view readers), this process
(replayer and sink) and the broker. On a machine with few cores the parts compete, so their sum,
not the worker's alone, sets the throughput; busy cores (the machine's, from ``/proc/stat``, over
the same window) says how close a run came to using every core. Snapshot
writes per event counts the records of the worker's state changelog (one per touched user per
micro-batch).

    python bench/bench_pipeline.py                       # synthetic, 6000 events, CPU
    python bench/bench_pipeline.py --ttt4rec-policies windowed --dtype float32
    python bench/bench_pipeline.py --dataset ml-1m --events 20000 --device auto
    python bench/bench_pipeline.py --model-processes 0   # the model step in a worker thread
    python bench/bench_pipeline.py --ttt4rec-policies windowed --repeat 3   # median of 3 ratios
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: this checkout

from replay.datasets import InteractionLog, load_ml1m_dir
from replay.pacing import parse_speed
from replay.synthetic import SyntheticConfig, generate
from stream.broker import EmbeddedBroker
from stream.faustapp import topic_end_offsets
from stream.offline import evaluate_offline, interactions
from stream.pipeline import Group, RunningGroup, run_pipeline
from stream.prequential import ScoringOptions
from stream.runners import SeqRecRunner
from stream.settings import Settings
from stream.sink import PREDICTIONS_FILE
from stream.testing import tiny_checkpoints
from stream.userstate import encode_snapshot
from stream.worker import build_runners

PACED_MIN_S = 45.0
ML1M = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m-subset"


def load_log(dataset: str, events: int, data_dir: Path) -> InteractionLog:
    if dataset == "ml-1m":
        full = load_ml1m_dir(data_dir)
        return InteractionLog(name="ml-1m-slice", events=full.events.head(events))
    return generate(SyntheticConfig(users=max(50, events // 20), items=1000, events=events))


def steady_window(written_ms: pl.Series) -> tuple[float, float] | None:
    """The steady state of a run: from the 10 % to the 90 % quantile of the times its
    predictions were written (ms), so worker start-up and the last stragglers do not count."""
    written = written_ms.drop_nulls().sort()
    low, high = written.quantile(0.1), written.quantile(0.9)
    if low is None or high is None or high <= low:
        return None
    return low, high


def steady_rate(frame: pl.DataFrame) -> float:
    window = steady_window(frame["written_ms"])
    if window is None:
        return float("nan")
    low, high = window
    return 0.8 * frame["written_ms"].drop_nulls().len() / ((high - low) / 1000.0)


def predictions_by_model(out_dir: Path) -> dict[str, pl.DataFrame]:
    """A run's prediction rows, read once, by model."""
    frame = pl.read_parquet(out_dir / PREDICTIONS_FILE)
    return {model: frame.filter(pl.col("model") == model) for model in frame["model"].unique()}


def measure(frame: pl.DataFrame, settle_s: float | None = None) -> dict[str, float]:
    """Throughput and latency of one model's prediction rows; with ``settle_s``, latency only of
    events produced that long after the first prediction was written (the worker is up and the
    start-up backlog is gone)."""
    if settle_s is not None:
        start = frame["written_ms"].min()
        frame = frame.filter(pl.col("produced_ms") > start + settle_s * 1000.0)  # type: ignore[operator]
    latency = frame["latency_ms"].drop_nulls()
    return {
        "events": float(frame.height),
        "events_per_s": steady_rate(frame),
        "latency_p50_ms": float(latency.quantile(0.5) or float("nan")),
        "latency_p99_ms": float(latency.quantile(0.99) or float("nan")),
    }


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a live process (all its threads, or only ``thread``), 0 once
    it is gone."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, summed over its cores
    (``/proc/stat``: user, nice, system, idle, iowait, irq, softirq, steal; idle, iowait and
    steal, the time the hypervisor ran something else, count as not busy)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields)
    busy = user + nice + system + irq + softirq
    return busy / CLOCK_TICKS, (busy + idle + iowait + steal) / CLOCK_TICKS


def thread_ids(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class CpuSample:
    at_ms: float  # wall clock, as the predictions' write times
    parts: dict[str, float]  # CPU seconds used so far, per part of the run
    machine: tuple[float, float]  # (busy, all) CPU seconds of the machine


class CpuMeter:
    """Samples each part's CPU time every ``INTERVAL_S`` during a run (``sample`` is the
    pipeline's progress callback); ``per_event_ms`` turns the samples inside the run's steady
    window, the one its throughput is measured over, into CPU ms per event of each part, and
    the machine's busy cores: how close the run came to using every core."""

    INTERVAL_S = 0.02  # the passthrough's steady state can be shorter than half a second

    def __init__(self, broker_pid: int | None) -> None:
        self.broker_pid = broker_pid
        self.samples: list[CpuSample] = []

    def sample(self, running: list[RunningGroup]) -> None:
        workers = [p.pid for group in running for p in group.processes if p.pid is not None]
        children = [c for pid in workers for c in child_pids(pid)]
        used = {
            "worker": sum(cpu_seconds(pid) for pid in workers),
            # a model process's main thread runs the model step; its other threads read the global
            # view. Each thread is read on its own: the process's total minus its main thread's
            # came out below zero at times (the kernel scales a process's total apart).
            "model threads": sum(cpu_seconds(pid, thread=pid) for pid in children),
            "view readers": sum(
                cpu_seconds(pid, thread=tid)
                for pid in children
                for tid in thread_ids(pid)
                if tid != pid
            ),
            "bench": time.process_time(),
            "broker": 0.0 if self.broker_pid is None else cpu_seconds(self.broker_pid),
        }
        self.samples.append(CpuSample(time.time() * 1000.0, used, machine_cpu_seconds()))

    def per_event_ms(self, written_ms: pl.Series) -> dict[str, float]:
        window = steady_window(written_ms)
        if window is None:
            return {}
        inside = [s for s in self.samples if window[0] <= s.at_ms <= window[1]]
        if len(inside) < 2:
            return {}
        first, last = inside[0], inside[-1]
        events = int(written_ms.is_between(first.at_ms, last.at_ms).sum())
        if not events:
            return {}
        parts = {
            f"cpu_ms_per_event {part}": (last.parts[part] - seconds) * 1000.0 / events
            for part, seconds in first.parts.items()
        }
        parts["cpu_ms_per_event total"] = sum(parts.values())
        busy = last.machine[0] - first.machine[0]
        span = last.machine[1] - first.machine[1]
        parts["busy cores"] = (os.cpu_count() or 1) * busy / span if span > 0 else math.nan
        return parts


def changelog_records(bootstrap: str, topic: str) -> int:
    """Records in a topic (0 if it does not exist): the snapshot writes of a worker group.
    Nothing is compacted or deleted here, so the end offsets are the counts."""
    return sum(topic_end_offsets(bootstrap, topic).values())


def memory_per_user(log: InteractionLog, settings: Settings) -> dict[str, float]:
    runners = build_runners(settings)
    options = ScoringOptions(settings.candidates, settings.exclude_seen)  # type: ignore[arg-type]
    sample = list(interactions(log))
    _, snapshots = evaluate_offline(sample, runners, options, batch_size=256)
    stateful = {r.name: r for r in runners if isinstance(r, SeqRecRunner)}
    sizes = [len(encode_snapshot(s, stateful)) for s in snapshots.values()]
    out = {"snapshot_bytes_per_user": sum(sizes) / max(len(sizes), 1)}
    for name in stateful:
        states = [s.states[name] for s in snapshots.values() if name in s.states]
        out[f"{name}_state_bytes"] = sum(st.nbytes_per_user() for st in states) / max(
            len(states), 1
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "ml-1m"], default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=ML1M)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--models", default="pop,sasrec,ttt4rec")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch intra-op threads in the worker"
    )
    parser.add_argument(
        "--model-processes",
        type=int,
        default=-1,
        help="0: model step in a worker thread; -1: auto (1 on a GPU, else 2)",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved passthrough/model runs; median ratio"
    )
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="trained checkpoints")
    parser.add_argument(
        "--ttt4rec-policies",
        default="windowed,recurrent",
        help="TTT4Rec streaming policies to run (comma-separated; ignored with --checkpoint-dir)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: stop workers and broker

    log = load_log(args.dataset, args.events, args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    bases = sorted({m.split(":")[0] for m in args.models.split(",")} - {"pop"})
    policies = [p.strip() for p in args.ttt4rec_policies.split(",") if p.strip()]
    if args.checkpoint_dir is not None or "ttt4rec" not in bases:
        policies = policies[:1] or ["windowed"]
    checkpoint_dirs: dict[str, Path] = {}
    for policy in policies:
        if args.checkpoint_dir is not None:
            checkpoint_dirs[policy] = args.checkpoint_dir
            continue
        folder = work / f"checkpoints-{policy}"
        sizes: dict[str, dict[str, object]] = {"ttt4rec": {"policy": policy}}
        tiny_checkpoints(folder, log, bases, configs=sizes)  # default model sizes
        checkpoint_dirs[policy] = folder
    base = Settings(
        partitions=args.partitions,
        models=args.models.split(","),
        checkpoint_dir=str(checkpoint_dirs[policies[0]]),
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        torch_threads=args.torch_threads,
        model_processes=args.model_processes,
        max_wait_ms=50.0,
        sink_flush_s=3600.0,
    )
    results: dict[str, dict[str, float]] = {}
    stamp = int(time.time())
    runs = [("passthrough", True, policies[0])] + [(f"models[{p}]", False, p) for p in policies]
    cpu: dict[str, dict[str, float]] = {}  # run -> CPU ms per event of each part
    passthrough_rates: list[float] = []
    model_rates: dict[str, list[float]] = {policy: [] for policy in policies}
    # interleaved, so that a slow spell of the machine hits both sides; a fresh broker each
    # time (the embedded broker keeps every topic in memory and slows as they pile up)
    for repetition in range(args.repeat):
        broker = EmbeddedBroker(port=0)
        with broker as bootstrap:
            broker_pid = None if broker.process is None else broker.process.pid
            for label, passthrough, policy in runs:
                tag = label.replace("[", "-").replace("]", "") + f"-{repetition}"
                settings = Settings(
                    **{
                        **base.as_dict(),
                        "app_id": f"bench-{tag}-{stamp}",
                        "interactions_topic": f"bench-in-{tag}-{stamp}",
                        "predictions_topic": f"bench-out-{tag}-{stamp}",
                        "dead_letter_topic": f"bench-dead-{tag}-{stamp}",
                        "checkpoint_dir": str(checkpoint_dirs[policy]),
                        "passthrough": passthrough,
                    }
                )
                out = work / tag
                meter = CpuMeter(broker_pid)
                result = run_pipeline(
                    log,
                    [Group(settings, out)],
                    bootstrap,
                    timeout_s=3000,
                    progress=meter.sample,
                    progress_interval_s=CpuMeter.INTERVAL_S,
                )
                assert result.state.complete(), result.state.summary()
                name = label if args.repeat == 1 else f"{label} #{repetition + 1}"
                models = ["passthrough"] if passthrough else list(settings.models)
                predictions = predictions_by_model(out)
                for model in models:
                    results[f"{name}:{model}"] = measure(predictions[model])
                cpu[name] = meter.per_event_ms(predictions[models[-1]]["written_ms"])
                writes = changelog_records(bootstrap, f"{settings.app_id}-user-states-changelog")
                cpu[name]["snapshot writes per event"] = writes / log.events.height
                rate = results[f"{name}:{models[-1]}"]["events_per_s"]
                (passthrough_rates if passthrough else model_rates[policy]).append(rate)
    with EmbeddedBroker(port=0) as bootstrap:
        # paced: the whole log at about half the first policy's throughput, but spread over
        # at least PACED_MIN_S (a worker takes ~10 s to start and join; a shorter replay would
        # be over before it is up); latency of events produced 2 s after the first prediction
        times = log.events["time"]
        span_s = float(times[-1] - times[0])
        paced_rate = min(
            0.5 * statistics.median(model_rates[policies[0]]), log.events.height / PACED_MIN_S
        )
        factor = paced_rate * span_s / log.events.height
        settings = Settings(
            **{
                **base.as_dict(),
                "app_id": f"bench-paced-{stamp}",
                "interactions_topic": f"bench-in-paced-{stamp}",
                "predictions_topic": f"bench-out-paced-{stamp}",
                "dead_letter_topic": f"bench-dead-paced-{stamp}",
            }
        )
        out = work / "paced"
        speed = {"speed": parse_speed(f"{factor:.0f}x"), "max_gap_s": 1.0}
        run_pipeline(log, [Group(settings, out)], bootstrap, 3000, replay_options=speed)
        label = f"paced[{policies[0]}] {paced_rate:.0f} ev/s:{base.models[-1]}"
        results[label] = measure(predictions_by_model(out)[base.models[-1]], 2.0)
    torch.set_num_threads(1)
    sample = InteractionLog(log.name, log.events.head(min(3000, log.events.height)))
    memory: dict[str, float] = {}
    for policy in policies:
        policy_settings = Settings(
            **{**base.as_dict(), "checkpoint_dir": str(checkpoint_dirs[policy])}
        )
        for name, value in memory_per_user(sample, policy_settings).items():
            memory[f"[{policy}] {name}"] = value
    print(f"\n{args.dataset}: {log.events.height} events, {log.events['user'].n_unique()} users, "
          f"models {args.models}, device {args.device}, dtype {args.dtype}, "
          f"batch {args.batch_size}, partitions {args.partitions}, torch threads "
          f"{args.torch_threads}, model processes {base.model_process_count()}")  # fmt: skip
    print(f"{'run:model':<40}{'events/s':>12}{'lat p50 ms':>14}{'lat p99 ms':>14}")
    for name, row in results.items():
        print(f"{name:<40}{row['events_per_s']:>12.1f}{row['latency_p50_ms']:>14.0f}"
              f"{row['latency_p99_ms']:>14.0f}")  # fmt: skip
    ratio_runs = {
        policy: [m / p for m, p in zip(rates, passthrough_rates, strict=True)]
        for policy, rates in model_rates.items()
    }
    ratios = {policy: statistics.median(values) for policy, values in ratio_runs.items()}
    for policy, values in ratio_runs.items():
        each = (
            f" (each repetition: {', '.join(f'{v:.3f}' for v in values)})"
            if len(values) > 1
            else ""
        )
        print(f"models[ttt4rec {policy}] / passthrough throughput: {ratios[policy]:.3f}"
              f" (target >= 0.5){each}")  # fmt: skip
    for name, value in memory.items():
        print(f"memory {name}: {value:,.0f} B")
    parts = ["worker", "model threads", "view readers", "bench", "broker", "total"]
    print(f"\nCPU ms per event, steady state (bench: this process: replayer and sink; busy cores:"
          f" the machine's, of {os.cpu_count()})\n{'run':<28}"
          + "".join(f"{part:>14}" for part in parts) + f"{'busy cores':>12}"
          + f"{'snapshot writes/ev':>19}")  # fmt: skip
    for name, row in cpu.items():
        print(f"{name:<28}" + "".join(
            f"{row.get(f'cpu_ms_per_event {part}', float('nan')):>14.3f}" for part in parts
        ) + f"{row.get('busy cores', float('nan')):>12.2f}"
          + f"{row['snapshot writes per event']:>19.3f}")  # fmt: skip
    if args.json:
        numbers = {"results": results, "memory": memory, "ratios": ratios, "cpu": cpu,
                   "ratio_runs": ratio_runs, "args": vars(args)}  # fmt: skip
        args.json.write_text(json.dumps(numbers, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
