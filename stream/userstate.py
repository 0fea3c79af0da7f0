"""One user's streaming state across all models, and its versioned bytes for the Faust table.

A snapshot holds what the prequential step needs about a user: the id of the last event applied
(so a redelivered event never updates the state twice), the items seen so far (for the
``exclude_seen`` option and the cold-user flag), and per stateful model the model ``State`` (one
user) plus the hidden vector after the last step, which ranks the user's next event.

Bytes: magic ``SSUS``, format version, header length, a JSON header, then blobs. Model states are
encoded with ``models.state.encode_state`` (their own versioned header with the checkpoint hash),
hidden vectors likewise as a one-field state.

>>> snap = UserSnapshot(user=4, last_event_id=9, seen=[3, 5])
>>> decode_snapshot(encode_snapshot(snap, {}), {}).seen
[3, 5]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

from models.state import State, decode_state, encode_state, frame_bytes, unframe_bytes
from stream.runners import SeqRecRunner

SNAPSHOT_MAGIC = b"SSUS"
SNAPSHOT_VERSION = 1


class SnapshotFormatError(ValueError):
    """Bytes that are not a user snapshot this code can read."""


@dataclass
class Hidden(State):
    hidden: Tensor  # [U, D] hidden after the user's last event


@dataclass
class UserSnapshot:
    user: int
    last_event_id: int = -1  # -1: no event applied yet
    seen: list[int] = field(default_factory=list)  # raw item ids, in event order
    states: dict[str, State] = field(default_factory=dict)  # model name -> State, one user
    hidden: dict[str, Tensor] = field(default_factory=dict)  # model name -> [1, D]

    @property
    def n_events(self) -> int:
        return len(self.seen)


def encode_snapshot(snapshot: UserSnapshot, runners: Mapping[str, SeqRecRunner]) -> bytes:
    blobs: list[bytes] = []
    models: dict[str, list[int]] = {}
    for name, state in snapshot.states.items():
        runner = runners[name]
        state_blob = runner.encode(state)
        hidden_blob = encode_state(
            Hidden(snapshot.hidden[name]), runner.model_name, runner.checkpoint_hash
        )
        models[name] = [len(state_blob), len(hidden_blob)]
        blobs += [state_blob, hidden_blob]
    header = {
        "user": snapshot.user,
        "last": snapshot.last_event_id,
        "seen": snapshot.seen,
        "models": models,
    }
    return frame_bytes(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, header, blobs)


def decode_snapshot(data: bytes, runners: Mapping[str, SeqRecRunner]) -> UserSnapshot:
    header, offset = unframe_bytes(
        data, SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SnapshotFormatError, "a user snapshot"
    )
    snapshot = UserSnapshot(user=header["user"], last_event_id=header["last"], seen=header["seen"])
    for name, (state_len, hidden_len) in header["models"].items():
        state_blob = data[offset : offset + state_len]
        hidden_blob = data[offset + state_len : offset + state_len + hidden_len]
        offset += state_len + hidden_len
        runner = runners.get(name)
        if runner is None:  # a model no longer configured: drop its state
            continue
        snapshot.states[name] = runner.decode(state_blob)
        hidden = decode_state(hidden_blob, Hidden, runner.model_name, runner.checkpoint_hash)
        snapshot.hidden[name] = runner.cast(hidden.hidden)
    return snapshot
