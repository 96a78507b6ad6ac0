"""``vlabus edge --codec`` on a shaped uplink between two network namespaces: a robot whose raw
camera needs 18 Mbit/s behind a 4 Mbit/s uplink, talking to a hub and worker in the cloud."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.keys import KeyDir
from tests.support.netbed import CLOUD_IP, NetBed, open_netbed, unavailable
from tests.support.relay import DelayRelay

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = 5555


def _spawn(bed: NetBed, host: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with bed.inside(host), log.open("wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "vlabus", *argv],
                                stdout=subprocess.DEVNULL, stderr=sink,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if check():
            return
        time.sleep(0.1)  # waiting for the process's own signal
    raise AssertionError(f"{what} did not start:\n{log.read_text(errors='replace')[-2000:]}")


def _listening(bed: NetBed) -> bool:
    with bed.inside("cloud"):
        try:
            socket.create_connection((CLOUD_IP, PORT), timeout=0.5).close()
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def cloud(keydir: KeyDir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetBed]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("codec-uplink")
    bed = open_netbed(uplink_mbit=4)
    procs = []
    try:
        hub = _spawn(bed, "cloud", ["hub", "--bind", f"tcp://{CLOUD_IP}:{PORT}"],
                     logs / "hub.log")
        procs.append(hub)
        _wait(lambda: _listening(bed), "hub", hub, logs / "hub.log")
        worker = _spawn(bed, "cloud", ["worker", "--bus", f"zmq://{CLOUD_IP}:{PORT}", "--keys",
                                       str(keydir.path), "--id", "worker-1", "--threads", "1"],
                        logs / "worker.log")
        procs.append(worker)
        _wait(lambda: b'"event": "ready"' in (logs / "worker.log").read_bytes(), "worker",
              worker, logs / "worker.log")
        yield bed
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        bed.close()


def _edge(bed: NetBed, keys: Path, codec: str, port: int = PORT) -> dict[str, Any]:
    argv = [sys.executable, "-m", "vlabus", "edge", "--sim", "--robot-id", "robot-a", "--bus",
            f"zmq://{CLOUD_IP}:{port}", "--keys", str(keys), "--fps", "15", "--deadline-ms",
            "100", "--seconds", "4", "--codec", codec, "--json"]
    with bed.inside("site"):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return summary


def _cloud_share(summary: dict[str, Any]) -> float:
    return float(summary["actions_by_source"].get("cloud", 0)) / summary["steps"]


def test_auto_fits_the_uplink_where_raw_cannot(cloud: NetBed, keydir: KeyDir) -> None:
    raw = _edge(cloud, keydir.path, "raw")
    auto = _edge(cloud, keydir.path, "auto")
    # a raw 224x224 frame takes ~300 ms on 4 Mbit/s: never within 100 ms
    assert _cloud_share(raw) < 0.2, raw
    assert raw["codec"]["frames_by_rung"].keys() <= {"raw"}
    assert _cloud_share(auto) > 0.7, auto
    assert raw["steps_without_action"] == auto["steps_without_action"] == 0
    rungs = auto["codec"]["frames_by_rung"]
    assert rungs
    assert "raw" not in rungs
    assert 0 < auto["codec"]["uplink_mbit_s"] < 100  # it saw a slow link, not loopback


def test_fixed_jpeg_is_sent_as_asked(cloud: NetBed, keydir: KeyDir) -> None:
    summary = _edge(cloud, keydir.path, "jpeg:60")
    assert set(summary["codec"]["frames_by_rung"]) == {"jpeg60"}
    assert _cloud_share(summary) > 0.7, summary


def test_auto_fits_frames_into_what_latency_leaves(cloud: NetBed, keydir: KeyDir) -> None:
    """20 ms each way in front of the hub: the robot fits its frames into what is left."""
    with cloud.inside("cloud"):
        relay = DelayRelay((CLOUD_IP, PORT + 1), (CLOUD_IP, PORT), delay_s=0.02).start()
    try:
        summary = _edge(cloud, keydir.path, "auto", port=PORT + 1)
    finally:
        relay.close()
    assert _cloud_share(summary) > 0.7, summary
    assert summary["latency_breakdown_p50_ms"]["transport_up_down"] >= 40  # the relay is there
    assert "raw" not in summary["codec"]["frames_by_rung"]
