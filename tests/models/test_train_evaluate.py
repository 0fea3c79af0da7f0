"""End to end through the CLIs on a tiny ML-1M-format log: train, load without pickle, resume,
evaluate under both protocols."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import torch
from model_fixtures import invoke, runner, write_drifting_ml1m

from models.checkpoint import load_checkpoint
from models.evaluate import app as evaluate_app
from models.train import app as train_app
from models.ttt4rec import TTTMLPState

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_ml1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """15 users x 24 ratings over 40 movies, users drifting through the catalogue."""
    folder = tmp_path_factory.mktemp("ml1m-tiny")
    return write_drifting_ml1m(folder, 15, 24, 40, stride=3, seed=0, titled=False)


def train(data: Path, out: Path, *extra: str) -> str:
    args = ["--data-dir", str(data), "--out", str(out), "--device", "cpu", "--quiet"]
    args += ["--batch-size", "32", "--max-len", "12", "--set", "d_model=16", *extra]
    return invoke(train_app, args)


def resume_tensors(out: Path) -> dict[str, torch.Tensor]:
    with safetensors.safe_open(str(out) + ".resume", framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys() if k.startswith("model.")}  # noqa: SIM118


@pytest.mark.parametrize("model", ["sasrec", "ttt4rec"])
def test_train_resume_and_evaluate(tiny_ml1m: Path, tmp_path: Path, model: str) -> None:
    out = tmp_path / f"{model}.safetensors"
    train(tiny_ml1m, out, "--model", model, "--epochs", "1")
    loaded = load_checkpoint(out)
    assert loaded.model.name == model and loaded.vocab[0] == -1 and len(loaded.vocab) == 41
    assert loaded.extra["protocol"] == "ttt4rec" and "ndcg@10" in loaded.metrics["valid"]
    assert len(loaded.data_fingerprint) == 64
    if model == "ttt4rec":  # the streaming policy is a config override, not a weight
        recurrent = load_checkpoint(out, overrides={"policy": "recurrent"})
        assert recurrent.model.state_type is TTTMLPState
        assert isinstance(recurrent.model.init_state(2), TTTMLPState)

    output = train(tiny_ml1m, out, "--model", model, "--epochs", "2")
    assert "epochs" in output
    straight = tmp_path / "straight.safetensors"
    train(tiny_ml1m, straight, "--model", model, "--epochs", "2")
    resumed, uninterrupted = resume_tensors(out), resume_tensors(straight)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name

    for protocol in ("ttt4rec", "loo"):
        result = runner.invoke(
            evaluate_app,
            ["--checkpoint", str(out), "--protocol", protocol, "--json", "--device", "cpu"],
        )
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.output.strip().splitlines()[-1])
        assert metrics["model"] == model and metrics["rows"] > 0
        for name in ("hr@10", "hr@50", "ndcg@10", "ndcg@50", "mrr"):
            assert 0.0 <= metrics[name] <= 1.0
        assert metrics["hr@10"] <= metrics["hr@50"] and metrics["ndcg@10"] <= metrics["ndcg@50"]
    assert (json.loads(result.output.strip().splitlines()[-1])["rows"]) == 15  # loo: one per user


def test_until_and_bad_input(tiny_ml1m: Path, tmp_path: Path) -> None:
    out = tmp_path / "early.safetensors"
    train(tiny_ml1m, out, "--model", "sasrec", "--epochs", "1", "--until", "978311000")
    loaded = load_checkpoint(out)
    assert loaded.extra["until"] == 978_311_000.0
    bad = runner.invoke(
        train_app, ["--model", "nope", "--out", str(out), "--data-dir", str(tiny_ml1m)]
    )
    assert bad.exit_code != 0 and "unknown model" in bad.output
    bad_set = runner.invoke(
        train_app,
        ["--model", "sasrec", "--out", str(out), "--data-dir", str(tiny_ml1m), "--set", "colour=3"],
    )
    assert bad_set.exit_code != 0 and "colour" in bad_set.output
