"""T²ARec streaming cost: step alone, step + full-catalogue scoring, step + test-time update.

    python bench/bench_t2arec.py --device auto|cpu|cuda [--batches 64,1024] [--items 3707]
        [--budget 5] [--threads N]

Model at the seeds.md §6.2 sizes (D 64, expand 2, P 32, H 4, N 32, d_conv 4, 2 layers), test-time
window W 50, ISA window 8, k 1. Users are warmed up with 60 events first, so windows are full.
Rows (per micro-batch of U users, one event each):

- ``step``: the recurrence alone (adapt=False, the frozen variant);
- ``step+score``: plus full-catalogue scores (I items, padding included);
- ``step+tta/8``: adapt=True, trigger every 8 events, users staggered so 1/8 of them update in
  each call (the default configuration's amortised cost);
- ``step+tta/1``: every user runs a test-time update on every event (the worst case).

events/s = U / (median seconds per call), from wall time and (on CPU) from process CPU time, the
steadier figure on a shared machine (with --threads 1 it approximates an idle core's wall time).
Also prints the per-user state size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from models.t2arec import T2ARec, T2ARecConfig, T2ARecState


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def seconds_per_call(
    fn: Callable[[], object], device: torch.device, budget_s: float
) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) per call. On a shared CPU the CPU time is the
    steadier number: it does not count the time other processes hold the cores."""
    fn()  # warm-up (first calls build caches)
    wall: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    while len(wall) < 3 or (time.perf_counter() - started < budget_s and len(wall) < 50):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tick, tock = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(time.perf_counter() - tick)
        cpu.append(time.process_time() - tock)
    return statistics.median(wall), statistics.median(cpu)


def warm_state(model: T2ARec, users: int, device: torch.device) -> T2ARecState:
    state = model.init_state(users)
    for t in range(60):
        items = torch.randint(1, model.config.n_items, (users,), device=device)
        times = torch.full((users,), 1e9 + 600.0 * t, dtype=torch.float64, device=device)
        state, _ = model.step(state, items, times, adapt=False)
    return state


def bench_batch(
    model: T2ARec, model_every: T2ARec, users: int, device: torch.device, budget_s: float
) -> None:
    """Print the table rows of one micro-batch size."""
    n_items = model.config.n_items
    with torch.no_grad():
        state = warm_state(model, users, device)
    every = model.config.tta_every
    staggered = T2ARecState(
        **{**state.tensors(), "since_update": torch.arange(users, device=device) % every}
    )
    items = torch.randint(1, n_items, (users,), device=device)
    times = torch.full((users,), 1e9 + 3.6e4, dtype=torch.float64, device=device)

    def frozen() -> object:
        return model.step(state, items, times, adapt=False)

    def scored() -> object:
        _, hidden = model.step(state, items, times, adapt=False)
        return model.score(hidden)

    def amortised() -> object:
        return model.step(staggered, items, times, adapt=True)

    def worst() -> object:
        return model_every.step(state, items, times, adapt=True)

    rows = [("step", frozen), ("step+score", scored), ("step+tta/8", amortised)]
    rows.append(("step+tta/1", worst))
    for label, fn in rows:
        with torch.no_grad():
            wall, cpu = seconds_per_call(fn, device, budget_s)
        cells = [f"{wall * 1e3:.2f}", f"{users / wall:,.0f}"]
        cells += [f"{cpu * 1e3:.2f}", f"{users / cpu:,.0f}"] if device.type == "cpu" else ["", ""]
        print(f"| {label} | {users} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batches", default="64,1024", help="micro-batch sizes U, comma-separated")
    parser.add_argument("--items", type=int, default=3707, help="catalogue size I (with padding)")
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of timing per row")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    torch.manual_seed(0)
    config = T2ARecConfig(n_items=args.items, tta_window=50, tta_steps=1, tta_every=8)
    every_event = T2ARecConfig(n_items=args.items, tta_window=50, tta_steps=1, tta_every=1)
    model = T2ARec(config).to(device).eval()
    model_every = T2ARec(every_event).to(device).eval()
    model_every.load_state_dict(model.state_dict())
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"state bytes per user: {model.init_state(1).nbytes_per_user():,}")
    print()
    print("| row | U | ms / call (wall) | events / s (wall) | ms / call (CPU) | events / s (CPU) |")
    print("|---|---:|---:|---:|---:|---:|")
    for users in (int(b) for b in args.batches.split(",")):
        bench_batch(model, model_every, users, device, args.budget)


if __name__ == "__main__":
    main()
