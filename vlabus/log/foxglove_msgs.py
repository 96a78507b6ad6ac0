"""vlabus traffic as messages Foxglove renders natively, for ``log export --format foxglove``
and the live ``vlabus view`` (docs/foxglove.md).

:class:`Translator` turns one decoded bus message (or a black-box decision, or a rejection)
into :class:`Out` items: camera images as ``foxglove.CompressedImage`` (JPEG bytes passed
through untouched) or ``foxglove.RawImage``, everything else as JSON with a JSON Schema so
Foxglove can plot it. :class:`FoxgloveSink` logs them on foxglove-sdk channels of one
``foxglove.Context`` (an MCAP file or a WebSocket server is attached to that context by the
caller), with the original log time.

Topics keep the bus names: ``vla/v1/{robot}/frame/camera/{name}``, ``…/frame/state``,
``vla/v1/{robot}/action``, ``vla/v1/{robot}/latency``, ``vla/v1/{robot}/decision``, status
topics as they are, and ``vlabus/rejected`` for what failed verification or decoding.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from schemas.arrays import unpack_array
from schemas.errors import SchemaError
from schemas.images import Image
from schemas.messages import Action, Frame, Message
from vlabus.envelope import Header
from vlabus.log.formats import DECISION_SCHEMA
from vlabus.log.view import to_plain

Kind = Literal["compressed_image", "raw_image", "json"]
REJECTED_TOPIC = "vlabus/rejected"
RAW_ENCODINGS = {1: "mono8", 3: "rgb8", 4: "rgba8"}
MAX_PENDING = 4096  # frames remembered for pairing with their action

_NUMBERS = {"type": "array", "items": {"type": "number"}}
_MS = {"type": ["number", "null"], "description": "milliseconds"}
_VERIFIED = {"type": ["boolean", "null"],
             "description": "signature checked: true, failed: false, not checked: null"}
SCHEMAS: dict[str, dict[str, Any]] = {
    "vlabus.FrameState": {
        "title": "vlabus.FrameState", "type": "object",
        "properties": {"robot_id": {"type": "string"}, "step": {"type": "integer"},
                       "state": _NUMBERS, "command": {"type": "string"},
                       "capture_ns": {"type": "integer"}, "safety_critical": {"type": "boolean"},
                       "model": {"type": "string"}, "cameras": {"type": "array",
                                                                "items": {"type": "string"}},
                       "sender": {"type": "string"}, "seq": {"type": "integer"},
                       "deadline_budget_ms": _MS, "verified": _VERIFIED},
        "required": ["robot_id", "step", "state", "command", "verified"]},
    "vlabus.ActionChunk": {
        "title": "vlabus.ActionChunk", "type": "object",
        "properties": {"robot_id": {"type": "string"}, "step": {"type": "integer"},
                       "worker_id": {"type": "string"}, "model": {"type": "string"},
                       "model_version": {"type": "integer"}, "horizon": {"type": "integer"},
                       "action_dim": {"type": "integer"},
                       "chunk": {"type": "array", "items": _NUMBERS},
                       "first": _NUMBERS, "period_ms": _MS, "decode_ms": _MS,
                       "queue_wait_ms": _MS, "inference_ms": _MS, "encode_ms": _MS,
                       "span_ms": _MS, "verified": _VERIFIED},
        "required": ["robot_id", "step", "chunk", "first", "verified"]},
    "vlabus.Latency": {
        "title": "vlabus.Latency", "type": "object",
        "description": "a frame and its action as seen where they were recorded (one clock)",
        "properties": {"robot_id": {"type": "string"}, "step": {"type": "integer"},
                       "worker_id": {"type": "string"}, "round_trip_ms": _MS,
                       "deadline_budget_ms": _MS, "within_deadline": {"type": ["boolean",
                                                                                "null"]},
                       "queue_wait_ms": _MS, "inference_ms": _MS, "worker_span_ms": _MS,
                       "outside_worker_ms": _MS},
        "required": ["robot_id", "step", "round_trip_ms"]},
    "vlabus.DecisionView": {
        **{k: v for k, v in DECISION_SCHEMA.items() if k != "properties"},
        "title": "vlabus.DecisionView",
        "properties": {**DECISION_SCHEMA["properties"], "robot_id": {"type": "string"},
                       "lateness_ms": _MS, "rtt_ms": _MS, "fallback": {"type": "integer"}}},
    "vlabus.Rejected": {
        "title": "vlabus.Rejected", "type": "object",
        "properties": {"topic": {"type": "string"}, "reason": {"type": "string"},
                       "detail": {"type": "string"}, "bytes": {"type": "integer"}},
        "required": ["topic", "reason", "bytes"]},
    "vlabus.Message": {
        "title": "vlabus.Message", "type": "object",
        "description": "any other vlabus message: header and body, arrays summarised",
        "properties": {"kind": {"type": "string"}, "header": {"type": "object"},
                       "message": {"type": "object"}, "verified": _VERIFIED},
        "required": ["kind", "message"]},
}


@dataclass(frozen=True, slots=True)
class Out:
    """One message for Foxglove: ``message`` is a dict (JSON) or a foxglove-sdk image."""

    topic: str
    kind: Kind
    message: Any
    schema: str = ""  # a key of SCHEMAS for JSON


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _robot_base(topic: str) -> str:
    """``vla/v1/robot-a/frame`` -> ``vla/v1/robot-a``."""
    return topic.rsplit("/", 1)[0] if "/" in topic else topic


def image_out(topic: str, name: str, image: Image, capture_ns: int) -> Out | None:
    """A camera image as Foxglove sees it; None for a layout Foxglove cannot show."""
    from foxglove.messages import CompressedImage, RawImage, Timestamp

    stamp = Timestamp(capture_ns // 1_000_000_000, capture_ns % 1_000_000_000)
    if image.codec == "jpeg":  # passed through: the exact bytes the robot sent
        return Out(topic, "compressed_image", CompressedImage(
            timestamp=stamp, frame_id=name, data=bytes(image.data), format="jpeg"))
    encoding = RAW_ENCODINGS.get(image.channels)
    if encoding is None or len(image.data) != image.height * image.width * image.channels:
        return None
    return Out(topic, "raw_image", RawImage(
        timestamp=stamp, frame_id=name, width=image.width, height=image.height,
        encoding=encoding, step=image.width * image.channels, data=bytes(image.data)))


class Translator:
    """Decoded vlabus traffic -> :class:`Out` items. Remembers the last ``MAX_PENDING`` frames
    (receive time, deadline budget) to pair each action with its frame by correlation id."""

    def __init__(self) -> None:
        self._frames: OrderedDict[str, tuple[int, int | None]] = OrderedDict()
        self.skipped_images = 0

    def envelope(self, topic: str, log_ns: int, header: Header, message: Message,
                 verified: bool | None) -> list[Out]:
        """Outputs for one envelope that decoded (``verified``: True, or None unchecked)."""
        if isinstance(message, Frame):
            return self._frame(topic, log_ns, header, message, verified)
        if isinstance(message, Action):
            return self._action(topic, log_ns, header, message, verified)
        doc = {"kind": header.kind, "header": to_plain(header),
               "message": to_plain(message, values=True), "verified": verified}
        return [Out(topic, "json", doc, "vlabus.Message")]

    def decision(self, topic: str, record: dict[str, Any]) -> list[Out]:
        """The edge black box's record of one step (the executed action, its source)."""
        doc = {key: record.get(key) for key in DECISION_SCHEMA["properties"]}
        doc["robot_id"] = topic.split("/")[2] if topic.count("/") >= 3 else ""
        doc["lateness_ms"] = _ms(record.get("lateness_ns"))
        doc["rtt_ms"] = _ms(record.get("rtt_ns"))
        doc["fallback"] = int(record.get("source") == "fallback")
        return [Out(topic, "json", doc, "vlabus.DecisionView")]

    def rejected(self, topic: str, reason: str, detail: str, size: int) -> list[Out]:
        doc = {"topic": topic, "reason": reason, "detail": detail, "bytes": size}
        return [Out(REJECTED_TOPIC, "json", doc, "vlabus.Rejected")]

    def _frame(self, topic: str, log_ns: int, header: Header, frame: Frame,
               verified: bool | None) -> list[Out]:
        budget = header.deadline_ns - header.sent_ns if header.deadline_ns else None
        if header.corr:
            self._frames[header.corr] = (log_ns, budget)
            while len(self._frames) > MAX_PENDING:
                self._frames.popitem(last=False)
        outs: list[Out] = []
        for name, image in sorted(frame.cameras.items()):
            out = image_out(f"{topic}/camera/{name}", name, image, frame.capture_ns)
            if out is None:
                self.skipped_images += 1
            else:
                outs.append(out)
        state = _values(frame.state)
        outs.append(Out(f"{topic}/state", "json", {
            "robot_id": frame.robot_id, "step": frame.step, "state": state,
            "command": frame.command, "capture_ns": frame.capture_ns,
            "safety_critical": frame.safety_critical, "model": frame.model,
            "cameras": sorted(frame.cameras), "sender": header.sender, "seq": header.seq,
            "deadline_budget_ms": _ms(budget), "verified": verified}, "vlabus.FrameState"))
        return outs

    def _action(self, topic: str, log_ns: int, header: Header, action: Action,
                verified: bool | None) -> list[Out]:
        try:
            chunk = unpack_array(action.actions, path="actions").astype(np.float64)
        except SchemaError as exc:
            return self.rejected(topic, "schema", str(exc), 0)
        if chunk.ndim == 1:
            chunk = chunk[None, :]
        rows = chunk.reshape(chunk.shape[0], -1).tolist() if chunk.size else []
        outs = [Out(topic, "json", {
            "robot_id": action.robot_id, "step": action.step, "worker_id": action.worker_id,
            "model": action.model, "model_version": action.model_version,
            "horizon": len(rows), "action_dim": len(rows[0]) if rows else 0, "chunk": rows,
            "first": rows[0] if rows else [], "period_ms": _ms(action.period_ns),
            "decode_ms": _ms(action.decode_ns), "queue_wait_ms": _ms(action.queue_wait_ns),
            "inference_ms": _ms(action.inference_ns), "encode_ms": _ms(action.encode_ns),
            "span_ms": _ms(action.span_ns), "verified": verified}, "vlabus.ActionChunk")]
        sent = self._frames.pop(header.corr, None) if header.corr else None
        if sent is not None:
            frame_ns, budget = sent
            rtt = log_ns - frame_ns
            outside = rtt - action.span_ns if action.span_ns else None
            outs.append(Out(f"{_robot_base(topic)}/latency", "json", {
                "robot_id": action.robot_id, "step": action.step,
                "worker_id": action.worker_id, "round_trip_ms": _ms(rtt),
                "deadline_budget_ms": _ms(budget),
                "within_deadline": None if budget is None else rtt <= budget,
                "queue_wait_ms": _ms(action.queue_wait_ns),
                "inference_ms": _ms(action.inference_ns),
                "worker_span_ms": _ms(action.span_ns or None),
                "outside_worker_ms": _ms(outside)}, "vlabus.Latency"))
        return outs


def _values(packed: Any) -> list[float]:
    try:
        array = unpack_array(packed, path="state", max_elements=4096)
    except SchemaError:
        return []
    return [float(v) for v in np.asarray(array, dtype=np.float64).ravel()]


class Sink(Protocol):
    """Where :class:`Out` items go (:class:`FoxgloveSink`, or a test's list)."""

    logged: int

    def log(self, out: Out, log_ns: int) -> None: ...


class FoxgloveSink:
    """Logs :class:`Out` items on channels of one foxglove-sdk ``Context``, creating each
    channel on first use with its Foxglove schema (images) or named JSON Schema."""

    def __init__(self, context: Any, *, metadata: dict[str, str] | None = None,
                 schemas: Mapping[str, dict[str, Any]] = SCHEMAS) -> None:
        self._context = context
        self._schemas = schemas
        self._metadata = dict(metadata or {})
        self._channels: dict[tuple[str, Kind], Any] = {}
        self.logged = 0

    def log(self, out: Out, log_ns: int) -> None:
        channel = self._channels.get((out.topic, out.kind))
        if channel is None:
            channel = self._open(out)
            self._channels[(out.topic, out.kind)] = channel
        if out.kind == "json":
            channel.log(json.dumps(out.message).encode(), log_time=log_ns)
        else:
            channel.log(out.message, log_time=log_ns)
        self.logged += 1

    def _open(self, out: Out) -> Any:
        import foxglove
        from foxglove.channels import CompressedImageChannel, RawImageChannel

        if out.kind == "compressed_image":
            return CompressedImageChannel(out.topic, context=self._context,
                                          metadata=self._metadata)
        if out.kind == "raw_image":
            return RawImageChannel(out.topic, context=self._context, metadata=self._metadata)
        schema = foxglove.Schema(name=out.schema, encoding="jsonschema",
                                 data=json.dumps(self._schemas[out.schema]).encode())
        return foxglove.Channel(out.topic, schema=schema, message_encoding="json",
                                context=self._context, metadata=self._metadata)
