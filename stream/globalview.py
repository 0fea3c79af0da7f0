"""The global quantities every worker needs, defined in event time so they are deterministic.

A worker consumes only some partitions of ``interactions``, yet two things depend on *all*
events: the candidate set (items first seen before the event, in global event-id order) and the
popularity baseline (counts over all events). ``GlobalView`` is built from a full read of the
interactions topic (every partition, no consumer group) and answers *as-of* questions:

- ``first_seen_before(t)``: a boolean mask over raw item ids, True where the item's first
  event has an id below ``t``;
- ``popularity(tau)``: item counts over the event-time window ``[k*R - W, k*R)`` where
  ``k = floor(tau / R)``, R the refresh interval and W the window (both in seconds, on a grid
  aligned to the epoch, so no run-dependent origin).

Answers never depend on how far the view has read, only on the event asked about. A worker may
ask about event ``t`` once the view is *complete through* ``t - 1``: every partition has shown
an event id of at least ``t - 1`` or its end-of-stream marker (a partition's events arrive in id
order, so nothing older can still come). ``complete_through`` is that bound.

>>> view = GlobalView(refresh_s=10.0, window_s=20.0)
>>> view.set_partitions(1)
>>> for event_id, item, time in [(0, 5, 1.0), (1, 7, 12.0), (2, 5, 13.0)]:
...     view.observe(0, event_id, item, time)
>>> view.first_seen_before(2)[[5, 7]].tolist()
[True, True]
>>> view.first_seen_before(1)[[5, 7]].tolist()
[True, False]
>>> view.popularity(25.0)[[5, 7]].tolist()  # window [0, 20): events at 1, 12, 13
[2.0, 1.0]
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence

import numpy as np

NEVER = np.iinfo(np.int64).max


class GlobalView:
    def __init__(self, refresh_s: float = 86_400.0, window_s: float | None = None) -> None:
        if refresh_s <= 0:
            raise ValueError(f"popularity refresh interval must be positive, got {refresh_s}")
        if window_s is not None and (window_s <= 0 or not _is_multiple(window_s, refresh_s)):
            raise ValueError(
                f"popularity window {window_s} s must be a positive multiple of the refresh "
                f"interval {refresh_s} s (or None for all history)"
            )
        self.refresh_s = refresh_s
        self.window_buckets = None if window_s is None else round(window_s / refresh_s)
        self._first_seen = np.full(0, NEVER, dtype=np.int64)  # [M] raw item id -> event id
        self._buckets: dict[int, Counter[int]] = {}
        self._snapshots: OrderedDict[int, np.ndarray] = OrderedDict()
        self._partition_max: list[int] = []
        self._partition_done: list[bool] = []
        self.n_observed = 0
        self._lock = threading.Lock()
        self._advanced = threading.Condition(self._lock)

    # -- feeding -------------------------------------------------------------------------
    def set_partitions(self, partitions: int) -> None:
        with self._lock:
            if len(self._partition_max) < partitions:
                extra = partitions - len(self._partition_max)
                self._partition_max += [-1] * extra
                self._partition_done += [False] * extra

    def observe(self, partition: int, event_id: int, item: int, time: float) -> None:
        self.observe_many(partition, [event_id], [item], [time])

    def observe_many(
        self,
        partition: int,
        event_ids: Sequence[int],
        items: Sequence[int],
        times: Sequence[float],
    ) -> None:
        """Events of one partition, in the partition's order (one lock and one wake-up for
        all of them: the reader hands over what one poll returned)."""
        if not event_ids:
            return
        with self._advanced:
            top_item = max(items)
            if top_item >= self._first_seen.shape[0]:
                grown = np.full(max(top_item + 1, 2 * self._first_seen.shape[0]), NEVER, np.int64)
                grown[: self._first_seen.shape[0]] = self._first_seen
                self._first_seen = grown
            first_seen = self._first_seen
            earliest_bucket = math.inf
            for event_id, item, time in zip(event_ids, items, times, strict=True):
                if event_id < first_seen[item]:
                    first_seen[item] = event_id
                bucket = self.bucket(time)
                counts = self._buckets.get(bucket)
                if counts is None:
                    counts = self._buckets[bucket] = Counter()
                counts[item] += 1
                earliest_bucket = min(earliest_bucket, bucket)
            for stale in [k for k in self._snapshots if k > earliest_bucket]:  # built too early
                del self._snapshots[stale]
            self._partition_max[partition] = max(self._partition_max[partition], max(event_ids))
            self.n_observed += len(event_ids)
            self._advanced.notify_all()

    def end_partition(self, partition: int) -> None:
        with self._advanced:
            self._partition_done[partition] = True
            self._advanced.notify_all()

    # -- completeness --------------------------------------------------------------------
    def complete_through(self) -> float:
        """Every event with id <= this bound has been observed (inf once all partitions ended)."""
        with self._lock:
            return self._complete_through_locked()

    def _complete_through_locked(self) -> float:
        if not self._partition_max:
            return -1
        bounds = [
            math.inf if done else float(top)
            for top, done in zip(self._partition_max, self._partition_done, strict=True)
        ]
        return min(bounds)

    def wait_complete_through(self, event_id: int, timeout_s: float) -> bool:
        with self._advanced:
            return self._advanced.wait_for(
                lambda: self._complete_through_locked() >= event_id, timeout=timeout_s
            )

    # -- as-of queries -------------------------------------------------------------------
    def bucket(self, time: float) -> int:
        return math.floor(time / self.refresh_s)

    def first_seen_before(self, event_id: int, size: int | None = None) -> np.ndarray:
        """[M] bool over raw item ids (M = ``size`` or the known id range)."""
        with self._lock:
            first_seen = self._first_seen
            m = first_seen.shape[0] if size is None else size
            mask = np.zeros(m, dtype=bool)
            n = min(m, first_seen.shape[0])
            mask[:n] = first_seen[:n] < event_id
            return mask

    def first_seen_ids(self, size: int) -> np.ndarray:
        """[size] int64 first-seen event id per raw item id (NEVER when unseen)."""
        with self._lock:
            out = np.full(size, NEVER, dtype=np.int64)
            n = min(size, self._first_seen.shape[0])
            out[:n] = self._first_seen[:n]
            return out

    @property
    def n_item_ids(self) -> int:
        with self._lock:
            return int(self._first_seen.shape[0])

    def popularity(self, time: float, size: int | None = None) -> np.ndarray:
        """[M] float64 counts of the snapshot in force at event time ``time``."""
        k = self.bucket(time)
        with self._lock:
            snapshot = self._snapshots.get(k)
            if snapshot is None:
                snapshot = self._build_snapshot(k)
                self._snapshots[k] = snapshot
                while len(self._snapshots) > 8:
                    self._snapshots.popitem(last=False)
            m = self._first_seen.shape[0] if size is None else size
        out = np.zeros(m, dtype=np.float64)
        n = min(m, snapshot.shape[0])
        out[:n] = snapshot[:n]
        return out

    def _build_snapshot(self, k: int) -> np.ndarray:
        """Counts for snapshot ``k``: from the nearest cached snapshot below (forward queries are
        the common case), else from scratch. Integer counts in float64: both ways are exact."""
        size = self._first_seen.shape[0]
        base = max((c for c in self._snapshots if c <= k), default=None)
        if base is None:
            return self.snapshot_from_scratch(k)
        counts = np.zeros(size, dtype=np.float64)
        cached = self._snapshots[base]
        counts[: cached.shape[0]] = cached
        for bucket in range(base, k):
            self._add_bucket(counts, bucket, 1.0)
        if self.window_buckets is not None:
            for bucket in range(base - self.window_buckets, k - self.window_buckets):
                self._add_bucket(counts, bucket, -1.0)
        return counts

    def snapshot_from_scratch(self, k: int) -> np.ndarray:
        counts = np.zeros(self._first_seen.shape[0], dtype=np.float64)
        low = -math.inf if self.window_buckets is None else k - self.window_buckets
        for bucket in self._buckets:
            if low <= bucket < k:
                self._add_bucket(counts, bucket, 1.0)
        return counts

    def _add_bucket(self, counts: np.ndarray, bucket: int, sign: float) -> None:
        counter = self._buckets.get(bucket)
        if counter:
            items = np.fromiter(counter.keys(), dtype=np.int64, count=len(counter))
            values = np.fromiter(counter.values(), dtype=np.float64, count=len(counter))
            np.add.at(counts, items, sign * values)


def _is_multiple(value: float, unit: float) -> bool:
    ratio = value / unit
    return abs(ratio - round(ratio)) < 1e-9
