"""The robot's end of the direct data plane: frames straight to a worker, the rest as before.

:class:`DirectTransport` wraps the robot's hub or broker transport (``vlabus edge --direct``).
It reads the workers' signed status topics (their Ed25519 signatures are checked with the
robot's keyring: a direct endpoint is only ever learnt from a worker key) into a
:class:`~vlabus.direct.choice.Directory`, and:

* a frame goes to the worker that power of two choices picks, on a DEALER to its advertised
  endpoint (:class:`~vlabus.direct.peer.Peer`); the reply returns on that connection and joins
  this transport's inbox as if it had arrived on the robot's action topic. When no worker is
  advertised, none is usable, or the socket refuses the send (no connection yet), that frame is
  published through the wrapped transport, as without a direct plane;
* a session offer is published as usual (every worker of the pool reads it) and also sent on
  each direct connection, ahead of the frames that use it (a worker that gets it both ways
  counts the second as a duplicate);
* everything else (status, checkpoints, tasks, subscriptions) goes through the wrapped
  transport.

Failures never hold a step past its deadline. A connection that is lost (or whose handshake
fails) resends its unanswered frames that have not expired through the wrapped transport, and
its worker cools down before the next try on a fresh socket. A frame that gets no reply before
its expiry (the robot's decision time) is left to the robot's watchdog, which acts locally, and
its worker cools down likewise (``direct_timeouts``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Collection
from typing import Any

import zmq

from schemas import topics
from schemas.errors import WireError
from schemas.messages import Status
from schemas.status import direct_advert
from security.keys import Keyring
from vlabus.bus.transport import Message, Transport, done_future, now_ns
from vlabus.direct.choice import Directory
from vlabus.direct.overlay import Overlay
from vlabus.direct.peer import Curve, Peer
from vlabus.wire import Decoder

log = logging.getLogger(__name__)
_STATUS_PREFIX, _STATUS_SUFFIX = f"{topics.PREFIX}/workers/", "/status"


class DirectTransport(Overlay):
    """A robot's transport with a direct data plane; see the module docstring."""

    def __init__(self, inner: Transport, robot_id: str, keyring: Keyring, *,
                 directory: Directory | None = None,
                 workers: Collection[str] | None = None) -> None:
        """``workers``: only ever send directly to these (None: any that advertises)."""
        super().__init__(inner)
        self.workers = None if workers is None else frozenset(workers)
        self.robot_id = robot_id
        self.frame_topic = topics.frame_topic(robot_id)
        self.session_topic = topics.session_topic(robot_id)
        self.action_topic = topics.action_topic(robot_id)
        self.directory = directory or Directory()
        self.decoder = Decoder(keyring)
        self.peers: dict[str, Peer] = {}
        self.stats: Counter[str] = Counter()
        self._offer: bytes | None = None
        self._keys: tuple[bytes, bytes] | None = None  # this robot's CurveZMQ pair, when used

    async def start(self) -> None:
        """Follow the workers' status (their direct endpoints and queue depths)."""
        await self.inner.subscribe(topics.ALL_WORKER_STATUS, qos=1)

    # -- inbound ---------------------------------------------------------------------------

    def deliver(self, message: Message) -> bool:
        topic = message.topic
        if topic.startswith(_STATUS_PREFIX) and topic.endswith(_STATUS_SUFFIX):
            self._status(message)
            return True
        return super().deliver(message)

    def _status(self, message: Message) -> None:
        try:
            status = self.decoder.decode(message.payload, topic=message.topic).message
        except WireError as exc:
            self.stats["status_refused"] += 1
            log.debug("worker status refused on %r: %r", message.topic, exc)
            return
        if not isinstance(status, Status) or status.role != "worker" or (
                self.workers is not None and status.client_id not in self.workers):
            return
        advert = direct_advert(status)
        if advert is None:
            self.directory.remove(status.client_id)
            self._drop(status.client_id, "gone")
            return
        peer = self.peers.get(advert.worker)
        if self.directory.update(advert) and peer is not None and (
                peer.endpoint != advert.endpoint):
            self._drop(advert.worker, "moved")

    def _reply(self, peer: Peer, payload: bytes | memoryview, depth: int | None) -> None:
        self.directory.answered(peer.worker, depth)
        self.stats["direct_replies"] += 1
        super().deliver(Message(self.action_topic, payload, now_ns()))

    # -- outbound --------------------------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes | bytearray | memoryview, *,
                       qos: int = 0, retain: bool = False,
                       expiry_s: float | None = None) -> Any:
        if topic == self.frame_topic and not retain and not self.closed:
            if self._send_direct(topic, payload, expiry_s):
                return done_future(self._loop)
            self.stats["frames_via_bus"] += 1
        elif topic == self.session_topic:
            self._offer = bytes(payload)
            for peer in self.peers.values():
                peer.send(topic, self._offer, 0, track=False)
        return self.inner.publish_nowait(topic, payload, qos=qos, retain=retain,
                                         expiry_s=expiry_s)

    def _send_direct(self, topic: str, payload: bytes | bytearray | memoryview,
                     expiry_s: float | None) -> bool:
        worker = self.directory.pick()
        if worker is None:
            return False
        peer = self.peers.get(worker) or self._connect(worker)
        if peer is None:
            return False
        wait_s = 1.0 if expiry_s is None else expiry_s
        body = payload if isinstance(payload, bytes | memoryview) else bytes(payload)
        if not peer.send(topic, body, time.time_ns() + int(wait_s * 1e9)):
            return False  # not connected (yet): this frame goes through the bus
        self.directory.sent(worker)
        self.stats["frames_direct"] += 1
        self._loop.call_later(wait_s, self._expired, peer, peer.sent)
        return True

    def _connect(self, worker: str) -> Peer | None:
        entry = self.directory.entries.get(worker)
        if entry is None:
            return None
        curve = None
        if entry.advert.curve_key:
            if self._keys is None:
                self._keys = zmq.curve_keypair()
            curve = Curve(entry.advert.curve_key.encode(), *self._keys)
        try:
            peer = Peer(worker, entry.advert.endpoint, on_reply=self._reply, on_up=self._up,
                        on_lost=self._lost, curve=curve)
        except (zmq.ZMQError, ValueError) as exc:  # an endpoint libzmq cannot use
            log.warning("direct endpoint %r of %s unusable: %r", entry.advert.endpoint,
                        worker, exc)
            self.directory.failed(worker, 0)
            return None
        self.peers[worker] = peer
        self.stats["connections"] += 1
        return peer

    def _up(self, peer: Peer) -> None:
        if self._offer is not None:  # the session the frames on this connection use
            peer.send(self.session_topic, self._offer, 0, track=False)

    def _lost(self, peer: Peer, why: str) -> None:
        """The connection went (or never came): resend what it did not answer, in time,
        through the bus; cool the worker down; a fresh socket is built on a later pick."""
        if self.peers.get(peer.worker) is not peer:
            return
        now = time.time_ns()
        resent = 0
        for sent in peer.pending:
            remaining = (sent.expires_ns - now) / 1e9
            if remaining > 0:
                try:
                    self.inner.publish_nowait(sent.topic, sent.payload, qos=0,
                                              expiry_s=remaining)
                    resent += 1
                except Exception as exc:  # noqa: BLE001 - the watchdog covers that step
                    log.warning("frame not resent through the bus: %r", exc)
        self.stats["direct_resent"] += resent
        self.stats["direct_lost"] += 1
        wait = self.directory.failed(peer.worker, len(peer.pending))
        log.warning("direct connection to %s lost (%s): %d frames resent through the bus; "
                    "next try in %.1f s", peer.worker, why, resent, wait)
        self._drop(peer.worker, why)

    def _expired(self, peer: Peer, number: int) -> None:
        if peer.closed or peer.answered >= number:
            return
        self.stats["direct_timeouts"] += 1
        wait = self.directory.failed(peer.worker, len(peer.pending))
        log.warning("no direct reply from %s in time; next try in %.1f s", peer.worker, wait)
        self._drop(peer.worker, "timeout")

    def _drop(self, worker: str, why: str) -> None:
        peer = self.peers.pop(worker, None)
        if peer is not None:
            log.debug("closing direct connection to %s (%s)", worker, why)
            peer.close()

    def own_counters(self) -> dict[str, int]:
        return dict(self.stats)

    def close_sockets(self) -> None:
        for worker in list(self.peers):
            self._drop(worker, "closing")
