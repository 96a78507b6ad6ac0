"""What a robot run adds up to: the ``--json`` summary of ``vlabus edge`` and of the bench.

The latency breakdown uses only durations, each measured on one machine's own clock: the robot
times its encode, decode and round trip; the worker reports its decode, queue wait, inference,
encode and total span inside the Action. Transport = round trip - robot encode - robot decode -
worker span. No clocks are compared across machines.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from vlabus.quantiles import quantiles

BREAKDOWN = ("robot_encode", "transport_up_down", "worker_decode", "queue_wait", "inference",
             "worker_encode", "robot_decode")


def percentiles_ms(samples_ns: list[int] | deque[int], qs: tuple[float, ...]) -> dict[str, float]:
    """``{"p50": …, "p99": …, "max": …}`` in ms (keys from ``qs``; 1.0 is ``max``)."""
    return quantiles(samples_ns, qs, scale=1e6, digits=4)


@dataclass
class RunStats:
    """Accumulated by the agent; bounded sample windows (the last ``keep`` of each)."""

    keep: int = 100_000
    steps: int = 0
    steps_without_action: int = 0
    late_replies_discarded: int = 0
    unmatched_replies: int = 0
    #: frames a worker declined (dropped before its model): decided locally at once
    declined: int = 0
    hedges_started: int = 0
    hedges_wasted: int = 0
    actions_by_source: Counter[str] = field(default_factory=Counter)
    fallbacks_by_cause: Counter[str] = field(default_factory=Counter)
    lateness_ns: deque[int] = field(init=False)
    rtt_ns: deque[int] = field(init=False)
    parts_ns: dict[str, deque[int]] = field(init=False)

    def __post_init__(self) -> None:
        self.lateness_ns = deque(maxlen=self.keep)
        self.rtt_ns = deque(maxlen=self.keep)
        self.parts_ns = {name: deque(maxlen=self.keep) for name in BREAKDOWN}

    def reset(self) -> None:
        """Forget everything counted so far (e.g. after a warm-up), keeping this object."""
        fresh = RunStats(self.keep)
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def add_breakdown(self, *, rtt_ns: int, robot_encode_ns: int, robot_decode_ns: int,
                      worker: dict[str, int]) -> dict[str, int]:
        """One cloud action's parts (returned too); ``worker`` has decode/queue_wait/
        inference/encode/span in ns as the worker measured them."""
        parts = self.parts_ns
        parts["robot_encode"].append(robot_encode_ns)
        parts["robot_decode"].append(robot_decode_ns)
        parts["transport_up_down"].append(max(0, rtt_ns - robot_encode_ns - robot_decode_ns
                                      - worker["span"]))
        parts["worker_decode"].append(worker["decode"])
        parts["queue_wait"].append(worker["queue_wait"])
        parts["inference"].append(worker["inference"])
        parts["worker_encode"].append(worker["encode"])
        return {name: samples[-1] for name, samples in parts.items()}

    def summary(self, rejected_by_reason: dict[str, int], **extra: Any) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "actions_by_source": dict(self.actions_by_source),
            "fallbacks_by_cause": dict(self.fallbacks_by_cause),
            "lateness_ms": percentiles_ms(self.lateness_ns, (0.5, 0.99, 1.0)),
            "rtt_ms": percentiles_ms(self.rtt_ns, (0.5, 0.99)),
            "late_replies_discarded": self.late_replies_discarded,
            "steps_without_action": self.steps_without_action,
            "rejected_by_reason": dict(rejected_by_reason),
            "latency_breakdown_p50_ms": {
                name: percentiles_ms(samples, (0.5,))["p50"]
                for name, samples in self.parts_ns.items()},
            "breakdown_samples": len(self.parts_ns["transport_up_down"]),
            "unmatched_replies": self.unmatched_replies,
            "declined": self.declined,
            "hedges": {"started": self.hedges_started, "wasted": self.hedges_wasted},
            **extra,
        }
