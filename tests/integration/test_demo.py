"""`vlabus demo`: the main job, run as a user would, on the embedded hub and on Mosquitto."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)


def demo(*args: str, timeout: float = 240) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "vlabus", "demo", "--json", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary; stderr:\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(lines[-1])


@pytest.mark.integration
@pytest.mark.slow
def test_chaos_every_step_answered_fallbacks_in_outage_cloud_after() -> None:
    code, summary = demo("--chaos", "--seconds", "14", "--robots", "2", "--workers", "2")
    assert code == 0, summary["failures"]
    assert summary["ok"] is True
    assert summary["steps"] > 0
    assert summary["steps_without_action"] == 0
    by_source = summary["actions_by_source"]
    assert by_source.get("cloud", 0) + by_source.get("fallback", 0) == summary["steps"]
    assert by_source.get("fallback", 0) > 0, "the outage must show up as fallbacks"
    assert summary["rejected_by_reason"] == {}, "nothing legitimate may be rejected"
    events = summary["chaos_events"]
    assert len(events) == 4
    back = float(re.search(r"t=\s*([\d.]+)s bring the bus back", events[-1]).group(1))  # type: ignore[union-attr]
    after = [tick for tick in summary["timeline"] if tick["t"] >= back + 2.0]
    assert any(tick["cloud"] > 0 for tick in after), summary["timeline"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_demo_over_a_local_mosquitto_serves_cloud_actions() -> None:
    code, summary = demo("--bus", "mqtt", "--seconds", "5", "--robots", "2", "--workers", "1")
    assert code == 0, summary["failures"]
    assert summary["steps_without_action"] == 0
    assert summary["actions_by_source"].get("cloud", 0) > 0
    assert summary["bus_url"].startswith("mqtt://127.0.0.1:")
