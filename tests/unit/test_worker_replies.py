"""Worker intake and reply building: pure functions, no sockets, no clocks."""

from __future__ import annotations

import numpy as np

from cloud_workers.config import WorkerConfig, worker_status
from cloud_workers.intake import Refused, to_request
from cloud_workers.queue import Request, RequestMeta
from cloud_workers.replies import BatchTiming, build_reply
from cloud_workers.runner import Outcome, task_model
from schemas.arrays import unpack_array
from schemas.messages import Action, Priority, Status, TaskRequest, TaskResult
from tests.support.frames import make_frame
from vlabus.envelope import Header

KEY = "0123456789abcdef"


def header(sender: str = "robot-a", *, corr: str = "c-1", deadline_ns: int = 9_000,
           priority: int = Priority.NORMAL, kind: str = "frame") -> Header:
    return Header(kind=kind, sender=sender, key=KEY, seq=1, sent_ns=1, deadline_ns=deadline_ns,
                  priority=priority, corr=corr)


def meta(head: Header) -> RequestMeta:
    return RequestMeta(head, received_ns=1_000, decode_ns=50)


def test_frames_queue_under_their_model_and_default_means_the_first() -> None:
    head = header()
    request = to_request(head, make_frame("robot-a", 3), meta(head), models={"vla": 1},
                         default_model="vla", now_ns=1_200)
    assert isinstance(request, Request)
    assert (request.model, request.priority, request.deadline_ns, request.arrived_ns) == (
        "vla", Priority.NORMAL, 9_000, 1_200)
    assert request.meta == meta(head)
    critical = to_request(head, make_frame("robot-a", 4, critical=True), meta(head),
                          models={"vla": 1}, default_model="vla", now_ns=1)
    assert isinstance(critical, Request)
    assert critical.priority == Priority.CRITICAL


def test_unknown_models_and_stray_kinds_are_refused_with_a_cause() -> None:
    head = header()
    unknown = to_request(head, make_frame("robot-a", 1, model="big"), meta(head),
                         models={"vla": 1}, default_model="vla", now_ns=1)
    assert isinstance(unknown, Refused)
    assert unknown.cause == "unknown_model"
    status = Status(client_id="robot-a", role="robot", state="online", session=1, time_ns=1)
    stray = to_request(head, status, meta(head), models={"vla": 1}, default_model="vla",
                       now_ns=1)
    assert isinstance(stray, Refused)
    assert stray.cause is None


def test_a_frame_reply_carries_the_chunk_timings_and_the_senders_header() -> None:
    head = header("robot-b", corr="x-9", deadline_ns=77, priority=Priority.HIGH)
    request = Request("vla", Priority.HIGH, 77, 1_100, make_frame("robot-b", 5), meta=meta(head))
    chunk = np.ones((4, 7), np.float32)
    reply = build_reply(request, Outcome(chunk=chunk), BatchTiming("vla", 1_300, 400, 30),
                        worker_id="worker-1", versions={"vla": 2}, now_ns=1_900)
    assert reply is not None
    assert (reply.topic, reply.deadline_ns, reply.priority, reply.corr) == (
        "vla/v1/robot-b/action", 77, Priority.HIGH, "x-9")
    action = reply.body
    assert isinstance(action, Action)
    assert (action.robot_id, action.step, action.model, action.model_version) == (
        "robot-b", 5, "vla", 2)
    assert (action.decode_ns, action.queue_wait_ns, action.inference_ns, action.encode_ns,
            action.span_ns) == (50, 200, 400, 30, 900)
    assert np.array_equal(unpack_array(action.actions), chunk)


def test_a_frame_without_a_chunk_gets_no_reply_and_a_task_gets_its_error() -> None:
    head = header()
    frame = Request("vla", 2, 0, 0, make_frame("robot-a", 1), meta=meta(head))
    timing = BatchTiming("vla", 10, 5, 0)
    assert build_reply(frame, Outcome(error="policy: boom"), timing, worker_id="worker-1",
                       versions={"vla": 1}, now_ns=20) is None
    task = TaskRequest(robot_id="robot-a", task="plan")
    queued = Request(task_model("plan"), 3, 0, 4, task, meta=meta(head))
    reply = build_reply(queued, Outcome(error="x" * 2000), BatchTiming("task:plan", 10, 5, 0),
                        worker_id="worker-1", versions={}, now_ns=20)
    assert reply is not None
    result = reply.body
    assert isinstance(result, TaskResult)
    assert (result.ok, len(result.error), result.queue_wait_ns) == (False, 1024, 6)


def test_worker_status_names_its_group_and_detail() -> None:
    config = WorkerConfig(worker_id="worker-1", group="gpu", detail={"device": "cpu"})
    status = worker_status(config, "online", 5, {"vla": 1})
    assert (status.client_id, status.role, status.state, status.session) == (
        "worker-1", "worker", "online", 5)
    assert status.detail == {"group": "gpu", "device": "cpu", "health": "ok"}
    degraded = worker_status(config, "online", 5, {"vla": 1}, degraded="a batch hangs")
    assert degraded.detail == {"group": "gpu", "device": "cpu", "health": "degraded",
                               "reason": "a batch hangs"}
