"""The seam between vlabus and a message bus: one small protocol, three adapters.

``open_transport(url, options)`` picks the adapter from the URL scheme:

* ``memory://NAME`` — in-process bus for unit tests, same semantics (wildcards, shared groups,
  retained messages, wills, expiry).
* ``mqtt://HOST:PORT`` / ``mqtts://HOST:PORT`` — paho-mqtt 2.x speaking MQTT 5.
* ``zmq://HOST:PORT`` — the vlabus ZeroMQ hub (``vlabus hub``).

Adapters import their vendor library inside their own module only. Vendor messages become
:class:`Message` on arrival and land in one bounded inbox per transport; what the adapters keep
about a connection (subscriptions, retained messages, QoS 1 in flight, the outbox, the publish
checks) is :class:`vlabus.bus.session.Session`, shared by all three.

Consuming: one mechanism, the transport's bounded inbox, read in one of two styles.

* **pull** — ``message = await transport.receive()`` (``TransportError`` once closed),
  ``transport.receive_nowait()`` (``None`` when nothing waits), or ``async for message in
  transport`` (ends when the transport closes).
* **push** — ``transport.consume(handler)``: ``handler(message) -> bool`` is offered each message
  as it arrives, on the loop thread, inside the adapter's receive callback, while nothing waits
  in the inbox. True: it took the message; False: leave it queued for the pull side (and, to
  keep the order, nothing more is offered until the queue is empty). A handler that raises loses
  that one message, counted as an inbox drop. ``consume(None)`` stops it. This is the path a
  latency-critical consumer takes (an idle worker, the robot's action inbox): it skips the
  wake-up of a task awaiting ``receive()``. Both styles may run at once: what the handler
  declines, or what arrives while it is unset, is what ``receive()`` returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from schemas.errors import TransportError

#: The deployment's one message-size limit: what a client publishes and accepts at most. The
#: hub refuses (NACK, counted) a larger payload at entry, and the Mosquitto configuration's
#: ``max_packet_size`` is this plus room for MQTT headers (``vlabus.broker.render``).
MAX_PAYLOAD = 16 << 20


@dataclass(frozen=True, slots=True)
class Message:
    """One message taken off the bus; ``payload`` is the exact bytes received."""

    topic: str
    payload: bytes | memoryview
    received_ns: int


@dataclass(frozen=True, slots=True)
class Will:
    """Published by the broker (or hub) when the client vanishes without closing."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """CurveZMQ: the hub's public key and this client's key pair (Z85 text)."""

    server_public: bytes
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class TransportOptions:
    client_id: str
    inbox_size: int = 4096
    max_payload: int = MAX_PAYLOAD
    will: Will | None = None
    username: str | None = None
    password: str | None = None
    tls: TlsFiles | None = None
    curve: CurveKeys | None = None
    keepalive_s: int = 10
    outbox_size: int = 1024
    extra: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Message], bool]


@runtime_checkable
class Transport(Protocol):
    """What the rest of vlabus needs from a bus."""

    url: str

    @property
    def connected(self) -> bool: ...

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> None:
        """Send ``payload``. QoS 1 waits for the broker's acknowledgement and raises
        :class:`~schemas.errors.PublishRejected` with its reason code when refused. Checked
        first, in this order, before anything is sent: an invalid topic name
        (``PublishRejected`` 0x90), a payload over ``max_payload`` and a QoS other than 0 or 1
        (``TransportError``); see :meth:`vlabus.bus.session.Session.check_publish`."""

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview,
        *,
        qos: int = 0,
        retain: bool = False,
        expiry_s: float | None = None,
    ) -> asyncio.Future[None]:
        """Send ``payload`` now, on the calling (loop) thread, without waiting for anything.

        Returns a future that completes when :meth:`publish` would return: at once for QoS 0,
        on the acknowledgement for QoS 1 (with the same exceptions). Errors in the arguments,
        or a closed transport, raise here. For a caller that must not wait a loop iteration
        before the bytes leave (a worker's replies): a task wrapped around :meth:`publish`
        starts one iteration later, and awaiting the acknowledgement costs more than the work.
        """

    async def subscribe(self, pattern: str, *, group: str | None = None, qos: int = 1) -> None:
        """Receive messages matching ``pattern``; with ``group``, share them round-robin with
        the other members of that group (MQTT ``$share/group/pattern``). A refused or invalid
        subscription raises :class:`~schemas.errors.SubscribeRejected` (0x8F for an invalid
        filter or group, checked before anything is sent: :func:`check_filter`)."""

    async def unsubscribe(self, pattern: str, *, group: str | None = None) -> None:
        """Stop receiving what :meth:`subscribe` with the same arguments asked for."""

    async def receive(self) -> Message:
        """The next message (pull); raises :class:`TransportError` once closed."""

    def receive_nowait(self) -> Message | None:
        """The next message if one waits, else None."""

    def consume(self, handler: Handler | None) -> None:
        """Offer arriving messages to ``handler`` first (push; see the module docstring);
        ``None`` stops it."""

    def __aiter__(self) -> AsyncIterator[Message]:
        """``async for message in transport``: :meth:`receive` until the transport closes."""

    def counters(self) -> dict[str, int]:
        """Monotonic counters, e.g. inbox drops and reconnects."""

    async def close(self) -> None:
        """Disconnect cleanly (no will is published)."""

    def abort(self) -> None:
        """Vanish without closing, as a crash would: the broker (or hub) publishes the will."""


def now_ns() -> int:
    return time.time_ns()


def done_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """An already completed future: ``publish_nowait``'s answer when there is nothing to wait
    for (QoS 0, or queued in the outbox to be sent after a reconnect)."""
    future: asyncio.Future[None] = loop.create_future()
    future.set_result(None)
    return future


async def open_transport(url: str, options: TransportOptions) -> Transport:
    """Connect to the bus at ``url`` (``memory://``, ``mqtt://``, ``mqtts://``, ``zmq://``)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from vlabus.bus.memory import open_memory

        return await open_memory(url, options)
    if scheme in ("mqtt", "mqtts"):
        from vlabus.bus.mqtt import open_mqtt

        return await open_mqtt(url, options)
    if scheme == "zmq":
        from vlabus.bus.zmq import open_zmq

        return await open_zmq(url, options)
    raise TransportError(f"unknown bus URL scheme in {url!r}; use memory://, mqtt://, zmq://")


