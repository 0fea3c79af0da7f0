"""Offline full-ranking evaluation: ``python -m models.evaluate --checkpoint PATH --protocol
ttt4rec|loo [--json] [--data-dir DIR]``.

Every test row is ranked against the whole catalogue (padding excluded), with no history
masking (as RecBole does for sequential models) and pessimistic ties: the rank of the target is
the number of other items scoring at least as high. HR@10/50, NDCG@10/50 and MRR (untruncated)
are averaged over test rows, not users (seeds.md §1.7).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import polars as pl
import torch
import typer
from torch import Tensor

from models.base import SeqRecModel
from models.checkpoint import Checkpoint, load_checkpoint, read_metadata
from models.data import (
    PROTOCOLS,
    TEST,
    ItemVocab,
    SampleSet,
    UserSequences,
    build_samples,
    events_before,
    fingerprint,
)
from models.registry import REGISTRY, parse_config_overrides
from replay.datasets import InteractionLog, load_ml1m_dir

CUTOFFS = (10, 50)


@dataclass
class RankingMetrics:
    """Running sums of HR@K, NDCG@K and MRR over ranked rows: ``update(ranks)``, ``get()``."""

    cutoffs: tuple[int, ...] = CUTOFFS
    rows: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def update(self, ranks: Tensor) -> None:
        """ranks [N], 0-based ranks of the targets."""
        ranks = ranks.double()
        values = {"mrr": (1.0 / (ranks + 1.0)).sum()}
        for k in self.cutoffs:
            hit = ranks < k
            values[f"hr@{k}"] = hit.double().sum()
            values[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).sum()
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.rows += int(ranks.numel())

    def get(self) -> dict[str, float]:
        names = [f"{m}@{k}" for m in ("hr", "ndcg") for k in self.cutoffs] + ["mrr"]
        return {name: self.sums.get(name, 0.0) / max(self.rows, 1) for name in names}


def pessimistic_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """scores [B, I] (padding -inf), targets [B] -> 0-based ranks [B]; ties count against us."""
    target_scores = scores.gather(1, targets.unsqueeze(1))  # [B, 1]
    return (scores >= target_scores).sum(1) - 1


@torch.no_grad()
def evaluate_samples(
    model: SeqRecModel, samples: SampleSet, batch_size: int = 4096, adapt: bool = False
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``samples`` (which must be on the model's device).

    ``adapt`` lets test-time-adaptive models adapt on each row's history before predicting
    (T²ARec's alignment updates); training's validation leaves it off."""
    was_training = model.training
    model.eval()
    metrics = RankingMetrics()
    for start in range(0, len(samples), batch_size):
        batch = samples.rows(start, start + batch_size)
        hidden = model.last_hidden(batch.items, batch.times, batch.lengths, adapt)  # [B, D]
        metrics.update(pessimistic_ranks(model.score(hidden), batch.targets))
    model.train(was_training)
    result = metrics.get()
    result["rows"] = float(metrics.rows)
    return result


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda was asked for but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise typer.BadParameter(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def load_log(dataset: str, data_dir: Path | None) -> InteractionLog:
    """The replayer's loaders, so ids and parsing match the stream exactly. Without
    ``data_dir``, ML-1M comes from the replayer's cache/downloader (``replay.download``)."""
    if dataset not in ("ml-1m", "ml-1m-subset"):
        raise typer.BadParameter(f"dataset {dataset!r}: only ML-1M layouts are supported")
    if data_dir is None:
        if dataset != "ml-1m":
            raise typer.BadParameter(f"--data-dir is required for dataset {dataset!r}")
        from replay.download import DatasetUnavailable, ensure_ml1m

        try:
            data_dir = ensure_ml1m()
        except DatasetUnavailable as error:
            raise typer.BadParameter(str(error)) from error
    return load_ml1m_dir(data_dir, name=dataset)


def parse_until(until: str | None) -> float | None:
    """An event time as seconds since the epoch, or an ISO date/datetime (UTC when naive)."""
    if until is None:
        return None
    try:
        return float(until)
    except ValueError:
        pass
    try:
        parsed = pl.Series([until]).str.to_datetime(time_zone="UTC")[0]
    except Exception as error:
        raise typer.BadParameter(f"--until {until!r} is neither seconds nor an ISO date") from error
    return float(parsed.timestamp())


def protocol_samples(
    log: InteractionLog, vocab: ItemVocab, max_len: int, protocol: str, until: float | None
) -> dict[int, SampleSet]:
    sequences = UserSequences.from_events(events_before(log.events, until), vocab)
    return build_samples(sequences, max_len, protocol)


def markdown_table(metrics: dict[str, float]) -> str:
    names = list(metrics)
    header = "| " + " | ".join(names) + " |"
    rule = "|" + "|".join("---" for _ in names) + "|"
    cells = [f"{int(v)}" if n == "rows" else f"{v:.4f}" for n, v in metrics.items()]
    return "\n".join([header, rule, "| " + " | ".join(cells) + " |"])


def run_evaluation(
    checkpoint: Checkpoint,
    log: InteractionLog,
    protocol: str,
    device: torch.device,
    batch_size: int,
    rows: int | None = None,
    adapt: bool = True,
) -> dict[str, float]:
    """Test metrics; ``rows`` keeps a fixed random subset of the test rows (quick checks only)."""
    until = checkpoint.extra.get("until")
    vocab = ItemVocab.from_list(checkpoint.vocab)
    samples = protocol_samples(log, vocab, checkpoint.model.config.max_len, protocol, until)
    test = samples[TEST]
    if rows is not None and rows < len(test):
        chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
        test = test.subset(chosen[:rows].sort().values)
    return evaluate_samples(checkpoint.model, test.to(device), batch_size, adapt)


def main(
    checkpoint: Annotated[Path, typer.Option(help="checkpoint written by models.train")],
    protocol: Annotated[str, typer.Option(help="ttt4rec (3:2:5 per user) or loo")] = "ttt4rec",
    data_dir: Annotated[
        Path | None, typer.Option(help="dataset folder (default: as trained)")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="dataset name (default: as trained)")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    batch_size: Annotated[int, typer.Option(help="rows scored per batch")] = 4096,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    rows: Annotated[
        int | None, typer.Option(help="score a fixed random subset of test rows (quick checks)")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 on a busy CPU)")] = None,
    adapt: Annotated[
        bool, typer.Option(help="let test-time-adaptive models (T²ARec) adapt on each history")
    ] = True,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="config KEY=VALUE that changes no weight, e.g. tta_lr=0.1"),
    ] = None,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    torch_device = resolve_device(device)
    config_type = REGISTRY[read_metadata(checkpoint).get("model", "")][0]
    try:
        changes = parse_config_overrides(config_type, overrides or [])
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    loaded = load_checkpoint(checkpoint, device=torch_device, overrides=changes)
    stored_dir = loaded.extra.get("data_dir")
    folder = data_dir or (Path(stored_dir) if stored_dir else None)
    log = load_log(dataset or loaded.extra.get("dataset", "ml-1m"), folder)
    warnings = []
    if loaded.data_fingerprint and fingerprint(log.events) != loaded.data_fingerprint:
        warnings.append("the data differs from the data the checkpoint was trained on")
    if loaded.extra.get("protocol", protocol) != protocol:
        warnings.append(
            f"checkpoint was trained under protocol {loaded.extra.get('protocol')!r}; its "
            f"training rows may overlap the {protocol!r} test rows"
        )
    started = time.perf_counter()
    metrics = run_evaluation(loaded, log, protocol, torch_device, batch_size, rows, adapt)
    metrics["seconds"] = time.perf_counter() - started
    if as_json:
        record: dict[str, object] = {"model": loaded.model.name, "protocol": protocol, **metrics}
        record["adapt"] = adapt
        record["overrides"] = overrides or []
        record["hardware"] = hardware(torch_device)
        record["warnings"] = warnings
        print(json.dumps(record))
        return
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(
        f"{loaded.model.name} on {log.name}, protocol {protocol}, {hardware(torch_device)}\n"
    )
    typer.echo(markdown_table({k: v for k, v in metrics.items() if not math.isnan(v)}))


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
