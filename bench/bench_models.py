"""Streaming throughput of every registered model: batched ``step`` plus full-catalogue scoring.

    python bench/bench_models.py --device auto|cpu|cuda [--batch-sizes 1,64,1024]
        [--n-items 3707] [--models sasrec,ttt4rec] [--seconds 3] [--threads N] [--markdown]

For each model (and the config variants in ``VARIANTS``, e.g. TTT4Rec's two streaming policies)
it times ``state, h = model.step(state, items, times); model.score(h)`` under inference mode and
reports events/s (users per batch x steps / seconds) and state bytes per user. Untrained weights
(default configs) are enough: the cost does not depend on the values. Targets (TTT4Rec
recurrent, 2-core CPU, ML-1M catalogue of 3,706 items + padding): >= 20,000 events/s at batch
1024 and <= 70 KB of state per user in float32.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.base import SeqRecModel  # noqa: E402
from models.registry import REGISTRY, build  # noqa: E402
from models.state import State  # noqa: E402

STAGGER = 8  # distinct history lengths among the benchmarked users

VARIANTS: dict[str, list[dict[str, Any]]] = {
    "darec": [{"bf16": False}, {"bf16": True}],  # MiniLM backbone: float32 vs bfloat16 autocast
    "ttt4rec": [
        {"policy": "windowed"},
        {"policy": "recurrent"},
        {"policy": "recurrent", "in_place": True},
    ],
}


def bench_one(
    name: str,
    overrides: dict[str, Any],
    batch: int,
    n_items: int,
    device: torch.device,
    seconds: float,
) -> tuple[float, float, int, float]:
    """Returns (events/s, events per CPU-second, state bytes per user, ms per batched step)."""
    config_type, _ = REGISTRY[name]
    model = build(name, config_type(**{"n_items": n_items, **overrides})).to(device).eval()
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, n_items, (64, batch), generator=generator).to(device)  # [T, U]
    start_time = torch.full((batch,), 9.7e8 + 3600, dtype=torch.float64, device=device)  # [U]
    with torch.inference_mode():
        state = staggered_state(model, batch, device)
        for t in range(2):  # warm-up
            state, hidden = model.step(state, items[t], start_time + 60 * t)
            model.score(hidden)
        _sync(device)
        steps, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while True:
            # event times keep increasing (time-aware models reject events older than the last)
            when = start_time + 60 * (steps + 2)
            state, hidden = model.step(state, items[steps % 64], when)
            scores = model.score(hidden)  # [U, I]
            steps += 1
            if steps % 4 == 0 or batch >= 1024:
                _sync(device)
                elapsed = time.perf_counter() - started
                if elapsed >= seconds and steps >= 3:
                    break
        cpu = time.process_time() - cpu_started
        assert scores.shape == (batch, n_items)
    return (
        batch * steps / elapsed,
        batch * steps / cpu,
        state.nbytes_per_user(),
        1000 * elapsed / steps,
    )


def keep_freed_memory() -> bool:
    """Ask glibc to serve tensors up to 32 MB from its heap and not to hand freed memory back:
    a recurrent step allocates a few fresh 16 MB tensors at U = 1024, and first-touch page faults
    on new mmap'd memory otherwise cost as much as the arithmetic. Linux/glibc only."""
    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or name is None:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(
        libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    )


def staggered_state(model: SeqRecModel, batch: int, device: torch.device) -> State:
    """Users at different points of their histories (group g has seen g + 1 events), as in a
    real stream; e.g. TTT4Rec's users then sit at different in-mini-batch indices."""
    groups = [chunk.numel() for chunk in torch.arange(batch).chunk(STAGGER)]
    states = []
    for g, size in enumerate(groups):
        state = model.init_state(size)
        for t in range(g + 1):
            items = torch.full((size,), 1 + t, device=device)
            state, _ = model.step(
                state, items, torch.full((size,), 9.7e8 + t, dtype=torch.float64, device=device)
            )
        states.append(state)
    return type(states[0]).cat(states)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-sizes", default="1,64,1024")
    parser.add_argument("--n-items", type=int, default=3707, help="catalogue rows incl. padding")
    parser.add_argument("--models", default="", help="comma-separated names (default: all)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc defaults")
    args = parser.parse_args()
    tuned = False if args.no_malloc_tuning else keep_freed_memory()
    import models  # noqa: F401  (fills the registry)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n] or sorted(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        parser.error(f"unknown models {unknown}; registered: {sorted(REGISTRY)}")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    rows = []
    for name in names:
        for overrides in VARIANTS.get(name, [{}]):
            label = name + "".join(f" {k}={v}" for k, v in overrides.items())
            for batch in batches:
                rate, cpu_rate, state_bytes, ms = bench_one(
                    name, overrides, batch, args.n_items, device, args.seconds
                )
                rows.append((label, batch, rate, cpu_rate, ms, state_bytes))
                line = f"{label:32s} U={batch:5d} {rate:12,.0f} events/s {ms:9.2f} ms/step"
                print(f"{line} {state_bytes:8,d} B/user", file=sys.stderr, flush=True)
    load = (
        " ".join(Path("/proc/loadavg").read_text().split()[:3])
        if Path("/proc/loadavg").exists()
        else "?"
    )
    print(f"\n{where}, catalogue {args.n_items} rows, torch {torch.__version__}, malloc tuning "
          f"{'on' if tuned else 'off'}, load average at the end {load}\n")  # fmt: skip
    header = ["model", "users per batch", "events/s", "events per CPU-second", "ms per step"]
    header.append("state B/user")
    table = [
        [label, f"{batch}", f"{rate:,.0f}", f"{cpu_rate:,.0f}", f"{ms:.2f}", f"{state_bytes:,d}"]
        for label, batch, rate, cpu_rate, ms, state_bytes in rows
    ]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|---|" + "---:|" * (len(header) - 1))
        for cells in table:
            print("| " + " | ".join(cells) + " |")
    else:
        widths = [max(len(h), *(len(c[i]) for c in table)) for i, h in enumerate(header)]
        for cells in [header, *table]:
            print(
                "  ".join(
                    c.rjust(w) if i else c.ljust(w)
                    for i, (c, w) in enumerate(zip(cells, widths, strict=True))
                )
            )


if __name__ == "__main__":
    main()
