"""Prequential ranking metrics as small objects with ``update`` / ``get`` (river style).

Every per-event metric is a function of the event's rank among its candidates (one relevant
item, so IDCG = 1). A rank of ``None`` means the event could not be hit (cold item, or an item
the user already saw while seen items are excluded): it counts as a miss, 0 everywhere.

>>> hr = HitRate(10)
>>> for rank in (1, 11, None, 10):
...     hr.update(rank)
>>> hr.get()
0.5
>>> ndcg = NDCG(10)
>>> ndcg.update(1); ndcg.update(3)
>>> round(ndcg.get(), 6)  # (1 + 1/log2(4)) / 2
0.75
>>> mrr = MRR()
>>> mrr.update(4); mrr.update(None)
>>> mrr.get()
0.125

Windows wrap a metric factory and take event time with each update::

>>> windows = TumblingWindows(lambda: HitRate(1), size_s=10.0)
>>> for time, rank in [(1.0, 1), (9.0, 2), (12.0, 1)]:
...     windows.update(time, rank)
>>> [(w.start, w.metric.get()) for w in windows.windows()]
[(0.0, 0.5), (10.0, 1.0)]

These objects are the obviously-correct reference; the sink computes the same numbers for
millions of events with polars (``stream.aggregate``), and a test keeps the two in agreement.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

Rank = int | None


def hit_at(rank: Rank, k: int) -> int:
    return int(rank is not None and rank <= k)


def ndcg_at(rank: Rank, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: Rank) -> float:
    return 1.0 / rank if rank is not None else 0.0


class RankMetric(Protocol):
    bigger_is_better: bool

    def update(self, rank: Rank) -> None: ...

    def revert(self, rank: Rank) -> None: ...

    def get(self) -> float: ...


class Mean:
    """Running mean of numbers; ``get`` is 0 before the first update.

    >>> m = Mean(); m.update(1.0); m.update(2.0); m.get()
    1.5
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.n = 0

    def update(self, value: float, weight: int = 1) -> None:
        self.total += value * weight
        self.n += weight

    def revert(self, value: float, weight: int = 1) -> None:
        self.total -= value * weight
        self.n -= weight

    def get(self) -> float:
        return self.total / self.n if self.n else 0.0


class _MeanOfRank:
    bigger_is_better = True

    def __init__(self) -> None:
        self.mean = Mean()

    def value(self, rank: Rank) -> float:
        raise NotImplementedError

    def update(self, rank: Rank) -> None:
        self.mean.update(self.value(rank))

    def revert(self, rank: Rank) -> None:
        self.mean.revert(self.value(rank))

    def get(self) -> float:
        return self.mean.get()

    @property
    def n(self) -> int:
        return self.mean.n


class HitRate(_MeanOfRank):
    """HR@K (= Recall@K with one relevant item), full ranking."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def value(self, rank: Rank) -> float:
        return float(hit_at(rank, self.k))


class NDCG(_MeanOfRank):
    """NDCG@K with one relevant item: 1/log2(rank+1) inside the top K, else 0."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def value(self, rank: Rank) -> float:
        return ndcg_at(rank, self.k)


class MRR(_MeanOfRank):
    """Mean reciprocal rank over the full candidate list (no cut-off)."""

    def value(self, rank: Rank) -> float:
        return reciprocal_rank(rank)


@dataclass
class Window:
    start: float
    end: float
    metric: RankMetric


class TumblingWindows:
    """Event-time tumbling windows [origin + k*size, origin + (k+1)*size), one metric each.

    Updates may arrive in any order; windows are keyed by index, so the result only depends on
    the multiset of (time, rank) pairs.
    """

    def __init__(
        self, factory: Callable[[], RankMetric], size_s: float, origin: float = 0.0
    ) -> None:
        if size_s <= 0:
            raise ValueError(f"window size must be positive, got {size_s}")
        self.factory = factory
        self.size_s = size_s
        self.origin = origin
        self._windows: dict[int, Window] = {}

    def index(self, time: float) -> int:
        return math.floor((time - self.origin) / self.size_s)

    def update(self, time: float, rank: Rank) -> None:
        k = self.index(time)
        window = self._windows.get(k)
        if window is None:
            start = self.origin + k * self.size_s
            window = Window(start, start + self.size_s, self.factory())
            self._windows[k] = window
        window.metric.update(rank)

    def windows(self) -> list[Window]:
        return [self._windows[k] for k in sorted(self._windows)]


class Cumulative:
    """The cumulative prequential estimate: every update ever, equal weight.

    >>> c = Cumulative(HitRate(1)); c.update(0.0, 1); c.update(5.0, 3); c.get()
    0.5
    """

    def __init__(self, metric: RankMetric) -> None:
        self.metric = metric

    def update(self, time: float, rank: Rank) -> None:
        self.metric.update(rank)

    def get(self) -> float:
        return self.metric.get()


class EventTimeFading:
    """Fading-factor prequential estimate with the factor driven by event time.

    S_T = m_T + a_T S_{T-1}, N_T = 1 + a_T N_{T-1}, estimate S_T / N_T, where
    a_T = exp(-ln2 (tau_T - tau_{T-1}) / half_life): an event one half-life old weighs half.
    Updates must come in event-time order (the sink sorts by (time, event id) first).

    >>> f = EventTimeFading(lambda r: float(hit_at(r, 1)), half_life_s=10.0)
    >>> f.update(0.0, 1); f.update(10.0, 2)
    >>> round(f.get(), 6)  # (0 + 0.5 * 1) / (1 + 0.5 * 1)
    0.333333
    """

    bigger_is_better = True

    def __init__(self, value: Callable[[Rank], float], half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ValueError(f"half-life must be positive, got {half_life_s}")
        self.value = value
        self.rate = math.log(2.0) / half_life_s
        self.weighted_sum = 0.0
        self.weight = 0.0
        self.last_time: float | None = None

    def update(self, time: float, rank: Rank) -> None:
        if self.last_time is not None:
            if time < self.last_time:
                raise ValueError(f"event time went backwards: {time} < {self.last_time}")
            decay = math.exp(-self.rate * (time - self.last_time))
            self.weighted_sum *= decay
            self.weight *= decay
        self.weighted_sum += self.value(rank)
        self.weight += 1.0
        self.last_time = time

    def get(self) -> float:
        return self.weighted_sum / self.weight if self.weight else 0.0
