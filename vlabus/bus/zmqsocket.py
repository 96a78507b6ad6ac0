"""The hub client's DEALER socket: its options, and its rebuild after a protocol error.

libzmq reconnects a connecting socket by itself after a lost connection, and reports the
attempt (``CONNECT_RETRIED``) right after the disconnect. After a protocol error (a message over
``MAXMSGSIZE``, a peer speaking something else) it ends the connection for good and makes no
attempt: a socket left like that is dead while its process looks alive. :class:`Rebuilder`
notices a disconnect that no attempt follows and has the socket replaced after a jittered
backoff.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

import zmq

from vlabus.bus.backoff import Backoff
from vlabus.bus.transport import TransportOptions

log = logging.getLogger("vlabus.bus.zmq")

#: The socket events the client follows.
MONITOR = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECT_DELAYED)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum arithmetic costs
#: No reconnect attempt within this after a disconnect: the connection ended for good.
DEAD_AFTER_S = 0.25


def make_dealer(ctx: zmq.Context[Any], opts: TransportOptions,
                heartbeat_ms: int) -> zmq.Socket[Any]:
    """A DEALER with the client's limits, reconnect intervals, heartbeats and CURVE keys; a
    fresh routing id each time (a rebuilt socket is a new peer to the hub)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, f"{opts.client_id}/{uuid.uuid4().hex[:8]}".encode())
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDHWM, max(opts.outbox_size, 1000))
    sock.setsockopt(zmq.RCVHWM, max(opts.inbox_size, 1000))
    sock.setsockopt(zmq.MAXMSGSIZE, opts.max_payload + (64 << 10))
    # libzmq waits the interval plus up to as much again at random, doubling up to the max.
    extra = opts.extra
    sock.setsockopt(zmq.RECONNECT_IVL, int(1000 * float(extra.get("reconnect_min_s", 0.1))))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(1000 * float(extra.get("reconnect_max_s", 2))))
    tcp_liveness(sock, heartbeat_ms)
    if opts.curve is not None:
        sock.curve_serverkey = opts.curve.server_public
        sock.curve_publickey = opts.curve.public
        sock.curve_secretkey = opts.curve.secret
    return cast("zmq.Socket[Any]", sock)


def tcp_liveness(sock: zmq.Socket[Any], heartbeat_ms: int) -> None:
    """Find a dead peer within about three ``heartbeat_ms`` with the kernel's TCP keepalive
    (probes after ``heartbeat_ms`` of silence, one a second, three unanswered) and
    ``TCP_MAXRT`` (data unacknowledged for 3 × ``heartbeat_ms``), not ZMTP heartbeats: libzmq
    4.3 aborts the whole process (``Assertion failed: !_io_error``, libzmq issues 3937, 4767)
    when a heartbeat times out while a socket's input is stopped by a full receive queue, which
    is what a stalled reader's socket is. Liveness of the application itself is the hub's PING.
    """
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, round(heartbeat_ms / 1000)))
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    sock.setsockopt(zmq.TCP_MAXRT, 3 * heartbeat_ms)


class Rebuilder:
    """Calls ``rebuild`` when a lost connection gets no reconnect attempt, after a backoff
    (``reconnect_min_s`` doubling up to ``reconnect_max_s``), unless ``settled()`` (closed or
    connected again) by then; a rebuilt socket that never connects is rebuilt again."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: TransportOptions,
                 settled: Callable[[], bool], rebuild: Callable[[], None]) -> None:
        extra = options.extra
        self.backoff = Backoff(float(extra.get("reconnect_min_s", 0.1)),
                               float(extra.get("reconnect_max_s", 2)))
        self._loop = loop
        self._settled = settled
        self._rebuild = rebuild
        self._attempts = 0  # reconnect attempts and handshakes libzmq reported so far
        self._timer: asyncio.TimerHandle | None = None
        self._limit = options.max_payload + (64 << 10)

    def attempt(self) -> None:
        """libzmq is (re)connecting: it has not given up."""
        self._attempts += 1

    def connected(self) -> None:
        self._attempts += 1
        self.backoff.reset()

    def lost(self) -> None:
        """The connection went: check shortly whether libzmq tries again."""
        self._loop.call_later(DEAD_AFTER_S, self._check, self._attempts)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self, attempts: int) -> None:
        if self._settled() or self._attempts != attempts or self._timer is not None:
            return
        delay = self.backoff.next_delay()
        log.warning("zmq: the connection ended without a reconnect (a protocol error, e.g. a "
                    "message over %d bytes); new socket in %.2f s", self._limit, delay)
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._settled():
            return
        self._rebuild()
        self._loop.call_later(DEAD_AFTER_S + self.backoff.cap_s, self._check, self._attempts)


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits; also re-arms the edge-triggered FD."""
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)
