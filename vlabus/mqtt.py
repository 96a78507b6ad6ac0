"""The MQTT adapter: paho-mqtt 2.x speaking MQTT 5, bridged into asyncio in one place.

paho's network thread (``loop_start``) only hands events over with ``call_soon_threadsafe``;
everything else runs on the event loop. Pending acknowledgements live in one
``dict[mid, _Inflight]``. Received messages become :class:`Message` in the bounded inbox,
so a stalled consumer never blocks the network thread or its keepalive.

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
* While disconnected, publishes go to a bounded :class:`~vlabus.outbox.Outbox` (paho's own
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
import socket
import ssl
import threading
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
from vlabus.backoff import Backoff
from vlabus.outbox import Outbox
from vlabus.transport import Inbox, Message, TransportOptions, iterate, now_ns

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
        self._counts = dict.fromkeys(
            ("published", "rejected", "reconnects", "disconnects", "expired_unsent",
             "unrouted_retries", "unrouted"), 0)
        self._client = self._make_client(parts.scheme == "mqtts")

    # -- paho's thread: hand everything to the loop --------------------------------------

    def _post(self, func: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop closed under a late callback; nobody is waiting for it.
        with contextlib.suppress(RuntimeError):
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
        client.on_connect = lambda c, u, flags, rc, props: self._post(
            self._on_connect, rc.value, flags.session_present, props)
        client.on_disconnect = lambda c, u, flags, rc, props: self._post(
            self._on_disconnect, rc.value)
        client.on_publish = lambda c, u, mid, rc, props: self._acked(mid, rc.value)
        client.on_subscribe = lambda c, u, mid, codes, props: self._post(
            self._on_suback, mid, [code.value for code in codes])
        client.on_message = lambda c, u, msg: self._arrive(Message(msg.topic, bytes(msg.payload),
                                                                    now_ns()))
        return client

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
            # loop_start() makes a new wake-up socket pair without closing the last thread's.
            self._client._reset_sockets(sockpair_only=True)
            self._client.loop_start()
            code, _ = await asyncio.wait_for(self._connack, self._connect_timeout)
        except (OSError, TimeoutError, TransportError) as exc:
            await asyncio.to_thread(self._client.loop_stop)
            raise TransportError(f"cannot connect to {self.url}: {exc!r}") from exc
        finally:
            self._connack = None
        if code >= 0x80:
            await asyncio.to_thread(self._client.loop_stop)
            raise TransportError(f"{self.url} refused the connection: 0x{code:02x}")

    async def _supervise(self) -> None:
        """Reconnect after every loss, with jittered exponential backoff."""
        while not self._closed:
            await self._lost.wait()
            self._lost.clear()
            await asyncio.to_thread(self._client.loop_stop)  # the thread is ending; join it
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
        if self._closed:
            raise TransportError("mqtt transport closed")
        if len(payload) > self.options.max_payload:
            raise TransportError(f"payload of {len(payload)} bytes over {self.options.max_payload}")
        if qos not in (0, 1):
            raise TransportError(f"qos {qos} not supported; use 0 or 1")
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
        if future is None:
            return
        try:
            await future
        finally:
            if future.cancelled():  # the caller gave up waiting; forget the ack
                for mid in [m for m, sent in self._pending.items() if sent.future is future]:
                    del self._pending[mid]

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        """Subscribe (as a member of ``$share/group`` when given); kept across reconnects."""
        if self._closed:
            raise TransportError("mqtt transport closed")
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
        await asyncio.to_thread(self._client.loop_stop)
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
        self._client.loop_stop()
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
    return transport
