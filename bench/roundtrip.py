"""The whole secure loop against the bare libraries, in one run.

    python -m bench.roundtrip --json [--quick] [--only zmq|mqtt|session]

For an observation of two 224×224×3 cameras + a 14-float state + a task string (and one
480×640×3 camera, and JPEG cameras), one round trip is: the robot encodes and signs the frame,
the bus carries it, a real ``vlabus worker`` process verifies, replay-checks, decodes, queues and
runs a no-op policy that returns a 50×14 float32 chunk, signs the Action, the bus carries it
back, and the robot verifies and decodes it. Camera images are packed once (JPEG encode time is
reported separately): the loop measures the bus, not the image codec.

Floors, measured in the same run with the same bytes up (the signed frame) and the same number
of bytes down (an Action envelope's size):

* ``tcp_bare_direct``: a blocking TCP socket to a blocking server (a 4-byte length, then the
  bytes; TCP_NODELAY), no library at all: the floor of any transport, which the openpi-style
  peer's websocket rides on too. ``ratio_p50_zmq_bare_direct_vs_tcp_bare_direct`` is what
  ZeroMQ itself costs (its I/O threads: a message crosses two more threads each way), and
  ``ratio_p50_ws_msgpack_peer_vs_tcp_bare_direct`` and
  ``ratio_p50_vlabus_direct_session_vs_tcp_bare_direct`` what each loop adds to bare TCP.
* ``zmq_bare_direct``: bare pyzmq DEALER → ROUTER server, no hub.
* ``zmq_bare_hop``: bare pyzmq through a bare ROUTER forwarder process — the hub's topology.
* ``zmq_bare_via_hub``: bare pyzmq clients speaking the hub's protocol by hand, through the
  same ``vlabus hub`` process as vlabus: the hub's routing against the bare forwarder
  (``ratio_p50_zmq_bare_via_hub_vs_zmq_bare_hop``).
* ``mqtt_bare``: bare paho-mqtt (MQTT 5, TCP_NODELAY both ends) through the same Mosquitto.

References that are not floors of the bus but of its wire format, and a peer:

* ``zmq_wire_hop`` and ``zmq_wire_direct``: the vlabus wire alone, through the bare hop and
  straight to the server. Each round trip encodes and signs a fresh frame; a blocking server
  verifies, replay-checks and decodes it and answers with a signed Action, which the client
  verifies and decodes. The same crypto and codec as vlabus, with no hub, event loop, queue or
  policy runner: ``ratio_p50_zmq_wire_hop_vs_zmq_bare_hop`` is the lowest ratio any bus using
  this wire could reach through a hop on the machine, and ``ratio_p50_vs_zmq_wire_hop`` what
  vlabus's own machinery adds on top of it.
* ``ws_msgpack_peer`` (when ``websockets`` is installed; raw cases only): openpi's published
  remote-inference path rebuilt with the same libraries (:mod:`bench.websocket_peer`): a
  ``websockets`` server, MessagePack with NumPy arrays, no signature, direct, carrying the same
  observation and a 50×14 chunk. ``ratio_p50_vs_ws_msgpack_peer`` below 1 means vlabus is
  faster than that unsigned path; ``ratio_p50_zmq_wire_direct_vs_ws_msgpack_peer`` says whether
  the signed wire could be, without a hop.
* ``zmq_wire_direct_session``: ``zmq_wire_direct`` in session integrity (one signed offer, then a
  keyed MAC per message): ``ratio_p50_zmq_wire_direct_session_vs_ws_msgpack_peer`` is what a
  direct data plane with session integrity could reach on this wire (there is no direct data
  plane in this reference: its server is the wire alone, not a worker).

``session`` (:mod:`bench.roundtrip_session`): the wire alone over one Mosquitto in today's signed
mode and in session integrity (a keyed MAC after one signed key exchange), against the bare paho
floor, interleaved, with the breakdown per stage; ``session_faster_by_pct`` compares the two.

``vlabus_session``: the same vlabus loop as ``vlabus`` through the same worker (started with
``--session-pool gpu``), from a second robot in session integrity (``vlabus.session_link``):
``ratio_p50_vlabus_session_vs_vlabus`` below 1 is what session integrity saves, with its own
breakdown per stage.

``vlabus_direct_session``: the same loop on the direct data plane (``vlabus.direct``): a third
robot in session integrity learns the worker's direct socket from its status and sends each
frame straight to it (``vlabus worker --direct``); the Action returns on the same connection.
Its ratios to ``ws_msgpack_peer`` and ``zmq_bare_direct`` say how close the whole secure loop
comes to the unsigned peer and to bare pyzmq; ``vlabus_direct_session_breakdown_p50_us`` splits
it per stage. ``vlabus_direct_session_curve`` (not with ``--quick``): the same with CurveZMQ on
the direct socket (a second worker, ``--direct-curve``), and
``ratio_p50_vlabus_direct_session_curve_vs_vlabus_direct_session`` what the encryption costs.

Rounds of each path are interleaved in blocks, so background load hits all alike. Every vlabus
Action carries the worker's own durations, so each round trip is split into robot encode,
transport (both ways), worker decode, queue wait, inference, worker encode and robot decode
without comparing clocks across processes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, environment, parser, ratio, single_thread_probe, stats_us
from bench.roundtrip_session import pool_key
from edge_agent.scene import TabletopScene
from schemas import topics
from schemas.arrays import pack_array
from schemas.images import Image, decode_image, encode_image
from schemas.messages import Action, Frame
from security.keys import Keyring, add_key, load_signer
from security.replay import ReplayGuard
from vlabus.broker.render import client_options
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.cli.procs import free_port
from vlabus.hub import protocol as hub_protocol
from vlabus.policy.reference import NoopPolicy
from vlabus.wire import Decoder, Encoder

HORIZON, ACTION_DIM = 50, 14
WIRE = "zmq_wire_hop"
WIRE_DIRECT = "zmq_wire_direct"
WIRE_DIRECT_SESSION = "zmq_wire_direct_session"
PEER = "ws_msgpack_peer"
TCP = "tcp_bare_direct"
DIRECT, DIRECT_CURVE = "vlabus_direct_session", "vlabus_direct_session_curve"
BLOCK = 25
CTX = multiprocessing.get_context("spawn")


def chunk_policy(device: str = "auto") -> NoopPolicy:
    """``--policy bench.roundtrip:chunk_policy``: zeros of shape 50×14, the peers' chunk."""
    return NoopPolicy(horizon=HORIZON, action_dim=ACTION_DIM, name="bench")


# -- the observation -------------------------------------------------------------------------


def cameras(case: str) -> tuple[dict[str, Image], float]:
    """The case's packed cameras and the JPEG encode time per frame (µs, 0 for raw)."""
    if case.startswith("2x224"):
        scenes = {"top": TabletopScene(224, 224, seed=1), "wrist": TabletopScene(224, 224, seed=2)}
    else:
        scenes = {"top": TabletopScene(480, 640, seed=1)}
    pixels = {name: scene.render(0) for name, scene in scenes.items()}
    codec = "jpeg" if case.endswith("jpeg") else "raw"
    start = time.perf_counter_ns()
    packed = {name: encode_image(img, codec) for name, img in pixels.items()}  # type: ignore[arg-type]
    return packed, (time.perf_counter_ns() - start) / 1e3 if codec == "jpeg" else 0.0


def frame(robot: str, step: int, cams: dict[str, Image], state: np.ndarray) -> Frame:  # type: ignore[type-arg,unused-ignore]
    return Frame(robot_id=robot, step=step, cameras=cams, command="pick up the red cube",
                 state=pack_array(state), capture_ns=time.time_ns())


# -- bare peers (each in its own process) ----------------------------------------------------


def bare_zmq_server(ready: Any, reply_size: int) -> None:
    import zmq

    reply = b"\0" * reply_size
    router: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
    ready.put(router.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        ident, _payload = router.recv_multipart(copy=False)
        router.send_multipart([ident, reply], copy=False)


def bare_tcp_server(ready: Any, reply_size: int) -> None:
    """A blocking TCP server: a 4-byte length and the message, answered the same way with
    ``reply_size`` bytes. No library between the bytes and the socket: the transport floor."""
    reply = reply_size.to_bytes(4, "big") + bytes(reply_size)
    listener = socket.create_server(("127.0.0.1", 0))
    ready.put(listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    view = memoryview(bytearray(16 << 20))  # the largest case's frame fits many times
    while True:
        if not _read_into(conn, view[:4]):
            return
        size = int.from_bytes(view[:4], "big")
        if not _read_into(conn, view[:size]):
            return
        conn.sendall(reply)


def _read_into(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def tcp_client(stack: ExitStack, port: int) -> Callable[[bytes], None]:
    """The client of :func:`bare_tcp_server`: each call sends ``payload`` and reads the
    answer."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stack.callback(conn.close)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)

    def round_trip(payload: bytes) -> None:
        conn.sendmsg([len(payload).to_bytes(4, "big"), payload])
        _read_into(conn, view[:4])
        _read_into(conn, view[:int.from_bytes(view[:4], "big")])

    return round_trip


def bare_zmq_forwarder(ready: Any) -> None:
    """One ROUTER hop like the hub's: [dest, payload] from src leaves as [src, payload]."""
    import zmq

    router: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    ready.put(router.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        src, dest, payload = router.recv_multipart(copy=False)
        router.send_multipart([dest, src, payload], copy=False)


def bare_zmq_hop_server(port: int, reply_size: int) -> None:
    import zmq

    reply = b"\0" * reply_size
    dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, b"server")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    while True:
        src, _payload = dealer.recv_multipart(copy=False)
        dealer.send_multipart([src.bytes, reply], copy=False)


def hub_protocol_server(port: int, reply_size: int) -> None:
    """A bare pyzmq client of ``vlabus hub`` speaking its protocol by hand: it answers every
    publish on ``rt/bare/req`` with ``reply_size`` bytes on ``rt/bare/rep``."""

    reply = b"\0" * reply_size
    dealer = hub_protocol_client(port, b"rt-bare-server")
    dealer.send_multipart(hub_protocol.sub("rt/bare/req"))
    answer = hub_protocol.pub_head(b"rt/bare/rep")
    while True:
        parts = dealer.recv_multipart(copy=False)
        if parts[0].bytes[:1] == hub_protocol.MSG:
            dealer.send_multipart([answer, reply], copy=False)


def hub_protocol_client(port: int, name: bytes) -> Any:
    """A DEALER that has said HELLO to the hub (no will, a heartbeat slower than any run)."""
    import zmq

    dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart(hub_protocol.hello(name.decode(), 600_000))
    if dealer.recv_multipart() != hub_protocol.welcome():
        raise RuntimeError("the hub did not welcome a bare client")
    return dealer


def wire_server(keys: str, hop: int | None, ready: Any, session: bool = False) -> None:
    """The vlabus wire alone at the worker's end: verify, replay-check and decode each frame,
    answer with a signed Action of zeros. On a blocking DEALER behind the bare forwarder at
    port ``hop``, or (``hop`` None) on a ROUTER of its own whose port goes on ``ready``.
    ``session``: take the client's session offer, answer under its session (MACs)."""
    import zmq

    signer = load_signer(Path(keys), "worker", "wire-worker")
    encoder = Encoder(signer)
    decoder = Decoder(Keyring.load(Path(keys)), ReplayGuard())
    if session:
        from bench.roundtrip_session import session_codec

        encoder, decoder, take_offer = session_codec(Path(keys), signer)
    chunk = pack_array(np.zeros((HORIZON, ACTION_DIM), np.float32))
    if hop is None:
        dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.ROUTER)
        ready.put(dealer.bind_to_random_port("tcp://127.0.0.1"))
    else:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"wire")
        dealer.connect(f"tcp://127.0.0.1:{hop}")
    while True:
        src, payload = dealer.recv_multipart(copy=False)
        got = decoder.decode(payload.buffer)
        if session and take_offer(got):
            continue
        request = got.message
        assert isinstance(request, Frame)
        reply = Action(robot_id=request.robot_id, step=request.step, actions=chunk,
                       model="bench", model_version=0, worker_id="wire-worker")
        dealer.send_multipart([src.bytes, encoder.encode(reply, corr=got.header.corr,
                                                         deadline_ns=got.header.deadline_ns)],
                              copy=False)


def bare_paho_server(port: int, username: str, password: str, reply_size: int) -> None:
    import paho.mqtt.client as mqtt

    reply = b"\0" * reply_size
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rt-bare-server",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_socket_open = _nodelay
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("rt/bare/req", qos=0)

    def answer(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        c.publish("rt/bare/rep", reply, qos=0)

    client.on_message = answer
    client.connect("127.0.0.1", port)
    client.loop_forever()


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def spawn(stack: ExitStack, target: Callable[..., None], *args: Any) -> None:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    stack.callback(proc.join, 5)
    stack.callback(proc.terminate)


# -- bare clients ----------------------------------------------------------------------------


def zmq_client(port: int, route: bytes | None) -> Callable[[bytes], None]:
    import zmq

    dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")

    def round_trip(payload: bytes) -> None:
        if route is None:
            dealer.send(payload, copy=False)
            dealer.recv(copy=False)
        else:
            dealer.send_multipart([route, payload], copy=False)
            dealer.recv_multipart(copy=False)

    return round_trip


class WireClient:
    """The vlabus wire alone at the robot's end, on a blocking DEALER, through the bare hop
    (``route``: the server's identity there) or straight to the server (``route`` None): each
    round trip encodes and signs a fresh frame and verifies and decodes the Action."""

    def __init__(self, port: int, keys: Path, route: bytes | None, *,
                 session: bool = False) -> None:
        self.head = [route] if route is not None else []
        import zmq

        signer = load_signer(keys, "robot", "robot-1")
        self.encoder = Encoder(signer)
        self.decoder = Decoder(Keyring.load(keys), ReplayGuard())
        self.state = np.linspace(-1, 1, 14, dtype=np.float32)
        self.dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        self.dealer.connect(f"tcp://127.0.0.1:{port}")
        self.step = 0
        if session:  # one signed offer first, on the same connection: it arrives first
            from bench.roundtrip_session import robot_session

            self.encoder, self.decoder, offer = robot_session(keys, signer)
            self.dealer.send_multipart([*self.head, offer])

    def bind(self, cams: dict[str, Image]) -> Callable[[bytes], None]:
        def round_trip(_payload: bytes) -> None:
            self.step += 1
            wire = self.encoder.encode_view(frame("robot-1", self.step, cams, self.state),
                                            deadline_ns=time.time_ns() + 1_000_000_000,
                                            corr=f"robot-1/{self.step}")
            self.dealer.send_multipart([*self.head, wire], copy=False)
            reply = self.dealer.recv_multipart(copy=False)[-1]
            action = self.decoder.decode(reply.buffer).message
            assert isinstance(action, Action)
            assert action.step == self.step

        return round_trip


def via_hub_client(port: int) -> Callable[[bytes], None]:
    dealer = hub_protocol_client(port, b"rt-bare-client")
    dealer.send_multipart(hub_protocol.sub("rt/bare/rep"))
    request = hub_protocol.pub_head(b"rt/bare/req")

    def round_trip(payload: bytes) -> None:
        dealer.send_multipart([request, payload], copy=False)
        head = dealer.recv_multipart(copy=False)[0].bytes
        if head[:1] != hub_protocol.MSG:  # QoS 0, no will: the hub has nothing else to send
            raise RuntimeError(f"unexpected {head[:16]!r} from the hub on a bare round trip")

    for _ in range(200):  # the subscriptions reach the hub asynchronously: wait for an answer
        dealer.send_multipart([request, b"warm"])
        if dealer.poll(50):
            dealer.recv_multipart()
            break
    while dealer.poll(50):
        dealer.recv_multipart()
    return round_trip


def paho_client(stack: ExitStack, port: int, username: str,
                password: str) -> Callable[[bytes], None]:
    import paho.mqtt.client as mqtt

    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    subscribed = threading.Event()
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rt-bare-client",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_socket_open = _nodelay
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("rt/bare/rep", qos=0)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.on_message = lambda c, u, msg: inbox.put(bytes(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    stack.callback(client.loop_stop)
    stack.callback(client.disconnect)
    if not subscribed.wait(10):
        raise RuntimeError("bare paho client did not subscribe")

    def round_trip(payload: bytes) -> None:
        client.publish("rt/bare/req", payload, qos=0)
        inbox.get(timeout=5)

    for _ in range(200):  # the server subscribes asynchronously: wait until it answers
        client.publish("rt/bare/req", b"warm", qos=0)
        try:
            inbox.get(timeout=0.05)
            break
        except queue.Empty:
            continue
    while not inbox.empty():
        inbox.get()
    return round_trip


# -- the vlabus robot side -------------------------------------------------------------------


class Robot:
    """One robot's side of the loop: encode+sign, publish, await the verified Action."""

    def __init__(self, url: str, options: TransportOptions, keys: Path, robot: str, *,
                 session: bool = False, direct: str | None = None) -> None:
        self.url, self.options, self.robot, self.keys = url, options, robot, keys
        self.direct = direct  # the worker to send frames to on its direct socket
        self.encoder: Encoder = Encoder(load_signer(keys, "robot", robot))
        self.decoder = Decoder(Keyring.load(keys), ReplayGuard())
        self.state = np.linspace(-1, 1, 14, dtype=np.float32)
        self.step = 0
        self.session = session
        self.link: Any = None

    async def open(self) -> None:
        self.bus = await open_transport(self.url, self.options)
        if self.direct is not None:  # frames straight to the worker's ROUTER (--direct)
            from vlabus.direct.robot import DirectTransport

            direct = DirectTransport(self.bus, self.robot, Keyring.load(self.keys),
                                     workers={self.direct})
            await direct.start()
            self.bus = direct
            async with asyncio.timeout(30):
                while not direct.directory.usable():
                    await asyncio.sleep(0.01)  # until the worker's status names its socket
        await self.bus.subscribe(topics.action_topic(self.robot), qos=1)
        if self.session:  # session integrity with the worker's pool (--session-pool gpu)
            from security.keys import load_pool_key
            from vlabus.session_link import RobotLink

            self.link = RobotLink(self.bus, load_signer(self.keys, "robot", self.robot),
                                  load_pool_key(self.keys, "gpu"), Keyring.load(self.keys))
            self.encoder, self.decoder = self.link.encoder, self.link.decoder

    async def round_trips(self, cams: dict[str, Image], count: int) -> list[dict[str, int]]:
        """``count`` round trips back to back, as a robot's control loop runs them: inside one
        running event loop (starting the loop for each would add its own cost to every one)."""
        return [await self.round_trip(cams) for _ in range(count)]

    async def round_trip(self, cams: dict[str, Image]) -> dict[str, int]:
        self.step += 1
        corr = f"{self.robot}/{self.step}"
        if self.link is not None:
            await self.link.ensure()  # a handshake when none is live (first, or refused)
        t0 = time.perf_counter_ns()
        wire = self.encoder.encode_view(frame(self.robot, self.step, cams, self.state),
                                        deadline_ns=time.time_ns() + 1_000_000_000, corr=corr)
        t1 = time.perf_counter_ns()
        await self.bus.publish(topics.frame_topic(self.robot), wire, qos=0, expiry_s=1.0)
        async with asyncio.timeout(5.0):  # unlike wait_for, no extra task per receive
            while True:
                message = await self.bus.receive()
                t2 = time.perf_counter_ns()
                got = self.decoder.decode(message.payload)
                if got.header.corr == corr:
                    break
                if self.link is not None and got.header.kind == "session_refused":
                    self.link.accept(message)
                    raise TimeoutError(f"session refused: {got.message!r}")
        t3 = time.perf_counter_ns()
        if self.link is not None:
            await self.link.flush()  # a signed checkpoint once a second
        action = got.message
        assert isinstance(action, Action)
        worker = action.span_ns + action.encode_ns
        return {"rtt": t3 - t0, "robot_encode": t1 - t0, "robot_decode": t3 - t2,
                "transport": max(0, (t2 - t1) - worker), "worker_decode": action.decode_ns,
                "queue_wait": action.queue_wait_ns, "inference": action.inference_ns,
                "worker_encode": action.encode_ns,
                "worker_handoffs": max(0, action.span_ns - action.decode_ns
                                       - action.queue_wait_ns - action.inference_ns),
                "up_bytes": len(wire),
                "down_bytes": len(message.payload)}


def start_peer(stack: ExitStack, ready: Any) -> int | None:
    """The openpi-style websocket server, when ``websockets`` is installed (``.[dev]``)."""
    try:
        import websockets  # noqa: F401
    except ImportError:
        return None
    from bench import websocket_peer

    spawn(stack, websocket_peer.serve, ready)
    return int(ready.get(timeout=20))


def start_worker(stack: ExitStack, url: str, keys: Path, broker: Path | None,
                 worker: str = "worker-1", *extra: str) -> None:
    """A real ``vlabus worker`` (session pool ``gpu``, a direct socket on a free port)."""
    port = free_port()
    args = [sys.executable, "-m", "vlabus", "worker", "--bus", url, "--keys", str(keys),
            "--id", worker, "--group", "bench", "--policy", "bench.roundtrip:chunk_policy",
            "--max-delay-ms", "0", "--max-batch", "8", "--metrics-port", str(port),
            "--session-pool", "gpu", "--direct", "tcp://127.0.0.1:0", *extra]
    if broker is not None:
        args += ["--broker-config", str(broker)]
    log = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 - the stack closes it
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    stack.callback(proc.wait, 20)
    stack.callback(proc.terminate)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"worker exited: {log.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)  # polling the worker's readiness endpoint
    raise RuntimeError("worker not ready in 90 s")


def start_hub(stack: ExitStack) -> str:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vlabus", "hub", "--bind",
                             f"tcp://127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"zmq://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet
    raise RuntimeError("hub did not listen")


# -- measurement -----------------------------------------------------------------------------


def measure(stack: ExitStack, loop: asyncio.AbstractEventLoop, robot: Robot,
            floors: dict[str, Callable[[bytes], None]], case: str, rounds: int,
            wires: dict[str, WireClient], ws_port: int | None,
            extras: dict[str, Robot] | None = None) -> dict[str, Any]:
    """Every path interleaved in blocks; ``extras``: more vlabus robots by result key
    (``vlabus_session``, ``vlabus_direct_session``, ...), reported like ``vlabus``."""
    extras = extras or {}
    cams, jpeg_us = cameras(case)
    floors = dict(floors)
    for name, wire in wires.items():
        floors[name] = wire.bind(cams)
    if ws_port is not None and not case.endswith("jpeg"):  # the peer sends raw arrays only
        from bench import websocket_peer

        pixels = {name: decode_image(image) for name, image in cams.items()}
        floors[PEER] = websocket_peer.client(stack, ws_port, pixels, robot.state)
    for name in (*wires, PEER):
        for _ in range(20 if name in floors else 0):  # warm-up, as for vlabus
            floors[name](b"")
    loop.run_until_complete(robot.round_trips(cams, 20))  # warm-up: queues, caches, estimates
    for extra in extras.values():
        loop.run_until_complete(extra.round_trips(cams, 20))
    extra_parts: dict[str, dict[str, list[int]]] = {name: {} for name in extras}
    probe = loop.run_until_complete(robot.round_trip(cams))
    request = robot.encoder.encode(frame(robot.robot, 0, cams, robot.state))
    reply_size = probe["down_bytes"]
    del reply_size  # the bare servers were started with an Action's size (see main)
    parts: dict[str, list[int]] = {}
    samples: dict[str, list[int]] = {name: [] for name in floors}
    done = 0
    while done < rounds:
        block = min(BLOCK, rounds - done)
        for result in loop.run_until_complete(robot.round_trips(cams, block)):
            for key, value in result.items():
                parts.setdefault(key, []).append(value)
        for name, extra in extras.items():
            for result in loop.run_until_complete(extra.round_trips(cams, block)):
                for key, value in result.items():
                    extra_parts[name].setdefault(key, []).append(value)
        for name, call in floors.items():
            for _ in range(block):
                start = time.perf_counter_ns()
                call(request)
                samples[name].append(time.perf_counter_ns() - start)
        done += block
    vlabus = stats_us(parts["rtt"])
    out: dict[str, Any] = {
        "up_bytes": probe["up_bytes"], "down_bytes": probe["down_bytes"],
        "jpeg_encode_us_per_frame": round(jpeg_us, 1) if jpeg_us else None,
        "vlabus": vlabus,
        "breakdown_p50_us": {k: round(float(np.median(parts[k])) / 1e3, 1) for k in (
            "robot_encode", "transport", "worker_decode", "queue_wait", "inference",
            "worker_handoffs", "worker_encode", "robot_decode")},
    }
    for key, got in extra_parts.items():  # the same loop, another mode or path
        out[key] = stats_us(got["rtt"])
        out[f"{key}_breakdown_p50_us"] = {
            k: round(float(np.median(got[k])) / 1e3, 1) for k in out["breakdown_p50_us"]}
        out[f"ratio_p50_{key}_vs_vlabus"] = ratio(out[key]["p50_us"], vlabus["p50_us"])
    for name, values in samples.items():
        floor = stats_us(values)
        out[name] = floor
        out[f"ratio_p50_vs_{name}"] = ratio(vlabus["p50_us"], floor["p50_us"])
        for key in extra_parts:
            out[f"ratio_p50_{key}_vs_{name}"] = ratio(out[key]["p50_us"], floor["p50_us"])
    # the references against each other: what the hub's routing alone costs against the bare
    # forwarder; what the crypto and codec alone cost, through the hop and direct (the lowest
    # ratios any bus on this wire could reach here); and the direct wire against the peer
    for name, base in (("zmq_bare_via_hub", "zmq_bare_hop"), (WIRE, "zmq_bare_hop"),
                       (WIRE_DIRECT, "zmq_bare_direct"), (WIRE_DIRECT, PEER),
                       (WIRE_DIRECT_SESSION, "zmq_bare_direct"), (WIRE_DIRECT_SESSION, PEER),
                       (WIRE_DIRECT_SESSION, WIRE_DIRECT),
                       (DIRECT_CURVE, DIRECT), (DIRECT, "vlabus_session"),
                       ("zmq_bare_direct", TCP), (PEER, TCP), (DIRECT, TCP)):
        if name in out and base in out:
            out[f"ratio_p50_{name}_vs_{base}"] = ratio(out[name]["p50_us"], out[base]["p50_us"])
    return out


def run_bus(bus: str, cases: list[str], rounds: int, *, curve: bool = True) -> dict[str, Any]:
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        keys = root / "keys"
        add_key(keys, "robot", "robot-1")
        add_key(keys, "robot", "robot-2")  # the same loop in session integrity
        add_key(keys, "robot", "robot-3")  # ... on the direct data plane
        add_key(keys, "robot", "robot-4")  # ... with CurveZMQ on the direct socket
        add_key(keys, "worker", "worker-2")
        pool_key(keys)
        add_key(keys, "worker", "worker-1")
        add_key(keys, "robot", "bare")
        add_key(keys, "worker", "wire-worker")
        wires: dict[str, WireClient] = {}
        broker_dir = None
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        floors: dict[str, Callable[[bytes], None]] = {}
        reply_size = action_size(keys)
        ready: Any = CTX.Queue()
        ws_port = start_peer(stack, ready)
        if bus == "session":
            return run_session_bus(stack, root, keys, reply_size, rounds)
        if bus == "zmq":
            url = start_hub(stack)
            options = TransportOptions(client_id="robot-1")
            hub_port = int(url.rsplit(":", 1)[1])
            spawn(stack, hub_protocol_server, hub_port, reply_size)
            spawn(stack, bare_zmq_server, ready, reply_size)
            floors["zmq_bare_direct"] = zmq_client(ready.get(timeout=20), None)
            spawn(stack, bare_tcp_server, ready, reply_size)
            floors[TCP] = tcp_client(stack, ready.get(timeout=20))
            spawn(stack, bare_zmq_forwarder, ready)
            hop = ready.get(timeout=20)
            spawn(stack, bare_zmq_hop_server, hop, reply_size)
            spawn(stack, wire_server, str(keys), hop, None)
            time.sleep(0.3)  # the hop servers' DEALERs register their identities on connect
            floors["zmq_bare_hop"] = zmq_client(hop, b"server")
            floors["zmq_bare_via_hub"] = via_hub_client(hub_port)
            spawn(stack, wire_server, str(keys), None, ready)
            wires = {WIRE: WireClient(hop, keys, b"wire"),
                     WIRE_DIRECT: WireClient(ready.get(timeout=20), keys, None)}
            spawn(stack, wire_server, str(keys), None, ready, True)
            wires[WIRE_DIRECT_SESSION] = WireClient(ready.get(timeout=20), keys, None,
                                                    session=True)
        else:
            from vlabus.broker.local import LocalMosquitto
            from vlabus.broker.render import Limits, render

            broker_dir = root / "broker"
            render(keys, broker_dir, limits=Limits(persistence=False))
            mosquitto = stack.enter_context(LocalMosquitto(broker_dir))
            url = mosquitto.url
            options = client_options(broker_dir, "robot-1")
            bare = client_options(broker_dir, "bare")
            assert bare.username is not None
            assert bare.password is not None
            spawn(stack, bare_paho_server, mosquitto.port, bare.username, bare.password,
                  reply_size)
            floors["mqtt_bare"] = paho_client(stack, mosquitto.port, bare.username,
                                              bare.password)
        start_worker(stack, url, keys, broker_dir)
        extras = {"vlabus_session": ("robot-2", None), DIRECT: ("robot-3", "worker-1")}
        if curve:  # its worker takes no hub frames of the others (a group of its own)
            start_worker(stack, url, keys, broker_dir, "worker-2", "--direct-curve",
                         "--group", "bench-curve")
            extras[DIRECT_CURVE] = ("robot-4", "worker-2")
        robot = Robot(url, options, keys, "robot-1")
        loop.run_until_complete(robot.open())
        stack.callback(lambda: loop.run_until_complete(robot.bus.close()))
        robots: dict[str, Robot] = {}
        for name, (robot_id, direct) in extras.items():
            extra_options = (TransportOptions(client_id=robot_id) if broker_dir is None else
                             client_options(broker_dir, robot_id))
            robots[name] = Robot(url, extra_options, keys, robot_id, session=True,
                                 direct=direct)
            loop.run_until_complete(robots[name].open())
            stack.callback(loop.run_until_complete, robots[name].bus.close())
        return {case: measure(stack, loop, robot, floors, case, rounds, wires, ws_port, robots)
                for case in cases}


def run_session_bus(stack: ExitStack, root: Path, keys: Path, reply_size: int,
                    rounds: int) -> dict[str, Any]:
    """Signed against session mode over one Mosquitto, the 2x224 case only."""
    from bench.roundtrip_session import run_session
    from vlabus.broker.local import LocalMosquitto
    from vlabus.broker.render import Limits, client_options, render

    broker_dir = root / "broker"
    render(keys, broker_dir, limits=Limits(persistence=False))
    mosquitto = stack.enter_context(LocalMosquitto(broker_dir))
    bare = client_options(broker_dir, "bare")
    assert bare.username is not None
    assert bare.password is not None
    spawn(stack, bare_paho_server, mosquitto.port, bare.username, bare.password, reply_size)
    floor = paho_client(stack, mosquitto.port, bare.username, bare.password)
    cams, _ = cameras("2x224")
    request = Encoder(load_signer(keys, "robot", "robot-1")).encode(
        frame("robot-1", 0, cams, np.linspace(0, 1, 14, dtype=np.float32)))
    return {"2x224": run_session(stack, spawn, cams, floor, request, rounds, BLOCK, keys,
                                 mosquitto.port, bare.username, bare.password)}


def action_size(keys: Path) -> int:
    """Bytes of a signed Action carrying a 50×14 chunk (the bare servers reply this much)."""
    encoder = Encoder(load_signer(keys, "worker", "worker-1"))
    action = Action(robot_id="robot-1", step=1, actions=pack_array(
        np.zeros((HORIZON, ACTION_DIM), np.float32)), period_ns=20_000_000, model="bench",
        model_version=0, worker_id="worker-1", decode_ns=1, queue_wait_ns=1, inference_ns=1,
        encode_ns=1, span_ns=1)
    return len(encoder.encode(action, corr="robot-1/1", deadline_ns=time.time_ns()))


def main(argv: list[str] | None = None) -> int:
    parse = parser(__doc__.split("\n\n")[0])
    parse.add_argument("--only", choices=["zmq", "mqtt", "session"], default=None)
    args = parse.parse_args(argv)
    cases = ["2x224"] if args.quick else ["2x224", "1x480x640", "2x224-jpeg"]
    rounds = 150 if args.quick else 1000
    buses = [args.only] if args.only else ["zmq", "mqtt", "session"]
    started = time.monotonic()
    report: dict[str, Any] = {"bench": "roundtrip", "environment": environment(),
                              "single_thread_us": single_thread_probe(),
                              "rounds": rounds, "chunk": [HORIZON, ACTION_DIM],
                              "target": "vlabus p50 <= 2.5x the bare round trip of the same bytes"}
    for bus in buses:
        report[bus] = run_bus(bus, cases, rounds, curve=not args.quick)
    report["seconds"] = round(time.monotonic() - started, 1)
    emit(report, compact=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
