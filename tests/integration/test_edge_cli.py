"""``vlabus edge --sim`` as a process against a real ZeroMQ hub and a responding worker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import claim_robot
from schemas.errors import KeyringError
from security.keys import add_key
from tests.support.edge import FakeCloud
from tests.support.keys import KeyDir
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.cli import main

pytestmark = pytest.mark.integration


async def run_edge(hub_url: str, keydir: KeyDir, tmp_path: Path, *extra: str,
                   cloud: bool = True) -> dict[str, Any]:
    bus = await open_transport(hub_url, TransportOptions(client_id="worker-1"))
    fake = await FakeCloud(bus, keydir.signers["worker-1"], keydir.ring, alive=cloud).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vlabus", "edge", "--robot-id", "robot-a", "--bus", hub_url,
            "--keys", str(keydir.path), "--sim", "--fps", "50", "--deadline-ms", "30",
            "--seconds", "0.6", "--local-width", "8", "--json", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await fake.close()
        await bus.close()
    assert proc.returncode == 0, err.decode()
    summary: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return summary


def test_edge_cli_json_summary_with_record_and_metrics(zmq_hub: Any, keydir: KeyDir,
                                                       tmp_path: Path) -> None:
    record = tmp_path / "box.mcap"
    summary = asyncio.run(run_edge(zmq_hub.url, keydir, tmp_path, "--record", str(record),
                                   "--metrics-port", "0"))
    assert summary["steps"] == 30
    assert summary["actions_by_source"].get("cloud", 0) >= 20
    assert summary["steps_without_action"] == 0
    assert set(summary["lateness_ms"]) == {"p50", "p99", "max"}
    assert set(summary["rtt_ms"]) == {"p50", "p99"}
    assert summary["latency_breakdown_p50_ms"]["queue_wait"] == 0.02  # the fake worker's own
    assert summary["recording"]["messages"] >= 60
    assert summary["recording"]["records"] == 30  # one decision per step
    assert record.stat().st_size > 0
    assert summary["metrics_port"] > 0
    assert summary["exit_code"] == 0


def test_edge_cli_without_sim_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                               keydir: KeyDir) -> None:
    code = main(["edge", "--robot-id", "robot-a", "--bus", "memory://x",
                 "--keys", str(keydir.path)])
    assert code == 1
    assert "--sim" in capsys.readouterr().err


def test_edge_cli_bad_robot_id_is_a_config_error(capsys: pytest.CaptureFixture[str],
                                                 keydir: KeyDir) -> None:
    code = main(["edge", "--robot-id", "Robot_A", "--bus", "memory://x", "--keys",
                 str(keydir.path), "--sim", "--json"])
    assert code == 1
    assert "invalid id" in capsys.readouterr().out


def test_robot_id_auto_claims_distinct_robot_identities(tmp_path: Path) -> None:
    for ident in ("healthcheck", "recorder", "robot-2", "robot-1"):
        add_key(tmp_path, "robot", ident)
    first = claim_robot(str(tmp_path), "robot-")
    second = claim_robot(str(tmp_path), "robot-")
    try:
        assert (first.identity, second.identity) == ("robot-1", "robot-2")
        with pytest.raises(KeyringError, match="no free robot identity"):
            claim_robot(str(tmp_path), "robot-")
    finally:
        first.release()
        second.release()
    again = claim_robot(str(tmp_path), "robot-")  # a dead replica's slot is free again
    assert again.identity == "robot-1"
    again.release()
