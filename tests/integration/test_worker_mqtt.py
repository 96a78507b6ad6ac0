"""Workers over a real Mosquitto: a shared group splits robots' traffic; a SIGKILLed worker
leaves the other serving; a flood of bad messages does not push good replies past deadline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_workers.metrics import WorkerMetrics
from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import Worker, WorkerConfig, open_worker
from schemas import topics
from schemas.messages import Action, Status
from security.keys import Signer
from security.replay import ReplayGuard
from tests.support import ROOT
from tests.support.aio import eventually
from tests.support.clock import MS
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.robot import Robot
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.transport import open_transport
from vlabus.policy.reference import NoopPolicy
from vlabus.wire import Decoder, Encoder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]
FLOOD_RATE = 1500  # bad messages per second, one in five a 150 KB frame with a bad signature


@asynccontextmanager
async def in_process_worker(broker: LocalMosquitto, keydir: KeyDir,
                            worker_id: str) -> AsyncIterator[Worker]:
    runner = PolicyRunner({"noop": NoopPolicy(2, 2)}, {})
    worker = await open_worker(broker.url, keydir.signers[worker_id], keydir.ring, runner,
                               config=WorkerConfig(worker_id=worker_id, group="pool",
                                                   max_batch=8, max_delay_ns=1 * MS),
                               metrics=WorkerMetrics(), options=broker.options(worker_id))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 20)
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await worker.transport.close()


def test_two_workers_split_several_robots(mosquitto: LocalMosquitto, keydir: KeyDir) -> None:
    async def body() -> None:
        async with in_process_worker(mosquitto, keydir, "worker-1") as w1, \
                in_process_worker(mosquitto, keydir, "worker-2") as w2:
            robots = [await Robot.connect(mosquitto.url, keydir.signers[r], keydir.ring,
                                          mosquitto.options(r))
                      for r in ("robot-a", "robot-b", "robot-c")]
            for step in range(12):
                for robot in robots:
                    rid = robot.encoder.signer.identity
                    await robot.send_frame(make_frame(rid, step), f"{rid}-{step}")
            served: Counter[str] = Counter()
            for robot in robots:
                await robot.wait_for(12, timeout=30)
                for corr, reply in robot.replies.items():
                    assert isinstance(reply, Action)
                    assert reply.robot_id == robot.encoder.signer.identity
                    assert corr == f"{reply.robot_id}-{reply.step}"
                    served[reply.worker_id] += 1
                await robot.close()
            assert sum(served.values()) == 36
            assert served["worker-1"] >= 6
            assert served["worker-2"] >= 6
            await eventually(  # served counts PUBACKed replies: may trail the robot a little
                lambda: w1.metrics.summary.served + w2.metrics.summary.served == 36)
    asyncio.run(body())


def test_sigkilled_worker_mid_batch_leaves_the_other_serving(
        mosquitto: LocalMosquitto, keydir: KeyDir, tmp_path: Path) -> None:
    marker = tmp_path / "in-batch"

    async def body() -> None:
        watcher = await open_transport(mosquitto.url, mosquitto.options("robot-c", "watcher"))
        await watcher.subscribe(topics.worker_status_topic("worker-1"))
        env = {**os.environ, "VLABUS_TEST_MARKER": str(marker), "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vlabus", "worker", "--bus", mosquitto.url,
            "--keys", str(keydir.path), "--id", "worker-1", "--group", "pool",
            "--policy", "noop=tests.support.policies:stuck", "--device", "cpu",
            "--max-batch", "4", "--max-delay-ms", "1",
            "--broker-config", str(mosquitto.config_dir), "--json",
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stderr is not None
            while b'"event": "ready"' not in (line := await asyncio.wait_for(
                    proc.stderr.readline(), 60)):
                assert line, "worker exited before it was ready"
            decoder = Decoder(keydir.ring, ReplayGuard())
            birth = decoder.decode((await asyncio.wait_for(watcher.receive(), 10)).payload).message
            assert isinstance(birth, Status)
            assert birth.state == "online"
            async with in_process_worker(mosquitto, keydir, "worker-2") as w2:
                robot = await Robot.connect(mosquitto.url, keydir.signers["robot-a"],
                                            keydir.ring, mosquitto.options("robot-a"))
                for step in range(8):
                    await robot.send_frame(make_frame("robot-a", step), f"s{step}")
                await eventually(marker.exists, timeout=20)  # worker-1 is inside its batch
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                death = decoder.decode(
                    (await asyncio.wait_for(watcher.receive(), 10)).payload).message
                assert isinstance(death, Status)
                assert death.state == "offline"
                assert death.session == birth.session
                await eventually(lambda: len(robot.replies) >= 4)
                lost = [f"s{s}" for s in range(8) if f"s{s}" not in robot.replies]
                assert lost, "worker-1 should have held part of the traffic"
                # the robot's idempotent retry: same correlation id, a fresh envelope
                for corr in lost:
                    await robot.send_frame(make_frame("robot-a", int(corr[1:])), corr)
                for step in range(8, 20):
                    await robot.send_frame(make_frame("robot-a", step), f"s{step}")
                await robot.wait_for(20, timeout=30)
                assert {r.worker_id for r in robot.replies.values()} == {"worker-2"}
                # served counts PUBACKed replies, which may land just after the robot has them
                await eventually(lambda: w2.metrics.summary.served >= 20)
                await robot.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await watcher.close()
    asyncio.run(body())


def test_flood_of_bad_messages_does_not_delay_a_good_robot(
        mosquitto: LocalMosquitto, keydir: KeyDir) -> None:
    async def body() -> None:
        async with in_process_worker(mosquitto, keydir, "worker-1") as worker:
            robot = await Robot.connect(mosquitto.url, keydir.signers["robot-a"], keydir.ring,
                                        mosquitto.options("robot-a"))
            attacker = await open_transport(mosquitto.url, mosquitto.options("robot-b"))
            stranger = Encoder(Signer.generate("robot", "robot-b"))
            liar = Encoder(keydir.signers["robot-b"])
            big = make_frame("robot-b", 0, size=224)
            bad_sig = bytearray(liar.encode(big))
            bad_sig[-1] ^= 0xFF
            junk = [b"\x00" * 40, b"VB\x01\xff\xff" + b"x" * 100, bytes(bad_sig),
                    stranger.encode(big), liar.encode(make_frame("robot-a", 0))]
            stop = asyncio.Event()
            sent = 0

            async def flood() -> None:
                # Paced at ~FLOOD_RATE messages/s: Mosquitto has no per-client rate limit, so a
                # flood faster than the worker can reject backs up the broker's TCP stream to
                # the worker, in front of good frames.
                nonlocal sent
                loop = asyncio.get_running_loop()
                start = loop.time()
                while not stop.is_set():
                    for payload in junk:
                        await attacker.publish(topics.frame_topic("robot-b"), payload)
                        sent += 1
                    await asyncio.sleep(max(0.0, start + sent / FLOOD_RATE - loop.time()))

            flooder = asyncio.create_task(flood())
            deadlines = {}
            for step in range(30):
                corr = f"g{step}"
                deadlines[corr] = await robot.send_frame(make_frame("robot-a", step), corr,
                                                         budget_ms=250)
                await robot.wait_for(step + 1, timeout=5)
                await asyncio.sleep(0.02)  # a 50 Hz robot
            stop.set()
            await flooder
            late = {c: (robot.arrived_ns[c] - d) / 1e6 for c, d in deadlines.items()
                    if robot.arrived_ns[c] > d}
            assert late == {}
            assert sent >= 200
            rejected = worker.metrics.summary.rejected
            assert rejected["bad_signature"] > 0
            assert rejected["unknown_key"] > 0
            assert rejected["malformed"] > 0
            assert rejected["identity_mismatch"] > 0
            await robot.close()
            await attacker.close()
    asyncio.run(body())


def test_cli_worker_metrics_sigterm_and_json_summary(mosquitto: LocalMosquitto,
                                                     keydir: KeyDir) -> None:
    async def body() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vlabus", "worker", "--bus", mosquitto.url,
            "--keys", str(keydir.path), "--id", "worker-2", "--group", "pool",
            "--policy", "noop", "--metrics-port", "0", "--max-delay-ms", "1",
            "--broker-config", str(mosquitto.config_dir), "--json",
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stderr is not None
            assert proc.stdout is not None
            while b'"event": "ready"' not in (line := await asyncio.wait_for(
                    proc.stderr.readline(), 60)):
                assert line, "worker exited before it was ready"
            port = json.loads(line)["metrics_port"]
            assert await http_get(port, "/readyz") == (200, "ready\n")
            robot = await Robot.connect(mosquitto.url, keydir.signers["robot-b"], keydir.ring,
                                        mosquitto.options("robot-b"))
            for step in range(5):
                await robot.send_frame(make_frame("robot-b", step), f"m{step}")
            await robot.wait_for(5)
            me = {"worker": "worker-2"}  # the identity is on every series
            for _ in range(200):  # replies count once PUBACKed, which may trail the robot
                code, text = await http_get(port, "/metrics")
                if sample(text, "vlabus_worker_replies_total", me) == 5.0:
                    break
            assert code == 200
            assert sample(text, "vlabus_worker_received_total", me) == 5.0
            assert sample(text, "vlabus_worker_replies_total", me) == 5.0
            assert sample(text, "vlabus_worker_rejected_total",
                          {"reason": "bad_signature", **me}) == 0.0
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0
            summary = json.loads(out.decode().strip().splitlines()[-1])
            assert summary["received"] == 5
            assert summary["served"] == 5
            assert summary["models"] == {"noop": 0}
            assert summary["rejected_total"] == 0
            assert summary["batches"] >= 1
            await robot.close()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    asyncio.run(body())


def sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    """The value of series ``name{labels}`` in a Prometheus exposition, or None."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body
