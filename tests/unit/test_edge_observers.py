"""The action inbox against an injected watchdog and clock, and the black box observer."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest

from edge_agent.blackbox import BlackBox
from edge_agent.decisions import ActionResult, Cause, Source
from edge_agent.inbox import ActionInbox
from edge_agent.metrics import EdgeMetrics
from edge_agent.stats import RunStats
from edge_agent.watchdog import Watchdog
from schemas.arrays import pack_array
from schemas.errors import SignatureError, TooLargeError
from schemas.messages import Action
from schemas.topics import action_topic, decision_topic
from tests.support.clock import MS, FakeClock
from tests.support.keys import KeyDir
from vlabus.bus.transport import Message
from vlabus.envelope import Header
from vlabus.inbound import Rejections
from vlabus.log.formats import DECISION, ChannelFormat
from vlabus.wire import Decoder, Encoder

TOPIC = action_topic("robot-a")


def action(step: int) -> Action:
    return Action(robot_id="robot-a", step=step, model="default", model_version=1,
                  worker_id="worker-1", actions=pack_array(np.full((2, 3), 0.5, np.float32)))


def make_inbox(keydir: KeyDir, clock: FakeClock) -> tuple[ActionInbox, list[int]]:
    late: list[int] = []
    inbox = ActionInbox(keydir.ring, "robot-a", Watchdog(clock), rejections=Rejections(),
                        stats=RunStats(), metrics=EdgeMetrics(), period_ns=10 * MS,
                        on_late=late.append, clock=clock)
    return inbox, late


def test_a_refused_reply_carries_its_header_and_marks_the_step(keydir: KeyDir) -> None:
    wire = bytearray(Encoder(keydir.signers["worker-1"]).encode(action(1), corr="s-1"))
    wire[-1] ^= 0xFF
    with pytest.raises(SignatureError) as refused:
        Decoder(keydir.ring).decode(bytes(wire))
    assert isinstance(refused.value.header, Header)
    assert refused.value.header.corr == "s-1"
    with pytest.raises(TooLargeError) as early:
        Decoder(keydir.ring).decode(b"VB\x01\xff\xff" + b"x" * 100)
    assert early.value.header is None  # failed before a header was read

    async def main() -> None:
        clock = FakeClock()
        inbox, _ = make_inbox(keydir, clock)
        future = inbox.expect("s-1", 1, clock.now + 50 * MS)
        inbox.handle(Message(TOPIC, bytes(wire), 0))
        assert not future.done()
        assert inbox.rejections.by_reason == {"bad_signature": 1}
        pending = inbox.expire("s-1")
        assert pending is not None
        assert pending.rejected
    asyncio.run(main())


def test_replies_are_on_time_until_the_decision_and_late_after(keydir: KeyDir) -> None:
    async def main() -> None:
        clock = FakeClock()
        inbox, late = make_inbox(keydir, clock)
        worker = Encoder(keydir.signers["worker-1"])
        first = inbox.expect("s-1", 1, clock.now + 20 * MS)
        clock.now += 5 * MS
        inbox.handle(Message(TOPIC, worker.encode(action(1), corr="s-1"), 0))
        reply = first.result()
        assert (reply.rtt_ns, reply.worker_id, reply.chunk.shape) == (5 * MS, "worker-1",
                                                                      (2, 3))
        second = inbox.expect("s-2", 2, clock.now + 20 * MS)
        clock.now += 30 * MS  # past the decision time, before any timer fired
        inbox.handle(Message(TOPIC, worker.encode(action(2), corr="s-2"), 0))
        assert not second.done()
        assert late == [30 * MS]
        assert inbox.stats.late_replies_discarded == 1
        assert list(inbox.stats.rtt_ns) == [5 * MS, 30 * MS]
    asyncio.run(main())


class ListSink:
    def __init__(self, fail_after: int | None = None) -> None:
        self.rows: list[tuple[str, bytes, int]] = []
        self.channels: list[ChannelFormat | None] = []
        self.fail_after = fail_after

    def write(self, topic: str, payload: bytes | bytearray | memoryview, received_ns: int,
              sent_ns: int | None = None, *, channel: ChannelFormat | None = None) -> None:
        del sent_ns
        if self.fail_after is not None and len(self.rows) >= self.fail_after:
            raise TooLargeError("disk", 0, 1)
        self.rows.append((topic, bytes(payload), received_ns))
        self.channels.append(channel)


def test_black_box_records_sent_received_and_decided_on_their_topics() -> None:
    sink = ListSink()
    box = BlackBox(sink, "robot-a", clock=lambda: 77)
    box.sent("vla/v1/robot-a/frame", memoryview(b"frame"))
    box.received(Message(TOPIC, b"reply", 0))
    result = ActionResult(3, np.array([0.25], np.float32), Source.FALLBACK, Cause.TIMEOUT, 2,
                          None, None, 4)
    box.decided(result)
    assert [(t, p, n) for t, p, n in sink.rows[:2]] == [
        ("vla/v1/robot-a/frame", b"frame", 77), (TOPIC, b"reply", 77)]
    topic, payload, _ = sink.rows[2]
    assert topic == decision_topic("robot-a") == "vla/v1/robot-a/decision"
    assert sink.channels == [None, None, DECISION]  # envelopes as they are, decisions labelled
    assert msgspec.msgpack.decode(payload) == {
        "step": 3, "source": "fallback", "cause": "timeout", "lateness_ns": 2, "rtt_ns": None,
        "worker_id": None, "model_version": 4, "codec": None, "action": [0.25]}


def test_a_failing_recorder_stops_the_black_box_not_the_robot() -> None:
    sink = ListSink(fail_after=1)
    box = BlackBox(sink, "robot-a", clock=lambda: 1)
    box.sent("vla/v1/robot-a/frame", b"a")
    box.sent("vla/v1/robot-a/frame", b"b")  # raises inside: recording ends quietly
    assert not box.recording
    box.received(Message(TOPIC, b"c", 0))
    assert len(sink.rows) == 1
