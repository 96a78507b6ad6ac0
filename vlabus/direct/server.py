"""The worker's end of the direct data plane: a ZeroMQ ROUTER beside its hub or broker.

``vlabus worker --direct tcp://HOST:PORT`` binds a ROUTER (CurveZMQ with ``--direct-curve``)
and wraps the worker's transport in a :class:`DirectServer`. A robot's DEALER sends
``[topic, envelope]``; what the server admits joins the same inbox as what the hub or broker
delivers, so every message, whichever way it came, goes through the worker's one receive
pipeline (size cap, header, MAC or signature, replay guard, decode).

Before that pipeline, the server only checks the framing, cheaply: exactly two parts, a topic
that names a robot's ``frame``, ``task`` or ``session`` topic. Anything else is dropped and
counted by reason (``direct_refused_malformed``, ``direct_refused_topic``); libzmq drops a
connection whose message exceeds ``max_payload`` (``MAXMSGSIZE``) before it is read. A message
the pipeline verifies (:meth:`Routed.verified`) makes its connection the route for replies to
its robot: a publish to that robot's action topic then leaves on the same connection, with the
worker's queue depth as a second part (a load hint). Everything else (status, wills,
checkpoints, model releases, replies to a robot without a live route, a route that is gone)
goes through the wrapped transport, as without a direct plane.

A bound ROUTER has no connection of its own to rebuild: a protocol error ends that peer's
connection only, and the robot's side rebuilds its socket (:mod:`vlabus.direct.peer`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from schemas.topics import action_topic
from vlabus.bus.transport import MAX_PAYLOAD, Message, Transport, done_future, now_ns
from vlabus.bus.zmqsocket import readable, tcp_liveness
from vlabus.direct.overlay import Overlay

log = logging.getLogger(__name__)

_TOPIC = re.compile(rb"^vla/v1/[a-z0-9][a-z0-9-]{0,63}/(frame|task|session)$")
_NB, _MORE_NB = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_ZERO_COPY = 64 << 10
#: replies to a robot go back on its connection for this long after its last verified message
ROUTE_TTL_NS = 30_000_000_000
MAX_ROUTES = 65536


@dataclass(frozen=True, slots=True)
class Routed(Message):
    """A message that arrived on the direct socket, with the connection it came from."""

    route: bytes
    server: DirectServer

    def verified(self, sender: str) -> None:
        """The receive pipeline verified this message from ``sender``: answer it here."""
        self.server.learn(sender, self.route)


def bind_router(endpoint: str, *, curve_secret: bytes | None = None,
                max_payload: int = MAX_PAYLOAD, heartbeat_ms: int = 1000) -> zmq.Socket[Any]:
    """A bound ROUTER for ``endpoint`` (``tcp://HOST:PORT``, port 0 for any free one)."""
    sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.MAXMSGSIZE, max_payload + 1024)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.setsockopt(zmq.SNDHWM, 1000)
    tcp_liveness(sock, heartbeat_ms)  # not ZMTP heartbeats: known trap 12
    if curve_secret is not None:
        sock.curve_server = True
        sock.curve_secretkey = curve_secret
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    try:
        if port == "0":
            sock.bind_to_random_port(f"tcp://{host}")
        else:
            sock.bind(endpoint)
    except zmq.ZMQError:
        sock.close()
        raise
    return sock


def bound_endpoint(sock: zmq.Socket[Any]) -> str:
    """The endpoint ``sock`` listens on (its port resolved)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


class DirectServer(Overlay):
    """The worker's transport with a direct ROUTER beside it; see the module docstring."""

    def __init__(self, inner: Transport, sock: zmq.Socket[Any], *,
                 clock: Callable[[], int] = now_ns) -> None:
        super().__init__(inner)
        self.sock = sock
        self._clock = clock
        #: the worker's queue depth, sent with each direct reply (set by the worker's shell)
        self.depth: Callable[[], int] = lambda: 0
        self._routes: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self.refused: Counter[str] = Counter()
        self.stats = {"direct_received": 0, "direct_replies": 0, "direct_unroutable": 0}
        self._loop.add_reader(sock.FD, self._drain)
        self._loop.call_soon(self._drain)  # the FD is edge-triggered: arm it

    def learn(self, sender: str, route: bytes) -> None:
        """Send replies to ``sender`` on connection ``route`` from now on."""
        topic = action_topic(sender)
        self._routes[topic] = (route, self._clock() + ROUTE_TTL_NS)
        self._routes.move_to_end(topic)
        if len(self._routes) > MAX_ROUTES:
            self._routes.popitem(last=False)

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> asyncio.Future[None]:
        """Replies to a robot with a live route leave on its direct connection; the rest, and
        any the socket cannot take, through the wrapped transport."""
        route = None if retain or self.closed else self._routes.get(topic)
        if route is not None and route[1] > self._clock() and self._send(route[0], payload):
            self.stats["direct_replies"] += 1
            return done_future(self._loop)
        if route is not None:
            self._routes.pop(topic, None)
        return self.inner.publish_nowait(topic, payload, qos=qos, retain=retain,
                                         expiry_s=expiry_s)

    def _send(self, route: bytes, payload: bytes | bytearray | memoryview) -> bool:
        sock = self.sock
        try:
            sock.send(route, _MORE_NB)
            sock.send(payload, _MORE_NB, copy=len(payload) < _ZERO_COPY)
            sock.send(b"%d" % self.depth(), _NB)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: that robot's connection is gone
            self.stats["direct_unroutable"] += 1
            log.debug("direct reply not sent: %r", exc)
            return False
        finally:
            if not self.closed and readable(sock):  # sending may consume the FD's edge
                self._loop.call_soon(self._drain)
        return True

    def _drain(self) -> None:
        sock = self.sock
        for _ in range(256):
            if self.closed or not readable(sock):
                return
            parts = sock.recv_multipart(_NB, copy=False)
            if len(parts) != 3:
                self._refuse("malformed", parts)
                continue
            route, topic, payload = parts
            name = topic.bytes
            if not _TOPIC.match(name):
                self._refuse("topic", parts)
                continue
            self.stats["direct_received"] += 1
            self.deliver(Routed(name.decode(), payload.buffer if len(payload) >= _ZERO_COPY
                                else payload.bytes, now_ns(), route.bytes, self))
        self._loop.call_soon(self._drain)  # more may wait; let other work run first

    def _refuse(self, reason: str, parts: list[Any]) -> None:
        self.refused[reason] += 1
        if self.refused[reason] <= 5 or self.refused[reason] % 1000 == 0:
            log.warning("direct socket: refused a message (%s, %d so far): %r", reason,
                        self.refused[reason], [bytes(p.bytes[:32]) for p in parts[1:4]])

    def own_counters(self) -> dict[str, int]:
        return {**self.stats, **{f"direct_refused_{k}": v for k, v in self.refused.items()}}

    def close_sockets(self) -> None:
        self._loop.remove_reader(self.sock.FD)
        self.sock.close(0)
