"""The facade of the MQTT adapter: one MQTT 5 connection, its reconnects, publish and subscribe
(see :mod:`vlabus.bus.mqtt` for the behaviour, :mod:`.pump` for the socket and its thread)."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from schemas.errors import ConnectRefused, PublishRejected, SubscribeRejected, TransportError
from vlabus.bus.backoff import Backoff, Flaps
from vlabus.bus.inbox import Inbox, Receiving
from vlabus.bus.inflight import Inflight, Verdict, retry_delay
from vlabus.bus.mqtt.acks import AckGate
from vlabus.bus.mqtt.pump import SocketPump
from vlabus.bus.mqtt.vendor import mqtt_filter, new_client, properties, reason_name
from vlabus.bus.session import Session
from vlabus.bus.transport import Message, TransportOptions, done_future, now_ns

log = logging.getLogger("vlabus.bus.mqtt")

PACKET_TOO_LARGE = 0x95


class MqttTransport(Receiving):
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
        self._flaps = Flaps(self._backoff, extra, options.client_id)
        self._loop = asyncio.get_running_loop()
        self._inbox = Inbox(self._loop, options.inbox_size)
        self._session: Session[int] = Session("mqtt", options, clock=self._loop.time)
        self._acks = AckGate()
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._connack: asyncio.Future[tuple[int, bool]] | None = None
        self._connected = False
        self._lost = asyncio.Event()
        self._max_packet: int | None = None  # the broker's Maximum Packet Size (CONNACK)
        self._supervisor: asyncio.Task[None] | None = None
        self._counts = dict.fromkeys(
            ("published", "rejected", "reconnects", "disconnects", "expired_unsent",
             "unrouted_retries", "unrouted"), 0)
        self._counts.update(self._flaps.counts)
        self._client = self._make_client(parts.scheme == "mqtts")
        self._pump = SocketPump(self._client, self._loop, self._inbox,
                                tick_s=min(1.0, max(0.05, options.keepalive_s / 4)),
                                name=options.client_id)

    def _make_client(self, tls: bool) -> paho.Client:
        client = new_client(self.options, tls=tls, send_max=self._send_max)
        client.on_socket_close = lambda c, u, sock: self._pump.post(self._pump.unwatch, sock)
        # With this callback (and no loop_start) paho never writes on its own: flush does.
        client.on_socket_register_write = lambda c, u, sock: self._pump.flush()
        client.on_connect = lambda c, u, flags, rc, props: self._pump.post(
            self._on_connect, rc.value, flags.session_present, props)
        client.on_disconnect = lambda c, u, flags, rc, props: self._pump.post(
            self._on_disconnect, rc.value)
        # on_publish is set only while QoS 1 acks are awaited (see _send, _on_ack): paho also
        # calls it for every QoS 0 packet written, building a ReasonCode and Properties (~7 us)
        # each time on the writing thread.
        self._on_publish = lambda c, u, mid, rc, props: self._acked(mid, rc.value)
        client.on_subscribe = lambda c, u, mid, codes, props: self._pump.post(
            self._on_suback, mid, [code.value for code in codes])
        client.on_message = lambda c, u, msg: self._pump.on_message(
            Message(msg.topic, bytes(msg.payload), now_ns()))
        return client

    def _acked(self, mid: int, code: int) -> None:
        # On the writing/reading thread: only acks the loop waits for are handed over.
        if self._acks.arrived(mid, code):
            self._pump.post(self._on_ack, mid, code)

    async def start(self, *, clean_start: bool) -> None:
        """Make the first connection (``TransportError`` if it fails), then keep it: later
        losses are reconnected in the background."""
        await self._connect(clean_start=clean_start)
        self._supervisor = asyncio.create_task(self._supervise())
        self._pump.heartbeat()

    # -- the loop: connection state -------------------------------------------------------

    def _on_connect(self, code: int, session_present: bool, props: Any) -> None:
        waiter = self._connack
        if waiter is None or waiter.done():  # an attempt that already timed out: stale
            return
        waiter.set_result((code, session_present))
        if code >= 0x80 or self._session.closed:
            return
        self._connected = True
        self._flaps.up(self._loop.time())
        self._max_packet = int(getattr(props, "MaximumPacketSize", 0)) or None
        broker_max = getattr(props, "ReceiveMaximum", None)
        if broker_max and int(broker_max) < self._send_max:
            # paho fixes its in-flight window before the first connection; sending past the
            # broker's Receive Maximum would get us disconnected (0x93).
            log.warning("%s: broker Receive Maximum %s is below send_maximum %s; lower it",
                        self.options.client_id, broker_max, self._send_max)
        # Resubscribe even when the session survived: Mosquitto 2.0.11 restores a persisted
        # session without its shared ($share) subscriptions.
        if self._session.subscriptions:
            self._send_subscribe(self._held()).add_done_callback(self._log_resubscribe)
        for entry in self._session.outbox.drain():
            remaining = entry.remaining_s(self._loop.time())
            self._send(entry.topic, entry.payload, entry.qos, retain=entry.retain,
                       expiry_s=remaining, done=entry.done)

    def _on_disconnect(self, code: int) -> None:
        self._pump.unwatch()
        waiter = self._connack
        if waiter is not None and not waiter.done():
            waiter.set_exception(TransportError(f"connection closed before CONNACK: 0x{code:02x}"))
        if self._connected:
            self._connected = False
            self._counts["disconnects"] += 1
            log.warning("%s: connection to %s lost (0x%02x)",
                        self.options.client_id, self.url, code)
            self._counts.update(self._flaps.down(self._loop.time(), taken_over=code == 0x8E))
            self._lost.set()

    async def _connect(self, *, clean_start: bool) -> None:
        props = properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._session_expiry
        props.ReceiveMaximum = self._receive_max
        self._connack = self._loop.create_future()
        try:
            await asyncio.to_thread(self._client.connect, self._host, self._port,
                                    self.options.keepalive_s, clean_start=clean_start,
                                    properties=props)
            self._pump.start()
            self._pump.watch()
            code, _ = await asyncio.wait_for(self._connack, self._connect_timeout)
        except (OSError, TimeoutError, TransportError) as exc:
            self._pump.unwatch()
            await asyncio.to_thread(self._pump.stop)
            raise TransportError(f"cannot connect to {self.url}: {exc!r}") from exc
        finally:
            self._connack = None
        if code >= 0x80:
            self._pump.unwatch()
            await asyncio.to_thread(self._pump.stop)
            raise ConnectRefused(self.url, code)  # the reason by name, with what to do

    async def _supervise(self) -> None:
        """Reconnect after every loss, with jittered exponential backoff."""
        while not self._session.closed:
            await self._lost.wait()
            self._lost.clear()
            self._pump.unwatch()
            await asyncio.to_thread(self._pump.stop)  # the thread is ending; join it
            while not self._session.closed and not self._connected:
                await asyncio.sleep(self._backoff.next_delay())
                try:
                    await self._connect(clean_start=False)
                except TransportError as exc:
                    log.info("%s: reconnect failed: %r", self.options.client_id, exc)
                    continue
                except Exception:  # the supervisor must outlive any paho surprise
                    log.exception("%s: reconnect attempt crashed", self.options.client_id)
                    continue
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
            props = properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        if qos and self._client.on_publish is None:
            self._client.on_publish = self._on_publish  # before: the PUBACK may beat publish()
        info = self._client.publish(topic, data, qos, retain, properties=props)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            # Lost the connection before our flag knew: paho would drop it at reconnect.
            self._session.outbox.put(topic, data, 0, retain=retain, expiry_s=expiry_s)
            return None
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise TransportError(f"publish to {topic!r}: too many QoS 1 messages in flight")
        self._counts["published"] += 1
        if qos == 0:
            return None
        future = done if done is not None else self._loop.create_future()
        inflight = self._session.inflight
        inflight.add(info.mid, Inflight(topic, data, retain, inflight.deadline(expiry_s), future,
                                        retries))
        code = self._acks.expect(info.mid)
        if code is not None:  # the PUBACK beat us here
            self._on_ack(info.mid, code)
        return future

    def _on_ack(self, mid: int, code: int) -> None:
        inflight = self._session.inflight
        sent = inflight.pop(mid)
        if not inflight:
            self._client.on_publish = None
        if sent is None or sent.future.done():
            return
        verdict = inflight.settle(sent, code)
        if verdict is Verdict.REJECTED:
            self._counts["rejected"] += 1
            sent.future.set_exception(
                PublishRejected(sent.topic, code, reason_name(PacketTypes.PUBACK, code)))
        elif verdict is Verdict.UNROUTED:
            self._counts["unrouted"] += 1
            sent.future.set_exception(TransportError(
                f"publish to {sent.topic!r}: no subscriber before it expired"))
        elif verdict is Verdict.RETRY:
            # Nobody received it: e.g. a worker group still resubscribing after a broker
            # restart. A QoS 1 message with an expiry is retried until it reaches someone.
            self._counts["unrouted_retries"] += 1
            self._loop.call_later(retry_delay(sent.retries), self._resend, sent)
        else:
            sent.future.set_result(None)

    def _resend(self, sent: Inflight) -> None:
        remaining = self._session.inflight.remaining(sent)
        if self._session.closed or sent.future.done() or remaining is None:
            return
        if self._connected:
            self._send(sent.topic, sent.data, 1, retain=False, expiry_s=remaining,
                       done=sent.future, retries=sent.retries + 1)
        else:
            self._session.outbox.put(sent.topic, sent.data, 1, expiry_s=remaining,
                                     done=sent.future)

    def _held(self) -> list[tuple[str, int]]:
        """Every subscription to replay, as (MQTT topic filter, qos)."""
        return [(mqtt_filter(pattern, group), qos)
                for (pattern, group), qos in self._session.subscriptions.items()]

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
        for (topic, _qos), code in zip(self._held(), future.result(), strict=False):
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
                self._session.inflight.forget_future(future)

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        """See :class:`Transport`: PUBLISH written now; the future completes on PUBACK."""
        future = self._start_publish(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)
        return done_future(self._loop) if future is None else future

    def _start_publish(self, topic: str, payload: bytes | bytearray | memoryview, *, qos: int,
                       retain: bool, expiry_s: float | None) -> asyncio.Future[None] | None:
        self._session.check_publish(topic, payload, qos)
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
            self._session.outbox.put(topic, data, qos, retain=retain, expiry_s=expiry_s,
                                     done=future)
        return future

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        """Subscribe (as a member of ``$share/group`` when given); kept across reconnects."""
        self._session.check_subscribe(pattern, group)
        topic = mqtt_filter(pattern, group or "")
        if self._connected:
            codes = await asyncio.wait_for(self._send_subscribe([(topic, qos)]),
                                           self._connect_timeout)
            if not codes or codes[0] >= 0x80:
                code = codes[0] if codes else 0x80
                raise SubscribeRejected(topic, code, reason_name(PacketTypes.SUBACK, code))
        self._session.subscribed(pattern, group, qos)

    async def unsubscribe(self, pattern: str, *, group: str | None = None) -> None:
        """Stop a subscription (and its replay after reconnects); not waited for."""
        self._session.unsubscribed(pattern, group)
        if self._connected:
            self._client.unsubscribe(mqtt_filter(pattern, group or ""))

    def counters(self) -> dict[str, int]:
        # Messages dropped in the hand-over from the network thread count as received and as
        # inbox drops, the same as drops in the inbox itself.
        lost = self._pump.arrivals_dropped
        outbox = self._session.outbox
        return {**self._counts, "received": self._inbox.received + lost,
                "inbox_dropped": self._inbox.dropped + lost,
                "outbox_evicted": outbox.evicted, "outbox_expired": outbox.expired}

    async def close(self) -> None:
        """Disconnect normally (no will) and end the session on the broker."""
        if self._session.closed:
            return
        self._session.closed = True
        self._connected = False
        if self._supervisor is not None:
            self._supervisor.cancel()
        props = properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        await asyncio.to_thread(self._pump.stop)
        self._pump.unwatch()
        self._pump.stop_heartbeat()
        self._client._reset_sockets()  # close now, not at collection
        for sent in self._session.inflight.clear():
            if not sent.future.done():
                sent.future.set_exception(TransportError("mqtt transport closed"))
        self._session.outbox.fail_all("dropped: transport closed")
        self._inbox.close()

    def abort(self) -> None:
        """Vanish without DISCONNECT, as a crash would: the broker publishes the will."""
        self._session.closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            sock.shutdown(socket.SHUT_RDWR)
        self._pump.stop()
        self._pump.unwatch()
        self._pump.stop_heartbeat()
        self._client._reset_sockets()
        self._connected = False
        self._inbox.close()


async def open_mqtt(url: str, options: TransportOptions) -> MqttTransport:
    """Connect to ``mqtt://HOST:PORT`` or ``mqtts://HOST:PORT``; raises TransportError if the
    first connection fails (later losses are reconnected in the background)."""
    transport = MqttTransport(url, options)
    # Clean start only on request: Mosquitto 2.0.11 does not persist a session begun with clean
    # start, so with session_expiry_s > 0 a broker restart would still lose it.
    await transport.start(clean_start=options.extra.get("clean_start", "false") == "true")
    return transport
