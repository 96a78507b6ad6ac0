"""The ZeroMQ hub: a broker-free rendezvous with MQTT topic semantics (``vlabus hub``).

One ROUTER socket carries everything (clients connect one DEALER), so a message takes one hop
client -> hub -> client. Frames are passed through without copying (``copy=False``); a fan-out
re-sends the same ``zmq.Frame``, which libzmq shares by reference. The routing table lives in
:mod:`vlabus.hub.routes`.

Protection: send/receive high-water marks (a full subscriber's messages are dropped and counted,
never blocking the hub: ``ROUTER_MANDATORY`` turns the silent drop into ``EAGAIN``), TCP
keepalive (:func:`~vlabus.bus.zmqsocket.tcp_liveness`), ``MAXMSGSIZE`` (a peer sending more
is disconnected by libzmq), and the deployment's payload limit at entry: a publish or will over
``max_payload`` (what every client accepts) is refused with NACK and counted in ``too_large``,
so it never reaches a subscriber whose socket would take it for a protocol error. With
``curve_dir``, CurveZMQ with a ZAP handler and ``ZAP_ENFORCE_DOMAIN``: without the handler
clients are refused, not admitted (known trap 6).
With ``access`` as well, each publish, subscription and will is checked against the sender's
CURVE identity (:mod:`vlabus.hub.access`); a refusal is counted in ``denied`` and answered with
NACK. Wills are published when a client's TCP connection drops without a BYE (socket monitor
event, matched by file descriptor) or when it is silent for three heartbeat intervals; not when
a newer connection took its client id over (as MQTT: counted in ``taken_over``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

import zmq
from zmq.utils.monitor import recv_monitor_message

from schemas.errors import BusError, TransportError
from schemas.topics import group_problem, topic_filter_problem
from vlabus.bus.zmqsocket import tcp_liveness
from vlabus.hub import protocol as proto
from vlabus.hub.access import Access
from vlabus.hub.config import HubConfig
from vlabus.hub.refusals import Refusals
from vlabus.hub.routes import Routes
from vlabus.hub.zap import frame_user as _user
from vlabus.hub.zap import serve_curve

log = logging.getLogger(__name__)

_TICK_MS = 100
_DRAIN = 512
_ZERO_COPY = 64 << 10
_NB, _MORE_NB = int(zmq.NOBLOCK), int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class Hub:
    """Runs the routing loop in a daemon thread; ``start()`` returns once bound."""

    def __init__(self, config: HubConfig) -> None:
        if config.access is not None and config.curve_dir is None:
            raise TransportError("hub access rules need CurveZMQ (curve_dir): without it a "
                                 "client's identity is not known")
        self.config = config
        self.url = ""
        self.routes = Routes()
        self.stats: dict[str, int] = dict.fromkeys(
            ("received", "delivered", "dropped_hwm", "dropped_unroutable", "expired",
             "malformed", "denied", "wills", "disconnects", "reloads", "revoked",
             "too_large", "taken_over"), 0)
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._ctrl = f"inproc://hub-ctrl-{id(self)}"
        self._auth: Any = None
        self._access = config.access
        self._refusals = Refusals(self.stats, config.max_payload)
        self._next_access: Access | None = None
        self._reloaded = threading.Event()
        self._reload_lock = threading.Lock()

    def start(self, timeout_s: float = 5.0) -> Hub:
        self._thread = threading.Thread(target=self._run, name="vlabus-hub", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._error is not None:
            self.stop()
            raise TransportError(f"hub failed to start on {self.config.bind}: "
                                 f"{self._error or 'timeout'}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving, release the port (idempotent); clients reconnect as to a crashed hub."""
        if self._ctx.closed:
            return
        if self._thread is not None and self._thread.is_alive():
            ctrl = self._ctx.socket(zmq.PUSH)
            ctrl.connect(self._ctrl)
            ctrl.send(b"stop")
            self._thread.join(5.0)
            ctrl.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def reload(self, access: Access | None = None, timeout_s: float = 5.0) -> dict[str, int]:
        """Re-read the CURVE allow-list (``authorized/``) and, on a hub with access rules, put
        ``access`` in force: a client added since the start is admitted at its next handshake,
        and every subscription held by an identity the new rules no longer allow is cancelled
        (counted in ``revoked``). A key removed from the allow-list keeps the connection it has
        until that reconnects; with access rules, remove it from the keyring as well to cut it
        off at once. Rules can be changed, not switched on or off (that changes how routing
        ids are handed over, see ``_configure``). Returns {"clients_admitted", "revoked"}."""
        if (access is None) != (self._access is None):
            raise TransportError("reload can change the hub's access rules, not switch them "
                                 "on or off: restart the hub with or without --keys")
        with self._reload_lock:
            admitted = 0
            if self._auth is not None and self.config.curve_dir is not None:
                admitted = self._auth.reload(self.config.curve_dir)
            before = self.stats["revoked"]
            self._next_access = access
            self._reloaded.clear()
            ctrl = self._ctx.socket(zmq.PUSH)
            try:
                ctrl.connect(self._ctrl)
                ctrl.send(b"reload")
                if not self._reloaded.wait(timeout_s):
                    raise TransportError("hub did not apply the reload in time")
            finally:
                ctrl.close(0)
            return {"clients_admitted": admitted, "revoked": self.stats["revoked"] - before}

    def counters(self) -> dict[str, int]:
        return {**self.stats, "clients": len(self.routes.peers),
                "retained": len(self.routes.retained)}

    def stop_authenticator(self) -> None:
        """Stop the ZAP handler only (tests trap 6: new clients must then be refused)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def _configure(self, router: zmq.Socket[Any]) -> None:
        cfg = self.config
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.SNDHWM, cfg.hwm)
        router.setsockopt(zmq.RCVHWM, cfg.hwm)
        router.setsockopt(zmq.MAXMSGSIZE, cfg.max_msg_size)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A reconnecting client may take over its routing id from a half-dead connection. With
        # access rules, no: the subscriptions under that id were granted to the identity that
        # made them, and a takeover by another identity would inherit its deliveries. A client
        # then reconnects once TCP has dropped the old connection (about 3 heartbeats).
        router.setsockopt(zmq.ROUTER_HANDOVER, 0 if cfg.access is not None else 1)
        tcp_liveness(router, cfg.heartbeat_ms)
        if cfg.curve_dir is not None:
            self._auth = serve_curve(router, cfg.curve_dir, self._ctx)
        router.bind(cfg.bind)
        endpoint = cast(bytes, router.getsockopt(zmq.LAST_ENDPOINT)).decode()
        self.url = "zmq://" + endpoint.removeprefix("tcp://")

    def _run(self) -> None:
        opened: list[zmq.Socket[Any]] = []
        try:
            router = self._ctx.socket(zmq.ROUTER)
            opened.append(router)
            self._configure(router)
            ctrl = self._ctx.socket(zmq.PULL)
            opened.append(ctrl)
            ctrl.bind(self._ctrl)
            monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        except (zmq.ZMQError, OSError, ValueError, BusError) as exc:
            for sock in opened:
                sock.close(0)  # or the context's term() in stop() would wait for it forever
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        for sock in (router, ctrl, monitor):
            poller.register(sock, zmq.POLLIN)
        next_check = 0
        try:
            while True:
                events = dict(poller.poll(_TICK_MS))
                if ctrl in events:
                    if ctrl.recv() != b"reload":
                        break
                    self._apply_reload()
                if router in events:
                    self._drain(router)
                if monitor in events:
                    self._on_monitor(router, monitor)
                now = time.monotonic_ns()
                if now >= next_check:  # liveness needs no finer grain than the tick
                    next_check = now + _TICK_MS * 1_000_000
                    for rid in self.routes.expired(now):
                        self._gone(router, rid)
        finally:
            router.disable_monitor()
            for sock in (monitor, ctrl, router):
                sock.close(0)

    def _apply_reload(self) -> None:
        """On the hub's thread: the new rules in force, and what they no longer allow undone."""
        access = self._next_access
        if access is not None:
            self._access = access
            self._refusals.forget_denials()
            for rid, pattern, group in self.routes.subscriptions():
                peer = self.routes.peers.get(rid)
                user = peer.user if peer is not None else ""
                if not access.may_subscribe(user, pattern, group):
                    self.routes.unsubscribe(rid, pattern, group)
                    self.stats["revoked"] += 1
                    where = f" in group {group!r}" if group else ""
                    log.warning("hub: %r may no longer subscribe to %r%s: cancelled", user,
                                pattern, where)
        self.stats["reloads"] += 1
        self._reloaded.set()

    def _drain(self, router: zmq.Socket[Any]) -> None:
        """Handle up to ``_DRAIN`` waiting messages (payloads as zero-copy ``zmq.Frame``)."""
        stats, recv = self.stats, router.recv
        for i in range(_DRAIN):
            # The poller has just seen input, so the first check is skipped; after that,
            # checking EVENTS (~1 us) is cheaper than the zmq.Again raised by an empty recv.
            if i and not _readable(router):
                return
            # Routing id and head frame as bytes; the rest (payloads) as zero-copy Frames.
            # Frame.more is read from the message itself: getsockopt(RCVMORE) costs ~0.5 us.
            try:
                frame = recv(_NB, copy=False)
            except zmq.Again:
                return
            parts: list[Any] = [frame.bytes]
            while frame.more:
                frame = recv(0, copy=False)
                parts.append(frame.bytes if len(parts) < 2 else frame)
            stats["received"] += 1
            if len(parts) == 3 and parts[1][:1] == proto.PUB:  # the hot path
                topic, meta = proto.split_pub_head(parts[1])
                access = self._access
                if access is not None and not access.may_publish(_user(parts[2]), topic):
                    self._send(router, parts[0], self._refusals.denied(
                        _user(parts[2]), f"publish to {topic!r}", proto.meta_mid(meta)))
                    continue
                if len(parts[2]) > self.config.max_payload:
                    self._send(router, parts[0], self._refusals.too_large(
                        parts[0], topic, len(parts[2]), proto.meta_mid(meta)))
                    continue
                try:
                    self._publish(router, parts[0], topic, meta, parts[2])
                except (ValueError, UnicodeDecodeError) as exc:
                    self._malformed(parts[0], exc)
                    if mid := proto.meta_mid(meta):  # a QoS 1 publisher learns at once
                        self._send(router, parts[0], proto.nack(mid, str(exc)))
            else:
                self._handle(router, parts)

    def _handle(self, router: zmq.Socket[Any], parts: list[Any]) -> None:
        rid = parts[0]
        verb = parts[1] if len(parts) > 1 else b""
        n = len(parts)
        try:
            if verb == proto.SUB and n in (4, 5):
                peer = self.routes.seen(rid, time.monotonic_ns())
                pattern, group, mid = proto.decode_sub(parts[1:])  # mid: asks for ACK or NACK
                user = _user(parts[2])
                peer.user = user  # whom a later reload checks its subscriptions against
                problem = topic_filter_problem(pattern) or group_problem(group)
                if problem is not None:
                    self._malformed(rid, f"subscribe to {pattern!r}: it {problem}")
                    self._send(router, rid, proto.nack(mid, f"invalid topic filter {pattern!r}: "
                                                       f"it {problem}"))
                    return
                if self._access is not None and not self._access.may_subscribe(user, pattern,
                                                                               group):
                    where = f" in group {group!r}" if group else ""
                    self._send(router, rid, self._refusals.denied(
                        user, f"subscribe to {pattern!r}{where}", mid))
                    return
                if mid:  # before the retained messages, as MQTT's SUBACK
                    self._send(router, rid, proto.ack(mid))
                for topic, payload in self.routes.subscribe(rid, pattern, group):
                    self._send(router, rid, proto.msg(topic.encode(), payload))
            elif verb == proto.UNSUB and n == 4:
                self.routes.unsubscribe(rid, *proto.decode_unsub(parts[1:]))
            elif verb == proto.HELLO and n == 7:
                self._hello(router, rid, parts)
            elif verb == proto.PING and n == 2:  # a forgotten peer is told to say HELLO again
                if not self.routes.ping(rid, time.monotonic_ns()):
                    self._send(router, rid, proto.nack(b"", f"{proto.FORGOTTEN}: say HELLO"))
            elif verb == proto.BYE and n == 2:
                self.routes.forget(rid)
            else:
                self._malformed(rid, f"unknown verb {verb!r} with {n} frames")
        except (ValueError, UnicodeDecodeError) as exc:
            self._malformed(rid, exc)

    def _malformed(self, rid: bytes, why: object) -> None:
        self.stats["malformed"] += 1
        log.warning("hub: malformed message from %r: %r", rid, why)

    def _hello(self, router: zmq.Socket[Any], rid: bytes, parts: list[Any]) -> None:
        hello = proto.decode_hello(parts[1:])
        peer = self.routes.seen(rid, time.monotonic_ns())
        old = self.routes.take_over(hello.client_id, rid)  # forgotten with no will, as MQTT
        if old is not None:
            self._send(router, old, self._refusals.taken_over(hello.client_id, old, rid))
        peer.client_id = hello.client_id
        peer.heartbeat_ns = hello.heartbeat_ms * 1_000_000
        will_topic = hello.will_topic
        peer.will = (will_topic, hello.will_payload, hello.will_retain) if will_topic else None
        if peer.will is not None and len(hello.will_payload) > self.config.max_payload:
            peer.will = None
            self._send(router, rid, self._refusals.too_large(rid, will_topic,
                                                             len(hello.will_payload), b""))
        user = _user(parts[4])
        if (peer.will is not None and self._access is not None
                and not self._access.may_publish(user, will_topic)):
            peer.will = None  # the hub publishes a will on the client's behalf: same rules
            self._send(router, rid, self._refusals.denied(
                user, f"leave a will on {will_topic!r}", b""))
        peer.fd = parts[4].get(zmq.SRCFD)  # matched against the monitor's DISCONNECTED fd
        self._send(router, rid, proto.welcome())

    def _publish(self, router: zmq.Socket[Any], rid: bytes, topic: bytes, meta_raw: bytes,
                 payload: zmq.Frame | bytes) -> None:
        if not topic or b"+" in topic or b"#" in topic:  # NUL cannot be in it: it ends the topic
            raise ValueError(f"invalid topic name {topic[:64]!r}")
        if meta_raw:
            meta = proto.decode_meta(meta_raw)
            if meta.expires_ns and meta.expires_ns < time.time_ns():
                self.stats["expired"] += 1
            else:
                if meta.retain:
                    data = payload.bytes if isinstance(payload, zmq.Frame) else payload
                    self.routes.retain(topic.decode(), data)
                self._fan_out(router, topic, payload)
            if meta.mid:
                self._send(router, rid, proto.ack(meta.mid))
        else:
            self._fan_out(router, topic, payload)

    def _fan_out(self, router: zmq.Socket[Any], topic: bytes, payload: zmq.Frame | bytes) -> None:
        targets = self.routes.recipients(topic)
        if targets:
            head = proto.msg_head(topic)
            for target in targets:
                if self._send(router, target, [head, payload]):
                    self.stats["delivered"] += 1

    def _send(self, router: zmq.Socket[Any], rid: bytes, frames: list[Any]) -> bool:
        """Send to one client, never blocking the hub. Frame by frame with plain-int flags
        (``send_multipart`` costs ~2 us more); a multipart message is atomic."""
        try:
            router.send(rid, _MORE_NB)
        except zmq.Again:
            self.stats["dropped_hwm"] += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # The peer is gone (its disconnect may not have been seen yet).
            self.stats["dropped_unroutable"] += 1
            return False
        last = len(frames) - 1
        for i, part in enumerate(frames):
            router.send(part, _NB if i == last else _MORE_NB, copy=len(part) < _ZERO_COPY)
        return True

    def _on_monitor(self, router: zmq.Socket[Any], monitor: zmq.Socket[Any]) -> None:
        while cast(int, monitor.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            event = recv_monitor_message(monitor)
            if event["event"] != zmq.EVENT_DISCONNECTED:
                continue
            self.stats["disconnects"] += 1
            fd = event["value"]
            for rid, peer in list(self.routes.peers.items()):
                if peer.fd == fd:
                    self._gone(router, rid)

    def _gone(self, router: zmq.Socket[Any], rid: bytes) -> None:
        """A client vanished without BYE: forget it and publish its will."""
        peer = self.routes.forget(rid)
        if peer is None or peer.will is None:
            return
        topic, payload, retain = peer.will
        self.stats["wills"] += 1
        log.info("hub: client %r gone, publishing its will on %r", peer.client_id, topic)
        self._publish(router, rid, topic, proto.encode_meta(retain=retain, expires_ns=0, mid=b""),
                      payload)


def start_hub(bind: str = "tcp://127.0.0.1:0", **options: Any) -> Hub:
    """Start a hub in a background thread; ``.url`` is its ``zmq://HOST:PORT``."""
    return Hub(HubConfig(bind=bind, **options)).start()


def _readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits; also re-arms the edge-triggered FD."""
    return bool(cast(int, sock.getsockopt(_EVENTS)) & _POLLIN)
