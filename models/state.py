"""Per-user streaming state: a typed container of tensors, passed in and returned, never kept on
a module (ttt-lm-pytorch's fast-weight dicts, mamba.py's ``step(x, cache)``).

Every field is a tensor whose first dimension is the user (U). A model defines its own subclass::

    @dataclass
    class TTT4RecState(State):
        W1: Tensor  # [U, H, D_h, F]
        ...

States serialise to bytes with a versioned header and no pickle: magic, header length, a JSON
header (format version, model name, state type, checkpoint hash, per-field dtype/shape/offset),
then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import orjson
import torch
from torch import Tensor

STATE_MAGIC = b"SSST"
STATE_FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHI")  # magic, format version, header length

S = TypeVar("S", bound="State")


class StateFormatError(ValueError):
    """State bytes that do not match what the reader expects; the message says what differs."""


@dataclass
class State:
    """Base class: a dataclass whose fields are all tensors with a leading user dimension."""

    def __post_init__(self) -> None:
        # a field named like a method (``index``, ``to``, ``put`` ...) would silently hide it
        clashes = [f.name for f in fields(self) if callable(getattr(State, f.name, None))]
        if clashes:
            name = type(self).__name__
            raise TypeError(f"{name} fields {clashes} hide State methods; rename them")

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def n_users(self) -> int:
        return int(next(iter(self.tensors().values())).shape[0])

    def index(self: S, users: Tensor | slice | list[int]) -> S:
        """The states of some users (a new container; tensors are copies for index tensors)."""
        return type(self)(**{k: v[users] for k, v in self.tensors().items()})

    def put(self: S, users: Tensor, other: S) -> S:
        """A copy of this state with rows ``users`` replaced by ``other`` (out of place)."""
        updated = {}
        for name, tensor in self.tensors().items():
            clone = tensor.clone()
            clone[users] = getattr(other, name).to(tensor.dtype)
            updated[name] = clone
        return type(self)(**updated)

    def to(self: S, device: torch.device | str) -> S:
        return type(self)(**{k: v.to(device) for k, v in self.tensors().items()})

    @classmethod
    def cat(cls: type[S], states: list[S]) -> S:
        names = [f.name for f in fields(cls)]
        return cls(**{n: torch.cat([getattr(s, n) for s in states]) for n in names})

    def nbytes_per_user(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.tensors().values())


def encode_state(state: State, model: str, checkpoint: str) -> bytes:
    """Serialise ``state`` (any number of users) to bytes; see the module docstring."""
    tensors = state.tensors()
    blobs = [_tensor_bytes(tensor) for tensor in tensors.values()]
    layout = tuple(
        (name, str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), len(blob))
        for (name, tensor), blob in zip(tensors.items(), blobs, strict=True)
    )
    return _state_preamble(model, type(state).__name__, checkpoint, layout) + b"".join(blobs)


FieldLayout = tuple[str, str, tuple[int, ...], int]  # name, dtype, shape, nbytes


@functools.lru_cache(maxsize=1024)
def _state_preamble(
    model: str, state_type: str, checkpoint: str, layout: tuple[FieldLayout, ...]
) -> bytes:
    """Prefix and JSON header of ``encode_state``. A streaming worker encodes the same layout
    (one user of one model) for every touched user of every batch, so it is built once."""
    entries: list[dict[str, Any]] = []
    offset = 0
    for name, dtype, shape, nbytes in layout:
        entries.append(
            {"name": name, "dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": nbytes}
        )
        offset += nbytes
    header = {
        "format": STATE_FORMAT_VERSION,
        "model": model,
        "state_type": state_type,
        "checkpoint": checkpoint,
        "fields": entries,
    }
    return frame_bytes(STATE_MAGIC, STATE_FORMAT_VERSION, header, [])


def read_state_header(data: bytes) -> dict[str, Any]:
    header, payload_offset = unframe_bytes(
        data, STATE_MAGIC, STATE_FORMAT_VERSION, StateFormatError, "shiftstream state bytes"
    )
    header["_payload_offset"] = payload_offset
    return header


def frame_bytes(magic: bytes, version: int, header: dict[str, Any], blobs: list[bytes]) -> bytes:
    """``magic | version | header length | JSON header | blobs``: the layout of every binary
    value shiftstream writes (model states here, user snapshots in ``stream.userstate``)."""
    header_bytes = orjson.dumps(header)
    return _PREFIX.pack(magic, version, len(header_bytes)) + header_bytes + b"".join(blobs)


def unframe_bytes(
    data: bytes, magic: bytes, version: int, error: type[ValueError], what: str
) -> tuple[dict[str, Any], int]:
    """The JSON header of ``frame_bytes`` output and the offset where its blobs start; raise
    ``error`` naming ``what`` when the bytes are short, of another kind or another version."""
    if len(data) < _PREFIX.size:
        raise error(f"{what} too short ({len(data)} B) to hold a header")
    found_magic, found_version, header_len = _PREFIX.unpack_from(data)
    if found_magic != magic:
        raise error(f"not {what} (magic {found_magic!r})")
    if found_version != version:
        raise error(f"{what}: format version {found_version}, this reader knows {version}")
    header: dict[str, Any] = orjson.loads(data[_PREFIX.size : _PREFIX.size + header_len])
    return header, _PREFIX.size + header_len


def decode_state(
    data: bytes,
    state_type: type[S],
    model: str | None = None,
    checkpoint: str | None = None,
    device: torch.device | str = "cpu",
) -> S:
    """Bytes back to a state; checks the model name and checkpoint hash when given."""
    header = read_state_header(data)
    if model is not None and header["model"] != model:
        raise StateFormatError(f"state is for model {header['model']!r}, expected {model!r}")
    if checkpoint is not None and header["checkpoint"] != checkpoint:
        raise StateFormatError(
            f"state was written under checkpoint {header['checkpoint']!r}, "
            f"the worker runs checkpoint {checkpoint!r}"
        )
    if header["state_type"] != state_type.__name__:
        raise StateFormatError(
            f"state type {header['state_type']!r}, expected {state_type.__name__!r}"
        )
    expected = [f.name for f in fields(state_type)]
    present = [entry["name"] for entry in header["fields"]]
    if present != expected:
        raise StateFormatError(f"state fields {present} differ from {expected}")
    base = header["_payload_offset"]
    tensors = {}
    for entry in header["fields"]:
        start = base + entry["offset"]
        raw = data[start : start + entry["nbytes"]]
        dtype = getattr(torch, entry["dtype"])
        tensors[entry["name"]] = _tensor_from_bytes(raw, dtype, entry["shape"]).to(device)
    return state_type(**tensors)


def _tensor_bytes(tensor: Tensor) -> bytes:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def _tensor_from_bytes(raw: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    if not raw:
        return torch.empty(shape, dtype=dtype)
    buffer = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return buffer.view(dtype).reshape(shape)
