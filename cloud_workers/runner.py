"""Runs batches on the inference thread: frames through a policy, tasks through handlers.

:meth:`PolicyRunner.run` is called from one worker thread (never the event loop) and never
raises for bad input: a frame that cannot become an observation, or a batch the policy rejects,
turns into per-request errors. When a whole batch fails, each request is retried alone so one
misfit observation cannot cost the others their answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cloud_workers.batcher import Batch
from cloud_workers.tasks import Handler, Result, TaskError
from schemas.errors import WireError
from schemas.messages import Frame, TaskRequest
from vlabus.policy import Observation, Policy, describe

log = logging.getLogger(__name__)
TASK_PREFIX = "task:"


@dataclass(slots=True)
class Outcome:
    """One request's answer: an (H, D) chunk, a task result, or an error text."""

    chunk: npt.NDArray[np.float32] | None = None
    result: Result | None = None
    error: str = ""


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome]
    inference_ns: int


def task_model(task: str) -> str:
    """The queue's model key for a task, so tasks batch apart from frames."""
    return TASK_PREFIX + task


class PolicyRunner:
    """Named policies and task handlers; ``models`` maps each policy name to its version."""

    def __init__(self, policies: dict[str, Policy], handlers: dict[str, Handler]) -> None:
        if not policies:
            raise ValueError("a runner needs at least one policy")
        self.policies = policies
        self.handlers = handlers
        self.models = {name: describe(p)[1] for name, p in policies.items()}

    def warm_up(self, rounds: int = 3) -> dict[str, int]:
        """Run every policy on a synthetic observation (its shapes from ``config`` when the
        policy has one), so first-request latency excludes lazy init and kernel selection.
        A policy with its own ``warm_up()`` method is asked to warm itself instead.
        Returns the last batch-1 time (ns) per policy that ran, to seed deadline estimates."""
        timings: dict[str, int] = {}
        for name, policy in self.policies.items():
            own = getattr(policy, "warm_up", None)
            if callable(own):
                own()
                continue
            sample = _synthetic(policy)
            for _ in range(rounds):
                start = time.perf_counter_ns()
                try:
                    policy.infer([sample])
                except Exception as exc:  # noqa: BLE001 - user policies may reject the sample
                    log.warning("warm-up of %r skipped: %r", name, exc)
                    break
                timings[name] = time.perf_counter_ns() - start
        return timings

    def run(self, batch: Batch) -> BatchResult:
        start = time.perf_counter_ns()
        if batch.model.startswith(TASK_PREFIX):
            outcomes = [self._task(req.payload) for req in batch.requests]
        else:
            outcomes = self._frames(self.policies[batch.model],
                                    [req.payload for req in batch.requests])
        return BatchResult(outcomes, time.perf_counter_ns() - start)

    def _frames(self, policy: Policy, frames: Sequence[Frame]) -> list[Outcome]:
        outcomes = [Outcome() for _ in frames]
        observations: list[Observation] = []
        index: list[int] = []
        for i, frame in enumerate(frames):
            try:
                observations.append(Observation.from_frame(frame))
                index.append(i)
            except WireError as exc:
                outcomes[i].error = f"frame does not decode: {exc}"
        if not observations:
            return outcomes
        try:
            chunks = _checked(policy.infer(observations), len(observations))
        except Exception as exc:  # noqa: BLE001 - isolate the misfit below
            log.warning("batch of %d failed (%r); retrying one by one", len(observations), exc)
            for i, obs in zip(index, observations, strict=True):
                try:
                    outcomes[i].chunk = _checked(policy.infer([obs]), 1)[0]
                except Exception as single:  # noqa: BLE001
                    outcomes[i].error = f"policy: {single}"
            return outcomes
        for i, chunk in zip(index, chunks, strict=True):
            outcomes[i].chunk = chunk
        return outcomes

    def _task(self, request: TaskRequest) -> Outcome:
        handler = self.handlers.get(request.task)
        if handler is None:
            return Outcome(error=f"unknown task {request.task!r}; "
                                 f"this worker serves {sorted(self.handlers)}")
        try:
            return Outcome(result=handler(request))
        except TaskError as exc:
            return Outcome(error=str(exc))
        except Exception as exc:  # a handler bug must not end the loop
            log.exception("task %r failed", request.task)
            return Outcome(error=f"task failed: {type(exc).__name__}")


def _checked(actions: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.float32]:
    if not isinstance(actions, np.ndarray) or actions.ndim != 3 or actions.shape[0] != count:
        shape = getattr(actions, "shape", None)
        raise ValueError(f"policy returned {shape}, expected ({count}, H, D)")
    return actions.astype(np.float32, copy=False)


def _synthetic(policy: Policy) -> Observation:
    config = getattr(policy, "config", None)
    cameras = getattr(config, "cameras", ("front",))
    state_dim = int(getattr(config, "state_dim", 14))
    image = np.zeros((224, 224, 3), np.uint8)
    return Observation(images=dict.fromkeys(cameras, image), command="warm up",
                       state=np.zeros(state_dim, np.float32))
