"""The live terminal view of ``vlabus demo``, computed from the children's /metrics.

Rates and quantiles are taken over the last interval from counter and histogram deltas
(quantiles interpolated within histogram buckets, as Prometheus' ``histogram_quantile`` does;
the latency buckets step 1 ms from 1 to 10 ms and 2 ms to 20 ms, so the view agrees with the
samples in the run's summary to within a bucket). Totals shown never go backwards: a child that
restarts starts its counters at zero, and :class:`Totals` carries what it had counted before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Samples = dict[str, float]


def _sum(samples: Samples, name: str, **labels: str) -> float:
    want = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if want and want not in rest:
            continue
        total += value
    return total


def _buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    out = []
    for key, value in samples.items():
        if key.startswith(f"{name}_bucket{{"):
            le = key.split("le=", 1)[1].rstrip("}").split(",")[0]
            out.append((math.inf if le == "+Inf" else float(le), value))
    return sorted(out)


def histogram_quantile(q: float, before: Samples, after: Samples, name: str) -> float | None:
    """Quantile ``q`` of observations made between two scrapes, or None if there were none."""
    old = dict(_buckets(before, name))
    deltas = [(le, count - old.get(le, 0.0)) for le, count in _buckets(after, name)]
    if not deltas or deltas[-1][1] <= 0:
        return None
    rank = q * deltas[-1][1]
    lower, below = 0.0, 0.0
    for le, cumulative in deltas:
        if cumulative >= rank:
            if math.isinf(le):
                return lower
            span = cumulative - below
            return lower + (le - lower) * ((rank - below) / span if span else 1.0)
        lower, below = le, cumulative
    return lower


class Totals:
    """Running totals per (child, counter) that survive a child's restart: when a counter
    reads less than last time, the child restarted and its earlier count is carried."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}
        self._carried: dict[tuple[str, str], float] = {}

    def __call__(self, child: str, counter: str, value: float) -> int:
        key = (child, counter)
        if value < self._last.get(key, 0.0):
            self._carried[key] = self._carried.get(key, 0.0) + self._last[key]
        self._last[key] = value
        return int(self._carried.get(key, 0.0) + value)


@dataclass
class RobotRow:
    name: str
    fps: float
    cloud_share: float | None
    rtt_p50_ms: float | None
    rtt_p99_ms: float | None
    fallbacks: int


@dataclass
class WorkerRow:
    name: str
    up: bool
    mean_batch: float | None
    queue_depth: float
    served: int


def robot_row(name: str, before: Samples, after: Samples, dt: float,
              totals: Totals | None = None) -> RobotRow:
    """One robot's row; ``after`` empty means it is not answering (finished, not up yet)."""
    totals = totals or Totals()
    if not after:  # nothing to difference against
        fallbacks = totals(name, "fallbacks", _sum(before, "vlabus_edge_fallbacks_total"))
        return RobotRow(name, 0.0, None, None, None, fallbacks)
    actions = _sum(after, "vlabus_edge_actions_total") - _sum(before, "vlabus_edge_actions_total")
    cloud = (_sum(after, "vlabus_edge_actions_total", source="cloud")
             - _sum(before, "vlabus_edge_actions_total", source="cloud"))
    p50 = histogram_quantile(0.5, before, after, "vlabus_edge_round_trip_seconds")
    p99 = histogram_quantile(0.99, before, after, "vlabus_edge_round_trip_seconds")
    return RobotRow(
        name=name,
        fps=actions / dt if dt > 0 else 0.0,
        cloud_share=cloud / actions if actions else None,
        rtt_p50_ms=None if p50 is None else p50 * 1e3,
        rtt_p99_ms=None if p99 is None else p99 * 1e3,
        fallbacks=totals(name, "fallbacks", _sum(after, "vlabus_edge_fallbacks_total")),
    )


def worker_row(name: str, before: Samples, after: Samples,
               totals: Totals | None = None) -> WorkerRow:
    """One worker's row; ``after`` empty means it is down."""
    totals = totals or Totals()
    if not after:
        served = totals(name, "served", _sum(before, "vlabus_worker_replies_total"))
        return WorkerRow(name, False, None, 0.0, served)
    batches = _sum(after, "vlabus_worker_batch_size_count") - _sum(
        before, "vlabus_worker_batch_size_count")
    batched = _sum(after, "vlabus_worker_batch_size_sum") - _sum(
        before, "vlabus_worker_batch_size_sum")
    return WorkerRow(
        name=name,
        up=bool(after),
        mean_batch=batched / batches if batches else None,
        queue_depth=_sum(after, "vlabus_worker_queue_depth"),
        served=totals(name, "served", _sum(after, "vlabus_worker_replies_total")),
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(elapsed: float, total: float, robots: list[RobotRow], workers: list[WorkerRow],
           events: list[str]) -> str:
    """A plain-text frame of the view (the caller decides how to put it on screen). The clock
    stops at ``total``: robots finishing their last steps do not run it past the end."""
    lines = [f"vlabus demo  t={min(elapsed, total):5.1f}/{total:.0f} s", "",
             f"{'robot':12} {'fps':>6} {'cloud%':>7} {'rtt p50':>9} {'rtt p99':>9} "
             f"{'fallbacks':>9}"]
    for r in robots:
        share = None if r.cloud_share is None else 100 * r.cloud_share
        lines.append(f"{r.name:12} {r.fps:6.1f} {_fmt(share, '6.1f'):>7} "
                     f"{_fmt(r.rtt_p50_ms, '7.2f'):>7}ms {_fmt(r.rtt_p99_ms, '7.2f'):>7}ms "
                     f"{r.fallbacks:9d}")
    lines += ["", f"{'worker':12} {'state':>6} {'batch':>6} {'queue':>6} {'served':>8}"]
    for w in workers:
        lines.append(f"{w.name:12} {'up' if w.up else 'DOWN':>6} {_fmt(w.mean_batch, '6.2f'):>6} "
                     f"{w.queue_depth:6.0f} {w.served:8d}")
    if events:
        lines += ["", *(f"  {e}" for e in events[-4:])]
    return "\n".join(lines)
