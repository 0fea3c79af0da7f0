"""The model step in child processes of their own, next to the Faust worker
(``model_processes``).

Why processes: the worker's event loop (aiokafka, Faust), the global-view reader and the model
step share one GIL inside one process. The model step issues thousands of short torch calls per
batch; each hands the GIL over and waits to get it back, so on a small CPU the worker used one
core while the other sat idle (docs/streaming.md, "Where the model step runs"). Here each child
holds a ``WorkerCore`` (models, decoded snapshots of its users) and the ``ViewReader`` that feeds
its global view; a sender thread per child writes the agent's batches to its pipe, and the
agent's executor thread collects the ``BatchOutput``s in order. The arithmetic is the same code
on the same inputs, so the results equal the in-thread core's.

Lifetime: a child starts when the app is created (a bad checkpoint fails the worker before it
joins the group), starts its view reader when asked, and ends when the worker ends: on a pipe
closed from the other side (a worker killed with -9 closes it), on the parent's death signal
(Linux), or on ``stop``. It ignores SIGINT: a Ctrl-C reaches the whole process group, and the
worker decides what happens to a batch in flight.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from replay.schema import Interaction
from stream.processes import die_with_parent, freeze_start_up_heap
from stream.settings import Settings
from stream.worker import IN_FLIGHT, BatchOutput, ViewReader, build_core

START_TIMEOUT_S = 300.0  # loading checkpoints (DARec reads a language model) can take a while
STOP_TIMEOUT_S = 5.0


class ModelProcessError(RuntimeError):
    """The model process failed; the message carries its traceback."""


class ModelProcess:
    """A ``WorkerCore`` and its ``ViewReader`` in a child process.

    ``submit`` queues a batch and returns at once (a sender thread writes it to the pipe, which
    blocks while the child is busy); ``result`` waits for the oldest batch's output. Batches
    are answered in the order they were submitted."""

    def __init__(self, settings: Settings, bootstrap: str, name: str = "shiftstream-models"):
        context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=serve, args=(child_end, settings.as_dict(), bootstrap), name=name, daemon=True
        )
        self._process.start()
        child_end.close()
        self._requests: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_requests, name=f"{name}-send")
        self._sender.daemon = True
        self._sender.start()
        self._view_started = False

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> list[str]:
        """-> the configured model names, once the checkpoints are loaded."""
        names: list[str] = self._reply(timeout_s, "loading the models")
        return names

    def start_view(self) -> None:
        if not self._view_started:
            self._requests.put(("view",))
            self._view_started = True

    def submit(
        self,
        events: Sequence[Interaction],
        stored: Mapping[int, bytes | None],
        produced_ms: Mapping[int, float] | None = None,
        batch_size: int | None = None,
    ) -> None:
        self._requests.put(("process", list(events), dict(stored), produced_ms, batch_size))

    def forget(self, users: Collection[int]) -> None:
        """Drop these users' decoded snapshots: another shard has them now. Queued like a
        batch, so it cannot overtake one; no answer."""
        if users:
            self._requests.put(("forget", list(users)))

    def result(self) -> BatchOutput:
        output: BatchOutput = self._reply(None, "processing a batch")
        return output

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the child to finish, wait a bounded time, then terminate it."""
        self._requests.put(("stop",))
        self._requests.put(None)
        self._sender.join(timeout_s)
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout_s)
        self._connection.close()

    def _send_requests(self) -> None:
        while (request := self._requests.get()) is not None:
            try:
                self._connection.send(request)
            except OSError:
                return  # the child is gone; ``result`` reports how it ended

    def _reply(self, timeout_s: float | None, doing: str) -> Any:
        """The child's answer to the last request; raises ``ModelProcessError`` on its error,
        its death or no answer within ``timeout_s`` (None: wait as long as it lives)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._connection.poll(1.0):
            if not self._process.is_alive():
                raise ModelProcessError(
                    f"the model process died while {doing} (exit code {self._process.exitcode})"
                )
            if deadline is not None and time.monotonic() > deadline:
                self._process.terminate()
                raise ModelProcessError(f"the model process did not answer while {doing}")
        try:
            status, payload = self._connection.recv()
        except (EOFError, OSError) as error:  # the child died mid-answer
            raise ModelProcessError(f"the model process closed its pipe while {doing}") from error
        if status == "error":
            raise ModelProcessError(f"the model process failed while {doing}:\n{payload}")
        return payload


class ModelShards:
    """``count`` model processes; each batch is split by user between them (``assign_shards``).

    Per-user models are independent across users, and the candidates and popularity come from
    the global view in event time, so splitting a batch by user changes no result (the same
    argument that makes results independent of the micro-batch size), whichever shard takes a
    user. ``process`` has ``WorkerCore.process``'s signature; ``submit`` and ``collect`` are its
    two halves, so the shards compute side by side and the next batch can be queued before this
    one is back.
    """

    def __init__(self, settings: Settings, bootstrap: str, count: int) -> None:
        if count < 1:
            raise ValueError(f"at least one model process is needed, got {count}")
        self.shards = [
            ModelProcess(settings, bootstrap, f"shiftstream-models-{i}") for i in range(count)
        ]
        try:
            names = [shard.wait_ready() for shard in self.shards]
        except BaseException:
            self.stop()
            raise
        self.model_names = names[0]
        self.owner: dict[int, int] = {}  # user -> the shard that made the user's newest snapshot

    def start_view(self) -> None:
        for shard in self.shards:
            shard.start_view()

    def process(
        self,
        events: Sequence[Interaction],
        stored: Mapping[int, bytes | None],
        produced_ms: Mapping[int, float] | None = None,
    ) -> BatchOutput:
        return self.collect(self.submit(events, stored, produced_ms))

    def submit(
        self,
        events: Sequence[Interaction],
        stored: Mapping[int, bytes | None],
        produced_ms: Mapping[int, float] | None = None,
    ) -> list[ModelProcess]:
        """Queue each shard's part of the batch; -> the shards that got one (for ``collect``).
        Returns at once: the agent hands the next batch over while the shards still work."""
        chosen = assign_shards(events, stored, self.owner, len(self.shards))
        left: list[list[int]] = [[] for _ in self.shards]  # users that move, by the shard left
        for user, index in chosen.items():
            if self.owner.get(user, index) != index:
                left[self.owner[user]].append(user)
        for process, moved in zip(self.shards, left, strict=True):
            process.forget(moved)  # not in flight, so that shard is done with them
        self.owner.update(chosen)
        parts: list[list[Interaction]] = [[] for _ in self.shards]
        for event in events:
            parts[chosen[event.user]].append(event)  # in order: a user's events stay in order
        busy = []
        for shard, part in zip(self.shards, parts, strict=True):
            if part:
                users = {event.user for event in part}
                part_stored = {u: stored[u] for u in users if u in stored}
                shard.submit(part, part_stored, produced_ms, len(events))
                busy.append(shard)
        return busy

    def collect(self, busy: Sequence[ModelProcess]) -> BatchOutput:
        """The merged output of the oldest submitted batch (``busy``: what ``submit`` returned)."""
        merged = BatchOutput(blobs={}, records=[])
        for shard in busy:
            output = shard.result()
            merged.blobs.update(output.blobs)
            merged.records += output.records
            merged.redelivered += output.redelivered
            merged.compute_s = max(merged.compute_s, output.compute_s)
            merged.wait_s = max(merged.wait_s, output.wait_s)
        return merged

    def stop(self) -> None:
        for shard in self.shards:
            shard.stop()


def assign_shards(
    events: Sequence[Interaction],
    stored: Mapping[int, bytes | None],
    owner: Mapping[int, int],
    count: int,
) -> dict[int, int]:
    """-> the shard (0..count-1) of each user of the batch, so that the shards get about as many
    events each: a batch is done when its slowest shard is, and one user can hold most of it.

    A user whose newest snapshot is still in flight (``IN_FLIGHT``) goes to ``owner[user]``, the
    shard that made it and the only one that has it. Any other user's newest snapshot is the
    stored one, so any shard can take the user: heaviest first, a user stays with its owner
    (which holds its decoded snapshot) while that shard is within an even share of the batch,
    else goes to the shard with the fewest events so far."""
    per_user = Counter(event.user for event in events)
    even_share = -(-len(events) // count)
    load = [0] * count
    chosen: dict[int, int] = {}
    for user, n in per_user.items():
        if stored.get(user) == IN_FLIGHT:
            chosen[user] = owner[user]
            load[owner[user]] += n
    for user, n in sorted(per_user.items(), key=lambda item: -item[1]):
        if user in chosen:
            continue
        shard = owner.get(user)
        if shard is None or load[shard] + n > even_share:
            shard = min(range(count), key=load.__getitem__)
        chosen[user] = shard
        load[shard] += n
    return chosen


def serve(connection: Connection, settings_values: dict[str, Any], bootstrap: str) -> None:
    """The child's main loop: build the core, then answer requests until told to stop or the
    pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(signal.SIGKILL)()
    settings = Settings(**settings_values)
    try:
        core, view = build_core(settings)
    except Exception:
        _send(connection, ("error", traceback.format_exc()))
        return
    reader = ViewReader(bootstrap, settings.interactions_topic, view)
    freeze_start_up_heap()
    if not _send(connection, ("ok", [runner.name for runner in core.runners])):
        return
    try:
        while True:
            try:
                request = connection.recv()
            except EOFError:
                return  # the worker is gone
            kind = request[0]
            if kind == "stop":
                return
            if kind == "view":
                reader.start()
                continue
            if kind == "forget":
                core.forget(request[1])
                continue
            try:
                reply: tuple[str, Any] = ("ok", core.process(*request[1:]))
            except Exception:
                reply = ("error", traceback.format_exc())
            if not _send(connection, reply):
                return
    finally:
        if reader.started:
            reader.stop()


def _send(connection: Connection, message: tuple[str, Any]) -> bool:
    try:
        connection.send(message)
    except (BrokenPipeError, ConnectionResetError):
        return False  # the worker is gone; nobody is waiting for this answer
    return True
