"""Worker throughput: dynamic batching with the reference policy, and the no-op ceiling.

    python -m bench.worker --json [--quick]

Sections (one JSON object on stdout):

* ``policy_floor`` — the raw library floor: ``ReferencePolicy.infer`` alone on 224x224x3
  frames at batch 1, 4, 16, 32 (frames/s), per device (cpu, and cuda when available).
* ``batching`` — the whole worker pipeline in process over ``memory://`` (verify, decode, queue,
  batch, infer on the inference thread, encode, sign) with the reference policy and
  ``--max-batch`` 1, 4, 16, 32, under a closed-loop load of ``WINDOW`` frames in flight from
  32 robots. frames/s, p50/p99 of queue wait + inference (from each Action's own fields), the
  mean batch size, the ratio to max-batch 1 and to the raw policy floor.
* ``ceiling`` — one real ``vlabus worker --policy noop`` process fed over a real Mosquitto by
  64 robots (frames encoded and signed ahead of time by this process, once the worker is
  ready), closed loop with
  ``WINDOW_MQTT`` in flight; frames/s and the worker's own ``--json`` summary. Its floor is the
  single-thread rate of the receive pipeline alone (``Decoder.decode`` of the same frames).
* ``ceiling_session`` — the same worker process and load in session integrity
  (``--session-pool``): each robot offers a session first, then every frame carries a keyed
  BLAKE3 MAC instead of an Ed25519 signature, and the worker answers under the session.
  ``ceiling_session_vs_signed`` is its frames/s over the signed ceiling's, measured in the same
  run: what the crypto saved. Its floor is the session receive pipeline alone.
* ``served_cuda`` (only when torch sees a GPU) — the same real worker process and load as the
  ceiling, serving the reference policy with ``--device cuda``; ``served_cuda_xN`` the same
  with N worker processes in one group sharing the GPU (``--gpu-workers``), and
  ``served_cuda_processes`` their frames/s by process count.

Frames are from ``edge_agent.scene.TabletopScene``; every envelope is distinct (no replays),
so the worker's replay guard stays on. The robot side reads reply headers without verifying
signatures: the robot's verify cost is not the worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import lz4.frame
import msgspec
import numpy as np
import torch

from cloud_workers.metrics import WorkerMetrics
from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import WorkerConfig, open_worker
from edge_agent.scene import TabletopScene
from schemas import topics
from schemas.arrays import pack_array
from schemas.images import encode_image
from schemas.messages import Action, Frame, SessionOffer
from security.keys import (
    Keyring,
    Signer,
    add_key,
    add_pool_key,
    load_pool_key,
    load_pool_secret,
)
from security.seal import PoolKey, PoolSecret
from security.session import (
    TAG_SIZE,
    Rotation,
    Session,
    SessionTable,
    accept_offer,
    offer_session,
)
from vlabus.broker.local import LocalMosquitto
from vlabus.broker.render import Limits, render
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import Transport, TransportOptions, open_transport
from vlabus.envelope import PREFIX_SIZE, SESSION_VERSION, SIGNATURE_SIZE
from vlabus.policy import Observation
from vlabus.policy.reference import ReferencePolicy, set_threads
from vlabus.session_wire import SessionEncoder, SessionVerifier
from vlabus.wire import Decoder, Encoder

BATCHES = (1, 4, 16, 32)
WINDOW = 64
WINDOW_MQTT = 256
ROOT = Path(__file__).resolve().parent.parent
_ACTION = msgspec.msgpack.Decoder(Action)


def scene_images(count: int) -> list[np.ndarray]:
    scene = TabletopScene(224, 224, seed=1)
    return [scene.render(step) for step in range(count)]


def observation(image: np.ndarray) -> Observation:
    return Observation({"front": image}, "pick up the red cube", np.zeros(14, np.float32))


def encode_frames(signers: list[Signer], images: list[np.ndarray], count: int,
                  encoders: list[Encoder] | None = None) -> list[bytes]:
    """``count`` frame envelopes, round-robin over the robots (signed, or by ``encoders``,
    one per robot); deadlines 60 s out."""
    encoders = encoders or [Encoder(s) for s in signers]
    deadline = time.time_ns() + 60_000_000_000
    out = []
    for i in range(count):
        enc = encoders[i % len(encoders)]
        frame = Frame(robot_id=enc.signer.identity, step=i,
                      cameras={"front": encode_image(images[i % len(images)])},
                      command="pick up the red cube", state=pack_array(np.zeros(14, np.float32)),
                      capture_ns=time.time_ns())
        out.append(enc.encode(frame, deadline_ns=deadline, corr=str(i)))
    return out


def encode_session_frames(signers: list[Signer], images: list[np.ndarray], count: int,
                          pool: PoolKey) -> tuple[list[tuple[str, bytes]], list[bytes]]:
    """Each robot's signed session offer to ``pool`` (topic, envelope), then ``count`` frame
    envelopes MACed under those sessions, round-robin over the robots."""
    offers: list[tuple[str, bytes]] = []
    encoders: list[Encoder] = []
    for signer in signers:
        offer, session = offer_session(signer.identity, signer.key_id, pool, Rotation())
        offers.append((topics.session_topic(signer.identity), Encoder(signer).encode(offer)))
        encoders.append(SessionEncoder(signer, functools.partial(_same, session), "up"))
    return offers, encode_frames(signers, images, count, encoders)


def _same(session: Session, _message: object) -> Session:
    return session


def peek_action(payload: bytes | memoryview) -> Action:
    """Bench-only: read an Action body without verifying its signature or MAC."""
    view = memoryview(payload)
    header_len = int.from_bytes(view[3:5], "big")
    trailer = TAG_SIZE if view[2] == SESSION_VERSION else SIGNATURE_SIZE
    body = view[PREFIX_SIZE + header_len: len(view) - trailer]
    header = msgspec.msgpack.decode(view[PREFIX_SIZE: PREFIX_SIZE + header_len])
    if header.get("enc", 0) & 1:
        body = memoryview(lz4.frame.decompress(body))
    return _ACTION.decode(body)


def policy_floor(device: str, images: list[np.ndarray], seconds: float) -> dict[str, Any]:
    """Best of five short windows per batch size: a floor should not count other load."""
    policy = ReferencePolicy.seeded(device=device)
    out = {}
    for batch in BATCHES:
        obs = [observation(images[i % len(images)]) for i in range(batch)]
        for _ in range(3):
            policy.infer(obs)
        best = 0.0
        for _ in range(5):
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 5:
                policy.infer(obs)
                count += batch
            best = max(best, count / (time.perf_counter() - start))
        out[str(batch)] = round(best, 1)
    return {"frames_per_s": out}


async def closed_loop(sender: Transport, receiver: Transport, frames: list[bytes],
                      robot_ids: list[str], window: int,
                      collect: list[Action] | None) -> tuple[float, int]:
    """Send ``window`` frames, then one more per reply; returns (seconds, replies)."""
    sent = 0

    async def send_next() -> None:
        nonlocal sent
        i = sent
        sent += 1
        await sender.publish(topics.frame_topic(robot_ids[i % len(robot_ids)]), frames[i])

    start = time.perf_counter()
    for _ in range(min(window, len(frames))):
        await send_next()
    got = 0
    last = start
    while got < len(frames):
        try:
            # a frame can be lost (stale on a badly overloaded machine): stop after 5 s idle
            message = await asyncio.wait_for(receiver.receive(), 5.0)
        except TimeoutError:
            break
        last = time.perf_counter()
        got += 1
        if collect is not None:
            collect.append(peek_action(message.payload))
        if sent < len(frames):
            await send_next()
    return last - start, got


async def batching_run(device: str, max_batch: int, count: int,
                       images: list[np.ndarray]) -> dict[str, Any]:
    url = f"memory://bench-{uuid.uuid4().hex}"
    robots = [Signer.generate("robot", f"robot-{i:03d}") for i in range(32)]
    worker_signer = Signer.generate("worker", "bench-worker")
    ring = Keyring([s.public for s in [*robots, worker_signer]])
    runner = PolicyRunner({"reference": ReferencePolicy.seeded(device=device)}, {})
    metrics = WorkerMetrics()
    config = WorkerConfig(worker_id="bench-worker", group="bench", max_batch=max_batch,
                          max_delay_ns=2_000_000)
    worker = await open_worker(url, worker_signer, ring, runner, metrics=metrics, config=config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await worker.ready.wait()
    client = await open_transport(url, TransportOptions(client_id="bench-robots"))
    await client.subscribe(f"{topics.PREFIX}/+/action")
    frames = encode_frames(robots, images, count)
    actions: list[Action] = []
    try:
        elapsed, got = await closed_loop(client, client, frames, [r.identity for r in robots],
                                         WINDOW, actions)
    finally:
        stop.set()
        await task
        await client.close()
        await worker.transport.close()
        reset_memory(url.removeprefix("memory://"))
    total = np.array([(a.queue_wait_ns + a.inference_ns) / 1e6 for a in actions])
    summary = metrics.summary.as_dict()
    return {"frames_per_s": round(got / elapsed, 1),
            "queue_plus_inference_ms": {"p50": round(float(np.percentile(total, 50)), 3),
                                        "p99": round(float(np.percentile(total, 99)), 3)},
            "mean_batch_size": summary["mean_batch_size"],
            "batch_inference_ms": summary["inference_ms"], "frames": got,
            "dropped": summary["dropped_total"]}


def batching(device: str, count: int, images: list[np.ndarray],
             floor: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for max_batch in BATCHES:
        out[str(max_batch)] = asyncio.run(batching_run(device, max_batch, count, images))
    base = out["1"]["frames_per_s"]
    for max_batch in BATCHES:
        row = out[str(max_batch)]
        row["speedup_vs_batch1"] = round(row["frames_per_s"] / base, 2)
        row["ratio_to_policy_floor"] = round(row["frames_per_s"] / floor[str(max_batch)], 3)
    return out


def decode_floor(frames: list[bytes], ring: Keyring,
                 sessions: SessionVerifier | None = None) -> float:
    # no replay guard: the same frames may be decoded by the worker
    decoder = Decoder(ring, sessions=sessions)
    start = time.perf_counter()
    for payload in frames:
        decoder.decode(payload)
    return round(len(frames) / (time.perf_counter() - start), 1)


async def ceiling_run(count: int, images: list[np.ndarray], workdir: Path, *,
                      policy: str = "noop", device: str = "cpu",
                      workers: int = 1, session: bool = False) -> dict[str, Any]:
    """``workers`` real worker processes in one group, fed over Mosquitto by 64 robots
    (``session``: in session integrity with pool ``gpu``)."""
    keys = workdir / "keys"
    robots = [add_key(keys, "robot", f"robot-{i:03d}") for i in range(64)]
    extra = ["--session-pool", "gpu"] if session else []
    if session:
        add_pool_key(keys, "gpu")
    names = ["bench-worker"] if workers == 1 else [f"bench-worker-{i}" for i in range(workers)]
    for name in names:
        add_key(keys, "worker", name)
    render(keys, workdir / "broker", limits=Limits(persistence=False, max_queued_messages=4096))
    broker = LocalMosquitto(workdir / "broker")
    broker.start()
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    try:
        for name in names:  # all start at once; each is waited for below
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "vlabus", "worker", "--bus", broker.url, "--keys",
                 str(keys), "--id", name, "--group", "bench", "--policy", policy, "--device",
                 device, "--max-batch", "32", "--max-delay-ms", "2", "--queue-size", "2048",
                 "--broker-config", str(workdir / "broker"), "--json", *extra],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
        for proc in procs:
            assert proc.stderr is not None
            for line in proc.stderr:
                if b'"event": "ready"' in line:
                    break
            else:
                raise RuntimeError("worker exited before it was ready")
            # keep draining its log so a full pipe can never stall the worker
            threading.Thread(target=proc.stderr.read, daemon=True).start()
        # encoded once the workers are up: a frame sent more than the replay guard's 10 s
        # after it was made is refused as stale, and a loaded machine starts workers slowly
        offers: list[tuple[str, bytes]] = []
        verifier = None
        if session:
            offers, frames = encode_session_frames(robots, images, count,
                                                   load_pool_key(keys, "gpu"))
            verifier = pool_verifier(offers, Keyring.load(keys), load_pool_secret(keys, "gpu"))
        else:
            frames = encode_frames(robots, images, count)
        floor = decode_floor(frames[: min(len(frames), 1000)], Keyring.load(keys), verifier)
        sender = await open_transport(broker.url, broker.options("robot-000", "bench-send"))
        receiver = await open_transport(broker.url, broker.options(
            "robot-001", "bench-recv", inbox_size=1 << 16))
        await receiver.subscribe(f"{topics.PREFIX}/+/action", qos=0)
        for topic, offer in offers:  # acknowledged by the broker, delivered before the frames
            await sender.publish(topic, offer, qos=1)
        elapsed, got = await closed_loop(sender, receiver, frames, [r.identity for r in robots],
                                         WINDOW_MQTT, None)
        await sender.close()
        await receiver.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        summaries = []
        for proc in procs:
            printed, _ = proc.communicate(timeout=60)
            summaries.append(json.loads(printed.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        broker.stop()
    fps = round(got / elapsed, 1)
    shown = [{k: summary.get(k) for k in (
        "received", "served", "rejected", "rejected_total", "dropped", "batches",
        "mean_batch_size",
        "queue_wait_ms", "inference_ms")} for summary in summaries]
    out: dict[str, Any] = {
        "frames_per_s": fps, "frames": got, "decode_floor_frames_per_s": floor,
        "ratio_to_decode_floor": round(fps / floor, 3), "policy": policy, "device": device}
    if workers == 1:
        out["worker"] = shown[0]
    else:
        out["workers"] = shown
    return out


def pool_verifier(offers: list[tuple[str, bytes]], ring: Keyring,
                  secret: PoolSecret) -> SessionVerifier:
    """The pool's side of ``offers``: what checks the session frames (the decode floor)."""
    table = SessionTable(Rotation())
    decoder = Decoder(ring)
    for _topic, wire in offers:
        got = decoder.decode(wire)
        assert isinstance(got.message, SessionOffer)
        table.add(accept_offer(got.message, got.header.key, secret, Rotation()))
    return SessionVerifier(table, "up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object (default)")
    parser.add_argument("--quick", action="store_true", help="finish in well under 20 s")
    parser.add_argument("--skip-ceiling", action="store_true", help="no Mosquitto section")
    parser.add_argument("--gpu-workers", type=int, nargs="*", default=[2, 4], metavar="N",
                        help="with a GPU: also serve with N worker processes sharing it "
                             "(default 2 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: the worker's, all cores but one)")
    args = parser.parse_args()
    set_threads(args.threads)  # the worker's default: all cores but one
    images = scene_images(16)
    seconds = 0.5 if args.quick else 2.0
    count = 400 if args.quick else 2000
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    result: dict[str, Any] = {"bench": "worker", "quick": args.quick, "window": WINDOW,
                              "torch_threads": torch.get_num_threads(), "policy_floor": {},
                              "batching": {}}
    for device in devices:
        floor = policy_floor(device, images, seconds)
        result["policy_floor"][device] = floor
        result["batching"][device] = batching(device, count, images, floor["frames_per_s"])
    if not args.skip_ceiling:
        frames = 3000 if args.quick else 8000
        with tempfile.TemporaryDirectory() as tmp:
            result["ceiling"] = asyncio.run(ceiling_run(frames, images, Path(tmp)))
        result["ceiling"]["target_frames_per_s"] = 1500
        with tempfile.TemporaryDirectory() as tmp:  # the same, in session integrity
            result["ceiling_session"] = asyncio.run(ceiling_run(frames, images, Path(tmp),
                                                                session=True))
        result["ceiling_session_vs_signed"] = round(
            result["ceiling_session"]["frames_per_s"] / result["ceiling"]["frames_per_s"], 3)
        if "cuda" in devices:
            # the same process and load, serving the reference policy on the GPU; then
            # several such processes sharing the one GPU
            with tempfile.TemporaryDirectory() as tmp:
                result["served_cuda"] = asyncio.run(ceiling_run(
                    frames, images, Path(tmp), policy="reference", device="cuda"))
            result["served_cuda_processes"] = {"1": result["served_cuda"]["frames_per_s"]}
            for workers in args.gpu_workers:
                with tempfile.TemporaryDirectory() as tmp:
                    run = asyncio.run(ceiling_run(frames, images, Path(tmp), policy="reference",
                                                  device="cuda", workers=workers))
                result["served_cuda_processes"][str(workers)] = run["frames_per_s"]
                result[f"served_cuda_x{workers}"] = run
    print(json.dumps(result))


if __name__ == "__main__":
    main()
