"""The bus's sans-I/O parts: the session's publish checks, retained store and in-flight table,
the MQTT acknowledgement gate, and the hub's frame grammar. No sockets, an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from schemas.errors import PublishRejected, SubscribeRejected, TransportError
from tests.support.clock import FakeClock
from vlabus.bus.inflight import Inflight, InflightTable, Verdict, retry_delay
from vlabus.bus.mqtt.acks import AckGate
from vlabus.bus.session import Session
from vlabus.bus.transport import TransportOptions
from vlabus.hub import protocol


def session(clock: FakeClock | None = None, **options: int) -> Session[int]:
    return Session("test", TransportOptions(client_id="c", **options),
                   clock=clock or FakeClock(50.0, per_ms=0.001))


def test_publish_checks_run_in_one_order() -> None:
    s = session(max_payload=4)
    # topic first, then size, then QoS
    with pytest.raises(PublishRejected) as bad_topic:
        s.check_publish("a/+/b", b"too long", 7)
    assert bad_topic.value.code == 0x90
    with pytest.raises(TransportError, match="over 4"):
        s.check_publish("a/b", b"too long", 7)
    with pytest.raises(TransportError, match="qos 7"):
        s.check_publish("a/b", b"ok", 7)
    s.check_publish("a/b", b"ok", 1)
    s.closed = True
    with pytest.raises(TransportError, match="closed"):
        s.check_publish("a/+/b", b"too long", 7)


def test_subscribe_checks_filter_and_group() -> None:
    s = session()
    with pytest.raises(SubscribeRejected) as bad:
        s.check_subscribe("a/#/b", None)
    assert bad.value.code == 0x8F
    with pytest.raises(SubscribeRejected):
        s.check_subscribe("a/#", "g/h")
    s.check_subscribe("a/#", "workers")
    s.subscribed("a/#", "workers", 1)
    s.subscribed("b/+", None, 0)
    assert list(s.subscriptions.items()) == [(("a/#", "workers"), 1), (("b/+", ""), 0)]
    s.unsubscribed("a/#", "workers")
    assert list(s.subscriptions) == [("b/+", "")]


def test_retained_store_is_bounded_clears_on_empty_and_expires() -> None:
    clock = FakeClock(50.0, per_ms=0.001)
    s = Session("test", TransportOptions(client_id="c"), clock=clock, retained_limit=2)
    s.retain("a", b"1")
    s.retain("b", b"2", expiry_s=5.0)
    s.retain("c", b"3")
    assert s.live_retained() == [("b", b"2"), ("c", b"3")]  # "a", the oldest, went
    s.retain("c", b"")
    assert s.live_retained() == [("b", b"2")]
    clock.now += 5.0
    assert s.live_retained() == []


def entry(loop: asyncio.AbstractEventLoop, table: InflightTable[int], *,
          expiry_s: float | None = None, retain: bool = False, retries: int = 0) -> Inflight:
    return Inflight("t", b"x", retain, table.deadline(expiry_s), loop.create_future(), retries)


def test_inflight_verdicts_follow_the_reason_code_and_the_clock() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        clock = FakeClock(50.0, per_ms=0.001)
        table: InflightTable[int] = InflightTable(clock)
        assert table.settle(entry(loop, table), 0x00) is Verdict.DELIVERED
        assert table.settle(entry(loop, table), 0x87) is Verdict.REJECTED
        # 0x10 without an expiry, or retained: the broker has it, that is all we can know
        assert table.settle(entry(loop, table), 0x10) is Verdict.DELIVERED
        assert table.settle(entry(loop, table, expiry_s=9, retain=True), 0x10) is Verdict.DELIVERED
        late = entry(loop, table, expiry_s=1.0, retries=2)
        assert table.settle(late, 0x10) is Verdict.RETRY  # 0.2 s to wait, 1 s left
        clock.now += 0.85
        assert table.settle(late, 0x10) is Verdict.UNROUTED
        assert table.remaining(late) == pytest.approx(0.15)
        assert [retry_delay(n) for n in (0, 1, 5, 9)] == [0.05, 0.1, 1.0, 1.0]

    asyncio.run(body())


def test_inflight_table_keeps_order_and_forgets_a_given_up_publish() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        table: InflightTable[int] = InflightTable(FakeClock(50.0, per_ms=0.001))
        first, second = entry(loop, table), entry(loop, table)
        first.timer = loop.call_later(60, lambda: None)
        table.add(7, first)
        table.add(3, second)
        table.add(9, entry(loop, table))
        assert (table.oldest(), len(table), 3 in table) == (7, 3, True)
        assert table.pop(7) is first
        assert first.timer.cancelled()
        assert table.pop(7) is None
        table.forget_future(second.future)
        assert list(table) == [9]
        assert len(table.clear()) == 1
        assert len(table) == 0

    asyncio.run(body())


def test_ack_gate_hands_over_only_what_the_loop_waits_for() -> None:
    gate = AckGate(early_limit=2)
    assert gate.expect(1) is None
    assert gate.arrived(1, 0) is True  # awaited: hand it over
    assert gate.arrived(1, 0) is False  # a second one (or a QoS 0 write): kept, not handed over
    assert gate.arrived(2, 0x87) is False  # beat the registration
    assert gate.expect(2) == 0x87
    for mid in (10, 11, 12):
        gate.arrived(mid, 0)
    assert gate.expect(10) is None  # the oldest early ack was forgotten (bounded)
    assert gate.expect(12) == 0


def test_hub_frames_round_trip_per_verb() -> None:
    hello = protocol.decode_hello(protocol.hello("robot-a", 250, "vla/v1/robot-a/status",
                                                 b"gone", True))
    assert hello == protocol.Hello("robot-a", 250, b"vla/v1/robot-a/status", b"gone", True)
    assert protocol.decode_hello(protocol.hello("w", 1000)).will_topic == b""
    assert protocol.decode_sub(protocol.sub("vla/#", "workers", b"4")) == ("vla/#", "workers", b"4")
    assert protocol.decode_sub(protocol.sub("vla/#")) == ("vla/#", "", b"")
    assert protocol.decode_unsub(protocol.unsub("a/b", "g")) == ("a/b", "g")
    meta = protocol.encode_meta(retain=True, expires_ns=12, mid=b"9")
    head, payload = protocol.pub(b"a/b", b"data", meta)
    assert head[:1] == protocol.PUB
    assert payload == b"data"
    topic, raw = protocol.split_pub_head(head)
    assert (topic, protocol.decode_meta(raw)) == (b"a/b", protocol.PubMeta(True, 12, b"9"))
    assert protocol.split_pub_head(protocol.pub_head(b"a/b")) == (b"a/b", b"")
    assert protocol.msg_topic(protocol.msg_head(b"x/y")) == b"x/y"
    assert protocol.meta_mid(b"q5") == b"5"
    assert protocol.meta_mid(b"zz") == b""
    assert protocol.nack(b"1", "no") == [protocol.NACK, b"1", b"no"]
    assert protocol.tcp_endpoint("zmq://127.0.0.1:5") == "tcp://127.0.0.1:5"


@pytest.mark.parametrize("frames", [
    [protocol.HELLO, b"a", b"notanumber", b"", b"", b"0"],
    [protocol.HELLO, b"a"],
    [protocol.SUB, b"x"],
    [protocol.UNSUB, b"x", b"", b"extra"],
])
def test_malformed_frames_raise_value_error(frames: list[bytes]) -> None:
    decode = {protocol.HELLO: protocol.decode_hello, protocol.SUB: protocol.decode_sub,
              protocol.UNSUB: protocol.decode_unsub}[frames[0]]
    with pytest.raises(ValueError, match=r".+"):
        decode(frames)  # type: ignore[operator]


def test_outbox_takes_back_what_could_not_be_sent_ahead_of_newer_entries() -> None:
    s = session()
    for i in range(3):
        s.outbox.put("t", b"%d" % i, 0)
    drained = s.outbox.drain()
    s.outbox.put("t", b"new", 0)
    s.outbox.put_back(drained[1:])  # "0" went out, the connection dropped before "1"
    assert [e.payload for e in s.outbox.drain()] == [b"1", b"2", b"new"]
