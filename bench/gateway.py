"""``vlabus gateway openpi`` against an openpi-style server, in one run, with the same client.

The client is the real ``openpi_client.WebsocketClientPolicy`` (unmodified) in both cases; the
observation is two 224×224×3 camera images (the bench tabletop scene), a 14-float state and a
prompt; the answer a 50×14 float32 chunk.

* ``openpi_peer`` — :mod:`bench.websocket_peer`: openpi's published server path rebuilt with the
  same libraries (``websockets``, MessagePack with NumPy arrays, metadata on connect), a no-op
  policy in the server process. No signature, no hop, no queue.
* ``gateway`` — ``vlabus gateway openpi`` → ZeroMQ hub (``vlabus hub``) → ``vlabus worker``
  (no-op 50×14 policy, ``--max-delay-ms 0``) → hub → gateway: the frame signed, verified,
  deadline-queued, the action signed and verified, every process separate.

Rounds are interleaved (one gateway call, one peer call) so background load hits both alike;
``ratio_p50_gateway_vs_openpi_peer`` is the headline. Run under
``flock /tmp/vlabus-bench.lock``; on a shared 2-core machine the figures are noisy.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, environment, parser, ratio, stats_us, time_rounds
from edge_agent.scene import TabletopScene
from security.keys import add_key, init_keyring
from vlabus.cli.procs import free_port

CTX = multiprocessing.get_context("spawn")


def child(stack: ExitStack, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = stack.enter_context(open(log, "wb"))  # noqa: SIM115 - the stack closes it
    proc = subprocess.Popen([sys.executable, "-m", "vlabus", *args], stdout=out,
                            stderr=subprocess.STDOUT)
    stack.callback(proc.wait, 20)
    stack.callback(proc.terminate)
    return proc


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes],
                  timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        for line in content.splitlines():
            if text in line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited:\n{content[-2000:]}")
        time.sleep(0.05)  # polling a child's log
    raise RuntimeError(f"no {text!r} in {path} within {timeout} s")


def start_fleet(stack: ExitStack, root: Path) -> int:
    """Hub, worker and gateway processes; returns the gateway's port."""
    keys = root / "keys"
    init_keyring(keys)
    add_key(keys, "robot", "robot-a")
    add_key(keys, "worker", "worker-1")
    hub_port = free_port()
    bus = f"zmq://127.0.0.1:{hub_port}"
    hub = child(stack, ["hub", "--bind", f"tcp://127.0.0.1:{hub_port}"], root / "hub.log")
    worker = child(stack, ["worker", "--bus", bus, "--keys", str(keys), "--id", "worker-1",
                           "--policy", "bench.roundtrip:chunk_policy", "--max-delay-ms", "0",
                           "--device", "cpu"], root / "worker.log")
    gateway = child(stack, ["gateway", "openpi", "--bus", bus, "--keys", str(keys),
                            "--robot-id", "robot-a", "--port", "0", "--json",
                            "--map", "images/top=camera:top", "--map", "images/wrist=camera:wrist",
                            "--map", "state=state", "--map", "prompt=command",
                            "--deadline-ms", "2000"], root / "gateway.log")
    # all three start at once (the worker's torch import dominates); then wait for both
    wait_for_text(root / "worker.log", '"event": "ready"', worker)
    line = wait_for_text(root / "gateway.log", '"listening"', gateway)
    if hub.poll() is not None:
        raise RuntimeError(f"the hub exited:\n{(root / 'hub.log').read_text()[-2000:]}")
    return int(json.loads(line)["port"])


def start_peer(stack: ExitStack) -> int:
    from bench import websocket_peer

    ready = CTX.Queue()
    proc = CTX.Process(target=websocket_peer.serve, args=(ready, {"server": "openpi-style"}),
                       daemon=True)
    proc.start()
    stack.callback(proc.join, 5)
    stack.callback(proc.terminate)
    return int(ready.get(timeout=30))


def observation() -> dict[str, Any]:
    return {"images": {"top": TabletopScene(224, 224, seed=1).render(0),
                       "wrist": TabletopScene(224, 224, seed=2).render(0)},
            "state": np.linspace(-1, 1, 14, dtype=np.float32),
            "prompt": "pick up the red cube"}


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    # openpi-client 0.1.2 opens its websockets connection outside a `with` (deprecated in
    # websockets 17.1): the unmodified client's code, not ours
    warnings.filterwarnings("ignore", r"connect\(\) must be used", DeprecationWarning)
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    rounds = 100 if args.quick else 1000
    obs = observation()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        peer_port = start_peer(stack)
        gateway_port = start_fleet(stack, Path(tmp))
        gateway = WebsocketClientPolicy(host="127.0.0.1", port=gateway_port)
        peer = WebsocketClientPolicy(host="127.0.0.1", port=peer_port)
        for client in (gateway, peer):
            stack.callback(client._ws.close)
            shape = client.infer(obs)["actions"].shape
            assert shape == (50, 14), shape
        samples = time_rounds({"gateway": lambda: gateway.infer(obs),
                               "openpi_peer": lambda: peer.infer(obs)}, rounds, warmup=20)
    report: dict[str, Any] = {"bench": "gateway", "rounds": rounds,
                              "observation": "2x224x224x3 uint8 + 14 float32 + prompt",
                              "answer": "50x14 float32"}
    for name, values in samples.items():
        report[name] = stats_us(values)
    report["ratio_p50_gateway_vs_openpi_peer"] = ratio(report["gateway"]["p50_us"],
                                                       report["openpi_peer"]["p50_us"])
    report["environment"] = environment()
    emit(report, compact=args.json)


if __name__ == "__main__":
    main()
