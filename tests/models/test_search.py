"""DARec end to end on a tiny ML-1M-format log with titles: train/evaluate through the CLIs, and
the adapter search (trials saved, pruning reported, resumable, best trained)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from model_fixtures import invoke, write_drifting_ml1m

from models.checkpoint import load_checkpoint
from models.darec import DARec
from models.evaluate import app as evaluate_app
from models.search import app as search_app
from models.text import item_texts, item_token_table
from models.train import app as train_app

pytestmark = pytest.mark.slow
TINY_DAREC = ["--set", "backbone=tiny", "--set", "d_model=16", "--set", "lm_items=4"]


@pytest.fixture(scope="module")
def titled_ml1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 users x 20 ratings over 30 titled movies, users drifting through the catalogue."""
    folder = tmp_path_factory.mktemp("ml1m-titled")
    return write_drifting_ml1m(folder, 12, 20, 30, stride=2, seed=1, titled=True)


def test_train_and_evaluate_darec_reads_titles(titled_ml1m: Path, tmp_path: Path) -> None:
    out = tmp_path / "darec.safetensors"
    invoke(
        train_app,
        ["--model", "darec", "--data-dir", str(titled_ml1m), "--out", str(out), "--device", "cpu",
         "--quiet", "--batch-size", "16", "--max-len", "12", "--epochs", "1", *TINY_DAREC],
    )  # fmt: skip
    model = load_checkpoint(out).model
    assert isinstance(model, DARec)
    metadata = pl.DataFrame(
        {"item": [7], "title": ["Movie number 7 (1967)"], "genres": [["Horror", "Action"]]}
    )
    expected = item_token_table(["", *item_texts([7], metadata)], model.tokenizer, 12)[1]
    assert model.item_tokens.shape[0] == 31 and bool(model.text_ready)
    assert item_texts([7], metadata)[0] == "Movie number 7 (1967) | Horror, Action"
    assert int(model.item_tokens[7].ne(0).sum()) == int(expected.ne(0).sum())  # index 7 = raw 7
    output = invoke(
        evaluate_app, ["--checkpoint", str(out), "--protocol", "loo", "--json", "--device", "cpu"]
    )
    metrics = json.loads(output.strip().splitlines()[-1])
    assert metrics["model"] == "darec" and metrics["rows"] == 12
    assert 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0


def test_search_saves_trials_resumes_and_trains_the_best(titled_ml1m: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    study = tmp_path / "study"
    common = ["--data-dir", str(titled_ml1m), "--study-dir", str(study), "--device", "cpu",
              "--rounds", "2", "--round-batches", "2", "--batch-size", "16",
              "--set", "max_len=12", *TINY_DAREC]  # fmt: skip
    invoke(search_app, [*common, "--trials", "3"])
    first = json.loads((study / "trials.json").read_text())
    assert len(first) == 3 and all(row["state"] == "COMPLETE" for row in first)  # 3 start-ups
    for row in first:
        assert len(row["adapters"].split(",")) == 6  # one choice per backbone layer
        assert set(json.loads(row["intermediate_ndcg@10"])) == {"1", "2"}
    output = invoke(search_app, [*common, "--trials", "5", "--final-seconds", "0.5"])
    rows = pl.read_csv(study / "trials.csv")
    assert rows.height == 5 and rows["number"].to_list() == [0, 1, 2, 3, 4]
    assert rows.filter(pl.col("number") < 3)["adapters"].to_list() == [r["adapters"] for r in first]
    assert set(rows["state"].to_list()) <= {"COMPLETE", "PRUNED"}
    best = json.loads((study / "best.json").read_text())
    finished = rows.filter(pl.col("state") == "COMPLETE")
    assert best["best_valid_ndcg@10"] == pytest.approx(finished["valid_ndcg@10"].max())
    assert json.loads(output.strip().splitlines()[-1])["final_checkpoint"].endswith(".safetensors")
    final = load_checkpoint(study / "darec-best.safetensors").model
    assert isinstance(final, DARec) and final.config.adapters == best["best_adapters"]


def test_pretraining_layout_keeps_titles_for_darec(titled_ml1m: Path, tmp_path: Path) -> None:
    """``stream run`` pretrains from a copy of the stream in ML-1M layout: titles go with it."""
    from replay.datasets import load_ml1m_dir
    from stream.orchestrate import write_ml1m_layout

    log = load_ml1m_dir(titled_ml1m, "ml-1m")
    copy = load_ml1m_dir(write_ml1m_layout(log, tmp_path / "copy"), "ml-1m")
    assert copy.items is not None and log.items is not None
    assert copy.items.equals(log.items)
    assert copy.events.select("user", "item").equals(log.events.select("user", "item"))


def test_gaussian_process_sampler_proposes_after_the_start_up_trials(
    titled_ml1m: Path, tmp_path: Path
) -> None:
    pytest.importorskip("optuna")
    study = tmp_path / "gp"
    invoke(
        search_app,
        ["--data-dir", str(titled_ml1m), "--study-dir", str(study), "--device", "cpu",
         "--rounds", "1", "--round-batches", "1", "--batch-size", "16", "--sampler", "gp",
         "--trials", "5", "--set", "max_len=12", *TINY_DAREC],
    )  # fmt: skip
    rows = json.loads((study / "trials.json").read_text())
    assert len(rows) == 5  # the fifth comes from the fitted Gaussian process, not at random
    assert all(len(row["adapters"].split(",")) == 6 for row in rows)
