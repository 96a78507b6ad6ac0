"""``zmq://HOST:PORT``: the Transport over the vlabus hub (:mod:`vlabus.hub.server`), with pyzmq.

One DEALER socket carries publish, subscribe and delivery, driven from the event loop's thread:
``loop.add_reader`` on its edge-triggered FD drains it into the :class:`Inbox` (faster for round
trips than zmq.asyncio or an I/O thread, see docs/performance.md); every send is followed by an
``EVENTS`` check that reschedules the drain. Frames: :mod:`vlabus.hub.protocol`; subscriptions,
retained messages, QoS 1 in flight, outbox, publish checks: :class:`~vlabus.bus.session.Session`.

Reconnects are ZeroMQ's own (a socket a protocol error ended for good is rebuilt:
:mod:`vlabus.bus.zmqsocket`, counted in ``rebuilt``); on every completed handshake (socket
monitor), and when the hub says it forgot us (``rejoined``), the client re-sends HELLO, its
subscriptions, retained messages and unacknowledged QoS 1 publishes. ``IMMEDIATE`` keeps libzmq
from queueing into a dead connection; while disconnected, publishes wait in our bounded outbox
(oldest dropped and counted; expired ones dropped at flush and counted).

A subscription made while connected waits for the hub's answer, as MQTT's SUBACK: ACK, or NACK
from its access rules (:class:`SubscribeRejected`). Those re-sent after a handshake are not
confirmed; a refusal then is logged and counted in ``denied``. A client whose id a newer
connection took over is disconnected for ``takeover_hold_s`` (:class:`~vlabus.bus.backoff.Flaps`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, cast
from urllib.parse import urlsplit

import zmq
from zmq.utils.monitor import parse_monitor_message

from schemas.errors import SubscribeRejected, TransportError
from vlabus.bus.backoff import Backoff, Flaps
from vlabus.bus.inbox import Inbox, Receiving
from vlabus.bus.inflight import Inflight, complete, fail_quietly
from vlabus.bus.session import Session
from vlabus.bus.transport import Message, TransportOptions, done_future, now_ns
from vlabus.bus.zmqsocket import MONITOR, Rebuilder, make_dealer, readable
from vlabus.hub import protocol as proto

log = logging.getLogger(__name__)

_ZERO_COPY = 64 << 10  # below this, copying beats pinning a buffer (pyzmq's own threshold)
_NB, _MORE_NB = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)


class ZmqTransport(Receiving):
    """A client of the hub. Build with :func:`open_zmq`."""

    def __init__(self, url: str, options: TransportOptions, heartbeat_ms: int) -> None:
        self.url = url
        self.options = options
        self._loop = asyncio.get_running_loop()
        self._inbox = Inbox(self._loop, options.inbox_size)
        self._session: Session[bytes] = Session("zmq", options)
        self._heartbeat_ms = heartbeat_ms
        self._ctx: zmq.Context[Any] = zmq.Context.instance()
        self._rebuilder = Rebuilder(self._loop, options,  # nothing to rebuild when closed or up
                                    lambda: self._session.closed or self._connected,
                                    self._rebuild_socket)
        self._sub_waits: dict[bytes, tuple[asyncio.Future[None], str]] = {}  # mid -> (, filter)
        self._mids = itertools.count(1)
        self._welcome: asyncio.Future[None] = self._loop.create_future()
        self._connected = False
        self._stats = dict.fromkeys(("published", "reconnects", "outbox_dropped",
                                     "expired_dropped", "hwm_dropped", "malformed", "denied",
                                     "rebuilt", "rejoined"), 0)
        self._handshakes = 0
        self._flaps = Flaps(Backoff(), options.extra, options.client_id)
        self._stats.update(self._flaps.counts)
        self._linked = False  # the socket's connection is up (we may still be taken over)
        self._rejoin: asyncio.TimerHandle | None = None
        self._sock, self._monitor = self._open_socket()
        self._ping = self._loop.call_later(heartbeat_ms / 1000, self._send_ping)

    def _open_socket(self) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
        """A connecting DEALER and its monitor, read from the loop."""
        sock = make_dealer(self._ctx, self.options, self._heartbeat_ms)
        monitor = sock.get_monitor_socket(MONITOR)
        self._loop.add_reader(sock.FD, self._drain)
        self._loop.add_reader(monitor.FD, self._on_monitor)
        sock.connect(proto.tcp_endpoint(self.url))
        # The FDs are edge-triggered: reading EVENTS once arms them.
        self._loop.call_soon(self._on_monitor)
        self._loop.call_soon(self._drain)
        return sock, monitor

    def _close_socket(self) -> None:
        self._loop.remove_reader(self._sock.FD)
        self._loop.remove_reader(self._monitor.FD)
        self._sock.disable_monitor()
        self._monitor.close(0)
        self._sock.close()

    @property
    def connected(self) -> bool:
        return not self._session.closed and self._connected

    async def publish(self, topic: str, payload: bytes | bytearray | memoryview, *, qos: int = 0,
                      retain: bool = False, expiry_s: float | None = None) -> None:
        """See :class:`Transport`; 64 KiB or more is sent without copying (keep the buffer)."""
        # shielded: a caller that gives up waiting leaves the publish to be acknowledged (or
        # re-sent after a reconnect) like any other
        await asyncio.shield(self.publish_nowait(topic, payload, qos=qos, retain=retain,
                                                 expiry_s=expiry_s))

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        """QoS 1: fails with ``TransportError`` unacknowledged after two keepalive intervals; a
        connection lost meanwhile completes it and keeps the publish, to be re-sent."""
        session = self._session
        session.check_publish(topic, payload, qos)
        expires_ns = time.time_ns() + int(expiry_s * 1e9) if expiry_s is not None else 0
        mid = b"%d" % next(self._mids) if qos > 0 else b""
        meta = (proto.encode_meta(retain=retain, expires_ns=expires_ns, mid=mid)
                if retain or expires_ns or mid else b"")
        body: Any = payload if isinstance(payload, bytes | memoryview) else bytes(payload)
        if isinstance(body, memoryview) and isinstance(body.obj, zmq.Frame) \
                and body.nbytes == len(body.obj):
            # A received payload published again (a relay): libzmq shares the frame's buffer,
            # with no Python buffer to pin and release.
            body = body.obj
        frames = proto.pub(topic.encode(), body, meta)
        if retain:
            session.retain(topic, bytes(payload), expiry_s)
        self._stats["published"] += 1
        if not mid:
            if not self._send(frames):
                self._queue(topic, payload, retain, expiry_s)
            return done_future(self._loop)
        inflight = session.inflight
        if len(inflight) >= self.options.outbox_size:
            self._forget(cast(bytes, inflight.oldest()),
                         TransportError("outbox full; oldest QoS 1 publish dropped"))
            self._stats["outbox_dropped"] += 1
        future: asyncio.Future[None] = self._loop.create_future()
        timer = self._loop.call_later(2 * self.options.keepalive_s, self._forget, mid,
                                      TransportError(f"hub did not acknowledge publish to "
                                                     f"{topic!r}"))
        inflight.add(mid, Inflight(topic, frames, retain, None, future, timer=timer))
        if not self._send(frames):
            # kept in flight, re-sent after the next handshake; nothing to wait for now
            timer.cancel()
            future.set_result(None)
        return future

    def _forget(self, mid: bytes, exc: BaseException) -> None:
        """Give up on a QoS 1 publish (ack timeout, outbox full): drop it and fail its future."""
        entry = self._session.inflight.pop(mid)
        if entry is not None:
            fail_quietly(entry.future, exc)

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        """Connected: waits for the hub's answer (as SUBACK), :class:`SubscribeRejected` if refused.
        Disconnected: kept and sent after the next handshake, unconfirmed."""
        self._session.check_subscribe(pattern, group)
        self._session.subscribed(pattern, group, qos)
        if not self._connected:
            return
        mid = b"%d" % next(self._mids)
        if not self._send(proto.sub(pattern, group or "", mid)):
            return  # the connection is going: sent again after the next handshake
        future: asyncio.Future[None] = self._loop.create_future()
        self._sub_waits[mid] = (future, f"$share/{group}/{pattern}" if group else pattern)
        try:
            await asyncio.wait_for(asyncio.shield(future), 2 * self.options.keepalive_s)
        except SubscribeRejected:
            self._session.unsubscribed(pattern, group)
            raise
        except TimeoutError:
            raise TransportError(f"hub {self.url} did not answer the subscription to "
                                 f"{pattern!r} (a hub older than this client?)") from None
        finally:
            self._sub_waits.pop(mid, None)

    async def unsubscribe(self, pattern: str, *, group: str | None = None) -> None:
        """See :class:`Transport`."""
        self._session.unsubscribed(pattern, group)
        self._send(proto.unsub(pattern, group or ""))

    def counters(self) -> dict[str, int]:
        outbox = self._session.outbox
        return {**self._stats, "outbox_dropped": self._stats["outbox_dropped"] + outbox.evicted,
                "expired_dropped": outbox.expired, "inbox_dropped": self._inbox.dropped,
                "received": self._inbox.received, "outbox": len(outbox)}

    async def close(self) -> None:
        """Say BYE (so the hub does not publish the will) and disconnect."""
        if not self._session.closed and self._connected:
            self._send(proto.bye())
            self._sock.setsockopt(zmq.LINGER, 1000)
        self._shutdown()

    def abort(self) -> None:
        """Vanish without BYE: the hub publishes the will."""
        self._shutdown()

    def _shutdown(self) -> None:
        if self._session.closed:
            return
        self._session.closed = True
        self._ping.cancel()
        self._rebuilder.cancel()
        if self._rejoin is not None:
            self._rejoin.cancel()
        self._close_socket()
        self._inbox.close()
        for entry in self._session.inflight.clear():
            fail_quietly(entry.future, TransportError("zmq transport closed"))
        self._session.outbox.fail_all("dropped: transport closed")
        for future, _filter in self._sub_waits.values():
            fail_quietly(future, TransportError("zmq transport closed"))
        fail_quietly(self._welcome, TransportError("zmq transport closed"))

    def _send(self, frames: list[Any]) -> bool:
        """Send without blocking; False with no connection or at the HWM. Frame by frame with
        plain-int flags (``send_multipart`` costs ~2 us more); small frames copied, large ones
        not; a multipart message is atomic, so only the first frame can raise ``Again``."""
        sock = self._sock
        last = len(frames) - 1
        try:
            for i, part in enumerate(frames):
                sock.send(part, _NB if i == last else _MORE_NB, copy=len(part) < _ZERO_COPY)
        except zmq.Again:
            return False
        finally:
            # Sending may consume the edge of the FD: look for input ourselves.
            if not self._session.closed and readable(sock):
                self._loop.call_soon(self._drain)
        return True

    def _queue(self, topic: str, payload: Any, retain: bool, expiry_s: float | None) -> None:
        self._on_monitor()  # a disconnect may be waiting there, not yet seen
        if not self._connected:
            self._session.outbox.put(topic, bytes(payload), 0, retain=retain, expiry_s=expiry_s)
        else:
            self._stats["hwm_dropped"] += 1  # connected but the hub is not reading fast enough

    def _drain(self) -> None:
        if self._session.closed:
            return
        sock, inbox = self._sock, self._inbox
        for _ in range(256):
            # Checking EVENTS (~1 us) is cheaper than the zmq.Again raised by an empty recv.
            if not readable(sock):
                return
            # The head frame as bytes; the payload as a zero-copy Frame, kept only when large.
            # Frame.more is read from the message itself: getsockopt(RCVMORE) costs ~0.5 us.
            frame = sock.recv(_NB, copy=False)
            parts: list[Any] = [frame.bytes]
            while frame.more:
                frame = sock.recv(0, copy=False)
                parts.append(frame)
            head = parts[0]
            verb = head[:1]
            if verb == proto.MSG and len(parts) == 2:
                body = parts[1]
                payload = body.buffer if len(body) >= _ZERO_COPY else body.bytes
                try:
                    topic = proto.msg_topic(head).decode()
                except UnicodeDecodeError as exc:
                    self._malformed(parts, exc)
                    continue
                inbox.put(Message(topic, payload, now_ns()))
            elif head == proto.ACK and len(parts) == 2:
                mid = parts[1].bytes
                entry = self._session.inflight.pop(mid)
                if entry is not None:
                    complete(entry.future)
                elif (wait := self._sub_waits.pop(mid, None)) is not None:
                    complete(wait[0])
            elif head == proto.NACK and len(parts) == 3:
                self._refused(parts[1].bytes, parts[2].bytes.decode(errors="replace"))
            elif head == proto.WELCOME and len(parts) == 1:
                if not self._welcome.done():
                    self._welcome.set_result(None)
            else:
                self._malformed(parts, "unknown verb")
        self._loop.call_soon(self._drain)  # more may be waiting; let other tasks run first

    def _refused(self, mid: bytes, reason: str) -> None:
        """A NACK: the hub forgot us or gave our id to a newer connection; or its access rules
        refused a publish, subscription or will (counted in ``denied``, QoS 1 fails)."""
        if not mid and reason.startswith(proto.FORGOTTEN):  # silent too long: HELLO again
            self._stats["rejoined"] += 1
            return self._resync()
        if not mid and reason.startswith(proto.TAKEN_OVER):
            self._connected = False
            self._stats.update(self._flaps.down(self._loop.time(), taken_over=True))
            self._rejoin = self._loop.call_later(self._flaps.backoff.next_delay(), self._take_back)
            return None
        self._stats["denied"] += 1
        entry = self._session.inflight.pop(mid) if mid else None
        wait = self._sub_waits.pop(mid, None) if mid else None
        if entry is not None:
            fail_quietly(entry.future, TransportError(f"hub refused: {reason}"))
        elif wait is not None:
            fail_quietly(wait[0], SubscribeRejected(wait[1], 0x87, f"Not authorized ({reason})"))
        else:
            log.warning("zmq: hub refused: %s", reason)
        return None

    def _take_back(self) -> None:  # the takeover hold is over: say HELLO again
        self._rejoin = None
        if self._linked and not self._session.closed:
            self._connected = True
            self._resync()

    def _malformed(self, parts: list[Any], why: object) -> None:
        self._stats["malformed"] += 1
        shown = [bytes(p.bytes if isinstance(p, zmq.Frame) else p)[:64] for p in parts]
        log.warning("zmq: malformed message from the hub (%s): %r", why, shown)

    def _on_monitor(self) -> None:
        while not self._session.closed and readable(self._monitor):
            event = parse_monitor_message(self._monitor.recv_multipart())["event"]
            if event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CONNECT_DELAYED):
                self._rebuilder.attempt()
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._rebuilder.connected()
                self._linked, self._connected = True, self._rejoin is None  # not while held
                self._handshakes += 1
                if self._handshakes > 1:
                    self._stats["reconnects"] += 1
                if self._connected:
                    self._resync()
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and self._handshakes:
                self._rebuilder.lost()  # after a connection we had: rebuild, not give up
            elif event == zmq.EVENT_DISCONNECTED:
                self._rebuilder.lost()
                self._linked = self._connected = False
                for entry in self._session.inflight.values():  # kept: re-sent after handshake
                    if entry.timer is not None:
                        entry.timer.cancel()
                    if not entry.future.done():
                        entry.future.set_result(None)
                for future, _filter in self._sub_waits.values():  # kept, like a publish
                    complete(future)
                self._sub_waits.clear()
            else:
                fail_quietly(self._welcome, TransportError(
                    f"hub {self.url} refused the CURVE handshake (event {event})"))

    def _rebuild_socket(self) -> None:
        """A new DEALER for one that a protocol error ended for good."""
        self._close_socket()
        self._stats["rebuilt"] += 1
        self._sock, self._monitor = self._open_socket()

    def _resync(self) -> None:
        """After a (re)connect: tell the hub who we are and everything it must know again."""
        will, session = self.options.will, self._session
        self._send(proto.hello(self.options.client_id, self._heartbeat_ms,
                               will.topic if will else "", will.payload if will else b"",
                               bool(will and will.retain)))
        for pattern, group in session.subscriptions:
            self._send(proto.sub(pattern, group))
        for topic, payload in session.live_retained():
            self._send(proto.pub(topic.encode(), payload, proto.encode_meta(
                retain=True, expires_ns=0, mid=b"")))
        for entry in session.inflight.values():
            self._send(entry.data)
        waiting = session.outbox.drain()  # expired ones are dropped and counted there
        for i, queued in enumerate(waiting):
            remaining = queued.remaining_s(session.clock())
            expires_ns = time.time_ns() + int(remaining * 1e9) if remaining is not None else 0
            meta = proto.encode_meta(retain=queued.retain, expires_ns=expires_ns, mid=b"")
            if not self._connected or not self._send(proto.pub(queued.topic.encode(),
                                                                queued.payload, meta)):
                session.outbox.put_back(waiting[i:])  # in order, for the next handshake
                break

    def _send_ping(self) -> None:
        if self._connected:
            self._send(proto.ping())
        self._ping = self._loop.call_later(self._heartbeat_ms / 1000, self._send_ping)


async def open_zmq(url: str, options: TransportOptions) -> ZmqTransport:
    """Connect to the hub at ``zmq://HOST:PORT`` and wait for its WELCOME.

    ``options.extra``: ``heartbeat_ms`` (default ``keepalive_s`` * 1000; the hub publishes the
    will after three silent intervals), ``connect_timeout_s`` (default 5), ``reconnect_min_s``
    and ``reconnect_max_s`` (0.1 and 2; ZeroMQ's reconnect interval and its exponential cap).
    """
    if not urlsplit(url).port:
        raise TransportError(f"zmq URL needs a port: {url!r}")
    heartbeat_ms = int(options.extra.get("heartbeat_ms", options.keepalive_s * 1000))
    transport = ZmqTransport(url, options, heartbeat_ms)
    timeout = float(options.extra.get("connect_timeout_s", 5.0))
    try:
        await asyncio.wait_for(asyncio.shield(transport._welcome), timeout)
    except (TimeoutError, TransportError) as exc:
        transport.abort()
        raise TransportError(f"no answer from the hub at {url}: {exc or 'timeout'}") from exc
    return transport

