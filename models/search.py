"""DARec's dynamic adaption: Bayesian optimisation of each layer's adapter.

``python -m models.search --data-dir DIR --protocol loo --trials 12 --rounds 3
--round-batches 20 --study-dir runs/darec-search [--sampler tpe|gp] [--final-seconds 900]``

Every trial picks one adapter per backbone layer (``models/adapters.py``: none, LoRA 4/8/16,
serial or parallel bottleneck 16/32/64), trains DARec for ``rounds`` rounds of
``round-batches`` batches each on the protocol's training rows (a fixed amount of work, so
trials compare fairly on a shared, noisy machine; ``--round-seconds`` caps a round's time too),
and reports the validation NDCG@10 after each round; optuna's median pruner stops trials that
fall below the median of earlier trials at the same round. The objective is the last round's
validation NDCG@10.

The study lives in ``STUDY_DIR/study.db`` (SQLite), so an interrupted search resumes where it
stopped: running the command again adds trials until ``--trials`` have finished. After every
trial ``trials.csv`` and ``trials.json`` list all trials (state, adapters, intermediate and
final NDCG@10, seconds). With ``--final-seconds`` the best architecture is then trained with
``models.train`` under that budget into ``STUDY_DIR/darec-best.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import torch
import typer
from rich.console import Console

from models.adapters import ADAPTER_CHOICES
from models.backbone import BACKBONES
from models.darec import DARec, DARecConfig
from models.data import TRAIN, VALID, ItemVocab, SampleSet
from models.evaluate import evaluate_samples, load_log, protocol_samples, resolve_device
from models.registry import parse_config_overrides
from models.train import TrainOptions, train_epoch

console = Console(stderr=True)
STUDY_NAME = "darec-adapters"


@dataclasses.dataclass
class SearchOptions:
    study_dir: Path
    data_dir: Path
    dataset: str = "ml-1m"
    protocol: str = "loo"
    trials: int = 12
    rounds: int = 3
    round_batches: int = 20
    round_seconds: float | None = None
    valid_rows: int = 1000
    sampler: str = "tpe"
    seed: int = 2020
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    device: str = "auto"
    overrides: tuple[str, ...] = ()
    final_seconds: float | None = None


def layer_names(backbone: str) -> list[str]:
    return [f"layer{index}" for index in range(BACKBONES[backbone].n_layers)]


def adapters_of(params: dict[str, Any], backbone: str) -> str:
    """A trial's parameters -> the ``adapters`` config string."""
    return ",".join(str(params[name]) for name in layer_names(backbone))


@dataclasses.dataclass
class SearchData:
    config: DARecConfig  # the base config; trials replace ``adapters``
    vocab: ItemVocab
    metadata: pl.DataFrame | None
    train: SampleSet
    valid: SampleSet
    text_features: torch.Tensor | None = None  # shared by every trial: the frozen backbone's


def prepare(options: SearchOptions, device: torch.device) -> SearchData:
    log = load_log(options.dataset, options.data_dir)
    vocab = ItemVocab.from_events(log.events)
    overrides = parse_config_overrides(DARecConfig, options.overrides)
    config = DARecConfig(**{"n_items": vocab.size, **overrides})
    samples = protocol_samples(log, vocab, config.max_len, options.protocol, None)
    valid = samples[VALID]
    if options.valid_rows < len(valid):
        chosen = torch.randperm(len(valid), generator=torch.Generator().manual_seed(0))
        valid = valid.subset(chosen[: options.valid_rows].sort().values)
    return SearchData(config, vocab, log.items, samples[TRAIN].to(device), valid.to(device))


def build_trial_model(data: SearchData, adapters: str, device: torch.device) -> DARec:
    model = DARec(dataclasses.replace(data.config, adapters=adapters))
    model.use_item_metadata(data.vocab.raw_sorted, data.metadata)
    if data.text_features is not None:  # the frozen sentence embeddings do not depend on adapters
        model.item_text_features.copy_(data.text_features)
        model.text_ready.fill_(True)
    model = model.to(device)
    if data.text_features is None:
        model.item_matrix()
        data.text_features = model.item_text_features.detach().cpu().clone()
    return model


def run_trial(trial: Any, options: SearchOptions, data: SearchData, device: torch.device) -> float:
    import optuna

    adapters = adapters_of(
        {
            name: trial.suggest_categorical(name, ADAPTER_CHOICES)
            for name in layer_names(data.config.backbone)
        },
        data.config.backbone,
    )
    torch.manual_seed(options.seed)
    model = build_trial_model(data, adapters, device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=options.lr)
    train_options = TrainOptions(
        model="darec",
        out=Path("unused"),
        batch_size=options.batch_size,
        seed=options.seed,
        quiet=True,
    )
    trial.set_user_attr("adapters", adapters)
    trial.set_user_attr("trainable_parameters", sum(p.numel() for p in trainable))
    ndcg = 0.0
    for round_index in range(1, options.rounds + 1):
        seconds = options.round_seconds
        deadline = None if seconds is None else time.perf_counter() + seconds
        losses, _ = train_epoch(
            model,
            optimizer,
            data.train,
            train_options,
            round_index,
            deadline,
            options.round_batches,
        )
        valid = evaluate_samples(model, data.valid, options.eval_batch_size)
        ndcg = valid["ndcg@10"]
        trial.set_user_attr(f"round{round_index}_batches", len(losses))
        trial.report(ndcg, round_index)
        console.print(
            f"trial {trial.number} round {round_index}: {adapters}  valid NDCG@10 {ndcg:.4f}  "
            f"({len(losses)} batches, loss {sum(losses) / max(len(losses), 1):.3f})"
        )
        if trial.should_prune():
            raise optuna.TrialPruned()
    return ndcg


def trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for trial in study.trials:
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "adapters": trial.user_attrs.get("adapters", ""),
                "trainable_parameters": trial.user_attrs.get("trainable_parameters"),
                "intermediate_ndcg@10": json.dumps(
                    {str(k): round(v, 6) for k, v in sorted(trial.intermediate_values.items())}
                ),
                "valid_ndcg@10": trial.value,
                "seconds": seconds,
            }
        )
    return rows


def save_trials(study: Any, folder: Path) -> None:
    """trials.csv and trials.json, rewritten atomically after every trial."""
    rows = trial_rows(study)
    for name, payload in (
        ("trials.json", json.dumps(rows, indent=2)),
        ("trials.csv", pl.DataFrame(rows, infer_schema_length=None).write_csv() if rows else ""),
    ):
        partial = folder / (name + ".partial")
        partial.write_text(payload)
        partial.replace(folder / name)


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4)
    raise typer.BadParameter(f"--sampler must be tpe or gp, got {name!r}")


def run(options: SearchOptions) -> dict[str, Any]:
    try:
        import optuna
    except ImportError as error:
        raise typer.BadParameter(
            'the adapter search needs optuna: pip install -e ".[darec]"'
        ) from error
    device = resolve_device(options.device)
    options.study_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(options.study_dir / 'study.db').resolve()}"
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=make_sampler(options.sampler, options.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    # A trial left RUNNING by a killed search is marked failed, then the search goes on.
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.RUNNING:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    finished = sum(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    remaining = max(options.trials - finished, 0)
    console.print(f"study {storage}: {finished} trials done, {remaining} to run")
    data = prepare(options, device)
    if remaining:
        study.optimize(
            lambda trial: run_trial(trial, options, data, device),
            n_trials=remaining,
            callbacks=[lambda study, trial: save_trials(study, options.study_dir)],
        )
    save_trials(study, options.study_dir)
    best = study.best_trial
    result: dict[str, Any] = {
        "best_adapters": best.user_attrs["adapters"],
        "best_valid_ndcg@10": best.value,
        "trial": best.number,
    }
    (options.study_dir / "best.json").write_text(json.dumps(result, indent=2))
    console.print(
        f"best: trial {best.number} {best.user_attrs['adapters']} NDCG@10 {best.value:.4f}"
    )
    if options.final_seconds:
        from models.train import run as train_run

        out = options.study_dir / "darec-best.safetensors"
        train_run(
            TrainOptions(
                model="darec",
                out=out,
                dataset=options.dataset,
                data_dir=options.data_dir,
                protocol=options.protocol,
                batch_size=options.batch_size,
                eval_batch_size=options.eval_batch_size,
                lr=options.lr,
                device=options.device,
                seed=options.seed,
                max_train_seconds=options.final_seconds,
                valid_rows=options.valid_rows,
                overrides=(*options.overrides, f"adapters={result['best_adapters']}"),
            )
        )
        result["final_checkpoint"] = str(out)
    return result


def main(
    data_dir: Annotated[Path, typer.Option(help="folder with ratings.dat and movies.dat")],
    study_dir: Annotated[Path, typer.Option(help="study folder (study.db, trials.csv, best.json)")],
    dataset: Annotated[str, typer.Option(help="dataset name")] = "ml-1m",
    protocol: Annotated[str, typer.Option(help="ttt4rec (3:2:5) or loo")] = "loo",
    trials: Annotated[int, typer.Option(help="finished trials wanted in the study")] = 12,
    rounds: Annotated[int, typer.Option(help="train/validate rounds per trial")] = 3,
    round_batches: Annotated[int, typer.Option(help="training batches per round")] = 20,
    round_seconds: Annotated[
        float | None, typer.Option(help="also cap each round's training time")
    ] = None,
    valid_rows: Annotated[int, typer.Option(help="fixed validation subset")] = 1000,
    sampler: Annotated[str, typer.Option(help="tpe or gp")] = "tpe",
    seed: Annotated[int, typer.Option(help="random seed")] = 2020,
    batch_size: Annotated[int, typer.Option(help="training batch size")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 1e-3,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="DARec config KEY=VALUE")] = None,
    final_seconds: Annotated[
        float | None, typer.Option(help="then train the best architecture for this long")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads")] = None,
) -> None:
    if threads:
        torch.set_num_threads(threads)
    options = SearchOptions(
        study_dir=study_dir, data_dir=data_dir, dataset=dataset, protocol=protocol, trials=trials,
        rounds=rounds, round_batches=round_batches, round_seconds=round_seconds,
        valid_rows=valid_rows, sampler=sampler,
        seed=seed, batch_size=batch_size, lr=lr, device=device, overrides=tuple(set_ or ()),
        final_seconds=final_seconds,
    )  # fmt: skip
    try:
        parse_config_overrides(DARecConfig, options.overrides)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(json.dumps(run(options)))


app = typer.Typer(add_completion=False)
app.command()(main)

if __name__ == "__main__":
    app()
