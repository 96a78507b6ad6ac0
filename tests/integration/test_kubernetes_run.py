"""Every vlabus container of the Kubernetes manifests, run by the installed wheel the way the
cluster would start it: its args (``$(POD_NAME)`` expanded), its ``/id`` volume made of what
the keyring ConfigMap and its identity's Secret hold (flat files, from ``vlabus keys export
--flat``, as ``kubectl create … --from-file`` would store them), against a real Mosquitto
with the fleet configuration (TLS client certificates, dynamic security)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.install import Installed
from tests.support.kube import KUBERNETES, build, expand_env, pod_spec
from tests.support.services import Mounts, local_device, set_flag
from vlabus.cli.procs import Child, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLUSTER_BUS = "mqtts://mosquitto.vlabus.svc.cluster.local:8883"
IDENTITIES = {"vlabus-worker-0": "worker", "vlabus-worker-1": "worker",
              "vlabus-robot-sim-0": "robot", "recorder": "recorder", "release": "release"}


def vlabus(installed: Installed, tmp: Path, *args: str) -> None:
    done = installed.run(*args, cwd=tmp)
    assert done.returncode == 0, f"vlabus {' '.join(args)}: {done.stdout}{done.stderr}"


def pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod name (as the cluster names the first replica) → its vlabus container."""
    found = {}
    for doc in docs:
        pod = pod_spec(doc)
        if pod is None:
            continue
        for container in pod["containers"]:
            if container["image"].startswith("vlabus:"):
                stateful = doc["kind"] == "StatefulSet"
                found[f"{doc['metadata']['name']}-0" if stateful else
                      doc["metadata"]["name"]] = {"container": container, "pod": pod}
    return found


# builds and installs the wheel (first use) and starts nine processes importing torch on a
# machine that may be loaded: more than the default 120 s is honest here
@pytest.mark.timeout(360)
@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed")
def test_kubernetes_containers_run_from_the_installed_wheel(
        installed_vlabus: Installed, tmp_path: Path) -> None:
    keys, broker = tmp_path / "keys", tmp_path / "broker"
    vlabus(installed_vlabus, tmp_path, "keys", "init", str(keys))
    for identity, role in IDENTITIES.items():
        vlabus(installed_vlabus, tmp_path, "keys", "add", role, identity, "--dir", str(keys))
    vlabus(installed_vlabus, tmp_path, "broker", "render", "--keys", str(keys), "--out",
           str(broker), "--tls", "--hostname", "localhost")
    # what the cluster's broker Secret is rendered as: paths on the broker's volume
    vlabus(installed_vlabus, tmp_path, "broker", "render", "--keys", str(keys), "--out",
           str(tmp_path / "cluster-broker"), "--tls", "--bind", "0.0.0.0", "--port", "8883",
           "--config-dir", "/mosquitto/config", "--log-stdout", "--hostname",
           "mosquitto.vlabus.svc.cluster.local")
    conf = (tmp_path / "cluster-broker" / "mosquitto.conf").read_text()
    assert "cafile /mosquitto/config/tls/ca.crt" in conf
    assert "log_dest stdout" in conf
    # the ConfigMap vlabus-keyring and one Secret per identity, as kubectl would store them
    configmap = tmp_path / "configmap"
    vlabus(installed_vlabus, tmp_path, "keys", "export", "--dir", str(keys), "--out",
           str(configmap), "--flat", "--broker-config", str(broker))
    for identity, role in IDENTITIES.items():
        vlabus(installed_vlabus, tmp_path, "keys", "export", "--dir", str(keys), "--out",
               str(tmp_path / "secrets" / identity), "--flat", "--no-public", "--private",
               f"{role}/{identity}", "--broker-config", str(broker))
    models = tmp_path / "models"
    models.mkdir()
    from edge_agent.stack import LocalModel, build_local

    build_local(LocalModel())[0].save_safetensors(models / "edge.safetensors")  # type: ignore[attr-defined]

    docs = build(KUBERNETES / "overlays" / "cpu")
    found = pods(docs)
    assert set(found) == {"vlabus-worker-0", "vlabus-robot-sim-0", "vlabus-recorder",
                          "vlabus-model-publish"}
    found["vlabus-worker-1"] = found["vlabus-worker-0"]  # a second replica

    from vlabus.broker.local import LocalMosquitto

    def child(pod_name: str, url: str) -> Child:
        container, pod = found[pod_name]["container"], found[pod_name]["pod"]
        args = expand_env(container["args"], {"POD_NAME": pod_name})
        mounts = Mounts()
        identity_dir = tmp_path / "pods" / pod_name / "id"
        mounts.add("/id", identity_dir)
        for source in next(v for v in pod["volumes"] if v["name"] == "id")["projected"][
                "sources"]:
            if "configMap" in source:
                folder = configmap
            else:
                name = source["secret"]["name"].removeprefix("vlabus-id-")
                folder = tmp_path / "secrets" / name
                if not folder.exists():
                    assert source["secret"].get("optional"), name
                    continue
            for item in folder.iterdir():
                shutil.copy2(item, identity_dir / item.name)
        mounts.add("/recordings", tmp_path / "recordings")
        mounts.add("/models", models)
        args = [mounts.map(a) for a in args]
        args = set_flag(args, "--bus", url)
        args = local_device(args)
        port = None
        if "--metrics-port" in args:
            port = free_port()
            args = set_flag(set_flag(args, "--metrics-port", str(port)), "--metrics-host",
                            "127.0.0.1")
        if "--json" not in args:
            args.append("--json")
        return Child(pod_name, args, tmp_path, metrics_port=port,
                     program=[str(installed_vlabus.vlabus)], env=installed_vlabus.env())

    with LocalMosquitto(broker, port=0) as mosquitto:
        url = mosquitto.url.replace("mqtt://127.0.0.1", "mqtts://localhost")
        children: list[Child] = []
        try:
            workers = [child(name, url).start() for name in ("vlabus-worker-0",
                                                              "vlabus-worker-1")]
            robot = child("vlabus-robot-sim-0", url).start()
            recorder = child("vlabus-recorder", url).start()
            children += [*workers, robot, recorder]
            deadline = time.monotonic() + 180
            while robot.scrape().get("vlabus_edge_actions_total{source=cloud}", 0) < 20:
                assert time.monotonic() < deadline, robot.stderr_tail()
                for c in children:
                    assert c.running, f"{c.name}: {c.stderr_tail()}"
                time.sleep(0.2)
            publish = child("vlabus-model-publish", url).start()
            assert publish.wait(timeout=120) == 0, publish.stderr_tail()
            assert recorder.scrape().get("vlabus_record_messages_total", 0) > 0
            for c in children:
                assert c.terminate() == 0, f"{c.name}: {c.stderr_tail()}"
            summaries = {c.name: c.stdout_json() for c in [*children, publish]}
        finally:
            for c in children:
                c.terminate(timeout=5)
    assert summaries["vlabus-robot-sim-0"]["robot_id"] == "vlabus-robot-sim-0"  # type: ignore[index]
    assert summaries["vlabus-robot-sim-0"]["steps_without_action"] == 0  # type: ignore[index]
    assert summaries["vlabus-model-publish"]["name"] == "edge"  # type: ignore[index]
    assert summaries["vlabus-recorder"]["parts"][0].endswith("fleet-0001.mcap")  # type: ignore[index]
    assert sum(summaries[w]["served"] for w in ("vlabus-worker-0",  # type: ignore[index]
                                                 "vlabus-worker-1")) > 0
