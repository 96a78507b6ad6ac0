"""What the agent decides each step, as plain values: where an action came from and why.

A :class:`Decision` resolves one request (a frame sent, or a local inference); an
:class:`ActionResult` is the action executed at one control step, which with action chunks may
come from a decision taken steps before.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from edge_agent.local import Chunk


class Source(StrEnum):
    CLOUD = "cloud"
    FALLBACK = "fallback"


class Cause(StrEnum):
    """Why a step fell back to the local policy."""

    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    BREAKER_OPEN = "breaker_open"
    REJECTED_REPLY = "rejected_reply"
    #: the worker dropped the frame before its model (it could not answer in time) and said so
    DECLINED = "declined"
    SAFETY_CRITICAL = "safety_critical"


@dataclass(frozen=True, slots=True)
class Decision:
    """How one request (a frame) was resolved: a chunk, where it came from and when."""

    step: int
    chunk: Chunk | None
    source: Source
    cause: Cause | None
    deadline_ns: int
    decided_ns: int
    rtt_ns: int | None = None
    worker_id: str | None = None
    tick_stride: float = 1.0

    @property
    def lateness_ns(self) -> int:
        """How long after its deadline the decision was taken (0 when on time)."""
        return max(0, self.decided_ns - self.deadline_ns)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """The action to execute now (None only when no policy could produce one)."""

    step: int
    action: npt.NDArray[np.float32] | None
    source: Source
    cause: Cause | None
    lateness_ns: int
    rtt_ns: int | None
    worker_id: str | None
    model_version: int
    blended: bool = False
    codec: dict[str, str] | None = None  # rung per camera of the frame this step sent

    def record(self) -> dict[str, object]:
        """This result as a plain map (the black box's decision record)."""
        return {"step": self.step, "source": self.source.value,
                "cause": None if self.cause is None else self.cause.value,
                "lateness_ns": self.lateness_ns, "rtt_ns": self.rtt_ns,
                "worker_id": self.worker_id, "model_version": self.model_version,
                "codec": self.codec,
                "action": None if self.action is None else self.action.tolist()}
