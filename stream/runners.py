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

``SeqRecRunner.advance`` steps many users by several events each (a user's events of one
micro-batch, in order). Its reference is ``advance_by_rounds``: one ``model.step`` call per
round (round r = every user's r-th event), which is what ``model.step`` defines. Models whose
step re-encodes a window (SASRec, windowed TTT4Rec) or ignores the state (TTT4Rec ``:frozen``)
take a fast path that is the same computation batched over all events at once: every event's
window is built (events whose window has not slid yet share one causal row) and read out at the
events' positions in one ``model.hidden_at`` call per length bin. Recurrent models keep rounds,
with users ordered so each round is a prefix slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from models.base import SeqRecModel
from models.sasrec import SASRec
from models.state import State, decode_state, encode_state
from models.ttt4rec import TTT4Rec, WindowState

POPULARITY = "pop"
StepPath = Literal["windows", "single", "rounds"]
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

    @property
    def step_path(self) -> StepPath:
        """How ``advance`` computes: ``windows`` (each event's hidden = the model's output at the
        last item of its window), ``single`` (the output for the one-item sequence of the event,
        state only records the event) or ``rounds`` (one ``model.step`` per round)."""
        model = self.model
        if type(model).shift_score is not SeqRecModel.shift_score:
            return "rounds"  # shift scores need every intermediate state
        if isinstance(model, SASRec):
            return "windows"  # adapt has no effect on SASRec
        if isinstance(model, TTT4Rec):
            if not self.adapt:
                return "single"
            if model.config.policy == "windowed":
                return "windows"
        return "rounds"

    def advance(
        self,
        states: Sequence[State],
        items: Sequence[np.ndarray],
        times: Sequence[np.ndarray],
        path: StepPath | None = None,
    ) -> list[Advanced]:
        """Step user j (one-user ``states[j]``) through its in-vocabulary events ``items[j]``,
        ``times[j]`` ([k_j] each, in order) -> per user the new state, the hidden vector after
        each event [k_j, D] and shift scores [k_j] (None when the model has none).

        Equals ``advance_by_rounds`` (float rounding of batched kernels aside)."""
        chosen = self.step_path if path is None else path
        if chosen == "rounds":
            return self.advance_by_rounds(states, items, times)
        return self._advance_batched(states, items, times, chosen)

    @torch.no_grad()
    def advance_by_rounds(
        self, states: Sequence[State], items: Sequence[np.ndarray], times: Sequence[np.ndarray]
    ) -> list[Advanced]:
        """The reference: round r steps every user with an r-th event in one ``model.step``.

        Users are ordered by decreasing event count, so a round's users are a prefix of the
        previous round's: each round slices the batched state instead of gathering it."""
        order = sorted(range(len(states)), key=lambda j: -len(items[j]))
        counts = [len(items[j]) for j in order]
        if not order or counts[-1] == 0:
            raise ValueError("advance needs at least one event per user")
        current = type(states[order[0]]).cat([states[j] for j in order])
        finished: list[tuple[int, State]] = []  # (first position in order, users' states)
        hidden_rows: list[list[Tensor]] = [[] for _ in order]
        shift_rows: list[list[float]] = [[] for _ in order]
        has_shift = False
        for r in range(counts[0]):
            active = sum(1 for c in counts if c > r)
            if active < current.n_users:
                finished.append((active, current.index(slice(active, None))))
                current = current.index(slice(0, active))
            round_items = np.array([items[order[i]][r] for i in range(active)], dtype=np.int64)
            round_times = np.array([times[order[i]][r] for i in range(active)], dtype=np.float64)
            current, hidden, shift = self.step(current, round_items, round_times)
            for i in range(active):
                hidden_rows[i].append(hidden[i])
                if shift is not None:
                    has_shift = True
                    shift_rows[i].append(float(shift[i]))
        finished.append((0, current))
        out: list[Advanced | None] = [None] * len(order)
        for first, block in finished:
            for i in range(block.n_users):
                position = first + i
                out[order[position]] = Advanced(
                    state=block.index([i]),
                    hidden=torch.stack(hidden_rows[position]),
                    shift=np.array(shift_rows[position]) if has_shift else None,
                )
        return [a for a in out if a is not None]

    @torch.no_grad()
    def _advance_batched(
        self,
        states: Sequence[State],
        items: Sequence[np.ndarray],
        times: Sequence[np.ndarray],
        path: StepPath,
    ) -> list[Advanced]:
        """One model call for every event of every user (see the module docstring)."""
        rows_items: list[np.ndarray] = []  # per encoded row, its vocab indices (<= L)
        rows_times: list[np.ndarray] = []
        event_row: list[int] = []  # per event, its row and the position of its item there
        event_position: list[int] = []
        new_states: list[State] = []
        single_items: list[np.ndarray] = []
        single_times: list[np.ndarray] = []
        for state, user_items, user_times in zip(states, items, times, strict=True):
            k = len(user_items)
            if k == 0:
                raise ValueError("advance needs at least one event per user")
            index = self.vocab_index(np.asarray(user_items, dtype=np.int64))
            event_times = np.asarray(user_times, dtype=np.float64)
            if isinstance(state, WindowState):
                width = state.items.shape[1]
                n = int(state.length[0])
                sequence = np.concatenate([state.items[0, :n].cpu().numpy(), index])
                sequence_times = np.concatenate([state.times[0, :n].cpu().numpy(), event_times])
                new_states.append(self._window(sequence, sequence_times, width))
            elif path == "single":
                new_states.append(state)  # a frozen recurrent state never changes
            else:
                raise TypeError(f"{self.name}: a {type(state).__name__} cannot take {path!r}")
            if path == "single":
                single_items.append(index)
                single_times.append(event_times)
                continue
            # event i (1-based) sees sequence[max(0, n+i-L) : n+i]; while n+i <= L those are
            # prefixes of one row (causal models: later items do not change earlier outputs)
            short = max(0, min(k, width - n))
            if short:
                rows_items.append(sequence[: n + short])
                rows_times.append(sequence_times[: n + short])
                event_row += [len(rows_items) - 1] * short
                event_position += list(range(n, n + short))
            for i in range(short + 1, k + 1):
                rows_items.append(sequence[n + i - width : n + i])
                rows_times.append(sequence_times[n + i - width : n + i])
                event_row.append(len(rows_items) - 1)
                event_position.append(width - 1)
        if path == "single":
            item_index = torch.as_tensor(np.concatenate(single_items), device=self.device)
            time = torch.as_tensor(np.concatenate(single_times), device=self.device)
            hidden = self.model.forward(item_index.unsqueeze(1), time.unsqueeze(1))[:, 0]
        else:
            hidden = self._encode_rows(rows_items, rows_times, event_row, event_position)
        out = []
        start = 0
        for state, user_items in zip(new_states, items, strict=True):
            k = len(user_items)
            out.append(Advanced(state=state, hidden=hidden[start : start + k], shift=None))
            start += k
        return out

    def _encode_rows(
        self,
        rows_items: list[np.ndarray],
        rows_times: list[np.ndarray],
        event_row: list[int],
        event_position: list[int],
    ) -> Tensor:
        """Encode every row (a window, item 0 padding on the right) and read each event's
        output at its position -> [N, D] (``model.hidden_at``: only what those outputs need).
        Rows go in up to four calls by length, each padded only to its longest row: a causal
        model's output at a position does not depend on what follows it, so the padding width
        changes nothing but float rounding."""
        lengths = np.array([len(r) for r in rows_items])
        longest = int(lengths.max())
        bins = (lengths - 1) * 4 // longest  # [R] 0..3
        local = np.zeros(len(rows_items), dtype=np.int64)  # row -> its index in its bin
        rows = np.asarray(event_row)
        positions = np.asarray(event_position)
        event_bins = bins[rows]
        picked: list[Tensor] = []
        order: list[np.ndarray] = []
        for b in np.unique(bins).tolist():
            members = np.nonzero(bins == b)[0]
            local[members] = np.arange(members.size)
            width = int(lengths[members].max())
            batch_items = np.zeros((members.size, width), dtype=np.int64)
            batch_times = np.zeros((members.size, width), dtype=np.float64)
            for i, row in enumerate(members.tolist()):
                batch_items[i, : lengths[row]] = rows_items[row]
                batch_times[i, : lengths[row]] = rows_times[row]
            events = np.nonzero(event_bins == b)[0]
            picked.append(
                self.model.hidden_at(
                    torch.from_numpy(batch_items).to(self.device),
                    torch.from_numpy(batch_times).to(self.device),
                    torch.from_numpy(local[rows[events]]).to(self.device),
                    torch.from_numpy(positions[events]).to(self.device),
                )  # [N_b, D]
            )
            order.append(events)
        hidden = torch.cat(picked)  # events bin by bin
        back = torch.from_numpy(np.argsort(np.concatenate(order), kind="stable"))
        return hidden[back.to(self.device)]  # [N, D] in event order

    def _window(self, sequence: np.ndarray, times: np.ndarray, width: int) -> WindowState:
        """The window ``window_push`` leaves after pushing every item of ``sequence``."""
        kept = sequence[-width:]
        items = np.zeros((1, width), dtype=np.int64)
        stamps = np.zeros((1, width), dtype=np.float64)
        items[0, : len(kept)] = kept
        stamps[0, : len(kept)] = times[-width:]
        return WindowState(
            items=torch.from_numpy(items).to(self.device),
            times=torch.from_numpy(stamps).to(self.device),
            length=torch.tensor([len(kept)], dtype=torch.long, device=self.device),
        )

    def encode(self, state: State) -> bytes:
        return encode_state(state, self.model_name, self.checkpoint_hash)

    def decode(self, data: bytes) -> State:
        state = decode_state(data, self.state_type, self.model_name, self.checkpoint_hash)
        return type(state)(**{k: self.cast(v) for k, v in state.tensors().items()})


@dataclass
class Advanced:
    """One user after ``SeqRecRunner.advance``."""

    state: State  # one user, after the last event
    hidden: Tensor  # [k, D] hidden after each event (the last one ranks the next event)
    shift: np.ndarray | None  # [k] shift score after each event, None when the model has none


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
