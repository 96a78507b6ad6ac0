"""Signed model updates on the robot: install, swap, rollback, and every attack rejected with the
active model unchanged."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
import pytest

from cloud_workers.publisher import Release, build_release, publish_release
from edge_agent.feed import ModelFeed
from edge_agent.local import LocalPolicy
from edge_agent.metrics import EdgeMetrics
from edge_agent.receiver import Receiver
from edge_agent.stack import LocalModel, build_local, load_reference
from edge_agent.store import ModelStore
from edge_agent.updates import ModelUpdater
from schemas.messages import ModelChunk
from schemas.topics import model_chunk_topic, model_manifest_topic
from security.keys import Signer
from tests.support.edge import TinyPolicy
from tests.support.keys import KeyDir
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import Message, TransportOptions, open_transport
from vlabus.inbound import Rejections
from vlabus.policy import Observation
from vlabus.policy.reference import ReferencePolicy
from vlabus.wire import Encoder

NAME = "edge"
_buses = itertools.count()


def probe() -> Observation:
    return Observation(images={"front": np.full((32, 32, 3), 90, np.uint8)}, command="pick",
                       state=np.zeros(14, np.float32))


def weights(tmp_path: Path, version: int, *, horizon: int = 4, seed: int = 0) -> bytes:
    policy = ReferencePolicy.seeded(device="cpu", width=8, horizon=horizon, action_dim=7,
                                    name=NAME, version=version, seed=seed)
    return policy.save_safetensors(tmp_path / f"src-v{version}-{horizon}.safetensors").read_bytes()


@dataclass
class Robot:
    receiver: Receiver
    feed: ModelFeed
    local: LocalPolicy
    store: ModelStore
    original: TinyPolicy

    @property
    def updater(self) -> ModelUpdater:
        return self.feed.updater

    def unchanged(self) -> bool:
        """The active model is still the original: in memory, staged and on disk."""
        self.local.swap_staged()
        return (self.local.policy is self.original and self.local.version == 0
                and self.store.active(NAME) is None)


async def make_robot(keydir: KeyDir, tmp_path: Path) -> Robot:
    name = f"upd-{next(_buses)}"
    reset_memory(name)
    bus = await open_transport(f"memory://{name}", TransportOptions(client_id="robot-a"))
    original = TinyPolicy(horizon=4, dim=7)
    local = LocalPolicy(original, 0)
    store = ModelStore(tmp_path / "models")
    updater = ModelUpdater(store, NAME, installed=0, loader=load_reference, probe=probe(),
                           shape=(4, 7), max_bytes=1 << 20)
    feed = ModelFeed(updater, local, keydir.ring, metrics=EdgeMetrics(),
                     rejections=Rejections())
    return Robot(Receiver(bus, feed=feed), feed, local, store, original)


def send(robot: Robot, signer: Signer, release: Release, *,
         chunks: list[ModelChunk] | None = None) -> None:
    """Deliver ``release`` as the bus would, signed by ``signer``."""
    encoder = Encoder(signer)
    manifest = release.manifest
    robot.receiver.handle(Message(model_manifest_topic(NAME), encoder.encode(manifest), 0))
    if chunks is None:
        chunks = [ModelChunk(name=NAME, version=manifest.version, index=i, data=memoryview(c))
                  for i, c in enumerate(release.chunks)]
    for chunk in chunks:
        robot.receiver.handle(Message(model_chunk_topic(NAME), encoder.encode(chunk), 0))


def test_valid_release_installs_swaps_between_steps_and_keeps_the_previous(
        keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        release = build_release(weights(tmp_path, 3), name=NAME, version=3, chunk_size=4096)
        assert len(release.chunks) > 1
        send(robot, keydir.signers["release"], release)
        await robot.feed.settle()
        assert robot.updater.results["installed"] == 1
        assert robot.local.policy is robot.original  # not swapped mid-step
        assert robot.local.swap_staged()
        assert robot.local.version == 3
        assert robot.local.previous == (robot.original, 0)
        active = robot.store.active(NAME)
        assert active is not None
        assert active.version == 3
        assert active.path.read_bytes() == weights(tmp_path, 3)
        assert robot.local.infer(probe()).shape == (4, 7)
        # a restarted robot starts from the installed release, not its built-in weights
        policy, version = build_local(LocalModel(name=NAME, models_dir=tmp_path / "models"))
        assert version == 3
        assert np.array_equal(policy.infer([probe()]), robot.local.policy.infer([probe()]))
    asyncio.run(main())


def test_release_over_the_bus_reaches_the_receiver(keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        await robot.receiver.start()
        bus = await open_transport(robot.receiver.transport.url,
                                   TransportOptions(client_id="release"))
        release = build_release(weights(tmp_path, 1), name=NAME, version=1, chunk_size=8192)
        await publish_release(bus, Encoder(keydir.signers["release"]), release)
        for _ in range(200):
            await robot.feed.settle()
            if robot.updater.results["installed"]:
                break
            await asyncio.sleep(0.01)
        assert robot.updater.results["installed"] == 1
        await robot.receiver.close()
    asyncio.run(main())


def test_a_robot_that_missed_chunks_completes_when_the_release_is_published_again(
        keydir: KeyDir, tmp_path: Path) -> None:
    """Chunks are not retained: a robot offline during part of a rollout keeps its download
    open, and running ``vlabus model publish`` again fills in what it missed."""
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        release = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=2048)
        chunks = [ModelChunk(name=NAME, version=2, index=i, data=memoryview(c))
                  for i, c in enumerate(release.chunks)]
        half = len(chunks) // 2
        assert half >= 2
        send(robot, keydir.signers["release"], release, chunks=chunks[::2])  # every other one
        await robot.feed.settle()
        assert robot.updater.results["chunk_ok"] == len(chunks[::2])
        assert "installed" not in robot.updater.results
        assert robot.unchanged()
        stuck = robot.feed.counters()["model_download"]
        assert stuck is not None
        assert (stuck["version"], stuck["chunks"], stuck["total"]) == \
            (2, len(chunks[::2]), len(chunks))
        assert stuck["idle_s"] >= 0
        registry = robot.feed.metrics.registry
        missing = "vlabus_edge_model_download_missing_chunks"
        assert registry.get_sample_value(missing) == len(chunks) - len(chunks[::2])
        send(robot, keydir.signers["release"], release)  # the release published again
        await robot.feed.settle()
        assert robot.updater.results["installed"] == 1
        assert robot.feed.counters()["model_download"] is None
        assert registry.get_sample_value(missing) == 0
        assert robot.updater.results["duplicate_chunk"] == len(chunks[::2])
        assert robot.local.swap_staged()
        assert robot.local.version == 2
    asyncio.run(main())


@pytest.mark.parametrize("attack", ["unsigned", "worker_key", "unknown_release_key"])
def test_bad_signers_are_rejected(keydir: KeyDir, tmp_path: Path, attack: str) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        release = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=8192)
        encoder = Encoder({"unsigned": keydir.signers["release"],
                           "worker_key": keydir.signers["worker-1"],
                           "unknown_release_key": Signer.generate("release", "release")}[attack])
        wire = encoder.encode(release.manifest)
        if attack == "unsigned":
            wire = wire[:-64] + bytes(64)  # no valid signature
        robot.receiver.handle(Message(model_manifest_topic(NAME), wire, 0))
        for i, data in enumerate(release.chunks):
            chunk = ModelChunk(name=NAME, version=2, index=i, data=memoryview(data))
            robot.receiver.handle(Message(model_chunk_topic(NAME), encoder.encode(chunk), 0))
        await robot.feed.settle()
        expected = {"unsigned": "bad_signature", "worker_key": "identity_mismatch",
                    "unknown_release_key": "unknown_key"}[attack]
        assert robot.feed.rejections.by_reason[expected] >= 1
        assert robot.updater.results["installed"] == 0
        assert robot.unchanged()
    asyncio.run(main())


def test_older_version_is_rejected(keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        send(robot, keydir.signers["release"],
             build_release(weights(tmp_path, 5), name=NAME, version=5, chunk_size=8192))
        await robot.feed.settle()
        robot.local.swap_staged()
        before = robot.local.policy
        send(robot, keydir.signers["release"],
             build_release(weights(tmp_path, 4, seed=1), name=NAME, version=4, chunk_size=8192))
        await robot.feed.settle()
        assert robot.updater.results["stale_version"] == 1
        assert not robot.local.swap_staged()
        assert robot.local.policy is before
        assert robot.local.version == 5
        active = robot.store.active(NAME)
        assert active is not None
        assert active.version == 5
    asyncio.run(main())


def test_a_download_does_not_outlive_its_manifest(tmp_path: Path) -> None:
    """Chunks still missing when the manifest expires: the download is dropped with its .part
    file, nothing is installed, and the release published again (a new expiry) starts over."""
    now = [1_000 * 10**9]
    store = ModelStore(tmp_path / "models")
    updater = ModelUpdater(store, NAME, installed=0, loader=load_reference, probe=probe(),
                           shape=(4, 7), max_bytes=1 << 20, clock=lambda: now[0])
    release = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=4096,
                            expires_s=60, now_ns=now[0])
    chunks = [ModelChunk(name=NAME, version=2, index=i, data=memoryview(c))
              for i, c in enumerate(release.chunks)]
    assert updater.on_manifest(release.manifest) == "accepted"
    assert updater.on_chunk(chunks[0]) == "chunk_ok"
    part = store.part_path(NAME, 2)
    assert part.exists()
    now[0] += 61 * 10**9
    assert updater.on_chunk(chunks[1]) == "expired"
    assert updater.progress() is None
    assert not part.exists()
    assert updater.take() is None
    again = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=4096,
                          expires_s=60, now_ns=now[0])
    assert updater.on_manifest(again.manifest) == "accepted"
    for chunk in chunks:
        assert updater.on_chunk(chunk) == "chunk_ok"
    download = updater.take()
    assert download is not None
    assert updater.finish(download)[0] == "installed"
    assert updater.results["expired"] == 1


def test_expired_manifest_is_rejected(keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        release = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=8192,
                                expires_s=1.0, now_ns=1_000_000_000)  # expired in 1970
        send(robot, keydir.signers["release"], release)
        await robot.feed.settle()
        assert robot.updater.results["expired"] == 1
        assert robot.unchanged()
    asyncio.run(main())


def test_chunk_with_wrong_hash_is_rejected(keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        release = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=4096)
        chunks = [ModelChunk(name=NAME, version=2, index=i, data=memoryview(c))
                  for i, c in enumerate(release.chunks)]
        bad = bytearray(release.chunks[1])
        bad[10] ^= 0xFF
        chunks[1] = msgspec.structs.replace(chunks[1], data=memoryview(bytes(bad)))
        send(robot, keydir.signers["release"], release, chunks=chunks)
        await robot.feed.settle()
        assert robot.updater.results["bad_chunk_hash"] == 1
        assert robot.updater.results["installed"] == 0
        assert robot.unchanged()
    asyncio.run(main())


def test_chunk_with_more_bytes_than_declared_drops_the_release(
        keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        release = build_release(weights(tmp_path, 2), name=NAME, version=2, chunk_size=4096)
        chunks = [ModelChunk(name=NAME, version=2, index=i, data=memoryview(c))
                  for i, c in enumerate(release.chunks)]
        last = len(chunks) - 1
        chunks[last] = msgspec.structs.replace(
            chunks[last], data=memoryview(release.chunks[last] + b"\0" * 4096))
        send(robot, keydir.signers["release"], release, chunks=chunks)
        await robot.feed.settle()
        assert robot.updater.results["oversize_chunk"] == 1
        assert robot.updater.results["installed"] == 0
        assert robot.unchanged()
        assert not list((tmp_path / "models" / NAME).glob(".*.part"))  # download discarded
    asyncio.run(main())


def test_unhealthy_model_is_never_activated(keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        robot = await make_robot(keydir, tmp_path)
        # a well-signed, well-formed release whose output has the wrong shape for this robot
        release = build_release(weights(tmp_path, 2, horizon=9), name=NAME, version=2,
                                chunk_size=8192)
        send(robot, keydir.signers["release"], release)
        await robot.feed.settle()
        assert robot.updater.results["unhealthy"] == 1
        assert robot.unchanged()
        assert not (tmp_path / "models" / NAME / "v2.safetensors").exists()
    asyncio.run(main())


def test_failure_in_service_rolls_back_to_the_previous_policy() -> None:
    good = TinyPolicy(value=0.25)
    local = LocalPolicy(good, 1)
    local.stage(TinyPolicy(broken=True), 2)
    assert local.swap_staged()
    assert local.version == 2
    with pytest.raises(Exception, match="non-finite"):
        local.infer(probe())
    assert local.rollback()
    assert local.policy is good
    assert local.version == 1
    assert local.infer(probe())[0, 0] == pytest.approx(0.25)
    assert not local.rollback()  # only one step back is kept
