"""The settings of one robot's agent (:class:`~edge_agent.agent.EdgeAgent`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_agent.breaker import BreakerConfig
from edge_agent.codec import parse_codec
from schemas.messages import Priority
from schemas.topics import check_id


@dataclass(frozen=True)
class AgentConfig:
    robot_id: str
    deadline_ns: int = 50_000_000
    chunk: int = 1
    refill_below: int = 0
    period_ns: int = 33_333_333
    model: str = "default"
    local_model: str = "edge"
    priority: int = Priority.NORMAL
    codec: str = "auto"  # auto | raw | lz4 | jpeg[:QUALITY], see edge_agent.codec
    timer_slack_ns: int = 1_000_000
    hedge_slack_ns: int = 500_000
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    #: chunked robots state their refill interval in each frame and follow a worker's
    #: send-time hints (``edge_agent.refill``); False: neither
    slot_hints: bool = True

    def __post_init__(self) -> None:
        check_id(self.robot_id)
        if self.deadline_ns <= 0 or self.period_ns <= 0 or self.chunk < 1:
            raise ValueError("deadline, period and chunk must be positive")
        parse_codec(self.codec)  # ValueError with the reason

    @property
    def frame_interval_ns(self) -> int:
        """How often a frame goes out: every step, or every refill of a chunk queue."""
        return self.period_ns * max(1, self.chunk - self.refill_below)
