"""Where is the Kafka broker? One answer for every part of shiftstream.

Order: an explicit ``--bootstrap`` flag, else ``KAFKA_BOOTSTRAP`` from the environment, else
``127.0.0.1:9092``. ``ensure_reachable`` turns "no broker" into a clear error after a bounded retry,
so no command ever hangs waiting for a broker that is not there.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP"

START_HINT = (
    "start one with `python -m stream.broker --port 9092` (embedded Tansu), "
    "or `docker compose up kafka`, or pass --bootstrap HOST:PORT / set KAFKA_BOOTSTRAP"
)


class BrokerUnreachable(RuntimeError):
    """No Kafka broker answered at the given address within the retry budget."""


def resolve_bootstrap(flag: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The bootstrap address: flag, else $KAFKA_BOOTSTRAP, else the loopback default."""
    env = os.environ if environ is None else environ
    for candidate in (flag, env.get(BOOTSTRAP_ENV)):
        if candidate and candidate.strip():
            return candidate.strip()
    return DEFAULT_BOOTSTRAP


def split_host_port(bootstrap: str) -> tuple[str, int]:
    """First ``host:port`` of a comma-separated bootstrap list."""
    first = bootstrap.split(",")[0].strip()
    first = first.removeprefix("kafka://").removeprefix("tcp://")
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bootstrap address {bootstrap!r} is not of the form HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def ensure_reachable(
    bootstrap: str,
    timeout_s: float = 10.0,
    retry_every_s: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the broker answers a metadata request; raise ``BrokerUnreachable`` otherwise.

    A TCP connect is tried first (cheap, fails fast), then one metadata round trip with
    kafka-python, whose own bootstrap wait would otherwise block for 30 s.
    """
    host, port = split_host_port(bootstrap)
    deadline = clock() + timeout_s
    last_error = "no attempt made"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                pass
            fetch_cluster_metadata(bootstrap, timeout_s=max(1.0, deadline - clock()))
            return
        except (OSError, BrokerUnreachable) as error:
            last_error = str(error) or type(error).__name__
        if clock() >= deadline:
            raise BrokerUnreachable(
                f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f} s "
                f"({last_error}); {START_HINT}"
            )
        sleep(retry_every_s)


def fetch_cluster_metadata(bootstrap: str, timeout_s: float = 5.0) -> dict[str, object]:
    """One metadata request (describe cluster); raises ``BrokerUnreachable`` on failure."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    timeout_ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=max(timeout_ms, 1000),
            client_id="shiftstream-probe",
        )
    except KafkaError as error:
        raise BrokerUnreachable(f"{type(error).__name__}: {error}") from error
    try:
        return dict(admin.describe_cluster())
    except KafkaError as error:
        raise BrokerUnreachable(f"{type(error).__name__}: {error}") from error
    finally:
        admin.close()
