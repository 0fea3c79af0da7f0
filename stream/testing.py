"""Small, deterministic inputs for tests and benchmarks: a tiny interaction log and tiny
(untrained, seeded) checkpoints of registry models, saved and loaded through the real
``models.checkpoint`` path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch

from replay.datasets import InteractionLog, order_events
from stream.userstate import UserSnapshot

TINY_CONFIGS: dict[str, dict[str, object]] = {
    "sasrec": {"d_model": 16, "max_len": 8, "n_layers": 1, "n_heads": 1, "inner_dim": 32},
    "ttt4rec": {"d_model": 16, "max_len": 8, "n_layers": 1, "n_heads": 2, "ffn_dim": 32},
    "t2arec": {"d_model": 16, "max_len": 8},
    "darec": {"d_model": 16, "max_len": 8, "lm_items": 4, "backbone": "tiny"},
}


def make_tiny_log(
    n_users: int = 24,
    n_items: int = 40,
    n_events: int = 360,
    seed: int = 0,
    day_s: float = 86_400.0,
) -> InteractionLog:
    """Users with skewed activity, items with skewed popularity, shared timestamps, ~10 days."""
    rng = np.random.default_rng(seed)
    users = rng.choice(np.arange(1, n_users + 1), size=n_events, p=_zipf(n_users, rng))
    items = rng.choice(np.arange(1, n_items + 1), size=n_events, p=_zipf(n_items, rng))
    # whole minutes so several events share a timestamp
    times = 9.5e8 + np.sort(rng.integers(0, int(10 * day_s / 60), size=n_events)) * 60.0
    frame = pl.DataFrame(
        {"user": users, "item": items, "rating": np.ones(n_events), "time": times},
        schema={"user": pl.Int64, "item": pl.Int64, "rating": pl.Float64, "time": pl.Float64},
    )
    # repeats of the same (user, item) are rare in ML-1M; drop them to keep the log realistic
    frame = frame.unique(subset=["user", "item"], keep="first", maintain_order=True)
    return InteractionLog(name="tiny", events=order_events(frame))


def _zipf(n: int, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 0.8
    rng.shuffle(weights)
    return weights / weights.sum()


def tiny_checkpoints(
    folder: Path,
    log: InteractionLog,
    models: Sequence[str],
    seed: int = 0,
    configs: dict[str, dict[str, object]] | None = None,
) -> dict[str, Path]:
    """Seeded, untrained checkpoints (vocab = every item of ``log``) -> paths by name.

    ``configs`` overrides ``TINY_CONFIGS`` (pass ``{}`` for each model's default size).
    """
    sizes = TINY_CONFIGS if configs is None else configs
    import models as registry
    from models.checkpoint import save_checkpoint

    vocab = [-1, *sorted(int(i) for i in log.events["item"].unique())]
    paths: dict[str, Path] = {}
    for name in models:
        config_type, _ = registry.REGISTRY[name]
        torch.manual_seed(seed)
        config = config_type(n_items=len(vocab), **sizes.get(name, {}))  # type: ignore[arg-type]
        model = registry.build(name, config).eval()
        path = folder / f"{name}.safetensors"
        save_checkpoint(path, model, vocab, data_fingerprint=f"tiny-{seed}")
        paths[name] = path
    return paths


def assert_same_snapshot(a: UserSnapshot, b: UserSnapshot, exact: bool = False) -> None:
    """Integer fields exactly; float fields exactly or to float64 rounding of batched kernels
    (row results of a GEMM may change in the last bits with the batch shape)."""
    assert (a.user, a.last_event_id, a.seen) == (b.user, b.last_event_id, b.seen)
    assert a.states.keys() == b.states.keys() == a.hidden.keys() == b.hidden.keys()
    for name in a.states:
        pairs = [(f, t, b.states[name].tensors()[f]) for f, t in a.states[name].tensors().items()]
        pairs.append(("hidden", a.hidden[name], b.hidden[name]))
        for field, left, right in pairs:
            assert left.dtype == right.dtype and left.shape == right.shape, field
            if exact or not left.is_floating_point():
                assert torch.equal(left, right), f"{name}.{field}"
            else:
                torch.testing.assert_close(left, right, rtol=0, atol=1e-9, msg=f"{name}.{field}")
