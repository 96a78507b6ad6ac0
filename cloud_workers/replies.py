"""Pure reply building: what a worker answers to each request of a batch it ran.

No I/O and no clocks: the caller passes the time and the worker's previous encode duration.
A frame gets an :class:`~schemas.messages.Action` (or nothing when the policy gave no chunk), a
task a :class:`~schemas.messages.TaskResult`; either goes to ``action_topic`` of the envelope's
authenticated sender with the request's deadline, priority and correlation id. A frame dropped
before the model gets a :class:`~schemas.messages.Declined` there (:func:`build_declined`).

Timing fields of each ``Action`` (durations on the worker's clocks): ``decode_ns`` (receive
pipeline), ``queue_wait_ns`` (queued → batch formed), ``inference_ns`` (the whole batch),
``span_ns`` (transport arrival → hand-off to publish) and ``encode_ns``, which is the measured
encode time of the worker's *previous* reply: a message cannot carry the time taken to encode
itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from cloud_workers.queue import Request
from cloud_workers.runner import Outcome
from schemas import topics
from schemas.arrays import pack_array
from schemas.messages import Action, Declined, Frame, TaskRequest, TaskResult

MAX_ERROR = 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer, ready to encode: body, topic and the header fields it inherits."""

    topic: str
    body: Action | Declined | TaskResult
    deadline_ns: int
    priority: int
    corr: str


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """Durations shared by every reply of a batch (ns, this worker's clocks)."""

    model: str
    formed_ns: int
    inference_ns: int
    encode_ns: int


def build_reply(request: Request, outcome: Outcome, timing: BatchTiming, *, worker_id: str,
                versions: Mapping[str, int], now_ns: int) -> Reply | None:
    """The reply to ``request``; None when a frame's policy gave no chunk (a policy error).

    ``versions`` maps model names to versions; ``now_ns`` (wall clock) ends the span."""
    meta = request.meta
    if meta is None:
        raise ValueError("a request without intake metadata cannot be answered")
    header = meta.header
    wait_ns = timing.formed_ns - request.arrived_ns
    body: Action | TaskResult
    if isinstance(request.payload, TaskRequest):
        task = request.payload
        body = TaskResult(robot_id=task.robot_id, task=task.task, ok=not outcome.error,
                          result=outcome.result or {}, error=outcome.error[:MAX_ERROR],
                          worker_id=worker_id, queue_wait_ns=wait_ns,
                          inference_ns=timing.inference_ns)
    elif outcome.chunk is None:
        return None
    else:
        frame = request.payload
        body = Action(
            robot_id=frame.robot_id, step=frame.step, actions=pack_array(outcome.chunk),
            model=timing.model, model_version=versions[timing.model], worker_id=worker_id,
            decode_ns=meta.decode_ns, queue_wait_ns=wait_ns, inference_ns=timing.inference_ns,
            encode_ns=timing.encode_ns, span_ns=max(0, now_ns - meta.received_ns),
            slot_ns=request.hint_ns or msgspec.UNSET)
    return Reply(topics.action_topic(header.sender), body, header.deadline_ns, header.priority,
                 header.corr)


def build_declined(request: Request, *, worker_id: str, reason: str) -> Reply | None:
    """The notice that frame ``request`` will not be answered (with its robot's send-time hint,
    when the scheduler planned one); None for a task or a request without intake metadata."""
    frame = request.payload
    if request.meta is None or not isinstance(frame, Frame):
        return None
    header = request.meta.header
    body = Declined(robot_id=frame.robot_id, step=frame.step, worker_id=worker_id,
                    reason=reason, slot_ns=request.hint_ns or msgspec.UNSET)
    return Reply(topics.action_topic(header.sender), body, header.deadline_ns, header.priority,
                 header.corr)
