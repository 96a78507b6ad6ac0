"""Round trip and throughput of the bus adapters against the bare libraries, in one run.

    python -m bench.transport --json [--quick]

Each path is ping -> hub/broker -> echo process -> hub/broker -> ping, for 64 B and 150 KB
payloads (QoS 0). Paths:

* ``mqtt_vlabus``: vlabus mqtt adapter on both ends, through Mosquitto (``set_tcp_nodelay``).
* ``mqtt_paho``: bare paho-mqtt 2 (MQTT 5, TCP_NODELAY both ends), same Mosquitto.
* ``zmq_vlabus``: vlabus zmq adapter on both ends, through ``vlabus hub`` (its own process).
* ``zmq_hub_bare``: bare sync pyzmq speaking the hub's frames, through ``vlabus hub``: what the
  hub costs by itself, and (against ``zmq_vlabus``) what the adapter and asyncio cost.
* ``zmq_forwarder``: bare pyzmq DEALERs through a bare Python ROUTER forwarder (same hop).
* ``zmq_proxy``: bare pyzmq PUB/SUB through ``zmq.proxy(XSUB, XPUB)`` (the C device).
* ``zmq_direct``: bare DEALER <-> ROUTER echo, no hub.
* ``bridge_*``: the direct path again, driven from asyncio three ways (zmq.asyncio, an
  ``add_reader`` drain as in vlabus.bus.zmq, a dedicated I/O thread), to choose the adapter's
  design.

Throughput keeps a window of 32 messages in flight. Ratios compare p50 with the bare path.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from bench import transport_peers as peers
from bench.transport_bridges import BRIDGES
from security.keys import add_key
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, client_options, render
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.hub import protocol as hub_protocol
from vlabus.hub.process import HubProcess

SIZES = {"64B": 64, "150KB": 150_000}
WINDOW = 32
TIMEOUT_S = 5.0
CTX = multiprocessing.get_context("spawn")


# round-trip latencies (ns), CPU seconds of the path's processes during them, throughput
# messages, throughput seconds
Sample = tuple[list[int], float, int, float]
Runner = Callable[[int, int, int], Sample]  # (payload size, round trips, throughput messages)


def run_sync(send: Callable[[bytes], None], recv: Callable[[], object], size: int,
             rtt_n: int, tput_n: int, pids: list[int]) -> Sample:
    payload = bytes(size)
    for _ in range(10):
        send(payload)
        recv()
    lat = []
    cpu0 = cpu_seconds(pids)
    for _ in range(rtt_n):
        t0 = time.perf_counter_ns()
        send(payload)
        recv()
        lat.append(time.perf_counter_ns() - t0)
    cpu = cpu_seconds(pids) - cpu0
    t0 = time.perf_counter_ns()
    sent = 0
    for _ in range(min(WINDOW, tput_n)):
        send(payload)
        sent += 1
    for _ in range(tput_n):
        recv()
        if sent < tput_n:
            send(payload)
            sent += 1
    return lat, cpu, tput_n, (time.perf_counter_ns() - t0) / 1e9


async def run_async(send: Callable[[bytes], Awaitable[None]],
                    recv: Callable[[], Awaitable[object]], size: int,
                    rtt_n: int, tput_n: int, pids: list[int]) -> Sample:
    payload = bytes(size)
    for _ in range(10):
        await send(payload)
        await recv()
    lat = []
    cpu0 = cpu_seconds(pids)
    for _ in range(rtt_n):
        t0 = time.perf_counter_ns()
        await send(payload)
        await recv()
        lat.append(time.perf_counter_ns() - t0)
    cpu = cpu_seconds(pids) - cpu0
    t0 = time.perf_counter_ns()
    sent = 0
    for _ in range(min(WINDOW, tput_n)):
        await send(payload)
        sent += 1
    for _ in range(tput_n):
        await recv()
        if sent < tput_n:
            await send(payload)
            sent += 1
    return lat, cpu, tput_n, (time.perf_counter_ns() - t0) / 1e9


async def guarded(run: Awaitable[Sample]) -> Sample:
    """One deadline for a whole measurement (a lost QoS 0 message must not hang the bench)."""
    return await asyncio.wait_for(run, 120)


def summarise(samples: list[Sample], size: int) -> dict[str, float]:
    """Percentiles over all rounds' round trips; throughput as the median over rounds."""
    lat = sorted(x for sample in samples for x in sample[0])
    rates = [n / seconds for _, _, n, seconds in samples]
    cpu = sum(sample[1] for sample in samples)
    return {
        "cpu_us_per_rtt": round(cpu / len(lat) * 1e6, 1),
        "p50_us": round(statistics.median(lat) / 1e3, 1),
        "p99_us": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e3, 1),
        "msgs_per_s": round(statistics.median(rates)),
        "mb_per_s": round(statistics.median(rates) * size / 1e6, 1),
    }


def warm_up(send: Callable[[bytes], None], poll: Callable[[float], bool]) -> None:
    """Ping until the echo answers (it may not have subscribed yet; QoS 0 pings are lost)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        send(b"warm")
        if poll(0.2):
            return
    raise RuntimeError("echo peer never answered")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system, all threads) of this process and of ``pids``; 10 ms ticks."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def process(stack: ExitStack, target: Callable[..., None], *args: Any) -> int:
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()

    def stop() -> None:
        proc.terminate()
        proc.join(5)

    stack.callback(stop)
    assert proc.pid is not None
    return proc.pid


def ready_value(q: Any) -> Any:
    return q.get(timeout=30)


# -- ZeroMQ ---------------------------------------------------------------------------------


def bare_zmq(stack: ExitStack, kind: str) -> tuple[Runner, int, list[int]]:
    """A bare pyzmq pinger for path ``kind``: the runner, the hub (or echo) port, the pids."""

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    ready = CTX.Queue()
    hub_target = {"forwarder": peers.zmq_forwarder, "proxy": peers.zmq_proxy,
                  "direct": peers.zmq_direct_echo}[kind]
    pids = [process(stack, hub_target, ready)]
    first = ready_value(ready)
    if kind == "proxy":
        xpub = ready_value(ready)
        pids.append(process(stack, peers.zmq_proxy_echo, first, xpub))
        out, inp = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
        inp.setsockopt(zmq.SUBSCRIBE, peers.PONG.encode())
        out.connect(f"tcp://127.0.0.1:{first}")
        inp.connect(f"tcp://127.0.0.1:{xpub}")
        head = [peers.PING.encode()]
    else:
        out = inp = ctx.socket(zmq.DEALER)
        out.setsockopt(zmq.ROUTING_ID, b"ping")
        out.connect(f"tcp://127.0.0.1:{first}")
        head = []
        if kind == "forwarder":
            pids.append(process(stack, peers.zmq_forwarder_echo, first))
            head = [b"echo"]
    for sock in {out, inp}:
        stack.callback(sock.close, 0)

    def send(payload: bytes) -> None:
        out.send_multipart([*head, payload], copy=len(payload) < 65536)

    def recv() -> object:
        if not inp.poll(int(TIMEOUT_S * 1000)):
            raise TimeoutError("no echo")
        return inp.recv_multipart(copy=False)

    warm_up(send, lambda t: bool(inp.poll(int(t * 1000))) and bool(recv()))
    def runner(size: int, rtt_n: int, tput_n: int) -> Sample:
        return run_sync(send, recv, size, rtt_n, tput_n, pids)

    return runner, first, pids


def vlabus_runner(stack: ExitStack, loop: asyncio.AbstractEventLoop, url: str, ping_opts: Any,
                  echo_opts: Any, pids: list[int]) -> Runner:
    """The vlabus adapter on both ends: an echo process and a pinger on ``loop``."""
    ping, pong = f"bench/{ping_opts.client_id}/ping", f"bench/{ping_opts.client_id}/pong"
    pids = [*pids, process(stack, peers.vlabus_echo, url, echo_opts, ping, pong)]

    async def connect() -> Any:
        bus = await open_transport(url, ping_opts)
        await bus.subscribe(pong)
        deadline = time.monotonic() + 15
        while True:
            await bus.publish(ping, b"warm")
            try:
                await asyncio.wait_for(bus.receive(), 0.2)
                return bus
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    bus = loop.run_until_complete(connect())
    stack.callback(lambda: loop.run_until_complete(bus.close()))

    async def send(payload: bytes) -> None:
        await bus.publish(ping, payload)

    # No wait_for per message: it costs a task and a timer each (~15 us here); the whole run
    # has one deadline instead (see guarded).
    recv = bus.recv

    return lambda size, rtt_n, tput_n: loop.run_until_complete(
        guarded(run_async(send, recv, size, rtt_n, tput_n, pids)))


def zmq_vlabus(stack: ExitStack, loop: asyncio.AbstractEventLoop) -> Runner:

    hub = stack.enter_context(HubProcess())  # `vlabus hub`, as deployed
    assert hub.pid is not None
    return vlabus_runner(stack, loop, hub.url, TransportOptions(client_id="bench-ping"),
                         TransportOptions(client_id="bench-echo"), [hub.pid])


def zmq_hub_bare(stack: ExitStack) -> Runner:
    """Bare sync pyzmq clients through ``vlabus hub``: the hub's own cost, without the adapter."""
    hub = stack.enter_context(HubProcess())
    assert hub.pid is not None
    port = int(hub.url.rsplit(":", 1)[1])
    pids = [hub.pid, process(stack, peers.hub_protocol_echo, port, "bench/hb/ping",
                             "bench/hb/pong")]
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    stack.callback(sock.close, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send_multipart(hub_protocol.sub("bench/hb/pong"))
    head = hub_protocol.pub_head(b"bench/hb/ping")

    def send(payload: bytes) -> None:
        sock.send_multipart([head, payload], copy=len(payload) < 65536)

    def recv() -> object:
        if not sock.poll(int(TIMEOUT_S * 1000)):
            raise TimeoutError("no echo")
        return sock.recv_multipart(copy=False)

    warm_up(send, lambda t: bool(sock.poll(int(t * 1000))) and bool(recv()))
    return lambda size, rtt_n, tput_n: run_sync(send, recv, size, rtt_n, tput_n, pids)


def bridge_runners(stack: ExitStack, loop: asyncio.AbstractEventLoop,
                   port: int, pids: list[int]) -> dict[str, Runner]:
    """The direct DEALER path driven from asyncio three ways."""

    runners: dict[str, Runner] = {}
    for name, make in BRIDGES.items():
        send, recv, close = loop.run_until_complete(make(f"tcp://127.0.0.1:{port}"))
        stack.callback(close)

        def runner(size: int, rtt_n: int, tput_n: int, send: Any = send,
                   recv: Any = recv) -> Sample:
            return loop.run_until_complete(
                guarded(run_async(send, recv, size, rtt_n, tput_n, pids)))

        runners[f"bridge_{name}"] = runner
    return runners


# -- MQTT -----------------------------------------------------------------------------------


def mosquitto(stack: ExitStack) -> tuple[str, Path]:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    keys, out = tmp / "keys", tmp / "broker"
    add_key(keys, "robot", "bench-ping")
    add_key(keys, "worker", "bench-echo")
    render(keys, out, limits=Limits(persistence=False))
    broker = stack.enter_context(LocalMosquitto(out))
    return broker.url, out


def mqtt_runners(stack: ExitStack, loop: asyncio.AbstractEventLoop) -> dict[str, Runner]:

    url, conf = mosquitto(stack)
    ping, echo = client_options(conf, "bench-ping"), client_options(conf, "bench-echo")
    port = int(url.rsplit(":", 1)[1])
    echo_pid = process(stack, peers.paho_echo, port, echo.username, echo.password,
                       "bench/bare/ping", "bench/bare/pong")
    return {"mqtt_vlabus": vlabus_runner(stack, loop, url, ping, echo, []),
            "mqtt_paho": bare_paho(stack, port, ping.username, ping.password, [echo_pid])}


def bare_paho(stack: ExitStack, port: int, username: str | None,
              password: str | None, pids: list[int]) -> Runner:

    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ping-bare",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(username, password)
    client.on_socket_open = peers.no_delay
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/bare/pong", qos=0)
    client.on_subscribe = lambda c, u, mid, codes, p: subscribed.set()
    client.on_message = lambda c, u, msg: inbox.put(bytes(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    stack.callback(client.loop_stop)
    stack.callback(client.disconnect)
    if not subscribed.wait(10):
        raise RuntimeError("paho did not subscribe")

    def send(payload: bytes) -> None:
        client.publish("bench/bare/ping", payload, qos=0)

    def poll(timeout: float) -> bool:
        try:
            inbox.get(timeout=timeout)
        except queue.Empty:
            return False
        return True

    warm_up(send, poll)
    return lambda size, rtt_n, tput_n: run_sync(
        send, lambda: inbox.get(timeout=TIMEOUT_S), size, rtt_n, tput_n, pids)


# -- report ---------------------------------------------------------------------------------


def ratios(paths: dict[str, Any]) -> dict[str, Any]:
    pairs = {"zmq_vlabus/zmq_forwarder": ("zmq_vlabus", "zmq_forwarder"),
             "zmq_vlabus/zmq_proxy": ("zmq_vlabus", "zmq_proxy"),
             "zmq_vlabus/zmq_direct": ("zmq_vlabus", "zmq_direct"),
             "zmq_hub_bare/zmq_forwarder": ("zmq_hub_bare", "zmq_forwarder"),
             "zmq_vlabus/zmq_hub_bare": ("zmq_vlabus", "zmq_hub_bare"),
             "bridge_add_reader/zmq_direct": ("bridge_add_reader", "zmq_direct"),
             "bridge_zmq_asyncio/zmq_direct": ("bridge_zmq_asyncio", "zmq_direct"),
             "bridge_io_thread/zmq_direct": ("bridge_io_thread", "zmq_direct"),
             "mqtt_vlabus/mqtt_paho": ("mqtt_vlabus", "mqtt_paho")}
    out: dict[str, Any] = {}
    for label, (ours, bare) in pairs.items():
        if ours in paths and bare in paths:
            out[label] = {size: {
                "p50": round(paths[ours][size]["p50_us"] / paths[bare][size]["p50_us"], 2),
                "p99": round(paths[ours][size]["p99_us"] / paths[bare][size]["p99_us"], 2),
                "cpu": round(paths[ours][size]["cpu_us_per_rtt"]
                             / paths[bare][size]["cpu_us_per_rtt"], 2),
                "throughput": round(paths[ours][size]["msgs_per_s"]
                                    / paths[bare][size]["msgs_per_s"], 2),
            } for size in SIZES if size in paths[ours] and size in paths[bare]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="fewer samples (under 20 s)")
    parser.add_argument("--only", choices=["zmq", "mqtt"], help="run one bus only")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, full 5)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    totals = ({"64B": (600, 3000), "150KB": (240, 480)} if args.quick
              else {"64B": (5000, 20000), "150KB": (1500, 3000)})
    started = time.monotonic()
    errors: dict[str, str] = {}
    samples: dict[str, dict[str, list[Sample]]] = {}
    loop = asyncio.new_event_loop()
    with ExitStack() as stack:
        stack.callback(loop.close)
        runners: dict[str, Runner] = {}
        if args.only != "mqtt":
            for kind in ("forwarder", "proxy", "direct"):
                runners[f"zmq_{kind}"], port, pids = bare_zmq(stack, kind)
            runners.update(bridge_runners(stack, loop, port, pids))
            runners["zmq_hub_bare"] = zmq_hub_bare(stack)
            runners["zmq_vlabus"] = zmq_vlabus(stack, loop)
        if args.only != "zmq":
            try:
                runners.update(mqtt_runners(stack, loop))
            except Exception as exc:  # e.g. no mosquitto here: report it, keep the zmq figures
                errors["mqtt"] = repr(exc)
        # Interleave paths round by round, so load from other processes hits all alike.
        for _ in range(rounds):
            for name, runner in runners.items():
                for size_name, size in SIZES.items():
                    if name.startswith("bridge_") and size_name != "64B":
                        continue
                    rtt_n, tput_n = (max(1, n // rounds) for n in totals[size_name])
                    samples.setdefault(name, {}).setdefault(size_name, []).append(
                        runner(size, rtt_n, tput_n))
    paths = {name: {size: summarise(s, SIZES[size]) for size, s in by_size.items()}
             for name, by_size in samples.items()}
    report = {
        "bench": "transport",
        "quick": args.quick,
        "rounds": rounds,
        "counts": {size: {"round_trips": r, "throughput_msgs": t}
                   for size, (r, t) in totals.items()},
        "window": WINDOW,
        "paths": paths,
        "ratios": ratios(paths),
        "errors": errors,
        "cpus": multiprocessing.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report) if args.json else json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
