"""Model runners: the models of a streaming run, behind one small interface.

A configured model entry is ``NAME`` or ``NAME:frozen``: ``pop`` is the windowed popularity
baseline (no per-user state; ``stream.globalview``), any other name is a registry model loaded
from its checkpoint with ``models.checkpoint.load_checkpoint``. ``:frozen`` runs the same model
with ``adapt=False`` in ``model.step`` (no test-time updates), so the value of adaptation is
measured in the same replay.

Runners work in *raw item id space*: scores come back as ``[U, M]`` float64 arrays indexed by the
dataset's item id (M = size of the id range the caller asks for), -inf where the model cannot
score an item (outside its vocabulary). ``dtype`` float64 makes the per-user numbers independent
of how users are batched (float32 GEMMs differ in the last bits between batch shapes, enough to
flip near-tied ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.base import SeqRecModel
from models.state import State, decode_state, encode_state

POPULARITY = "pop"
FROZEN_SUFFIX = ":frozen"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # as configured, e.g. "ttt4rec:frozen"; the model column of every output
    base: str  # registry name or "pop"
    adapt: bool  # False for ":frozen"

    @classmethod
    def parse(cls, entry: str) -> ModelSpec:
        text = entry.strip()
        if not text:
            raise ValueError("empty model entry")
        base, sep, variant = text.partition(":")
        if sep and variant != "frozen":
            raise ValueError(f"model entry {entry!r}: the only variant is ':frozen'")
        if base in ("pop", "popularity"):
            if sep:
                raise ValueError("the popularity baseline has no frozen variant")
            return cls(POPULARITY, POPULARITY, adapt=False)
        return cls(text, base, adapt=not sep)

    @property
    def stateful(self) -> bool:
        return self.base != POPULARITY


class PopularityRunner:
    """Scores are the snapshot counts the caller passes in; nothing per user."""

    stateful = False

    def __init__(self, name: str = POPULARITY) -> None:
        self.name = name


class SeqRecRunner:
    """A checkpointed sequential model stepping users forward one event at a time."""

    stateful = True

    def __init__(
        self,
        name: str,
        model: SeqRecModel,
        vocab: list[int],
        checkpoint_hash: str,
        adapt: bool = True,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        self.name = name
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dtype = dtype
        self.device = torch.device(device)
        self.adapt = adapt
        self.checkpoint_hash = checkpoint_hash
        self.model_name = model.name
        self.state_type = model.state_type
        raw = np.asarray(vocab[1:], dtype=np.int64)  # index 0 is padding
        size = int(raw.max()) + 1 if raw.size else 0
        self.index_of_raw = np.full(size, -1, dtype=np.int64)  # raw item id -> vocab index
        self.index_of_raw[raw[raw >= 0]] = np.nonzero(raw >= 0)[0] + 1

    def vocab_index(self, items: np.ndarray) -> np.ndarray:
        """[U] raw ids -> [U] vocab indices, -1 where out of vocabulary."""
        inside = (items >= 0) & (items < self.index_of_raw.shape[0])
        out = np.full(items.shape, -1, dtype=np.int64)
        out[inside] = self.index_of_raw[items[inside]]
        return out

    def initial_state(self, n_users: int) -> State:
        state = self.model.init_state(n_users)
        return type(state)(**{k: self.cast(v) for k, v in state.tensors().items()})

    def cast(self, tensor: Tensor) -> Tensor:
        tensor = tensor.to(self.device)
        # float64 tensors (event times) are never narrowed; float32 ones follow ``dtype``
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            return tensor.to(self.dtype)
        return tensor

    @torch.no_grad()
    def step(
        self, state: State, items: np.ndarray, times: np.ndarray
    ) -> tuple[State, Tensor, np.ndarray | None]:
        """Advance U users by one in-vocabulary event: -> (state, hidden [U, D], shift [U])."""
        item_index = torch.as_tensor(self.vocab_index(items), device=self.device)  # [U]
        time = torch.as_tensor(times, dtype=torch.float64, device=self.device)  # [U]
        new_state, hidden = self.model.step(state, item_index, time, adapt=self.adapt)
        shift = self.model.shift_score(new_state)
        shift_np = None if shift is None else shift.detach().double().cpu().numpy()
        return new_state, hidden, shift_np

    @torch.no_grad()
    def scores(self, hidden: Tensor, size: int) -> np.ndarray:
        """hidden [U, D] -> [U, size] float64 scores over raw item ids, -inf where unscorable."""
        model_scores = self.model.score(hidden).double().cpu().numpy()  # [U, I]
        index = np.full(size, -1, dtype=np.int64)
        n = min(size, self.index_of_raw.shape[0])
        index[:n] = self.index_of_raw[:n]
        out = model_scores[:, np.maximum(index, 0)]  # [U, size]
        out[:, index < 0] = -np.inf
        return out

    def encode(self, state: State) -> bytes:
        return encode_state(state, self.model_name, self.checkpoint_hash)

    def decode(self, data: bytes) -> State:
        state = decode_state(data, self.state_type, self.model_name, self.checkpoint_hash)
        return type(state)(**{k: self.cast(v) for k, v in state.tensors().items()})


Runner = PopularityRunner | SeqRecRunner


def load_runner(
    spec: ModelSpec,
    checkpoint: str | Path | None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Runner:
    if not spec.stateful:
        return PopularityRunner(spec.name)
    if checkpoint is None:
        raise ValueError(f"model {spec.name!r} needs a checkpoint (none configured)")
    from models.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, device="cpu")
    if loaded.model.name != spec.base:
        raise ValueError(
            f"checkpoint {checkpoint} holds model {loaded.model.name!r}, configured {spec.base!r}"
        )
    return SeqRecRunner(
        spec.name, loaded.model, loaded.vocab, loaded.checkpoint_hash, spec.adapt, dtype, device
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
