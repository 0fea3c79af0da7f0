"""Worker processes started by ``stream run``, the tests and the benchmark, stopped by PID.

A worker is ``python -m faust -A stream.app worker --without-web --datadir DIR -l warn`` with the
settings passed as ``SHIFTSTREAM_*`` environment variables. Stopping sends SIGTERM and waits a
bounded time, then SIGKILL (Faust can hang on shutdown after an agent error). Long-lived
processes (a worker, a model process) freeze their start-up heap once everything is loaded.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from stream.settings import Settings

STOP_TIMEOUT_S = 15.0
REPO_ROOT = Path(__file__).resolve().parents[1]


def die_with_parent(signum: int) -> Callable[[], None]:
    """A ``preexec_fn``: Linux sends ``signum`` to the child if the process that started it dies,
    so a crashed test or orchestrator never leaves brokers or workers behind."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signum)

    return arm


def freeze_start_up_heap() -> None:
    """Keep what a long-lived process has loaded so far (torch, the libraries, the models, the
    Faust app) out of the garbage collector's full passes: it lives as long as the process, and
    each full pass walked all of it (0.13-0.28 s of collector time per benchmark run in a worker
    or a model process, most of it one full pass; docs/streaming.md, "Garbage collection").
    Start-up garbage is collected first, so that nothing unreachable is kept."""
    gc.collect()
    gc.freeze()


def stop_process(process: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM, wait at most ``timeout_s``, then SIGKILL; return the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return process.returncode


class WorkerProcess:
    def __init__(self, settings: Settings, workdir: Path, name: str = "worker-0") -> None:
        self.settings = settings
        self.datadir = workdir / name
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.datadir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env()}
        env.pop("SHIFTSTREAM_CONFIG", None)  # everything travels in the variables
        # the worker imports this very checkout, whatever its working directory
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        command = [
            sys.executable, "-m", "faust", "-A", "stream.app", "--datadir", str(self.datadir),
            "-l", "warn", "worker", "--without-web",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> None:
        """SIGKILL (kill -9), as a crash would; waits for the exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        if self.process is None:
            return None
        return stop_process(self.process, timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
