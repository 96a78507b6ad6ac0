"""The worker's estimate of t(batch): how long a batch of ``b`` requests of a model will take.

Per model, a table of batch size → time. It starts from the policy's profile when the policy
has one (``policy.profile.time_ns(b)``, see :mod:`vlabus.policy.profile`), and every batch that
runs updates its size's entry (exponentially weighted). Between known sizes it interpolates;
past the largest known size it scales in proportion to the batch (no batching gain assumed:
an estimate that is too high only makes batches smaller, one that is too low makes them late).
An entry of a profiled model that no batch of its size has refreshed for ``STALE_AFTER``
batches of the model falls back to the profile's value: a size last seen in a burst of
overload (its batches slowed by a busy host) does not keep that time once the load is gone and
batches of that size no longer run to correct it (the slot planner decides from t(max batch)
whether robots need send-time hints at all).

It keeps the interface of :class:`~cloud_workers.queue.InferenceEstimate` (``get`` is the
batch-of-one time) so the worker's other users of the estimate need not change.
"""

from __future__ import annotations

import bisect
from typing import Any, Protocol

from cloud_workers.queue import InferenceEstimate


class TimedProfile(Protocol):
    """What a policy's ``profile`` attribute offers (``vlabus.policy.profile.Profile``)."""

    @property
    def max_batch(self) -> int: ...

    def time_ns(self, batch: int) -> int: ...


#: batches of a model after which an entry no batch of its size refreshed is the profile's again
STALE_AFTER = 32


class BatchTimes(InferenceEstimate):
    """t(model, b) in ns; see the module docstring."""

    def __init__(self, alpha: float = 0.2, initial_ns: int = 0) -> None:
        super().__init__(alpha, initial_ns)
        self._tables: dict[str, dict[int, float]] = {}
        self._profiles: dict[str, dict[int, float]] = {}
        self._batches: dict[str, int] = {}  # batches of each model observed so far
        self._seen: dict[str, dict[int, int]] = {}  # model → size → batch that last set it

    def seed(self, model: str, profile: TimedProfile, up_to: int) -> None:
        """Start ``model``'s table from ``profile`` for sizes 1..``up_to``."""
        self._tables[model] = {b: float(profile.time_ns(b)) for b in range(1, up_to + 1)}
        self._profiles[model] = dict(self._tables[model])
        self._mean[model] = self._tables[model][1]

    def observe(self, model: str, duration_ns: int, size: int = 1) -> None:
        """A batch of ``size`` of ``model`` took ``duration_ns``."""
        table = self._tables.setdefault(model, {})
        old = self._entry(model, size) if size in table else None
        table[size] = float(duration_ns) if old is None else old + self.alpha * (
            duration_ns - old)
        count = self._batches[model] = self._batches.get(model, 0) + 1
        self._seen.setdefault(model, {})[size] = count
        if size == 1 or model not in self._mean:
            self._mean[model] = self.time(model, 1)

    def _entry(self, model: str, size: int) -> float:
        """The table's entry for ``size`` (present), or the profile's once it went stale."""
        profile = self._profiles.get(model)
        seen = self._seen.get(model, {}).get(size)
        if profile is not None and size in profile and seen is not None and (
                self._batches[model] - seen > STALE_AFTER):
            return profile[size]
        return self._tables[model][size]

    def time(self, model: str, size: int) -> int:
        """Estimated ns for a batch of ``size`` (``initial_ns`` x size when nothing is known)."""
        table = self._tables.get(model)
        if not table:
            return self.initial_ns * size
        if size in table:
            return int(self._entry(model, size))
        sizes = sorted(table)
        at = bisect.bisect_left(sizes, size)
        if at == 0:  # below every known size: assume no cheaper than the smallest known
            return int(self._entry(model, sizes[0]))
        if at == len(sizes):
            top = sizes[-1]
            return int(self._entry(model, top) * size / top)
        lo, hi = self._entry(model, sizes[at - 1]), self._entry(model, sizes[at])
        return int(lo + (hi - lo) * (size - sizes[at - 1]) / (sizes[at] - sizes[at - 1]))

    def get(self, model: str) -> int:
        return self.time(model, 1)

    def largest_within(self, model: str, budget_ns: int, limit: int) -> int:
        """The largest batch size ≤ ``limit`` whose estimate fits ``budget_ns`` (0: none)."""
        best = 0
        for size in range(1, limit + 1):
            if self.time(model, size) > budget_ns:
                break
            best = size
        return best

    def relax(self, model: str) -> None:
        """Shrink every entry of ``model`` after drops (see ``InferenceEstimate.relax``)."""
        super().relax(model)
        table = self._tables.get(model)
        if table:
            for size in table:
                table[size] *= 1.0 - self.alpha

    def snapshot(self, model: str, sizes: tuple[int, ...] = (1, 4, 16)) -> dict[str, Any]:
        """Estimates in ms for a few sizes (for status and the bench)."""
        return {str(b): round(self.time(model, b) / 1e6, 3) for b in sizes}
