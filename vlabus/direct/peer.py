"""A robot's connection to one worker's direct socket: a DEALER driven from the event loop.

Sends are non-blocking and, with ``IMMEDIATE``, refused at once while there is no connection
(the caller then sends that step over the hub or broker). Large payloads leave without a copy
(``copy=False``): the caller must not change a buffer after sending it, which the envelope
encoder never does. Replies are read from the socket's edge-triggered FD straight into
``on_reply``. The socket monitor reports a lost connection or a failed handshake (a CurveZMQ
key that does not match, a protocol error) to ``on_lost``; the owner then closes this peer and
builds a fresh socket later, so a connection libzmq gave up on is never kept.

What was sent and not yet answered is kept, oldest first (replies come back in order of
service), so the owner can send it another way when the connection is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from vlabus.bus.transport import MAX_PAYLOAD
from vlabus.bus.zmqsocket import readable, tcp_liveness

log = logging.getLogger(__name__)

_NB, _MORE_NB = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_ZERO_COPY = 64 << 10
_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@dataclass(frozen=True, slots=True)
class Sent:
    """A request sent on this connection and not answered yet."""

    topic: str
    payload: bytes | memoryview
    expires_ns: int  # wall clock
    number: int


@dataclass(frozen=True, slots=True)
class Curve:
    """CurveZMQ for one connection: the worker's advertised public key, this robot's pair."""

    server_public: bytes
    public: bytes
    secret: bytes


class Peer:
    """One DEALER to ``endpoint`` of worker ``worker``; see the module docstring."""

    def __init__(self, worker: str, endpoint: str, *,
                 on_reply: Callable[[Peer, bytes | memoryview, int | None], None],
                 on_up: Callable[[Peer], None], on_lost: Callable[[Peer, str], None],
                 curve: Curve | None = None, max_payload: int = MAX_PAYLOAD,
                 heartbeat_ms: int = 1000) -> None:
        self.worker = worker
        self.endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self._on_reply, self._on_up, self._on_lost = on_reply, on_up, on_lost
        sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, max_payload + 1024)
        sock.setsockopt(zmq.RCVHWM, 1000)
        tcp_liveness(sock, heartbeat_ms)  # not ZMTP heartbeats: known trap 12
        if curve is not None:
            sock.curve_serverkey = curve.server_public
            sock.curve_publickey = curve.public
            sock.curve_secretkey = curve.secret
        self.sock = sock
        self.monitor = sock.get_monitor_socket(_EVENTS)
        self.pending: deque[Sent] = deque()
        self.sent = 0
        self.answered = 0
        self.up = False
        self.closed = False
        self._loop.add_reader(sock.FD, self._drain)
        self._loop.add_reader(self.monitor.FD, self._watch)
        sock.connect(endpoint)
        self._loop.call_soon(self._watch)  # edge-triggered FDs: reading EVENTS arms them
        self._loop.call_soon(self._drain)

    def send(self, topic: str, payload: bytes | memoryview, expires_ns: int, *,
             track: bool = True) -> bool:
        """Send without blocking; False when there is no connection (or it is full).
        ``track``: a request that expects a reply (kept until answered)."""
        if self.closed:
            return False
        sock = self.sock
        try:
            sock.send(topic.encode(), _MORE_NB)
            sock.send(payload, _NB, copy=len(payload) < _ZERO_COPY)
        except zmq.ZMQError:
            return False
        finally:
            if not self.closed and readable(sock):
                self._loop.call_soon(self._drain)
        if track:
            self.sent += 1
            self.pending.append(Sent(topic, payload, expires_ns, self.sent))
        return True

    def _drain(self) -> None:
        sock = self.sock
        for _ in range(256):
            if self.closed or not readable(sock):
                return
            parts = sock.recv_multipart(_NB, copy=False)
            depth = None
            if len(parts) == 2:
                hint = parts[1].bytes
                depth = int(hint) if hint.isdigit() and len(hint) < 10 else None
            elif len(parts) != 1:
                log.warning("direct reply from %s with %d parts; dropped", self.worker,
                            len(parts))
                continue
            body = parts[0]
            if self.pending:
                self.pending.popleft()
            self.answered += 1
            self._on_reply(self, body.buffer if len(body) >= _ZERO_COPY else body.bytes, depth)
        self._loop.call_soon(self._drain)

    def _watch(self) -> None:
        while not self.closed and readable(self.monitor):
            event = parse_monitor_message(self.monitor.recv_multipart())["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up = True
                self._on_up(self)
            elif event == zmq.EVENT_DISCONNECTED:
                self.up = False
                self._on_lost(self, "disconnected")
            else:
                self._on_lost(self, f"handshake failed ({zmq.Event(event).name})")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.sock.FD)
        self._loop.remove_reader(self.monitor.FD)
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)
