"""Settings precedence (defaults < file < environment < flags) and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.runners import ModelSpec
from stream.settings import Settings, SettingsError


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[stream]\nbatch_size = 8\nmodels = ["pop", "sasrec"]\nmax_wait_ms = 5.0\n')
    env = {"SHIFTSTREAM_BATCH_SIZE": "16", "SHIFTSTREAM_EXCLUDE_SEEN": "false",
           "SHIFTSTREAM_CHECKPOINTS": "sasrec=a.safetensors,ttt4rec=b.safetensors"}  # fmt: skip
    settings = Settings.load(toml, environ=env, overrides={"max_wait_ms": 7.0, "device": None})
    assert settings.batch_size == 16  # environment beats the file
    assert settings.models == ["pop", "sasrec"]  # from the file
    assert settings.max_wait_ms == 7.0  # flags beat everything; None means "not given"
    assert settings.exclude_seen is False
    assert settings.checkpoint_for("ttt4rec") == Path("b.safetensors")
    assert Settings.load(environ=settings.to_env()) == settings  # round trip through the env


def test_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("candidates: all\nwindow_s: 3600\n")
    settings = Settings.load(path, environ={})
    assert (settings.candidates, settings.window_s) == ("all", 3600)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SHIFTSTREAM_BATCH_SIZE": "many"}, "SHIFTSTREAM_BATCH_SIZE"),
        ({"SHIFTSTREAM_BATCH_SIZE": "0"}, "batch_size"),
        ({"SHIFTSTREAM_CANDIDATES": "some"}, "candidates"),
        ({"SHIFTSTREAM_DEVICE": "tpu"}, "device"),
        ({"SHIFTSTREAM_MODEL_PROCESSES": "-2"}, "model_processes"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.load(environ=environ)


def test_model_processes_auto_is_one_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(device="cpu").model_process_count() == 2
    assert Settings(device="cuda:0").model_process_count() == 1
    assert Settings(device="cuda", model_processes=3).model_process_count() == 3
    assert Settings(device="cpu", model_processes=0).model_process_count() == 0
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert Settings(device="auto").model_process_count() == 1
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert Settings(device="auto").model_process_count() == 2


def test_unknown_keys_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("batch_sise = 3\n")
    with pytest.raises(SettingsError, match="batch_sise"):
        Settings.load(path, environ={})
    with pytest.raises(SettingsError, match="does not exist"):
        Settings.load(tmp_path / "nope.toml", environ={})


def test_model_entries() -> None:
    assert ModelSpec.parse("ttt4rec:frozen") == ModelSpec("ttt4rec:frozen", "ttt4rec", False)
    assert ModelSpec.parse("popularity") == ModelSpec("pop", "pop", False)
    with pytest.raises(ValueError, match="frozen"):
        ModelSpec.parse("sasrec:warm")
