"""Release versions that cannot be frozen (issue 16, item 3): one release may raise the version
by at most ``max_version_step``; a version pushed too far anyway (the first release a robot
takes is unbounded) is recovered from with a manifest signed by the offline root key at a new
epoch, after which the release key publishes in that epoch again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from cloud_workers.publisher import Release, build_release
from edge_agent.feed import ModelFeed
from edge_agent.local import LocalPolicy
from edge_agent.metrics import EdgeMetrics
from edge_agent.stack import load_reference
from edge_agent.store import ModelStore
from edge_agent.updates import ModelUpdater
from schemas.messages import ModelChunk
from schemas.topics import model_chunk_topic, model_manifest_topic
from security.keys import Keyring, Signer
from tests.support.edge import TinyPolicy
from tests.support.keys import KeyDir
from vlabus.bus.transport import Message
from vlabus.inbound import Rejections
from vlabus.policy import Observation
from vlabus.policy.reference import ReferencePolicy
from vlabus.wire import Encoder

NAME = "edge"
ROOT = Signer.generate("root", "root")


def probe() -> Observation:
    return Observation(images={"front": np.full((32, 32, 3), 90, np.uint8)}, command="pick",
                       state=np.zeros(14, np.float32))


def release(tmp_path: Path, version: int, epoch: int = 0) -> Release:
    policy = ReferencePolicy.seeded(device="cpu", width=8, horizon=4, action_dim=7, name=NAME,
                                    version=version, seed=version % 1000)
    data = policy.save_safetensors(tmp_path / f"w-{version}.safetensors").read_bytes()
    return build_release(data, name=NAME, version=version, chunk_size=1 << 16, epoch=epoch)


def open_feed(keydir: KeyDir, root: Path, *, epoch: int = 0, installed: int = 0) -> ModelFeed:
    updater = ModelUpdater(ModelStore(root), NAME, installed=installed, loader=load_reference,
                           probe=probe(), shape=(4, 7), max_version_step=100, epoch=epoch)
    ring = Keyring([*keydir.ring, ROOT.public])
    return ModelFeed(updater, LocalPolicy(TinyPolicy(horizon=4, dim=7), 0), ring,
                     metrics=EdgeMetrics(), rejections=Rejections())


async def deliver(feed: ModelFeed, signer: Signer, rel: Release) -> str:
    """The manifest's verdict; when accepted, its chunks follow and the install finishes."""
    encoder = Encoder(signer)
    before = dict(feed.updater.results)
    feed.handle(Message(model_manifest_topic(NAME), encoder.encode(rel.manifest), 0))
    verdict = next(k for k, v in feed.updater.results.items() if v != before.get(k, 0))
    if verdict == "accepted":
        for index, data in enumerate(rel.chunks):
            chunk = ModelChunk(name=NAME, version=rel.manifest.version, index=index,
                               data=memoryview(data))
            feed.handle(Message(model_chunk_topic(NAME), encoder.encode(chunk), 0))
        await feed.settle()
    return verdict


def test_one_release_may_not_raise_the_version_past_the_bound(
        keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        feed = open_feed(keydir, tmp_path / "models")
        signer = keydir.signers["release"]
        assert await deliver(feed, signer, release(tmp_path, 3)) == "accepted"
        assert await deliver(feed, signer, release(tmp_path, 1_000_000_000)) == "version_jump"
        assert await deliver(feed, signer, release(tmp_path, 103)) == "accepted"
        active = ModelStore(tmp_path / "models").active(NAME)
        assert active is not None
        assert active.version == 103
    asyncio.run(main())


def test_a_fast_forwarded_robot_is_recovered_with_the_offline_root_key(
        keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        models = tmp_path / "models"
        feed = open_feed(keydir, models)
        signer = keydir.signers["release"]
        # a correctly signed fast-forward on a robot with nothing installed yet
        assert await deliver(feed, signer, release(tmp_path, 1_000_000_000)) == "accepted"
        assert await deliver(feed, signer, release(tmp_path, 4)) == "stale_version"
        # the release key cannot open an epoch; the root key can, with any version
        assert await deliver(feed, signer, release(tmp_path, 4, epoch=1)) == "needs_root"
        assert await deliver(feed, ROOT, release(tmp_path, 4, epoch=1)) == "accepted"
        active = ModelStore(models).active(NAME)
        assert active is not None
        assert (active.epoch, active.version) == (1, 4)
        # a restarted robot keeps the epoch; releases continue in it, bounded as before
        feed = open_feed(keydir, models, epoch=active.epoch, installed=active.version)
        assert await deliver(feed, signer, release(tmp_path, 5)) == "stale_epoch"
        assert await deliver(feed, ROOT, release(tmp_path, 4, epoch=1)) == "stale_epoch"
        assert await deliver(feed, signer, release(tmp_path, 5, epoch=1)) == "accepted"
        assert await deliver(feed, signer, release(tmp_path, 500, epoch=1)) == "version_jump"
        active = ModelStore(models).active(NAME)
        assert active is not None
        assert (active.epoch, active.version) == (1, 5)
    asyncio.run(main())


def test_a_root_manifest_from_an_unknown_root_key_is_refused(
        keydir: KeyDir, tmp_path: Path) -> None:
    async def main() -> None:
        feed = open_feed(keydir, tmp_path / "models")
        stranger = Signer.generate("root", "root")
        encoder = Encoder(stranger)
        feed.handle(Message(model_manifest_topic(NAME),
                            encoder.encode(release(tmp_path, 4, epoch=1).manifest), 0))
        assert feed.rejections.by_reason == {"unknown_key": 1}
        assert feed.updater.results["accepted"] == 0
    asyncio.run(main())
