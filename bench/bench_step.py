"""The worker's model step alone: ``WorkerCore.process`` over the pipeline benchmark's log, with
no Kafka and no other process, one torch thread.

    python bench/bench_step.py [--events 6000] [--batch-size 256] [--model-processes 2]
        [--models pop,sasrec,ttt4rec] [--ttt4rec-policy windowed] [--dtype float64]
        [--passes 3] [--by-call] [--profile-ops N]

It cuts the log into micro-batches of ``--batch-size`` events and, as the worker does with its
model processes, gives shard 0 of ``--model-processes`` its part of each batch
(``stream.modelproc.assign_shards``, with every user's snapshot stored: a batch here is done
before the next) with the snapshots the earlier batches left. It prints the CPU time of the
step per event, one line per pass over the log (each pass starts from a fresh core; the first
includes warm-up). ``--by-call`` adds the models' read-out calls (``hidden_at``): how many, their
rows, lengths and wanted positions, and their time. ``--profile-ops N`` runs the last pass under
``torch.profiler`` and prints the ATen calls per event and the N operators with the most CPU
time of their own (the profiler slows every call down: read the shares, not the times).

The model threads' CPU per event in ``bench_pipeline.py`` against the lines here says what the
pipeline costs the step: there the step shares the cores with the worker, the sink and the
broker. Two copies of this script at once, one per core, are the fair comparison on a 2-core
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import ML1M, load_log  # noqa: E402

from replay.schema import Interaction, user_key  # noqa: E402
from stream.modelproc import assign_shards  # noqa: E402
from stream.offline import interactions  # noqa: E402
from stream.runners import SeqRecRunner  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.testing import tiny_checkpoints  # noqa: E402
from stream.worker import WorkerCore, build_core  # noqa: E402


@dataclass
class ReadOutCall:
    model: str
    rows: int
    length: int
    wanted: int
    seconds: float


def shard_batches(
    events: list[Interaction], batch_size: int, shards: int
) -> list[list[Interaction]]:
    """Shard 0's part of each micro-batch, split as the worker's ``ModelShards`` splits it."""
    owner: dict[int, int] = {}
    parts = []
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        chosen = assign_shards(batch, {}, owner, shards)  # nothing in flight
        owner.update(chosen)
        part = [e for e in batch if chosen[e.user] == 0]
        if part:
            parts.append(part)
    return parts


def fresh_core(settings: Settings, events: list[Interaction]) -> WorkerCore:
    """A core whose global view has seen the whole log (the step never waits for it)."""
    core, view = build_core(settings)
    view.set_partitions(1)
    view.observe_many(
        0, [e.event_id for e in events], [e.item for e in events], [e.time for e in events]
    )
    view.end_partition(0)
    return core


def record_read_outs(core: WorkerCore, calls: list[ReadOutCall]) -> None:
    """Time every ``hidden_at`` call of the core's models into ``calls``."""
    for runner in core.runners:
        if not isinstance(runner, SeqRecRunner):
            continue
        read_out: Callable[..., torch.Tensor] = runner.model.hidden_at

        def timed(*args: Any, _read_out: Any = read_out, _name: str = runner.name) -> Any:
            items, _, rows, _ = args
            started = time.perf_counter()
            hidden = _read_out(*args)
            calls.append(
                ReadOutCall(
                    _name, items.shape[0], items.shape[1], rows.shape[0],
                    time.perf_counter() - started,
                )
            )  # fmt: skip
            return hidden

        setattr(runner.model, "hidden_at", timed)  # noqa: B010  (an instance attribute, on purpose)


def print_operators(profiler: torch.profiler.profile, events: int, rows: int) -> None:
    """The ATen calls per event, then the ``rows`` operators with the most self CPU time."""
    averages = profiler.key_averages()
    calls = sum(a.count for a in averages if a.key.startswith("aten::"))
    print(f"\n{calls} ATen calls, {calls / events:.1f} per event")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))


def one_pass(
    settings: Settings,
    events: list[Interaction],
    batches: list[list[Interaction]],
    calls: list[ReadOutCall] | None,
    batch_size: int,
) -> float:
    """-> thread CPU seconds of ``WorkerCore.process`` over every batch."""
    core = fresh_core(settings, events)
    if calls is not None:
        record_read_outs(core, calls)
    blobs: dict[bytes, bytes] = {}
    used = 0.0
    for batch in batches:
        stored = {e.user: blobs.get(user_key(e.user)) for e in batch}
        started = time.thread_time()
        output = core.process(batch, stored, None, batch_size)
        used += time.thread_time() - started
        blobs.update(output.blobs)
    return used


def print_calls(calls: list[ReadOutCall], events: int) -> None:
    print(f"\n{'read-out':<12}{'calls':>7}{'rows':>7}{'length':>8}{'wanted':>8}"
          f"{'ms/call':>9}{'ms/event':>10}")  # fmt: skip
    for model in sorted({c.model for c in calls}):
        mine = [c for c in calls if c.model == model]
        total = sum(c.seconds for c in mine)
        n = len(mine)
        print(f"{model:<12}{n:>7}{sum(c.rows for c in mine) / n:>7.1f}"
              f"{sum(c.length for c in mine) / n:>8.1f}{sum(c.wanted for c in mine) / n:>8.1f}"
              f"{total * 1000 / n:>9.2f}{total * 1000 / events:>10.3f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "ml-1m"], default="synthetic")
    parser.add_argument("--data-dir", type=Path, default=ML1M)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model-processes", type=int, default=2, help="shards; 1: the whole batch")
    parser.add_argument("--models", default="pop,sasrec,ttt4rec")
    parser.add_argument("--ttt4rec-policy", default="windowed", choices=["windowed", "recurrent"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--by-call", action="store_true", help="time the read-out calls")
    parser.add_argument("--profile-ops", type=int, default=0, metavar="N",
                        help="profile the last pass; print the N costliest operators")  # fmt: skip
    args = parser.parse_args(argv)
    if args.model_processes < 1 or args.passes < 1:
        parser.error("--model-processes and --passes must be at least 1")

    log = load_log(args.dataset, args.events, args.data_dir)
    folder = Path(tempfile.mkdtemp(prefix="bench-step-"))
    bases = sorted({m.split(":")[0] for m in args.models.split(",")} - {"pop"})
    tiny_checkpoints(folder, log, bases, configs={"ttt4rec": {"policy": args.ttt4rec_policy}})
    settings = Settings(
        models=args.models.split(","),
        checkpoint_dir=str(folder),
        dtype=args.dtype,
        device="cpu",
        torch_threads=1,
    )
    events = list(interactions(log))
    batches = shard_batches(events, args.batch_size, args.model_processes)
    n_events = sum(len(b) for b in batches)
    users = sum(len({e.user for e in b}) for b in batches) / len(batches)
    print(f"{args.dataset}: {log.events.height} events; shard 0 of {args.model_processes}: "
          f"{n_events} events in {len(batches)} calls, {n_events / len(batches):.1f} events and "
          f"{users:.1f} users per call; models {args.models}, TTT4Rec {args.ttt4rec_policy}, "
          f"{args.dtype}, one thread")  # fmt: skip
    calls: list[ReadOutCall] = []
    for number in range(args.passes):
        last = number == args.passes - 1
        profiler = None
        if last and args.profile_ops > 0:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        with profiler if profiler is not None else contextlib.nullcontext():
            used = one_pass(settings, events, batches, calls if args.by_call and last else None,
                            args.batch_size)  # fmt: skip
        print(f"pass {number + 1}: {used * 1000 / n_events:.3f} CPU ms per event"
              f"{'' if profiler is None else ' (profiled)'}")  # fmt: skip
        if profiler is not None:
            print_operators(profiler, n_events, args.profile_ops)
    if calls:
        print_calls(calls, n_events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
