"""Offline training of the slow weights: ``python -m models.train --model NAME --dataset ml-1m
[--data-dir DIR] [--protocol ttt4rec|loo] [--until DATE] [--epochs N] --out PATH``.

Recipe (seeds.md §1.6): one sample per target (history = the <= max_len items before it, only
the last position supervised), full-softmax cross-entropy through ``model.loss``, Adam 1e-3,
validation NDCG@10 (full ranking) after every epoch, early stopping after ``--patience`` epochs
without improvement. The best weights go to ``--out`` (safetensors + JSON metadata, no pickle).

Resume: after every epoch ``PATH.resume`` (also safetensors) holds the latest weights, the Adam
state, the RNG states and the bookkeeping (epoch, best NDCG@10, epochs without improvement).
A later run with the same ``--out`` continues from it unless ``--fresh`` is given. A
``--max-train-seconds`` stop ends the current epoch early; it still validates and saves.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import safetensors
import safetensors.torch
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from models.base import SeqRecModel
from models.checkpoint import load_weight_tensors, save_checkpoint, weight_tensors
from models.data import PROTOCOLS, TRAIN, VALID, ItemVocab, SampleSet, fingerprint
from models.evaluate import (
    evaluate_samples,
    hardware,
    load_log,
    parse_until,
    protocol_samples,
    resolve_device,
)
from models.registry import REGISTRY, build, parse_config_overrides

console = Console(stderr=True)


@dataclass
class TrainOptions:
    model: str
    out: Path
    dataset: str = "ml-1m"
    data_dir: Path | None = None
    protocol: str = "ttt4rec"
    until: str | None = None
    epochs: int = 300
    patience: int = 5
    batch_size: int | None = None  # None: 2048 on CUDA (the paper's), 256 on CPU
    eval_batch_size: int = 4096
    lr: float = 1e-3
    max_len: int = 50
    device: str = "auto"
    seed: int = 2020
    max_train_seconds: float | None = None
    valid_rows: int | None = None
    fresh: bool = False
    quiet: bool = False
    overrides: tuple[str, ...] = ()


@dataclass
class Bookkeeping:
    epoch: int = 0  # epochs finished
    best_ndcg: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    state = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{key}": value.detach().cpu().clone()
        for index, entries in state["state"].items()
        for key, value in entries.items()
    }
    return tensors, json.dumps(state["param_groups"])


def save_resume(
    path: Path,
    model: SeqRecModel,
    optimizer: torch.optim.Optimizer,
    book: Bookkeeping,
    identity: dict[str, str],
) -> None:
    weights, pinned = weight_tensors(model)
    tensors = {f"model.{k}": v.cpu().clone() for k, v in weights.items()}
    optim, groups = optimizer_tensors(optimizer)
    tensors.update(optim)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {**identity, **pinned, "param_groups": groups}
    metadata["book"] = json.dumps(dataclasses.asdict(book))
    partial = path.with_suffix(path.suffix + ".partial")
    safetensors.torch.save_file(tensors, str(partial), metadata=metadata)
    partial.replace(path)


def load_resume(
    path: Path, model: SeqRecModel, optimizer: torch.optim.Optimizer, identity: dict[str, str]
) -> Bookkeeping:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    for key, value in identity.items():
        if metadata.get(key) != value:
            raise typer.BadParameter(
                f"{path} was written for a different run ({key}: {metadata.get(key)!r} vs "
                f"{value!r}); pass --fresh to start over"
            )
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    load_weight_tensors(model, weights, metadata, path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(
        {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    )
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return Bookkeeping(**json.loads(metadata["book"]))


def supervised_targets(batch: SampleSet) -> torch.Tensor:
    """Targets [B, L] with only the last real position supervised (RecBole sequential CE)."""
    targets = torch.zeros_like(batch.items)
    return targets.scatter_(1, (batch.lengths - 1).unsqueeze(1), batch.targets.unsqueeze(1))


def train_epoch(
    model: SeqRecModel,
    optimizer: torch.optim.Optimizer,
    samples: SampleSet,
    options: TrainOptions,
    epoch: int,
    deadline: float | None,
    max_batches: int | None = None,
) -> tuple[list[float], bool]:
    """One pass in a seeded random order, or its first ``max_batches`` batches; returns (batch
    losses, whether the time budget ran out)."""
    model.train()
    generator = torch.Generator().manual_seed(options.seed * 1000 + epoch)
    order = torch.randperm(len(samples), generator=generator).to(samples.items.device)
    losses: list[torch.Tensor] = []  # kept on the device; one sync per progress refresh
    out_of_time = False
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}")]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=options.quiet, transient=True) as progress:
        size = options.batch_size or 256
        n_batches = (len(samples) + size - 1) // size
        task = progress.add_task(f"epoch {epoch}", total=n_batches, loss="")
        for start in range(0, len(samples), size):
            batch = samples.subset(order[start : start + size])
            loss = model.loss(batch.items, batch.times, supervised_targets(batch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            if len(losses) % 20 == 1 and not options.quiet:
                recent = float(torch.stack(losses[-20:]).mean())
                progress.update(task, loss=f"loss {recent:.4f}")
            progress.advance(task)
            if max_batches is not None and len(losses) >= max_batches:
                break
            if deadline is not None and time.perf_counter() > deadline:
                out_of_time = True
                break
    return torch.stack(losses).tolist() if losses else [], out_of_time


def run(options: TrainOptions) -> dict[str, Any]:
    if options.model not in REGISTRY:
        raise typer.BadParameter(f"unknown model {options.model!r}; known: {sorted(REGISTRY)}")
    if options.protocol not in PROTOCOLS:
        raise typer.BadParameter(f"--protocol must be one of {PROTOCOLS}")
    device = resolve_device(options.device)
    if options.batch_size is None:
        options = dataclasses.replace(options, batch_size=2048 if device.type == "cuda" else 256)
    torch.manual_seed(options.seed)
    np.random.seed(options.seed)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    log = load_log(options.dataset, options.data_dir)
    vocab = ItemVocab.from_events(log.events)
    until = parse_until(options.until)
    data_fingerprint = fingerprint(log.events)
    config_type, _ = REGISTRY[options.model]
    overrides = parse_config_overrides(config_type, options.overrides)
    config = config_type(**{"n_items": vocab.size, "max_len": options.max_len, **overrides})
    model = build(options.model, config)
    model.use_item_metadata(vocab.raw_sorted, log.items)
    model = model.to(device)
    samples = protocol_samples(log, vocab, config.max_len, options.protocol, until)
    train_set, valid_set = samples[TRAIN].to(device), samples[VALID]
    if options.valid_rows is not None and options.valid_rows < len(valid_set):
        chosen = torch.randperm(len(valid_set), generator=torch.Generator().manual_seed(0))
        valid_set = valid_set.subset(chosen[: options.valid_rows].sort().values)
    valid_set = valid_set.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    identity = {
        "model": options.model,
        "config": json.dumps(dataclasses.asdict(config)),
        "data_fingerprint": data_fingerprint,
        "protocol": options.protocol,
        "until": json.dumps(until),
    }
    resume_path = Path(str(options.out) + ".resume")
    book = Bookkeeping()
    if resume_path.is_file() and not options.fresh:
        book = load_resume(resume_path, model, optimizer, identity)
        console.print(
            f"resuming {resume_path} after epoch {book.epoch} (best NDCG@10 {book.best_ndcg:.4f})"
        )
    if not options.quiet:
        console.print(
            f"{options.model} on {log.name} ({options.protocol}): {len(train_set)} train / "
            f"{len(valid_set)} valid rows, {vocab.size - 1} items, {hardware(device)}"
        )
    extra = {
        "dataset": options.dataset,
        "data_dir": str(options.data_dir) if options.data_dir else None,
        "protocol": options.protocol,
        "until": until,
        "seed": options.seed,
        "batch_size": options.batch_size,
        "lr": options.lr,
        "hardware": hardware(device),
        "command": " ".join(sys.argv),
    }
    if book.epoch == 0 and not book.history:
        initial = evaluate_samples(model, valid_set, options.eval_batch_size)
        book.history.append({"epoch": 0, **initial})
        if not options.quiet:
            console.print(
                f"epoch   0  untrained valid NDCG@10 {initial['ndcg@10']:.4f}  "
                f"HR@10 {initial['hr@10']:.4f}"
            )
    started = time.perf_counter()
    deadline = None if options.max_train_seconds is None else started + options.max_train_seconds
    out_of_time = False
    while not book.stopped_early and book.epoch < options.epochs and not out_of_time:
        epoch_start = time.perf_counter()
        losses, out_of_time = train_epoch(
            model, optimizer, train_set, options, book.epoch + 1, deadline
        )
        book.train_seconds += time.perf_counter() - epoch_start
        book.epoch += 1
        valid = evaluate_samples(model, valid_set, options.eval_batch_size)
        loss = sum(losses) / max(len(losses), 1)
        edge = max(1, min(50, len(losses) // 10))  # mean of the first and last batches
        first, last = sum(losses[:edge]) / edge, sum(losses[-edge:]) / edge
        book.history.append(
            {"epoch": book.epoch, "loss": loss, "loss_first": first, "loss_last": last,
             "batches": len(losses), **valid}
        )  # fmt: skip
        improved = valid["ndcg@10"] > book.best_ndcg
        if improved:
            book.best_ndcg, book.best_epoch, book.bad_epochs = valid["ndcg@10"], book.epoch, 0
            save_checkpoint(
                options.out, model, vocab.to_list(), data_fingerprint,
                metrics={"valid": valid, "epoch": book.epoch, "loss": loss},
                extra={**extra, "epochs_run": book.epoch, "train_seconds": book.train_seconds},
            )  # fmt: skip
        else:
            book.bad_epochs += 1
            book.stopped_early = book.bad_epochs >= options.patience
        save_resume(resume_path, model, optimizer, book, identity)
        if not options.quiet:
            mark = "*" if improved else " "
            console.print(
                f"epoch {book.epoch:3d}{mark} loss {loss:.4f} ({first:.3f} -> {last:.3f})  "
                f"valid NDCG@10 {valid['ndcg@10']:.4f}  "
                f"HR@10 {valid['hr@10']:.4f}  ({time.perf_counter() - epoch_start:.0f}s)"
            )
    return {"bookkeeping": dataclasses.asdict(book), "out": str(options.out)}


def main(
    model: Annotated[str, typer.Option(help="registered model name")],
    out: Annotated[Path, typer.Option(help="checkpoint path (.safetensors)")],
    dataset: Annotated[str, typer.Option(help="dataset name")] = "ml-1m",
    data_dir: Annotated[Path | None, typer.Option(help="folder with ratings.dat")] = None,
    protocol: Annotated[str, typer.Option(help="ttt4rec (3:2:5) or loo")] = "ttt4rec",
    until: Annotated[str | None, typer.Option(help="train on events before this time")] = None,
    epochs: Annotated[int, typer.Option(help="maximum epochs")] = 300,
    patience: Annotated[int, typer.Option(help="epochs without improvement")] = 5,
    batch_size: Annotated[
        int | None, typer.Option(help="training batch size (default: 2048 on cuda, 256 on cpu)")
    ] = None,
    eval_batch_size: Annotated[int, typer.Option(help="validation batch size")] = 4096,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    max_len: Annotated[int, typer.Option(help="history window")] = 50,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    seed: Annotated[int, typer.Option(help="random seed")] = 2020,
    max_train_seconds: Annotated[float | None, typer.Option(help="training time budget")] = None,
    valid_rows: Annotated[int | None, typer.Option(help="validate on a fixed subset")] = None,
    fresh: Annotated[bool, typer.Option(help="ignore an existing PATH.resume")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress output")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config KEY=VALUE")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 on a busy CPU)")] = None,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    options = TrainOptions(
        model=model, out=out, dataset=dataset, data_dir=data_dir, protocol=protocol, until=until,
        epochs=epochs, patience=patience, batch_size=batch_size, eval_batch_size=eval_batch_size,
        lr=lr, max_len=max_len, device=device, seed=seed, max_train_seconds=max_train_seconds,
        valid_rows=valid_rows, fresh=fresh, quiet=quiet, overrides=tuple(set_ or ()),
    )  # fmt: skip
    if model not in REGISTRY:
        raise typer.BadParameter(f"unknown model {model!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        parse_config_overrides(REGISTRY[model][0], options.overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    result = run(options)
    book = result["bookkeeping"]
    typer.echo(
        f"best valid NDCG@10 {book['best_ndcg']:.4f} at epoch {book['best_epoch']} "
        f"({book['epoch']} epochs, {book['train_seconds']:.0f}s training) -> {out}"
    )


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
