"""docker-compose.yml cannot run here (no Docker engine); keep it honest against the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.bootstrap import BOOTSTRAP_ENV

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def advertised_listeners(kafka: dict[str, Any]) -> dict[str, str]:
    listeners = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"].split(",")
    return dict(listener.split("://") for listener in listeners)


def test_kafka_is_a_single_apache_kraft_node_on_loopback(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    assert kafka["ports"] == ["127.0.0.1:9092:9092"]
    assert advertised_listeners(kafka)["HOST"] == "127.0.0.1:9092"


def test_services_connect_to_the_internal_listener(compose: dict[str, Any]) -> None:
    internal = advertised_listeners(compose["services"]["kafka"])["INTERNAL"]
    for name in ("worker", "sink", "replayer"):
        service = compose["services"][name]
        assert service["environment"][BOOTSTRAP_ENV] == internal, name
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service["build"] == "."


def test_worker_command_runs_the_faust_app(compose: dict[str, Any]) -> None:
    command = compose["services"]["worker"]["command"]
    assert command[:4] == ["faust", "-A", "stream.app", "worker"]
    assert importlib.util.find_spec("stream.app") is not None


def test_sink_command_is_a_stream_subcommand(compose: dict[str, Any]) -> None:
    from typer.main import get_command

    from stream.cli import app

    command = compose["services"]["sink"]["command"]
    assert command[:4] == ["python", "-m", "stream", "sink"]
    assert "sink" in get_command(app).commands  # type: ignore[attr-defined]


def test_worker_reads_checkpoints_from_the_shared_volume(compose: dict[str, Any]) -> None:
    from stream.settings import Settings

    env = compose["services"]["worker"]["environment"]
    settings = Settings.load(environ={k: str(v) for k, v in env.items()})
    assert settings.checkpoint_dir.startswith("/data/")
    assert any(v.endswith(":/data") for v in compose["services"]["worker"]["volumes"])


def test_replayer_command_names_a_dataset_the_cli_knows(compose: dict[str, Any]) -> None:
    from typer.main import get_command

    from replay.cli import app

    command = compose["services"]["replayer"]["command"]
    assert command[:3] == ["python", "-m", "replay"]
    click_group = get_command(app)
    assert command[3] in click_group.commands  # type: ignore[attr-defined]


def test_dockerfile_installs_all_three_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("replay", "stream", "models"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "pip install ." in dockerfile
