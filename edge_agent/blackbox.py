"""The robot's black box: an observer that records every message sent and received and every
decision, with the wall-clock time it saw them.

Decisions go to :func:`schemas.topics.decision_topic` as MessagePack maps (the recording's
``DECISION`` channel format). A recorder failure
(a full disk) ends the recording, never the robot.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import msgspec

from edge_agent.decisions import ActionResult
from schemas.deadline import Clock
from schemas.errors import BusError
from schemas.topics import decision_topic
from vlabus.bus.transport import Message
from vlabus.log.formats import DECISION, ChannelFormat

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """What the black box writes to (``vlabus.log.record.Recorder`` fits)."""

    def write(self, topic: str, payload: bytes | bytearray | memoryview, received_ns: int,
              sent_ns: int | None = None, *, channel: ChannelFormat | None = None) -> None: ...


class BlackBox:
    """Records what one robot sent, received and decided into ``sink``."""

    def __init__(self, sink: RecordSink, robot_id: str, *, clock: Clock = time.time_ns) -> None:
        self.sink: RecordSink | None = sink
        self._clock = clock
        self._topic = decision_topic(robot_id)
        self._pack = msgspec.msgpack.Encoder()

    @property
    def recording(self) -> bool:
        return self.sink is not None

    def sent(self, topic: str, wire: bytes | memoryview) -> None:
        self._write(topic, wire)

    def received(self, message: Message) -> None:
        self._write(message.topic, message.payload)

    def decided(self, result: ActionResult) -> None:
        if self.sink is not None:
            self._write(self._topic, self._pack.encode(result.record()), DECISION)

    def _write(self, topic: str, payload: bytes | bytearray | memoryview,
               channel: ChannelFormat | None = None) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            sink.write(topic, payload, self._clock(), channel=channel)
        except BusError as exc:  # a full disk ends the recording, never the robot
            log.error("black box stopped: %r", exc)  # noqa: TRY400 - expected, no traceback
            self.sink = None
