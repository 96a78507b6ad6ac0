"""A worker's settings and the status message it announces them with."""

from __future__ import annotations

from dataclasses import dataclass, field

from cloud_workers.stall import StallConfig
from schemas.messages import Status
from schemas.status import status_message


@dataclass
class WorkerConfig:
    worker_id: str
    group: str = "workers"
    max_batch: int = 16
    max_delay_ns: int = 2_000_000
    queue_capacity: int = 1024
    max_inflight_replies: int = 1024
    replay_mode: bool = False
    #: Frame batches of a model measured faster than this run on the event loop itself: for
    #: a CPU-cheap policy the two thread hand-offs cost more than the work. 0 disables.
    inline_below_ns: int = 200_000
    #: vlabus (priority/deadline, batch size from t(batch)), fifo or serial: see schedulers
    scheduler: str = "vlabus"
    #: vlabus: plan periodic robots' next frames and suggest when to send them
    slot_hints: bool = True
    detail: dict[str, str] = field(default_factory=dict)
    #: the serving-loop watchdog (``cloud_workers.stall``)
    stall: StallConfig = field(default_factory=StallConfig)


def worker_status(config: WorkerConfig, state: str, session: int,
                  models: dict[str, int], *, degraded: str = "",
                  queue_depth: int | None = None) -> Status:
    """The worker's retained birth/death message; ``detail`` names its group, and its
    ``health`` (``ok``, or ``degraded`` with the ``reason``, while out of the pool); with a
    direct data plane, ``config.detail`` holds its endpoint and ``queue_depth`` its load."""
    health = {"health": "degraded", "reason": degraded} if degraded else {"health": "ok"}
    return status_message(config.worker_id, "worker", state, session=session, models=models,
                          detail={"group": config.group, **config.detail, **health},
                          queue_depth=queue_depth)
