"""deploy/kubernetes: every manifest of both overlays validates offline against the Kubernetes
schemas (kubernetes-validate), and every vlabus command and flag in them parses with vlabus's
own parser, so the manifests cannot drift from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.support.kube import (
    KUBE_VERSION,
    KUBERNETES,
    OVERLAYS,
    build,
    containers,
    expand_env,
    load_documents,
    pod_spec,
)
from vlabus.cli import build_parser


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return build(KUBERNETES / "overlays" / request.param)


def test_every_file_is_yaml_and_every_manifest_validates(overlay: list[dict[str, Any]]) -> None:
    for path in KUBERNETES.rglob("*.yaml"):
        assert load_documents(path), path
    for doc in overlay:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_validation_catches_a_broken_manifest(overlay: list[dict[str, Any]]) -> None:
    worker = next(d for d in overlay if d["metadata"]["name"] == "vlabus-worker"
                  and d["kind"] == "StatefulSet")
    broken = {**worker, "spec": {**worker["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSION, strict=True)


def test_every_vlabus_command_parses(overlay: list[dict[str, Any]]) -> None:
    parser = build_parser()
    vlabus = [c for c in containers(overlay) if c["image"].startswith("vlabus:")]
    assert {c["name"] for c in vlabus} == {"worker", "robot", "recorder", "publish"}
    for container in vlabus:
        argv = expand_env(container["args"], {"POD_NAME": "vlabus-worker-0"})
        assert "$(" not in " ".join(argv), argv
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{container['name']}: `vlabus {' '.join(argv)}` does not parse: {exc}")


def _kinds(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_the_fleet_shape(overlay: list[dict[str, Any]]) -> None:
    docs = _kinds(overlay)
    broker = docs["StatefulSet", "mosquitto"]
    assert broker["spec"]["volumeClaimTemplates"]
    worker = docs["StatefulSet", "vlabus-worker"]
    pod = pod_spec(worker)
    assert pod is not None
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] >= 20
    hpa = docs["HorizontalPodAutoscaler", "vlabus-worker"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "vlabus-worker"
    metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert metrics == {"vlabus_worker_queue_wait_p90_seconds",
                       "vlabus_worker_deadline_drops_per_second"}
    assert docs["PodDisruptionBudget", "vlabus-worker"]["spec"]["minAvailable"] == 1
    assert docs["Job", "vlabus-model-publish"]
    recorder = pod_spec(docs["Deployment", "vlabus-recorder"])
    assert recorder is not None
    claims = [v["persistentVolumeClaim"]["claimName"] for v in recorder["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["vlabus-recordings"]
    robots = docs["NetworkPolicy", "vlabus-robots-reach-only-the-broker"]["spec"]
    assert robots["ingress"] == []
    assert robots["egress"][0]["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mosquitto"}


def test_the_release_key_only_in_the_publishing_job(overlay: list[dict[str, Any]]) -> None:
    for doc in overlay:
        pod = pod_spec(doc)
        if pod is None:
            continue
        secrets = [s["secret"]["name"] for v in pod.get("volumes", [])
                   for s in v.get("projected", {}).get("sources", []) if "secret" in s]
        if "vlabus-id-release" in secrets:
            assert doc["kind"] == "Job", doc["metadata"]["name"]


def test_gpu_overlay_requests_gpus_and_cpu_does_not() -> None:
    def worker(name: str) -> dict[str, Any]:
        docs = _kinds(build(KUBERNETES / "overlays" / name))
        pod = pod_spec(docs["StatefulSet", "vlabus-worker"])
        assert pod is not None
        return pod["containers"][0]  # type: ignore[no-any-return]

    gpu, cpu = worker("gpu"), worker("cpu")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["args"][gpu["args"].index("--device") + 1] == "cuda"
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert cpu["args"][cpu["args"].index("--device") + 1] == "cpu"


def test_no_secret_material_in_the_repository() -> None:
    for path in Path(KUBERNETES).rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "PRIVATE KEY-----" not in text, path
