"""Aggregating weight deltas with memory proportional to the model, not to the clients.

* :class:`FedAvg` keeps one running weighted sum: each delta is added as it arrives and dropped.
* :class:`CoordinateWise` (``median``, ``trimmed-mean``) must see every client's value of a
  coordinate at once, so deltas are spooled to one float32 file on disk as they arrive and
  reduced in column blocks of about one model's size (``block`` coordinates x clients).

Both take deltas already checked and centrally clipped (:func:`vlabus.fl.delta.clip`), so one
client can move a FedAvg result by at most ``clip / clients``; the coordinate-wise rules bound
a minority of poisoned clients by the honest values around them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from vlabus.fl.delta import Array, Delta, Shapes

AGGREGATES = ("fedavg", "trimmed-mean", "median")


class Aggregator(Protocol):
    """Accumulates deltas of fixed shapes; :meth:`result` is their combination."""

    count: int

    def add(self, delta: Mapping[str, Array], weight: float) -> None: ...

    def result(self) -> Delta: ...

    def close(self) -> None: ...


class FedAvg:
    """Weighted mean (weights: examples trained on), one model-sized accumulator."""

    def __init__(self, shapes: Shapes) -> None:
        self.shapes = dict(shapes)
        self._sum = {k: np.zeros(s, np.float64) for k, s in self.shapes.items()}
        self._weight = 0.0
        self.count = 0

    def add(self, delta: Mapping[str, Array], weight: float) -> None:
        """Add one checked delta (every tensor of :attr:`shapes`); ``weight`` > 0."""
        if weight <= 0 or not math.isfinite(weight):
            raise ValueError(f"weight {weight!r} must be positive")
        for name, acc in self._sum.items():
            np.add(acc, weight * delta[name], out=acc)
        self._weight += weight
        self.count += 1

    def result(self) -> Delta:
        if self.count == 0:
            raise ValueError("no deltas to aggregate")
        return {k: (v / self._weight).astype(np.float32) for k, v in self._sum.items()}

    def close(self) -> None:
        self._sum = {}


class CoordinateWise:
    """Coordinate-wise ``median`` or ``trimmed-mean`` (``trim`` of the clients cut at each
    end, at least one when there are 3 or more) over deltas spooled to ``spool``."""

    def __init__(self, shapes: Shapes, spool: Path, *, rule: str, trim: float = 0.2) -> None:
        if rule not in ("median", "trimmed-mean"):
            raise ValueError(f"rule {rule!r}: use median or trimmed-mean")
        if not 0 <= trim < 0.5:
            raise ValueError("trim must be in [0, 0.5)")
        self.shapes = dict(shapes)
        self.names = sorted(self.shapes)
        self.size = sum(math.prod(self.shapes[n]) for n in self.names)
        self.rule = rule
        self.trim = trim
        self.path = spool
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(b"")
        self.count = 0

    def add(self, delta: Mapping[str, Array], weight: float) -> None:
        """Append one delta as a float32 row (``weight`` is not used by these rules)."""
        del weight
        with open(self.path, "ab") as handle:
            for name in self.names:
                handle.write(np.ascontiguousarray(delta[name], np.float32).tobytes())
        self.count += 1

    def cut(self) -> int:
        """How many values are dropped at each end of a coordinate (trimmed mean)."""
        if self.rule == "median" or self.count < 3:
            return 0
        return max(1, math.floor(self.trim * self.count))

    def result(self) -> Delta:
        if self.count == 0:
            raise ValueError("no deltas to aggregate")
        rows = np.memmap(self.path, np.float32, mode="r", shape=(self.count, self.size))
        flat = np.empty(self.size, np.float32)
        block = max(1, self.size // self.count)  # block x clients ~ one model in memory
        k = self.cut()
        for start in range(0, self.size, block):
            part = np.sort(np.asarray(rows[:, start: start + block]), axis=0)
            if self.rule == "median":
                flat[start: start + block] = np.median(part, axis=0)
            else:
                flat[start: start + block] = part[k: self.count - k].mean(axis=0)
        del rows
        out: Delta = {}
        offset = 0
        for name in self.names:
            n = math.prod(self.shapes[name])
            out[name] = flat[offset: offset + n].reshape(self.shapes[name]).copy()
            offset += n
        return out

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


def make_aggregator(rule: str, shapes: Shapes, spool: Path, *, trim: float = 0.2) -> Aggregator:
    """The aggregator named ``rule`` (one of :data:`AGGREGATES`)."""
    if rule == "fedavg":
        return FedAvg(shapes)
    if rule in ("median", "trimmed-mean"):
        return CoordinateWise(shapes, spool, rule=rule, trim=trim)
    raise ValueError(f"aggregate {rule!r}: use one of {', '.join(AGGREGATES)}")
