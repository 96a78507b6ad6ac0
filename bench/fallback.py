"""Lateness of the robot's action relative to its deadline, with the cloud dead, slow, healthy.

    python -m bench.fallback --json [--quick] [--steps N] [--deadline-ms D] [--bus zmq|mqtt]

A real ZeroMQ hub (or Mosquitto with ``--bus mqtt``) and a responder run as separate
processes (so they do not share the robot's GIL); the robot is an :class:`EdgeAgent` with the
seeded local reference policy (width 16) and a 224x224 tabletop camera frame per step, paced
at 1.5x the deadline. The responder verifies each
frame and answers with a signed 16x7 chunk: at once (healthy), after 1.5x the deadline (slow),
or never (dead). The breaker is switched off so every dead or slow step exercises the deadline
watchdog and the hedged local inference (with it on, the robot would go local-only after three
misses and lateness would be ~0 by construction).

Lateness = max(0, time the step's action was ready - its deadline). Floor, measured in the same
run: the overshoot of a bare asyncio timer set for the same deadlines (what any
wait-until-deadline costs on this loop), and the local policy's own inference time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MS = 1_000_000


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _respond(url: str, keys: str, delay_ms: float, broker: str | None) -> None:
    """The responder process: verify frames, answer after ``delay_ms`` (< 0: never)."""
    from schemas.arrays import pack_array
    from schemas.messages import Action, Frame
    from schemas.topics import ALL_FRAMES, action_topic
    from security.keys import Keyring, load_signer
    from security.replay import ReplayGuard
    from vlabus.bus.transport import open_transport
    from vlabus.inbound import Rejections, accept
    from vlabus.wire import Decoder, Encoder

    bus = await open_transport(url, _options(broker, "worker-1"))
    encoder = Encoder(load_signer(keys, "worker", "worker-1"))
    decoder = Decoder(Keyring.load(keys), ReplayGuard())
    rejections = Rejections()
    await bus.subscribe(ALL_FRAMES, group="workers", qos=0)
    chunk = pack_array(np.zeros((16, 7), np.float32))
    print("ready", flush=True)
    loop = asyncio.get_running_loop()

    async def answer(frame: Frame, corr: str, arrived: int) -> None:
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1e3)
        action = Action(robot_id=frame.robot_id, step=frame.step, actions=chunk,
                        model="default", model_version=0, worker_id="worker-1",
                        span_ns=time.monotonic_ns() - arrived)
        await bus.publish(action_topic(frame.robot_id), encoder.encode(action, corr=corr), qos=1)

    async for message in bus:
        arrived = time.monotonic_ns()
        received = accept(decoder, message, rejections)
        if received is None or not isinstance(received.message, Frame) or delay_ms < 0:
            continue
        loop.create_task(answer(received.message, received.header.corr, arrived))  # noqa: RUF006


def _options(broker: str | None, identity: str) -> Any:
    """Credentials for ``identity`` on the rendered broker, or plain options for the hub."""
    from vlabus.bus.transport import TransportOptions

    if broker is None:
        return TransportOptions(client_id=identity)
    from vlabus.broker.render import client_options

    return client_options(broker, identity)


def _spawn(args: list[str], ready: str, timeout: float = 30.0) -> subprocess.Popen[str]:
    """Start ``python ARGS`` and wait (bounded) for a stdout line containing ``ready``."""
    import selectors

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if ready in line:
                return proc
            if not line:
                break
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{args} did not start")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _timer_floor(deadline_ns: int, steps: int) -> list[int]:
    """Overshoot of a bare asyncio timer for the same deadlines: the cost of waiting at all."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(steps):
        target = time.monotonic_ns() + deadline_ns
        fired = loop.create_future()
        loop.call_at(target / 1e9, fired.set_result, None)
        await fired
        out.append(max(0, time.monotonic_ns() - target))
        await asyncio.sleep(deadline_ns / 2e9)
    return out


async def _scenario(url: str, keys: str, deadline_ms: float, steps: int,
                    broker: str | None) -> dict[str, Any]:
    from edge_agent.agent import AgentConfig
    from edge_agent.breaker import BreakerConfig
    from edge_agent.sim import SimRobot, summarize
    from edge_agent.stack import LocalModel, load_identity, open_edge

    ring, signer = load_identity(keys, "robot-a")
    robot = SimRobot()
    off = BreakerConfig(miss_limit=1 << 30, min_rtt_samples=1 << 30)
    config = AgentConfig(robot_id="robot-a", deadline_ns=round(deadline_ms * MS), breaker=off)
    agent = await open_edge(url, keys=ring, signer=signer, config=config,
                            probe=robot.observe(0), model=LocalModel(),
                            options=_options(broker, "robot-a"))
    loop = asyncio.get_running_loop()
    period = 1.5 * deadline_ms / 1e3
    try:
        for _ in range(20):  # warm-up: connections, caches, the hedge's latency estimate
            await agent.act(robot.observe(0))
        await asyncio.sleep(2 * deadline_ms / 1e3)  # late warm-up replies land before reset
        agent.stats.reset()  # measure the steady state only
        start = loop.time()
        for step in range(steps):
            delay = start + step * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            result = await agent.act(robot.observe(step))
            if result.action is not None:
                robot.apply(result.action)
        await asyncio.sleep(2 * deadline_ms / 1e3)  # let late replies arrive to be counted
        return summarize(agent)
    finally:
        await agent.close()
        await agent.transport.close()


def _start_bus(bus: str, keys: str, work: Path,
               stack: contextlib.ExitStack) -> tuple[str, str | None]:
    """Start the bus as a separate process; returns its URL and the broker config (MQTT)."""
    if bus == "mqtt":
        from vlabus.broker.local import LocalMosquitto
        from vlabus.broker.render import Limits, render

        config = work / "broker"
        render(keys, config, limits=Limits(persistence=False))
        mosquitto = LocalMosquitto(config)
        url = mosquitto.start()
        stack.callback(mosquitto.stop)
        return url, str(config)
    port = _free_port()
    hub = _spawn(["-m", "vlabus", "hub", "--bind", f"tcp://127.0.0.1:{port}"], "listening")
    stack.callback(_stop, hub)
    return f"zmq://127.0.0.1:{port}", None


def _pick(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps", "actions_by_source", "fallbacks_by_cause", "lateness_ms", "rtt_ms",
            "late_replies_discarded", "steps_without_action", "local_inference_ms", "hedges",
            "timer_slack_ms")
    return {k: summary[k] for k in keys}


def run(quick: bool, steps: int | None, deadline_ms: float, bus: str) -> dict[str, Any]:
    import torch

    from security.keys import add_key

    torch.set_num_threads(1)
    steps = steps or (300 if quick else 1000)
    work = Path(tempfile.mkdtemp(prefix="bench-fallback-"))
    keys = str(work / "keys")
    add_key(keys, "robot", "robot-a")
    add_key(keys, "worker", "worker-1")
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        url, broker = _start_bus(bus, keys, work, stack)
        floor = asyncio.run(_timer_floor(round(deadline_ms * MS), min(steps, 300)))
        for name, delay in (("dead", -1.0), ("slow", 1.5 * deadline_ms), ("healthy", 0.0)):
            extra = [] if broker is None else ["--broker-config", broker]
            responder = _spawn(["-m", "bench.fallback", "--responder", url, "--keys", keys,
                                "--delay-ms", str(delay), *extra], "ready")
            try:
                results[name] = _pick(asyncio.run(
                    _scenario(url, keys, deadline_ms, steps, broker)))
            finally:
                _stop(responder)
    floor_p99 = float(np.quantile(np.asarray(floor) / 1e6, 0.99))
    worst = max(r["lateness_ms"]["p99"] for r in results.values())
    return {
        "bench": "fallback",
        "quick": quick,
        "steps_per_scenario": steps,
        "deadline_ms": deadline_ms,
        "transport": {"zmq": "vlabus hub (separate process)",
                      "mqtt": "Mosquitto (separate process), paho in the robot"}[bus],
        "scenarios": results,
        "floor": {"asyncio_timer_overshoot_ms": {
            "p50": round(float(np.quantile(np.asarray(floor) / 1e6, 0.5)), 4),
            "p99": round(floor_p99, 4), "max": round(max(floor) / 1e6, 4)}},
        "ratios": {"worst_lateness_p99_vs_timer_p99": round(worst / floor_p99, 3)
                   if floor_p99 > 0 else None},
        "target": {"p99_ms": 2.0, "max_ms": 5.0},
        "cpu_count": os.cpu_count(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fallback")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--deadline-ms", type=float, default=None)
    parser.add_argument("--bus", choices=["zmq", "mqtt"], default="zmq",
                        help="ZeroMQ hub (default) or Mosquitto, each in its own process")
    parser.add_argument("--broker-config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--responder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keys", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--delay-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.responder:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_respond(args.responder, args.keys, args.delay_ms, args.broker_config))
        return 0
    deadline = args.deadline_ms or (5.0 if args.quick else 10.0)
    report = run(args.quick, args.steps, deadline, args.bus)
    if args.json:
        print(json.dumps(report))
    else:
        for name, scenario in report["scenarios"].items():
            print(name, scenario["lateness_ms"], scenario["actions_by_source"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
