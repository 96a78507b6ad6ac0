"""Typed request intake: a verified message becomes a queued :class:`Request`, or is refused.

Pure: the caller passes the clock reading. Frames name a model (the
first policy answers ``default``); task requests queue under their task's model key so they
batch apart from frames. Anything else on the work topics is refused.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from cloud_workers.queue import Request, RequestMeta
from cloud_workers.runner import task_model
from schemas.messages import Frame, Message, Priority, TaskRequest
from security.keys import Keyring, Role
from security.replay import ReplayGuard
from vlabus.envelope import SENDER_ROLES, Header, SessionAuth
from vlabus.wire import Decoder

DEFAULT_MODEL = "default"


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a verified message was not queued; ``cause`` is a drop cause to count, or None
    when the message is simply not work (logged only)."""

    cause: str | None
    detail: str


def frame_decoder(keyring: Keyring, *, replay_mode: bool,
                  sessions: SessionAuth | None = None) -> Decoder:
    """A decoder for frames and tasks; replay mode also admits ``replay``-role senders;
    ``sessions`` checks session-mode envelopes (``--session-pool``)."""
    roles = dict(SENDER_ROLES)
    if replay_mode:
        extra: frozenset[Role] = frozenset({"replay"})
        roles["frame"] = roles["frame"] | extra
        roles["task"] = roles["task"] | extra
    return Decoder(keyring, ReplayGuard(), sender_roles=roles, sessions=sessions)


def to_request(header: Header, body: Message, meta: RequestMeta, *, models: Collection[str],
               default_model: str, now_ns: int) -> Request | Refused:
    """The request for a verified ``body`` (arrived at wall-clock ``now_ns``), or why not.

    A safety-critical frame is queued as ``CRITICAL`` whatever its header's priority."""
    if isinstance(body, Frame):
        model = body.model
        if model == DEFAULT_MODEL and model not in models:
            model = default_model
        if model not in models:
            return Refused("unknown_model", f"frame from {header.sender!r} asks for unknown "
                                            f"model {model!r}")
        priority = Priority.CRITICAL if body.safety_critical else header.priority
        return Request(model, priority, header.deadline_ns, now_ns, body, meta=meta,
                       source=header.sender, interval_ns=body.interval_ns or 0,
                       sent_ns=body.capture_ns)
    if isinstance(body, TaskRequest):
        return Request(task_model(body.task), body.priority, header.deadline_ns, now_ns, body,
                       meta=meta)
    return Refused(None, f"ignoring {type(body).__name__} from {header.sender!r} on the work "
                         "topics")


def decodes(request: Request) -> bool:
    """Whether a request's images need decoding (JPEG, lz4, a resolution step): that work
    (~0.3 ms a JPEG camera) runs on the inference thread, never on the event loop."""
    frame = request.payload
    return isinstance(frame, Frame) and any(
        image.codec != "raw" or image.scale != 1 for image in frame.cameras.values())
