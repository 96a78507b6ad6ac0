"""Session integrity against signed mode over one Mosquitto, in one run (``--only session``).

For the observation of ``bench.roundtrip`` (two 224×224×3 cameras, a 14-float state, a task)
and a 50×14 chunk back, three paths through the same broker, interleaved in blocks:

* ``mqtt_bare``: bare paho-mqtt (MQTT 5, TCP_NODELAY) carrying the same bytes up and an
  Action's worth of bytes down, no codec: the floor.
* ``mqtt_wire_signed``: the vlabus wire alone in today's default mode: the robot encodes and
  Ed25519-signs a fresh frame; a blocking paho server verifies, replay-checks and decodes it and
  answers with a signed Action, which the robot verifies and decodes.
* ``mqtt_wire_session``: the same with session integrity (envelope version 2): after one signed
  X25519 offer, each message carries a keyed BLAKE3 MAC; the robot's checkpoint chain runs
  (one signed checkpoint per second is not published here: its cost is one Ed25519 signature a
  second).

Both wire paths use the same server process, which answers in the mode it was asked in. Each
round trip is split into robot encode, worker decode, worker encode (the server's previous
reply, reported in the next), robot decode, and the rest (transport, paho threads, wake-ups).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ratio, stats_us
from schemas.arrays import pack_array
from schemas.errors import WireError
from schemas.images import Image
from schemas.messages import Action, Frame, SessionOffer
from security.keys import (
    Keyring,
    Signer,
    add_pool_key,
    load_pool_key,
    load_pool_secret,
    load_signer,
)
from security.replay import ReplayGuard
from security.session import Rotation, SessionSender, SessionTable, accept_offer, offer_session
from vlabus.envelope import Received
from vlabus.session_wire import SessionEncoder, SessionVerifier
from vlabus.wire import Decoder, Encoder

SIGNED, SESSION, BARE = "mqtt_wire_signed", "mqtt_wire_session", "mqtt_bare"
STAGES = ("robot_encode", "worker_decode", "worker_encode", "robot_decode", "transport_rest")


def _paho(port: int, username: str, password: str, client_id: str, topic: str,
          on_message: Callable[[Any, bytes], None]) -> Any:
    import socket

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    def nodelay(_c: Any, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = nodelay
    subscribed = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=0)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.on_message = lambda c, u, msg: on_message(c, bytes(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError(f"{client_id} did not subscribe")
    return client


def wire_server(keys: str, port: int, username: str, password: str) -> None:
    """Verify and decode each frame (signed or session), answer in the same mode."""
    root = Path(keys)
    signer = load_signer(root, "worker", "wire-worker")
    secret = load_pool_secret(root, "gpu")
    table = SessionTable(Rotation())
    decoder = Decoder(Keyring.load(root), ReplayGuard(), sessions=SessionVerifier(table, "up"))
    signed = Encoder(signer)
    session = SessionEncoder(signer, lambda m: table.for_robot(m.robot_id), "down")  # type: ignore[union-attr]
    chunk = pack_array(np.zeros((50, 14), np.float32))
    last_encode = [0]

    def answer(client: Any, payload: bytes) -> None:
        start = time.perf_counter_ns()
        try:
            got = decoder.decode(payload)
        except WireError:  # refused (counted by the robot's time-out): paho must not die
            return
        decoded = time.perf_counter_ns() - start
        if got.header.kind == "session_offer":
            table.add(accept_offer(got.message, got.header.key, secret, Rotation()))  # type: ignore[arg-type]
            return
        request = got.message
        assert isinstance(request, Frame)
        reply = Action(robot_id=request.robot_id, step=request.step, actions=chunk,
                       model="bench", model_version=0, worker_id="wire-worker",
                       decode_ns=decoded, encode_ns=last_encode[0])
        start = time.perf_counter_ns()
        wire = (session if payload[2] == 2 else signed).encode(reply, corr=got.header.corr)
        last_encode[0] = time.perf_counter_ns() - start
        client.publish("rt/wire/rep", wire, qos=0)

    _paho(port, username, password, "rt-wire-server", "rt/wire/req", answer)
    threading.Event().wait()


class WireRobot:
    """The robot's end: one signed and one session encoder, one decoder for both replies."""

    def __init__(self, stack: ExitStack, keys: Path, port: int, username: str,
                 password: str) -> None:
        self.inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self.timeout = 0.5  # while the server comes up; 5 s once it answers
        self.client = _paho(port, username, password, "rt-wire-robot", "rt/wire/rep",
                            lambda _c, payload: self.inbox.put(payload))
        stack.callback(self.client.loop_stop)
        stack.callback(self.client.disconnect)
        signer = load_signer(keys, "robot", "robot-1")
        self.sender = SessionSender(Rotation())
        self.table = SessionTable(Rotation())
        self.signed = Encoder(signer)
        self.session = SessionEncoder(signer, lambda _m: self.sender.current(), "up")
        self.decoder = Decoder(Keyring.load(keys), ReplayGuard(),
                               sessions=SessionVerifier(self.table, "down"))
        self._pool = load_pool_key(keys, "gpu")
        self._key_id = signer.key_id
        self.resend_offer()

    def resend_offer(self) -> None:
        """A fresh session offer (the server may have missed the last one)."""
        offer, fresh = offer_session("robot-1", self._key_id, self._pool, Rotation())
        self.sender.session = fresh
        self.table.add(fresh)
        self.client.publish("rt/wire/req", self.signed.encode(offer), qos=1)

    def bind(self, encoder: Encoder, cams: dict[str, Image], state: Any,
             parts: dict[str, list[int]]) -> Callable[[bytes], None]:
        step = [0]

        def round_trip(_payload: bytes) -> None:
            step[0] += 1
            t0 = time.perf_counter_ns()
            wire = encoder.encode(Frame(robot_id="robot-1", step=step[0], cameras=cams,
                                        command="pick up the red cube", state=pack_array(state),
                                        capture_ns=time.time_ns()), corr=f"r/{step[0]}")
            t1 = time.perf_counter_ns()
            self.client.publish("rt/wire/req", wire, qos=0)
            reply = self.inbox.get(timeout=self.timeout)
            t2 = time.perf_counter_ns()
            action = self.decoder.decode(reply).message
            t3 = time.perf_counter_ns()
            assert isinstance(action, Action)
            parts["robot_encode"].append(t1 - t0)
            parts["robot_decode"].append(t3 - t2)
            parts["worker_decode"].append(action.decode_ns)
            parts["worker_encode"].append(action.encode_ns)
            parts["transport_rest"].append(
                (t2 - t1) - action.decode_ns - action.encode_ns)
        return round_trip


def run_session(stack: ExitStack, spawn: Callable[..., None], cams: dict[str, Image],
                bare: Callable[[bytes], None], request: bytes, rounds: int, block: int,
                keys: Path, port: int, username: str, password: str) -> dict[str, Any]:
    """Measure the three paths interleaved; ``bare`` is ``bench.roundtrip``'s paho floor."""
    pool_key(keys)
    spawn(stack, wire_server, str(keys), port, username, password)
    robot = WireRobot(stack, keys, port, username, password)
    state = np.linspace(0, 1, 14, dtype=np.float32)
    parts: dict[str, dict[str, list[int]]] = {
        mode: {stage: [] for stage in STAGES} for mode in (SIGNED, SESSION)}
    calls = {BARE: bare,
             SIGNED: robot.bind(robot.signed, cams, state, parts[SIGNED]),
             SESSION: robot.bind(robot.session, cams, state, parts[SESSION])}
    for _ in range(40):  # the server subscribes asynchronously, then takes the offer
        try:
            calls[SESSION](b"")
            break
        except queue.Empty:
            robot.resend_offer()
    robot.timeout = 5.0
    for call in calls.values():
        for _ in range(20):
            call(request)
    for stages in parts.values():
        for values in stages.values():
            values.clear()
    samples: dict[str, list[int]] = {name: [] for name in calls}
    done = 0
    while done < rounds:
        n = min(block, rounds - done)
        for name, call in calls.items():
            for _ in range(n):
                start = time.perf_counter_ns()
                call(request)
                samples[name].append(time.perf_counter_ns() - start)
        done += n
    out: dict[str, Any] = {name: stats_us(values) for name, values in samples.items()}
    for mode in (SIGNED, SESSION):
        out[f"{mode}_breakdown_p50_us"] = {
            stage: round(float(np.median(values)) / 1e3, 1)
            for stage, values in parts[mode].items()}
        out[f"ratio_p50_{mode}_vs_{BARE}"] = ratio(out[mode]["p50_us"], out[BARE]["p50_us"])
    out[f"ratio_p50_{SESSION}_vs_{SIGNED}"] = ratio(out[SESSION]["p50_us"],
                                                   out[SIGNED]["p50_us"])
    out["session_faster_by_pct"] = round(
        100 * (1 - out[SESSION]["p50_us"] / out[SIGNED]["p50_us"]), 1)
    out["sent"] = {"session_messages": robot.session.sent["session"],
                   "session_encoder_fell_back_to_signed": robot.session.sent["signed"]}
    return out


def session_codec(keys: Path, signer: Signer) -> tuple[Encoder, Decoder,
                                                      Callable[[Received], bool]]:
    """A worker's session codec for pool ``gpu`` and ``take_offer(received) -> bool`` (True
    when it was an offer, now held)."""
    table = SessionTable(Rotation())
    decoder = Decoder(Keyring.load(keys), ReplayGuard(), sessions=SessionVerifier(table, "up"))
    secret = load_pool_secret(keys, "gpu")
    encoder = SessionEncoder(signer, lambda m: table.for_robot(getattr(m, "robot_id", "")),
                             "down")

    def take_offer(got: Received) -> bool:
        if not isinstance(got.message, SessionOffer):
            return False
        table.add(accept_offer(got.message, got.header.key, secret, Rotation()))
        return True
    return encoder, decoder, take_offer


def robot_session(keys: Path, signer: Signer) -> tuple[Encoder, Decoder, bytes]:
    """A robot's session codec with pool ``gpu`` and the signed offer to send first."""
    sender = SessionSender(Rotation())
    table = SessionTable(Rotation())
    offer, fresh = offer_session(signer.identity, signer.key_id, load_pool_key(keys, "gpu"),
                                 Rotation())
    sender.session = fresh
    table.add(fresh)
    encoder = SessionEncoder(signer, lambda _m: sender.current(), "up")
    decoder = Decoder(Keyring.load(keys), ReplayGuard(), sessions=SessionVerifier(table, "down"))
    return encoder, decoder, Encoder(signer).encode(offer)


def pool_key(keys: Path) -> None:
    """Write the pool ``gpu`` sealing key the session exchange uses (once)."""
    if not (keys / "pool" / "gpu.key.pem").exists():
        add_pool_key(keys, "gpu")
