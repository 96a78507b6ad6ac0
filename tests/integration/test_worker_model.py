"""Model releases: manifest + chunks, signed by a release key, reassembled by a subscriber."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from cloud_workers.publisher import ReleaseError, build_release, publish_release, read_weights
from schemas import topics
from schemas.messages import ModelChunk, ModelManifest
from security.replay import ReplayGuard
from tests.support import ROOT
from tests.support.keys import KeyDir
from vlabus.broker.local import LocalMosquitto
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.cli import main
from vlabus.policy.reference import ReferencePolicy
from vlabus.wire import Decoder, Encoder


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    return ReferencePolicy.seeded(device="cpu", width=8).save_safetensors(path)


def test_manifest_describes_the_file(weights: Path) -> None:
    data = weights.read_bytes()
    release = build_release(data, name="reference", version=4, chunk_size=1000, now_ns=10)
    m = release.manifest
    assert m.size == len(data)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    assert len(m.chunk_sha256) == len(release.chunks) == -(-len(data) // 1000)
    assert b"".join(release.chunks) == data
    assert m.chunk_sha256[1] == hashlib.sha256(data[1000:2000]).hexdigest()
    assert m.expires_ns == 10 + 7 * 86400 * 10**9


def test_non_safetensors_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="header"):
        build_release(b"\x80\x04picklebytes", name="x", version=1)
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ReleaseError, match="pickle"):
        read_weights(tmp_path / "m.pt")


def test_release_reassembles_on_the_robot_side(weights: Path, keydir: KeyDir) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    data = weights.read_bytes()

    async def body() -> None:
        robot = await open_transport(url, TransportOptions(client_id="robot-a"))
        await robot.subscribe(topics.ALL_MODELS)
        pub = await open_transport(url, TransportOptions(client_id="publisher"))
        release = build_release(data, name="reference", version=2, chunk_size=777)
        await publish_release(pub, Encoder(keydir.signers["release"]), release)
        decoder = Decoder(keydir.ring, ReplayGuard())
        manifest = decoder.decode((await robot.receive()).payload)
        assert manifest.role == "release"
        assert isinstance(manifest.message, ModelManifest)
        parts: dict[int, bytes] = {}
        while len(parts) < len(manifest.message.chunk_sha256):
            chunk = decoder.decode((await asyncio.wait_for(robot.receive(), 5)).payload).message
            assert isinstance(chunk, ModelChunk)
            assert hashlib.sha256(chunk.data).hexdigest() == \
                manifest.message.chunk_sha256[chunk.index]
            parts[chunk.index] = bytes(chunk.data)
        assert b"".join(parts[i] for i in sorted(parts)) == data
        await robot.close()
        await pub.close()

    try:
        asyncio.run(body())
    finally:
        reset_memory(url.removeprefix("memory://"))


def test_cli_publish_leaves_a_retained_signed_manifest(weights: Path, keydir: KeyDir,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    try:
        code = main(["model", "publish", "--weights", str(weights), "--name", "reference",
                     "--version", "9", "--keys", str(keydir.path), "--bus", url,
                     "--chunk-size", "4096", "--json"])
        summary = json.loads(capsys.readouterr().out)
        assert code == 0
        assert summary["version"] == 9
        assert summary["size"] == weights.stat().st_size

        async def late_subscriber() -> ModelManifest:
            client = await open_transport(url, TransportOptions(client_id="late"))
            await client.subscribe(topics.model_manifest_topic("reference"))
            got = Decoder(keydir.ring).decode((await asyncio.wait_for(client.receive(), 5)).payload)
            await client.close()
            assert isinstance(got.message, ModelManifest)
            return got.message

        manifest = asyncio.run(late_subscriber())
        assert manifest.version == 9
        assert manifest.sha256 == summary["sha256"]
        assert manifest.metadata == {"release_id": "release"}
    finally:
        reset_memory(url.removeprefix("memory://"))


def test_cli_publish_rejects_a_missing_key(weights: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["model", "publish", "--weights", str(weights), "--name", "reference",
                 "--version", "1", "--keys", str(tmp_path), "--bus", "memory://none", "--json"])
    assert code == 1
    assert "release" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.integration
def test_cli_publish_over_mosquitto_reassembles(weights: Path, keydir: KeyDir,
                                               mosquitto: LocalMosquitto) -> None:
    data = weights.read_bytes()

    async def body() -> None:
        robot = await open_transport(mosquitto.url, mosquitto.options("robot-a"))
        await robot.subscribe(topics.ALL_MODELS, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vlabus", "model", "publish", "--weights", str(weights),
            "--name", "reference", "--version", "3", "--keys", str(keydir.path),
            "--bus", mosquitto.url, "--broker-config", str(mosquitto.config_dir),
            "--chunk-size", "2048", "--json", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out
        summary = json.loads(out)
        decoder = Decoder(keydir.ring, ReplayGuard())
        manifest = decoder.decode((await asyncio.wait_for(robot.receive(), 10)).payload).message
        assert isinstance(manifest, ModelManifest)
        assert manifest.sha256 == summary["sha256"]
        parts: dict[int, bytes] = {}
        while len(parts) < summary["chunks"]:
            chunk = decoder.decode((await asyncio.wait_for(robot.receive(), 10)).payload).message
            assert isinstance(chunk, ModelChunk)
            parts[chunk.index] = bytes(chunk.data)
        assert hashlib.sha256(b"".join(parts[i] for i in sorted(parts))).hexdigest() == \
            manifest.sha256
        assert b"".join(parts[i] for i in sorted(parts)) == data
        await robot.close()
    asyncio.run(body())
