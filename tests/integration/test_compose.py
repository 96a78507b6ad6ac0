"""docker-compose.yml: valid against the Compose specification, and each service's command
works when started locally the way compose would start it (no Docker engine runs here)."""

from __future__ import annotations

import importlib.resources
import json
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support import ROOT
from tests.support.install import Installed
from tests.support.services import (
    command_env,
    compose_mounts,
    interpolate,
    local_device,
    set_flag,
    without_root_only,
)
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


LONG_RUNNING = ("cloud-worker", "cloud-worker-gpu", "edge-sim", "recorder")


def test_production_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        check = " ".join(services[name]["healthcheck"]["test"])
        port = services[name]["command"][services[name]["command"].index("--metrics-port") + 1]
        assert f"127.0.0.1:{port}/readyz" in check, name
    assert "--seconds" not in services["edge-sim"]["command"], "edge-sim must run indefinitely"
    recorder = services["recorder"]["command"]
    assert "--overwrite" not in recorder
    assert "--split-duration" in recorder, "a restarted recorder must never overwrite"
    assert "--log-stdout" in services["setup"]["command"][0], "broker logs go to stdout"
    # identities: the full keyring (release private key included) only in setup
    for name, service in services.items():
        volumes = [str(v).split(":")[0] for v in service.get("volumes", [])]
        if name != "setup":
            assert "keys" not in volumes, f"{name} must not mount the whole keyring"
        if name not in ("setup", "mosquitto"):
            assert "broker" not in volumes, f"{name} must not mount every client's password"
    assert next(str(v).split(":")[0] for v in services["release"]["volumes"]) == "id-release"


def vlabus_commands(compose: dict[str, Any]) -> dict[str, list[list[str]]]:
    """Every vlabus command line in the file: services' commands and the setup script's."""
    env = {"VLABUS_MODEL_FILE": "m.safetensors"}
    found: dict[str, list[list[str]]] = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or service.get("image", "vlabus:local") != "vlabus:local":
            continue
        if service.get("entrypoint"):
            script = interpolate("\n".join(command), env).replace("\\\n", " ")
            found[name] = [shlex.split(line.strip())[1:] for line in script.splitlines()
                           if line.strip().startswith("vlabus ")]
        else:
            found[name] = [[interpolate(str(arg), env) for arg in command]]
    return found


def test_every_command_and_flag_parses_with_vlabus_own_parser(
        compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from vlabus.cli import build_parser

    commands = vlabus_commands(compose)
    assert set(commands) >= {"setup", "cloud-worker", "edge-sim", "recorder", "release"}
    for name, lines in commands.items():
        monkeypatch.delenv("VLABUS_BUS", raising=False)
        for key, value in compose["services"][name].get("environment", {}).items():
            monkeypatch.setenv(key, str(value))
        parser = build_parser()  # defaults such as --bus come from the environment
        for argv in lines:
            try:
                parser.parse_args(argv)
            except SystemExit as exc:
                pytest.fail(f"{name}: `vlabus {' '.join(argv)}` does not parse ({exc})")


def _release_weights(path: Path) -> None:
    """Weights shaped like the simulated robots' local policy, for the release job."""
    from edge_agent.stack import LocalModel, build_local

    policy, _ = build_local(LocalModel())
    path.parent.mkdir(parents=True, exist_ok=True)
    policy.save_safetensors(path)  # type: ignore[attr-defined]


@pytest.mark.integration
@pytest.mark.slow
# builds and installs the wheel (first use) and starts nine processes importing torch on a
# machine that may be loaded: more than the default 120 s is honest here
@pytest.mark.timeout(360)
@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_services_run_from_the_installed_wheel(compose: dict[str, Any], tmp_path: Path,
                                                installed_vlabus: Installed) -> None:
    """Every service's command, run by the installed wheel: setup, the broker, two workers
    (and the GPU one), three robots, the recorder and the release job."""
    services = compose["services"]
    vlabus = [str(installed_vlabus.vlabus)]
    env = installed_vlabus.env(VLABUS_MAX_WORKERS="3", VLABUS_MAX_ROBOTS="3")

    setup = services["setup"]
    mounts = compose_mounts(setup, tmp_path, tmp_path)
    script = without_root_only(interpolate("\n".join(setup["command"]), {}))
    script = mounts.map(script.replace("--bind 0.0.0.0", "--bind 127.0.0.1"))
    subprocess.run(["/bin/sh", "-ec", script], check=True, env=env, timeout=300, cwd=tmp_path)

    from vlabus.broker.local import LocalMosquitto

    broker_dir = compose_mounts(services["mosquitto"], tmp_path, tmp_path).paths["/broker"]
    assert "log_dest stdout" in (broker_dir / "mosquitto.conf").read_text()
    _release_weights(tmp_path / "models" / "edge.safetensors")

    def child(name: str, service: str, extra: list[str] = (), **flags: str) -> Child:  # type: ignore[assignment]
        spec = services[service]
        args = [interpolate(str(a), {}) for a in spec["command"]]
        args = local_device(compose_mounts(spec, tmp_path, tmp_path).map(" ".join(args)).split())
        port = None
        if "--metrics-port" in args:
            port = free_port()
            args = set_flag(set_flag(args, "--metrics-port", str(port)), "--metrics-host",
                            "127.0.0.1")
        return Child(name, [*args, *extra], tmp_path, metrics_port=port, program=vlabus,
                     env=command_env(env, {"VLABUS_BUS": flags["bus"]}))

    with LocalMosquitto(broker_dir, executable=MOSQUITTO, port=0) as mosquitto:
        children: list[Child] = []
        try:
            workers = [child(f"worker{i}", "cloud-worker", ["--json"], bus=mosquitto.url).start()
                       for i in range(2)]
            gpu = child("gpu-worker", "cloud-worker-gpu", ["--json"], bus=mosquitto.url)
            robots = [child(f"robot{i}", "edge-sim", ["--json"], bus=mosquitto.url).start()
                      for i in range(3)]
            recorder = child("recorder", "recorder", ["--json"], bus=mosquitto.url).start()
            children += [*workers, *robots, recorder]
            deadline = time.monotonic() + 180
            while not all(r.scrape().get("vlabus_edge_actions_total{source=cloud}", 0) > 20
                          for r in robots):
                assert time.monotonic() < deadline, [r.stderr_tail() for r in robots]
                for c in children:
                    assert c.running, f"{c.name}: {c.stderr_tail()}"
                time.sleep(0.2)
            assert recorder.scrape().get("vlabus_record_messages_total", 0) > 0
            # a third worker (the GPU service, on CPU here) joins the running fleet
            children.append(gpu.start())
            release = child("release", "release", ["--json"], bus=mosquitto.url).start()
            assert release.wait(timeout=120) == 0, release.stderr_tail()
            for c in [*robots, *workers, gpu, recorder]:
                assert c.terminate() == 0, f"{c.name}: {c.stderr_tail()}"
            summaries = [r.stdout_json() for r in robots]
            served = [w.stdout_json() for w in workers]
            recorded = recorder.stdout_json()
            published = release.stdout_json()
        finally:
            for c in children:
                c.terminate(timeout=5)
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
    assert recorded is not None
    assert recorded["parts"][0].endswith("fleet-0001.mcap")
    assert recorded["messages"] > 0
    assert published is not None
    assert published["name"] == "edge"
    # each service saw only its own private keys
    volumes = tmp_path / "volumes"
    assert sorted(p.name for p in (volumes / "id-robot" / "robot").glob("*.key.pem")) == [
        "healthcheck.key.pem", "robot-1.key.pem", "robot-2.key.pem", "robot-3.key.pem"]
    for name in ("id-worker", "id-robot", "id-recorder"):
        assert not list((volumes / name / "release").glob("*.key.pem")), name
    assert list((volumes / "id-release" / "release").glob("*.key.pem"))
