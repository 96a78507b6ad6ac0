"""A robot partitioned from the bus for a while, then healed, on two hosts (namespaces).

The hub and a worker run in the ``cloud`` namespace, a robot in ``site``; the link between
them is cut for several seconds (packets dropped, no connection reset: what a robot driving out
of Wi-Fi coverage sees) and restored. The robot must act on every step from its local policy
while cut, take cloud actions again after the heal, never execute a cloud action that arrived
after its deadline (what queued on either side during the cut), and keep its outbox bounded.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.topics import decision_topic
from tests.support.keys import KeyDir
from tests.support.netbed import CLOUD_IP, NetBed
from vlabus.log.reader import iter_log

pytestmark = pytest.mark.integration
PORT = 5593
CUT_S = 6.0
FPS = 15


def _spawn(bed: NetBed, host: str, argv: list[str], log: Path, *,
           summary: bool = False) -> subprocess.Popen[bytes]:
    with bed.inside(host), log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "vlabus", *argv], stderr=sink,
                                stdout=subprocess.PIPE if summary else subprocess.DEVNULL)


def _cloud_actions(bed: NetBed, port: int) -> float:
    """The robot's ``vlabus_edge_actions_total{source="cloud"}``, read in its namespace."""
    def read() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith("vlabus_edge_actions_total") and 'source="cloud"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0
    try:
        return bed.run("site", read)
    except OSError:  # not serving yet
        return 0.0


def _wait_for_more_cloud_actions(bed: NetBed, port: int, than: float, proc: Any) -> float:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the robot exited"
        seen = _cloud_actions(bed, port)
        if seen > than:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"no cloud action beyond {than} within 60 s")


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGINT every process still running, then wait for each (killed after 30 s)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _stop(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary


def test_partitioned_robot_acts_locally_and_takes_nothing_late_after_the_heal(
        netbed: NetBed, keydir: KeyDir, tmp_path: Path) -> None:
    bus = f"zmq://{CLOUD_IP}:{PORT}"
    keys = str(keydir.path)
    recording = tmp_path / "robot-a.mcap"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(_spawn(netbed, "cloud", ["hub", "--bind", f"tcp://{CLOUD_IP}:{PORT}",
                                              "--heartbeat-ms", "500"], tmp_path / "hub.log"))
        procs.append(_spawn(netbed, "cloud", ["worker", "--bus", bus, "--keys", keys, "--id",
                                              "worker-1", "--threads", "1"],
                            tmp_path / "worker.log"))
        metrics_port = 9466
        robot = _spawn(netbed, "site", [
            "edge", "--sim", "--robot-id", "robot-a", "--bus", bus, "--keys", keys,
            "--fps", str(FPS), "--deadline-ms", "100", "--json", "--metrics-port",
            str(metrics_port), "--record", str(recording)], tmp_path / "robot.log", summary=True)
        procs.append(robot)
        before = _wait_for_more_cloud_actions(netbed, metrics_port, 5, robot)
        netbed.cut()
        try:
            time.sleep(CUT_S)  # the length of the outage, not a synchronisation
        finally:
            netbed.restore()
        healed = _cloud_actions(netbed, metrics_port)
        _wait_for_more_cloud_actions(netbed, metrics_port, healed + 15, robot)
        summary = _stop(robot)
    finally:
        _stop_all(procs)
    log = (tmp_path / "robot.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert summary["steps_without_action"] == 0
    assert summary["actions_by_source"]["fallback"] >= CUT_S * FPS / 2, summary
    assert summary["actions_by_source"]["cloud"] > before
    transport = summary["transport"]
    assert transport["outbox"] == 0, transport  # flushed or dropped, never left behind
    decisions = [msgspec.msgpack.decode(r.data) for r in
                 iter_log(recording, topics=[decision_topic("robot-a")])]
    assert len(decisions) == summary["steps"]
    # No cloud action executed after its deadline, before, during or after the partition.
    late_cloud = [d for d in decisions if d["source"] == "cloud" and d["lateness_ns"] > 0]
    assert late_cloud == []
    # The partition shows as one long local stretch between cloud actions.
    sources = "".join("c" if d["source"] == "cloud" else "f" for d in decisions)
    first_cloud, last_cloud = sources.index("c"), sources.rindex("c")
    assert "f" * int(CUT_S * FPS / 2) in sources[first_cloud:last_cloud], sources


SUBSCRIBER = """
import asyncio, sys
from vlabus.bus.transport import TransportOptions, Will, open_transport

async def main(url):
    options = TransportOptions(client_id="robot-z", extra={"heartbeat_ms": "500"},
                               will=Will("vla/v1/robot-z/status", b"gone"))
    bus = await open_transport(url, options)
    await bus.subscribe("vla/v1/robot-z/action")
    count = 0
    while True:
        await bus.receive()
        count += 1
        if count % 20 == 0:
            print(count, flush=True)

asyncio.run(main(sys.argv[1]))
"""

PUBLISHER = """
import asyncio, sys, time
from vlabus.bus.transport import TransportOptions, open_transport

async def main(url):
    bus = await open_transport(url, TransportOptions(client_id="cloud-pub"))
    await bus.subscribe("vla/v1/robot-z/status")
    sent, last = 0, 0.0
    while True:
        await bus.publish("vla/v1/robot-z/action", b"x" * 20_000)
        sent += 1
        while (message := bus.receive_nowait()) is not None:
            if bytes(message.payload) == b"gone":
                print("will", sent, time.monotonic(), flush=True)
        if time.monotonic() - last > 0.25:
            last = time.monotonic()
            print("sent", sent, last, flush=True)
        await asyncio.sleep(0.005)

asyncio.run(main(sys.argv[1]))
"""


def _lines(proc: subprocess.Popen[bytes]) -> queue.Queue[str]:
    """The process's stdout, line by line, read on a thread."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode().strip())
    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next(lines: queue.Queue[str], prefix: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting {prefix!r} within {timeout} s")


def test_a_subscriber_cut_off_is_found_dead_and_the_publisher_never_waits(
        netbed: NetBed, tmp_path: Path) -> None:
    """The hub and a publisher (200 frames a second) in ``cloud``, a subscriber in ``site``,
    each its own process. The link is cut: the hub finds the silent peer dead (its will is
    published) while the publisher goes on at its rate; after the heal the subscriber receives
    again by itself."""
    url = f"zmq://{CLOUD_IP}:{PORT}"
    procs = [_spawn(netbed, "cloud", ["hub", "--bind", f"tcp://{CLOUD_IP}:{PORT}",
                                      "--heartbeat-ms", "500"], tmp_path / "hub.log")]

    def script(host: str, code: str, name: str) -> subprocess.Popen[bytes]:
        with netbed.inside(host), (tmp_path / f"{name}.log").open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE,
                                    stderr=sink)
        procs.append(proc)
        return proc

    try:
        time.sleep(1.0)  # the hub binding; both clients would wait for it anyway
        publisher = _lines(script("cloud", PUBLISHER, "publisher"))
        subscriber = _lines(script("site", SUBSCRIBER, "subscriber"))
        _next(subscriber, "", 30)  # receiving
        netbed.cut()
        try:
            _, n_cut, t_cut = _next(publisher, "sent", 10).split()
            _, n_will, t_will = _next(publisher, "will", 20).split()
        finally:
            netbed.restore()
        last = 0
        while not subscriber.empty():
            last = int(subscriber.get_nowait())
        while int(_next(subscriber, "", 40)) <= last:  # receiving again after the heal
            pass
    finally:
        _stop_all(procs)
    found_s = float(t_will) - float(t_cut)
    assert found_s < 15, found_s  # keepalive probes and TCP_MAXRT: about 3 heartbeats + 3 s
    # The publisher went on at its rate while the hub held frames for a dead peer (it sleeps
    # 5 ms between frames: ~150 a second here; a publisher that waited would show ~0).
    assert (int(n_will) - int(n_cut)) / found_s > 30
