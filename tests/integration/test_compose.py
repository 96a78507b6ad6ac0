"""docker-compose.yml: valid against the Compose specification, and each service's command
works when started locally the way compose would start it (no Docker engine runs here)."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import ROOT
from vlabus.cli.procs import Child, free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_file_is_valid_against_the_specification(compose: dict[str, Any]) -> None:
    schema_file = (importlib.resources.files("check_jsonschema")
                   / "builtin_schemas" / "vendor" / "compose-spec.json")
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)
    broken = dict(compose, services={"x": {"image": "a", "restart": 3}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_scalable_services_have_no_fixed_names_or_host_ports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("cloud-worker", "edge-sim", "cloud-worker-gpu"):
        service = services[name]
        assert "container_name" not in service, name
        assert "ports" not in service, name
        assert "auto" in service["command"], f"{name} must claim a unique identity"
    gpu = services["cloud-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert services["recorder"]["profiles"] == ["record"]
    assert services["prometheus"]["profiles"] == ["metrics"]
    assert "healthcheck" in services["mosquitto"]
    assert services["cloud-worker"]["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def _local(command: list[str], paths: dict[str, str]) -> list[str]:
    """A service's command with container paths mapped to the test's folders."""
    out = []
    for arg in command:
        mapped = arg
        for container, local in paths.items():
            mapped = mapped.replace(container, local)
        out.append(mapped)
    return out


def _with_port(args: list[str], flag: str, port: int) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = str(port)
    return args


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_services_run_locally_and_spread_load(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    keys, broker = tmp_path / "keys", tmp_path / "broker"
    paths = {"/keys": str(keys), "/broker": str(broker), "/recordings": str(tmp_path)}

    # setup: the one-shot script, with the container paths mapped and `vlabus` run from here.
    script = "\n".join(services["setup"]["command"])
    script = re.sub(r"^\s*chown .*$", "", script, flags=re.M)
    script = script.replace("$$", "$").replace("--bind 0.0.0.0", "--bind 127.0.0.1")
    for container, local in paths.items():
        script = script.replace(container, local)
    env = dict(os.environ, VLABUS_MAX_WORKERS="2", VLABUS_MAX_ROBOTS="3")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "vlabus"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m vlabus \"$@\"\n")
    shim.chmod(0o755)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    subprocess.run(["/bin/sh", "-ec", script], check=True, env=env, timeout=120)

    from vlabus.broker.local import LocalMosquitto

    with LocalMosquitto(broker, executable=MOSQUITTO) as mosquitto:
        os.environ["VLABUS_BUS"] = mosquitto.url
        os.environ["VLABUS_BROKER_CONFIG"] = str(broker)
        children: list[Child] = []
        try:
            for i in range(2):
                port = free_port()
                args = _with_port(_local(services["cloud-worker"]["command"], paths),
                                  "--metrics-port", port)
                args[args.index("--metrics-host") + 1] = "127.0.0.1"
                children.append(Child(f"worker{i}", [*args, "--json"], tmp_path,
                                      metrics_port=port).start())
            robots = []
            for i in range(3):
                port = free_port()
                args = _with_port(_local(services["edge-sim"]["command"], paths),
                                  "--metrics-port", port)
                args[args.index("--metrics-host") + 1] = "127.0.0.1"
                robot = Child(f"robot{i}", [*args, "--seconds", "8", "--json"], tmp_path,
                              metrics_port=port)
                robots.append(robot.start())
            children += robots
            for robot in robots:
                assert robot.wait(timeout=120) == 0, robot.stderr_tail()
            summaries = [r.stdout_json() for r in robots]
            workers = children[:2]
            for worker in workers:
                assert worker.terminate() == 0, worker.stderr_tail()
            served = [w.stdout_json() for w in workers]
        finally:
            os.environ.pop("VLABUS_BUS", None)
            os.environ.pop("VLABUS_BROKER_CONFIG", None)
            for child in children:
                child.terminate(timeout=5)
    robot_ids = set()
    for summary in summaries:
        assert summary is not None
        assert summary["steps_without_action"] == 0
        assert summary["actions_by_source"].get("cloud", 0) > 0, summary
        robot_ids.add(summary.get("robot_id"))
    assert len(robot_ids) == 3, "each replica must claim its own identity"
    for summary in served:
        assert summary is not None
        assert summary["served"] > 0, f"a worker got no share of the load: {served}"
