"""``vlabus gateway openpi``: the real ``openpi-client`` package, unmodified, gets a 50x14 action
chunk computed by a real ``vlabus worker`` process; late cloud and bad observations are errors
the client can handle (the connection stays usable); a configured local fallback answers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

websocket_client_policy = pytest.importorskip("openpi_client.websocket_client_policy")

from schemas.messages import Status  # noqa: E402
from schemas.topics import robot_status_topic  # noqa: E402
from tests.support.aio import recv, run  # noqa: E402
from tests.support.keys import KeyDir  # noqa: E402
from vlabus.bus.transport import TransportOptions, open_transport  # noqa: E402
from vlabus.cli.procs import Child  # noqa: E402
from vlabus.policy import Observation  # noqa: E402
from vlabus.policy.reference import ReferencePolicy  # noqa: E402
from vlabus.wire import Decoder  # noqa: E402

pytestmark = [
    pytest.mark.integration, pytest.mark.slow,
    # openpi-client 0.1.2 calls websockets' connect() outside a `with`, which websockets >= 17.1
    # deprecates; that is the unmodified client's code, not ours
    pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager"
                               ":DeprecationWarning"),
]

ALOHA_CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
SIDE = 64


def wait_for(predicate: Callable[[], Any], child: Child, what: str,
             timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if not child.running:
            raise AssertionError(f"{child.name} exited before {what}:\n{child.stderr_tail()}")
        time.sleep(0.05)  # polling a child's output file
    raise AssertionError(f"{child.name}: no {what} within {timeout} s:\n{child.stderr_tail()}")


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def aloha_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference policy with ALOHA's cameras and a 50x14 chunk, as a weights file."""
    path = tmp_path_factory.mktemp("policy") / "aloha.safetensors"
    ReferencePolicy.seeded(device="cpu", cameras=ALOHA_CAMERAS, state_dim=14, horizon=50,
                           action_dim=14, width=16, name="aloha").save_safetensors(path)
    return path


@pytest.fixture
def children(tmp_path: Path) -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.terminate()


def start_worker(children: list[Child], tmp_path: Path, url: str, keydir: KeyDir,
                 policy: Path) -> Child:
    worker = Child("worker-1", ["worker", "--bus", url, "--keys", str(keydir.path), "--id",
                                "worker-1", "--policy", str(policy), "--device", "cpu",
                                "--threads", "1", "--json"], tmp_path).start()
    children.append(worker)
    wait_for(lambda: '"event": "ready"' in read(tmp_path / "worker-1.0.err"), worker, "ready")
    return worker


def start_gateway(children: list[Child], tmp_path: Path, url: str, keydir: KeyDir,
                  *extra: str) -> int:
    gateway = Child("gateway", ["gateway", "openpi", "--bus", url, "--keys", str(keydir.path),
                                "--robot-id", "robot-a", "--port", "0", "--preset", "aloha",
                                "--json", *extra], tmp_path).start()
    children.append(gateway)

    def port() -> int | None:
        for line in read(tmp_path / "gateway.0.out").splitlines():
            if '"listening"' in line:
                return int(json.loads(line)["port"])
        return None

    found: int = wait_for(port, gateway, "listening event")
    return found


async def retained_status(url: str, keydir: KeyDir) -> Status:
    """The robot's retained status, as a fresh subscriber gets it (verified)."""
    bus = await open_transport(url, TransportOptions(client_id="status-reader"))
    try:
        await bus.subscribe(robot_status_topic("robot-a"))
        message = await recv(bus)
    finally:
        await bus.close()
    status = Decoder(keydir.ring).decode(message.payload).message
    assert isinstance(status, Status)
    return status


def aloha_observation(seed: int) -> dict[str, Any]:
    """An observation as openpi's ALOHA example sends it: CxHxW uint8 images."""
    rng = np.random.default_rng(seed)
    return {"images": {name: rng.integers(0, 255, (3, SIDE, SIDE), dtype=np.uint8)
                       for name in ALOHA_CAMERAS},
            "state": rng.standard_normal(14).astype(np.float32),
            "prompt": "fold the towel"}


def expected_chunk(policy_path: Path, obs: dict[str, Any]) -> np.ndarray:
    policy = ReferencePolicy.load_safetensors(policy_path, device="cpu")
    images = {name: np.ascontiguousarray(obs["images"][name].transpose(1, 2, 0))
              for name in ALOHA_CAMERAS}
    out = policy.infer([Observation(images=images, command=obs["prompt"], state=obs["state"])])
    return np.asarray(out[0])


def test_unmodified_openpi_client_gets_a_worker_chunk(zmq_hub: Any, keydir: KeyDir,
                                                      tmp_path: Path, aloha_policy: Path,
                                                      children: list[Child]) -> None:
    start_worker(children, tmp_path, zmq_hub.url, keydir, aloha_policy)
    box = tmp_path / "gateway.mcap"
    port = start_gateway(children, tmp_path, zmq_hub.url, keydir, "--deadline-ms", "10000",
                         "--record", str(box))
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    try:
        metadata = client.get_server_metadata()
        assert metadata["robot_id"] == "robot-a"
        assert metadata["map"]["images/cam_high"] == "camera:cam_high"
        for seed in (1, 2):
            obs = aloha_observation(seed)
            result = client.infer(obs)
            assert result["actions"].shape == (50, 14)
            assert result["actions"].dtype == np.float32
            assert result["vlabus"]["source"] == "cloud"
            assert result["vlabus"]["worker_id"] == "worker-1"
            # the worker's policy computed it (not zeros, not the gateway)
            np.testing.assert_allclose(result["actions"], expected_chunk(aloha_policy, obs),
                                       atol=1e-5)
            assert result["server_timing"]["infer_ms"] > 0
    finally:
        client._ws.close()
    gateway = children[-1]
    assert gateway.terminate() == 0
    summary = gateway.stdout_json()
    assert summary is not None
    assert summary["cloud"] == 2
    assert summary["recording"]["records"] == 2  # one decision per request
    assert summary["recording"]["messages"] >= 6  # 2 frames, 2 actions, 2 decisions


def test_late_cloud_and_bad_observations_are_errors_the_client_survives(
        zmq_hub: Any, keydir: KeyDir, tmp_path: Path, children: list[Child]) -> None:
    port = start_gateway(children, tmp_path, zmq_hub.url, keydir, "--deadline-ms", "200")
    status = run(retained_status(zmq_hub.url, keydir))
    assert (status.client_id, status.role, status.state) == ("robot-a", "robot", "online")
    assert status.detail == {"gateway": "openpi"}
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    try:
        for _ in range(2):  # no worker: late each time, and the connection stays usable
            with pytest.raises(RuntimeError, match="cloud late: no action from the cloud"):
                client.infer(aloha_observation(3))
        obs = aloha_observation(4)
        del obs["images"]["cam_left_wrist"]
        with pytest.raises(RuntimeError, match=r"bad observation.*images/cam_left_wrist"):
            client.infer(obs)
    finally:
        client._ws.close()
    gateway = children[-1]
    assert gateway.terminate() == 0
    summary = gateway.stdout_json()
    assert summary is not None
    assert (summary["late_errors"], summary["bad_observations"]) == (2, 1)


def test_late_cloud_with_a_local_fallback_answers_locally(
        zmq_hub: Any, keydir: KeyDir, tmp_path: Path, aloha_policy: Path,
        children: list[Child]) -> None:
    port = start_gateway(children, tmp_path, zmq_hub.url, keydir, "--deadline-ms", "200",
                         "--fallback-policy", str(aloha_policy))
    client = websocket_client_policy.WebsocketClientPolicy(host="127.0.0.1", port=port)
    try:
        obs = aloha_observation(5)
        result = client.infer(obs)
    finally:
        client._ws.close()
    assert result["vlabus"] == {"source": "fallback", "cause": "timeout"}
    np.testing.assert_allclose(result["actions"], expected_chunk(aloha_policy, obs), atol=1e-5)
