"""The MQTT adapter: paho-mqtt 2.x speaking MQTT 5, bridged into asyncio in one place.

paho is driven through its external-loop API, not ``loop_start``, so a message crosses no
thread on the way in or out: the event loop reads the socket (``add_reader``) and puts messages
straight into the bounded inbox; writes happen on the thread that queued them, one at a time
(a publish from the loop goes straight to the socket). A small network thread of our own sends
PINGREQ on time, finishes writes the socket could not take at once, and takes over the reads
(handing them over with ``call_soon_threadsafe``, one wake-up per burst) while the loop has not
run for two ticks: a blocked event loop keeps its connection and acknowledges QoS 1 deliveries.
Pending acknowledgements live in one ``dict[mid, _Inflight]``; a stalled consumer only fills
the inbox (oldest dropped and counted).

Behaviour:

* QoS 1 ``publish`` waits for PUBACK and raises :class:`PublishRejected` with the MQTT 5 reason
  code (0x87 not authorized, ...); a publish over the broker's advertised Maximum Packet Size
  raises it with 0x95 before sending, at any QoS. ``subscribe`` raises
  :class:`SubscribeRejected` the same way. QoS 0 with ``expiry_s`` carries a Message Expiry
  Interval (whole seconds, at least 1).
* Sessions end with the connection by default (``session_expiry_s`` 0): a dead member of a
  shared group must not keep receiving its share (DESIGN trap 1). With ``session_expiry_s``
  > 0 the session is resumed (clean start false), so plain subscriptions and queued QoS 1
  messages survive outages and broker restarts with persistence. Reconnect with jittered
  exponential backoff, then always resubscribe (Mosquitto 2.0.11 restores a persisted session
  without its ``$share`` subscriptions).
* A QoS 1 publish with ``expiry_s`` that the broker acknowledges with 0x10 (no matching
  subscribers: say, a worker group still reconnecting) is sent again, with backoff, until
  someone receives it or it expires (then :class:`TransportError`). Without an expiry, 0x10
  counts as delivered to the broker.
* While disconnected, publishes go to a bounded :class:`~vlabus.bus.outbox.Outbox` (paho's own
  queue is unbounded and loses QoS 0 at reconnect, DESIGN trap 4).
* TCP_NODELAY on the client socket (DESIGN trap 5); MQTT 5 Receive Maximum both ways.

``TransportOptions.extra`` keys: ``session_expiry_s`` (0), ``receive_maximum`` (64, QoS 1
in flight from the broker), ``send_maximum`` (20, to the broker), ``reconnect_min_s`` (0.1),
``reconnect_max_s`` (15), ``connect_timeout_s`` (10), ``clean_start`` ("false"; "true" drops
a previous session of this client id at the first connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from schemas.errors import PublishRejected, SubscribeRejected, TransportError
from vlabus.bus.backoff import Backoff
from vlabus.bus.outbox import Outbox
from vlabus.bus.transport import (
    Inbox,
    Message,
    TransportOptions,
    check_filter,
    check_qos,
    check_topic,
    done_future,
    iterate,
    now_ns,
)

log = logging.getLogger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK: accepted, but nobody received it
PACKET_TOO_LARGE = 0x95


@dataclass(slots=True)
class _Inflight:
    """A QoS 1 publish sent and not yet acknowledged."""

    topic: str
    data: bytes
    retain: bool
    deadline: float | None  # loop time when it expires; None: never
    future: asyncio.Future[None]
    retries: int = 0


class MqttTransport:
    """One MQTT 5 client connection; create with :func:`open_mqtt`."""

    def __init__(self, url: str, options: TransportOptions) -> None:
        parts = urlsplit(url)
        self.url = url
        self.options = options
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        extra = options.extra
        self._session_expiry = int(extra.get("session_expiry_s", "0"))
        self._receive_max = int(extra.get("receive_maximum", "64"))
        self._send_max = int(extra.get("send_maximum", "20"))  # QoS 1 in flight to the broker
        self._connect_timeout = float(extra.get("connect_timeout_s", "10"))
        self._backoff = Backoff(float(extra.get("reconnect_min_s", "0.1")),
                                float(extra.get("reconnect_max_s", "15")))
        self._loop = asyncio.get_running_loop()
        self.inbox = Inbox(self._loop, options.inbox_size)
        self._outbox = Outbox(options.outbox_size, options.outbox_size, clock=self._loop.time)
        self._pending: dict[int, _Inflight] = {}  # QoS 1 publishes waiting for PUBACK, by mid
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._subscriptions: dict[str, int] = {}  # topic filter -> qos, replayed on reconnect
        self._connack: asyncio.Future[tuple[int, bool]] | None = None
        self._connected = False
        self._closed = False
        self._lost = asyncio.Event()
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (CONNACK)
        self._arrivals: deque[Message] = deque(maxlen=options.inbox_size)
        self._arrivals_lock = threading.Lock()
        self._arrivals_dropped = 0
        self._wake_pending = False
        self._ack_lock = threading.Lock()
        self._awaited: set[int] = set()  # QoS 1 mids whose PUBACK the loop waits for
        self._early_acks: OrderedDict[int, int] = OrderedDict()
        self._supervisor: asyncio.Task[None] | None = None
        # Writes happen on whichever thread queued the packet (the loop for publishes), one at
        # a time; the network thread only reads, keeps the connection alive and finishes
        # writes the socket could not take at once.
        self._write_lock = threading.Lock()
        self._wake_r: socket.socket | None = None  # wakes the network thread; one per thread
        self._wake_w: socket.socket | None = None
        self._network: threading.Thread | None = None
        self._network_stop = threading.Event()
        self._loop_thread = threading.get_ident()
        # Reads happen on the loop (add_reader) while it runs; the network thread takes over
        # while the loop has not beaten for a while. One reader at a time.
        self._read_lock = threading.Lock()
        self._tick = min(1.0, max(0.05, options.keepalive_s / 4))
        self._beat = time.monotonic()
        self._beater: asyncio.TimerHandle | None = None
        self._watched: tuple[Any, int] | None = None  # (paho's socket, our dup of its fd)
        self._counts = dict.fromkeys(
            ("published", "rejected", "reconnects", "disconnects", "expired_unsent",
             "unrouted_retries", "unrouted"), 0)
        self._client = self._make_client(parts.scheme == "mqtts")

    # -- paho's thread: hand everything to the loop --------------------------------------

    def _post(self, func: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop closed under a late callback; nobody is waiting for it.
        with contextlib.suppress(RuntimeError):
            if threading.get_ident() == self._loop_thread:
                # Inside paho's read on the loop: run after it, outside paho's locks.
                self._loop.call_soon(func, *args)
            else:
                self._loop.call_soon_threadsafe(func, *args)

    def _make_client(self, tls: bool) -> paho.Client:
        opts = self.options
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=opts.client_id,
                             protocol=paho.MQTTv5, reconnect_on_failure=False)
        client.max_queued_messages_set(opts.outbox_size)
        client.max_inflight_messages_set(self._send_max)
        if opts.username is not None:
            client.username_pw_set(opts.username, opts.password)
        if tls:
            context = ssl.create_default_context(
                cafile=str(opts.tls.ca) if opts.tls is not None else None)
            if opts.tls is not None and opts.tls.cert is not None:
                key = str(opts.tls.key) if opts.tls.key is not None else None
                context.load_cert_chain(str(opts.tls.cert), key)
            client.tls_set_context(context)
        if opts.will is not None:
            client.will_set(opts.will.topic, opts.will.payload, opts.will.qos, opts.will.retain)
        client.on_socket_open = _set_nodelay
        client.on_socket_close = lambda c, u, sock: self._post(self._unwatch, sock)
        # With this callback (and no loop_start) paho never writes on its own: _flush does.
        client.on_socket_register_write = lambda c, u, sock: self._flush()
        client.on_connect = lambda c, u, flags, rc, props: self._post(
            self._on_connect, rc.value, flags.session_present, props)
        client.on_disconnect = lambda c, u, flags, rc, props: self._post(
            self._on_disconnect, rc.value)
        # on_publish is set only while QoS 1 acks are awaited (see _send, _on_ack): paho also
        # calls it for every QoS 0 packet written, building a ReasonCode and Properties (~7 us)
        # each time on the writing thread.
        self._on_publish = lambda c, u, mid, rc, props: self._acked(mid, rc.value)
        client.on_subscribe = lambda c, u, mid, codes, props: self._post(
            self._on_suback, mid, [code.value for code in codes])
        client.on_message = lambda c, u, msg: self._on_message(
            Message(msg.topic, bytes(msg.payload), now_ns()))
        return client

    def _on_message(self, message: Message) -> None:
        # Read on the loop: straight into the inbox, unless the network thread's hand-over
        # still holds earlier messages (order).
        if threading.get_ident() == self._loop_thread and not self._wake_pending:
            self.inbox.put(message)
        else:
            self._arrive(message)

    def _arrive(self, message: Message) -> None:
        # Batched hand-over: one loop wake-up per burst, and bounded even while the loop is
        # blocked (call_soon_threadsafe per message would queue without limit).
        with self._arrivals_lock:
            if len(self._arrivals) == self._arrivals.maxlen:
                self._arrivals_dropped += 1
            self._arrivals.append(message)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._post(self._take_arrivals)

    def _acked(self, mid: int, code: int) -> None:
        # paho also calls on_publish for every QoS 0 packet written; waking the loop for those
        # would cost a thread switch per frame. Only acks the loop waits for are handed over;
        # one that beats the loop's registration waits in a small, bounded dict.
        with self._ack_lock:
            wanted = mid in self._awaited
            if wanted:
                self._awaited.discard(mid)
            else:
                self._early_acks[mid] = code
                if len(self._early_acks) > 256:
                    self._early_acks.popitem(last=False)
        if wanted:
            self._post(self._on_ack, mid, code)

    def _await_ack(self, mid: int) -> None:
        with self._ack_lock:
            code = self._early_acks.pop(mid, None)
            if code is None:
                self._awaited.add(mid)
        if code is not None:
            self._on_ack(mid, code)

    def _take_arrivals(self) -> None:
        with self._arrivals_lock:
            batch = list(self._arrivals)
            self._arrivals.clear()
            self._wake_pending = False
        for message in batch:
            self.inbox.put(message)

    # -- writing, from any thread; the network thread ------------------------------------

    def _flush(self) -> None:
        """Write what paho has queued, on the calling thread (no hand-over to another one).

        Never blocks on the lock: paho may call this holding its own locks, and whoever holds
        ours looks at the queue again after releasing it. Whatever the socket cannot take now
        is left to the network thread, which waits for the socket to become writable."""
        client = self._client
        if self._write_lock.acquire(blocking=False):
            try:
                client.loop_write()
            finally:
                self._write_lock.release()
        if client.want_write():
            self._wake_network()

    def _watch(self) -> None:
        """Read paho's socket from the loop. asyncio watches a dup of its fd, so the number
        stays ours until :meth:`_unwatch` (paho may close its socket on any thread)."""
        self._unwatch()
        sock = self._client.socket()
        if sock is None:
            return
        fd = os.dup(sock.fileno())
        self._watched = (sock, fd)
        self._loop.add_reader(fd, self._on_readable, sock)

    def _unwatch(self, sock: Any = None) -> None:
        watched = self._watched
        if watched is None or (sock is not None and watched[0] is not sock):
            return
        self._watched = None
        self._loop.remove_reader(watched[1])
        os.close(watched[1])

    def _on_readable(self, sock: Any) -> None:
        self._beat = time.monotonic()
        client = self._client
        if client.socket() is not sock:  # paho closed it; on_disconnect is on its way
            self._unwatch(sock)
            return
        if not self._read_lock.acquire(blocking=False):
            return  # the network thread is reading; the fd stays readable until it is done
        try:
            rc = client.loop_read()
            tls = sock if isinstance(sock, ssl.SSLSocket) else None
            while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and tls is not None and tls.pending()
                   and client.socket() is tls):
                rc = client.loop_read()  # TLS: bytes decrypted already are not readable
        finally:
            self._read_lock.release()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._unwatch(sock)

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        self._beater = self._loop.call_later(self._tick, self._heartbeat)

    def _wake_network(self) -> None:
        wake = self._wake_w
        # Full: a wake-up is pending anyway. Closed: the thread is gone.
        with contextlib.suppress(AttributeError, OSError):
            wake.send(b"\0")  # type: ignore[union-attr]

    def _start_network(self) -> None:
        self._network_stop.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._network = threading.Thread(target=self._run_network, daemon=True,
                                         name=f"vlabus-mqtt-{self.options.client_id}")
        self._network.start()

    def _stop_network(self) -> None:
        """Stop and join the network thread (blocking; call via to_thread on the loop)."""
        thread, self._network = self._network, None
        if thread is None:
            return
        self._network_stop.set()
        self._wake_network()
        if thread is not threading.current_thread():
            thread.join()
        if self._client.want_write():  # e.g. a DISCONNECT queued while the thread was writing
            with self._write_lock:
                self._client.loop_write()
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()

    def _run_network(self) -> None:
        """The network thread: PINGREQ on time, writes left over by :meth:`_flush`, and reads
        while the event loop is stalled (callbacks then hand over to the loop), so a blocked
        loop keeps its connection. Ends when the connection does (paho has then called
        on_disconnect) or on :meth:`_stop_network`."""
        client, wake = self._client, self._wake_r
        assert wake is not None
        # Wake often enough to send PINGREQ well inside the broker's 1.5 x keepalive.
        tick = self._tick
        while not self._network_stop.is_set():
            sock = client.socket()
            if sock is None:
                return
            stalled = time.monotonic() - self._beat > 2 * tick
            pending = sock.pending() if stalled and isinstance(sock, ssl.SSLSocket) else 0
            wanted = [sock] if client.want_write() else []
            try:
                readable, writable, _ = select.select([sock, wake] if stalled else [wake],
                                                      wanted, [], 0.0 if pending else tick)
            except (OSError, ValueError, TypeError):  # closed under us: loop_misc reports it
                readable, writable = [], []
                if client.socket() is not sock:
                    continue
            if wake in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    wake.recv(4096)
            if sock in readable or pending:
                with self._read_lock:
                    rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
            if writable or client.want_write():
                with self._write_lock:
                    rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
            with self._read_lock:  # not while the loop is inside loop_read
                rc = client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return

    # -- the loop: connection state -------------------------------------------------------

    def _on_connect(self, code: int, session_present: bool, props: Any) -> None:
        waiter = self._connack
        if waiter is None or waiter.done():  # an attempt that already timed out: stale
            return
        waiter.set_result((code, session_present))
        if code >= 0x80 or self._closed:
            return
        self._connected = True
        self._max_packet = int(getattr(props, "MaximumPacketSize", 0)) or None
        broker_max = getattr(props, "ReceiveMaximum", None)
        if broker_max and int(broker_max) < self._send_max:
            # paho fixes its in-flight window before the first connection; sending past the
            # broker's Receive Maximum would get us disconnected (0x93).
            log.warning("%s: broker Receive Maximum %s is below send_maximum %s; lower it",
                        self.options.client_id, broker_max, self._send_max)
        # Resubscribe even when the session survived: Mosquitto 2.0.11 restores a persisted
        # session without its shared ($share) subscriptions.
        if self._subscriptions:
            self._send_subscribe(list(self._subscriptions.items())).add_done_callback(
                self._log_resubscribe)
        for entry in self._outbox.drain():
            remaining = entry.remaining_s(self._loop.time())
            self._send(entry.topic, entry.payload, entry.qos, retain=entry.retain,
                       expiry_s=remaining, done=entry.done)

    def _on_disconnect(self, code: int) -> None:
        self._unwatch()
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(TransportError(f"connection closed before CONNACK: 0x{code:02x}"))
        if self._connected:
            self._connected = False
            self._counts["disconnects"] += 1
            log.warning("%s: connection to %s lost (0x%02x)",
                        self.options.client_id, self.url, code)
            self._lost.set()

    async def _connect(self, *, clean_start: bool) -> None:
        props = _properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        props.ReceiveMaximum = self._receive_max
        self._connack = self._loop.create_future()
        try:
            await asyncio.to_thread(self._client.connect, self._host, self._port,
                                    self.options.keepalive_s, clean_start=clean_start,
                                    properties=props)
            self._start_network()
            self._watch()
            code, _ = await asyncio.wait_for(self._connack, self._connect_timeout)
        except (OSError, TimeoutError, TransportError) as exc:
            self._unwatch()
            await asyncio.to_thread(self._stop_network)
            raise TransportError(f"cannot connect to {self.url}: {exc!r}") from exc
        finally:
            self._connack = None
        if code >= 0x80:
            self._unwatch()
            await asyncio.to_thread(self._stop_network)
            raise TransportError(f"{self.url} refused the connection: 0x{code:02x}")

    async def _supervise(self) -> None:
        """Reconnect after every loss, with jittered exponential backoff."""
        while not self._closed:
            await self._lost.wait()
            self._lost.clear()
            self._unwatch()
            await asyncio.to_thread(self._stop_network)  # the thread is ending; join it
            while not self._closed and not self._connected:
                await asyncio.sleep(self._backoff.next_delay())
                try:
                    await self._connect(clean_start=False)
                except TransportError as exc:
                    log.info("%s: reconnect failed: %r", self.options.client_id, exc)
                    continue
                except Exception:  # the supervisor must outlive any paho surprise
                    log.exception("%s: reconnect attempt crashed", self.options.client_id)
                    continue
                self._backoff.reset()
                self._counts["reconnects"] += 1

    # -- the loop: publish and subscribe --------------------------------------------------

    def _send(self, topic: str, data: bytes, qos: int, *, retain: bool, expiry_s: float | None,
              done: asyncio.Future[None] | None, retries: int = 0) -> asyncio.Future[None] | None:
        if expiry_s is not None and expiry_s <= 0:
            self._counts["expired_unsent"] += 1
            if done is not None and not done.done():
                done.set_exception(TransportError(f"publish to {topic!r} expired before sending"))
            return done
        props = None
        if expiry_s is not None:
            props = _properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        if qos and self._client.on_publish is None:
            self._client.on_publish = self._on_publish  # before: the PUBACK may beat publish()
        info = self._client.publish(topic, data, qos, retain, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            # Lost the connection before our flag knew: paho would drop it at reconnect.
            self._outbox.put(topic, data, 0, retain=retain, expiry_s=expiry_s)
            return None
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise TransportError(f"publish to {topic!r}: too many QoS 1 messages in flight")
        self._counts["published"] += 1
        if qos == 0:
            return None
        future = done if done is not None else self._loop.create_future()
        deadline = None if expiry_s is None else self._loop.time() + expiry_s
        self._pending[info.mid] = _Inflight(topic, data, retain, deadline, future, retries)
        self._await_ack(info.mid)
        return future

    def _on_ack(self, mid: int, code: int) -> None:
        sent = self._pending.pop(mid, None)
        if not self._pending:
            self._client.on_publish = None
        if sent is None or sent.future.done():
            return
        if code >= 0x80:
            self._counts["rejected"] += 1
            sent.future.set_exception(
                PublishRejected(sent.topic, code, _reason_name(PacketTypes.PUBACK, code)))
        elif code == NO_MATCHING_SUBSCRIBERS and sent.deadline is not None and not sent.retain:
            # Nobody received it: e.g. a worker group still resubscribing after a broker
            # restart. A QoS 1 message with an expiry is retried until it reaches someone.
            delay = min(0.05 * 2.0 ** sent.retries, 1.0)
            if self._loop.time() + delay >= sent.deadline:
                self._counts["unrouted"] += 1
                sent.future.set_exception(TransportError(
                    f"publish to {sent.topic!r}: no subscriber before it expired"))
                return
            self._counts["unrouted_retries"] += 1
            self._loop.call_later(delay, self._resend, sent)
        else:
            sent.future.set_result(None)

    def _resend(self, sent: _Inflight) -> None:
        if self._closed or sent.future.done() or sent.deadline is None:
            return
        remaining = sent.deadline - self._loop.time()
        if self._connected:
            self._send(sent.topic, sent.data, 1, retain=False, expiry_s=remaining,
                       done=sent.future, retries=sent.retries + 1)
        else:
            self._outbox.put(sent.topic, sent.data, 1, expiry_s=remaining, done=sent.future)

    def _send_subscribe(self, topics: list[tuple[str, int]]) -> asyncio.Future[list[int]]:
        # Retain handling 1: retained messages only for a new subscription, not a resubscribe.
        rc, mid = self._client.subscribe(
            [(topic, SubscribeOptions(qos=qos, retainHandling=1)) for topic, qos in topics])
        future: asyncio.Future[list[int]] = self._loop.create_future()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            future.set_exception(TransportError(f"subscribe not sent: {paho.error_string(rc)}"))
        else:
            self._subacks[mid] = future
        return future

    def _on_suback(self, mid: int, codes: list[int]) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(codes)

    def _log_resubscribe(self, future: asyncio.Future[list[int]]) -> None:
        if future.cancelled():
            return
        if future.exception() is not None:
            log.warning("%s: resubscribe failed: %r", self.options.client_id, future.exception())
            return
        for topic, code in zip(self._subscriptions, future.result(), strict=False):
            if code >= 0x80:
                log.warning("%s: resubscribe to %r refused: 0x%02x",
                            self.options.client_id, topic, code)

    # -- the Transport protocol -----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    async def publish(self, topic: str, payload: bytes | bytearray | memoryview, *, qos: int = 0,
                      retain: bool = False, expiry_s: float | None = None) -> None:
        """Send ``payload``; QoS 1 waits for PUBACK (through an outage, from the outbox)."""
        future = self._start_publish(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)
        if future is None:
            return
        try:
            await future
        finally:
            if future.cancelled():  # the caller gave up waiting; forget the ack
                for mid in [m for m, sent in self._pending.items() if sent.future is future]:
                    del self._pending[mid]

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        """See :class:`Transport`: PUBLISH written now; the future completes on PUBACK."""
        future = self._start_publish(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)
        return done_future(self._loop) if future is None else future

    def _start_publish(self, topic: str, payload: bytes | bytearray | memoryview, *, qos: int,
                       retain: bool, expiry_s: float | None) -> asyncio.Future[None] | None:
        if self._closed:
            raise TransportError("mqtt transport closed")
        check_topic(topic)
        if len(payload) > self.options.max_payload:
            raise TransportError(f"payload of {len(payload)} bytes over {self.options.max_payload}")
        check_qos(qos)
        if self._max_packet is not None and len(payload) + len(topic) + 64 > self._max_packet:
            # The broker would close the connection, and paho would resend it forever.
            self._counts["rejected"] += 1
            raise PublishRejected(topic, PACKET_TOO_LARGE, "Packet too large (broker maximum "
                                  f"{self._max_packet} bytes, checked before sending)")
        data = bytes(payload)
        if self._connected or (expiry_s is not None and expiry_s <= 0):
            future = self._send(topic, data, qos, retain=retain, expiry_s=expiry_s, done=None)
        else:
            future = self._loop.create_future() if qos else None
            self._outbox.put(topic, data, qos, retain=retain, expiry_s=expiry_s, done=future)
        return future

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        """Subscribe (as a member of ``$share/group`` when given); kept across reconnects."""
        if self._closed:
            raise TransportError("mqtt transport closed")
        check_filter(pattern, group)
        topic = f"$share/{group}/{pattern}" if group else pattern
        if self._connected:
            codes = await asyncio.wait_for(self._send_subscribe([(topic, qos)]),
                                           self._connect_timeout)
            if not codes or codes[0] >= 0x80:
                code = codes[0] if codes else 0x80
                raise SubscribeRejected(topic, code, _reason_name(PacketTypes.SUBACK, code))
        self._subscriptions[topic] = qos

    async def recv(self) -> Message:
        return await self.inbox.get()

    def messages(self) -> AsyncIterator[Message]:
        return iterate(self.inbox)

    def counters(self) -> dict[str, int]:
        # Messages dropped in the hand-over from the network thread count as received and as
        # inbox drops, the same as drops in the inbox itself.
        return {**self._counts, "received": self.inbox.received + self._arrivals_dropped,
                "inbox_dropped": self.inbox.dropped + self._arrivals_dropped,
                "outbox_evicted": self._outbox.evicted, "outbox_expired": self._outbox.expired}

    async def close(self) -> None:
        """Disconnect normally (no will) and end the session on the broker."""
        if self._closed:
            return
        self._closed = True
        self._connected = False
        if self._supervisor is not None:
            self._supervisor.cancel()
        props = _properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        await asyncio.to_thread(self._stop_network)
        self._unwatch()
        if self._beater is not None:
            self._beater.cancel()
        self._client._reset_sockets()  # close now, not at collection
        for sent in self._pending.values():
            if not sent.future.done():
                sent.future.set_exception(TransportError("mqtt transport closed"))
        self._pending.clear()
        self._outbox.fail_all("dropped: transport closed")
        self.inbox.close()

    def abort(self) -> None:
        """Vanish without DISCONNECT, as a crash would: the broker publishes the will."""
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            sock.shutdown(socket.SHUT_RDWR)
        self._stop_network()
        self._unwatch()
        if self._beater is not None:
            self._beater.cancel()
        self._client._reset_sockets()
        self._connected = False
        self.inbox.close()


def _reason_name(packet_type: int, code: int) -> str:
    try:
        return str(ReasonCode(packet_type, identifier=code).getName())
    except (ValueError, KeyError):  # paho refuses codes the spec does not list here
        return ""


def _properties(packet_type: int) -> Any:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def _set_nodelay(client: paho.Client, userdata: Any, sock: Any) -> None:
    # paho leaves Nagle on: 88 ms instead of 0.25 ms per small QoS 1 round trip (trap 5).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def open_mqtt(url: str, options: TransportOptions) -> MqttTransport:
    """Connect to ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT``; raises TransportError if the
    first connection fails (later losses are reconnected in the background)."""
    transport = MqttTransport(url, options)
    # Clean start only on request: Mosquitto 2.0.11 does not persist a session begun with clean
    # start, so with session_expiry_s > 0 a broker restart would still lose it.
    await transport._connect(clean_start=options.extra.get("clean_start", "false") == "true")
    transport._supervisor = asyncio.create_task(transport._supervise())
    transport._heartbeat()
    return transport
