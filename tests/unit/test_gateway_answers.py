"""The openpi gateway's answers on the memory bus with a responder that speaks the real wire:
a verified chunk, a forged reply refused (late), a bus that is down, a local fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from tests.support.aio import run
from tests.support.edge import FakeCloud
from tests.support.keys import KeyDir
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.gateway.mapping import parse_map
from vlabus.gateway.npwire import packb, unpackb
from vlabus.gateway.openpi import BAD_PREFIX, LATE_PREFIX, OpenpiGateway
from vlabus.gateway.remote import RemoteConfig, RemotePolicy
from vlabus.policy.reference import NoopPolicy
from vlabus.wire import Encoder

KEYMAP = ["image=camera:front", "state=state", "prompt=command"]


def request() -> bytes:
    return packb({"image": np.zeros((8, 8, 3), np.uint8), "state": np.zeros(14, np.float32),
                  "prompt": "pick"})


async def gateway(url: str, keydir: KeyDir, *, fallback: Any = None,
                  deadline_s: float = 2.0) -> OpenpiGateway:
    transport = await open_transport(url, TransportOptions(client_id="robot-a"))
    remote = RemotePolicy(transport, Encoder(keydir.signers["robot-a"]), keydir.ring,
                          RemoteConfig(robot_id="robot-a", deadline_s=deadline_s))
    await remote.start()
    return OpenpiGateway(remote, parse_map(KEYMAP), fallback=fallback)


@asynccontextmanager
async def cloud_on(name: str, keydir: KeyDir, **options: Any) -> AsyncIterator[FakeCloud]:
    """A fresh ``memory://NAME`` bus with a :class:`FakeCloud` (``options``) answering on it."""
    reset_memory(name)
    cloud_bus = await open_transport(f"memory://{name}", TransportOptions(client_id="worker-1"))
    cloud = await FakeCloud(cloud_bus, keydir.signers["worker-1"], keydir.ring,
                            **options).start()
    try:
        yield cloud
    finally:
        await cloud.close()
        await cloud_bus.close()


async def close(gw: OpenpiGateway) -> None:
    await gw.remote.close()
    await gw.remote.transport.close()


def test_a_verified_chunk_comes_back_packed(keydir: KeyDir) -> None:
    run(verified_chunk(keydir))


async def verified_chunk(keydir: KeyDir) -> None:
    async with cloud_on("gw-ok", keydir, horizon=50, dim=14):
        gw = await gateway("memory://gw-ok", keydir)
        try:
            answer = unpackb(await gw.answer(request()))  # type: ignore[arg-type]
            assert answer["actions"].shape == (50, 14)
            assert answer["vlabus"]["worker_id"] == "worker-1"
            bad = await gw.answer(packb({"state": np.zeros(14, np.float32)}))
            assert isinstance(bad, str)
            assert bad.startswith(BAD_PREFIX)
            assert "'image'" in bad
            assert gw.stats.as_dict()["cloud"] == 1
        finally:
            await close(gw)


def test_a_forged_reply_is_refused_and_the_request_is_late(keydir: KeyDir) -> None:
    run(forged_reply(keydir))


async def forged_reply(keydir: KeyDir) -> None:
    async with cloud_on("gw-forged", keydir, forge=True):
        gw = await gateway("memory://gw-forged", keydir, deadline_s=0.3)
        try:
            answer = await gw.answer(request())
            assert isinstance(answer, str)
            assert answer.startswith(LATE_PREFIX)
            assert gw.remote.rejections.by_reason == {"bad_signature": 1}
        finally:
            await close(gw)


def test_a_declined_request_is_answered_at_once(keydir: KeyDir) -> None:
    run(declined(keydir))


async def declined(keydir: KeyDir) -> None:
    async with cloud_on("gw-declined", keydir, decline=True):
        gw = await gateway("memory://gw-declined", keydir, deadline_s=30.0,
                           fallback=NoopPolicy(horizon=50, action_dim=14))
        try:
            # the worker's notice, not the 30 s deadline, ends the wait: the local answer
            answer = await asyncio.wait_for(gw.answer(request()), 10)
            packed = unpackb(answer)  # type: ignore[arg-type]
            assert packed["vlabus"] == {"source": "fallback", "cause": "declined"}
            assert gw.remote.counts["declined"] == 1
        finally:
            await close(gw)


def test_a_bus_that_is_down_is_late_or_answered_locally(keydir: KeyDir) -> None:
    run(bus_down(keydir))


async def bus_down(keydir: KeyDir) -> None:
    reset_memory("gw-down")
    plain = await gateway("memory://gw-down", keydir)
    local = await gateway("memory://gw-down", keydir,
                          fallback=NoopPolicy(horizon=50, action_dim=14))
    for gw in (plain, local):
        await gw.remote.transport.close()
    try:
        answer = await plain.answer(request())
        assert isinstance(answer, str)
        assert "the bus is unavailable" in answer
        packed = unpackb(await local.answer(request()))  # type: ignore[arg-type]
        assert packed["vlabus"] == {"source": "fallback", "cause": "disconnected"}
        assert packed["actions"].shape == (50, 14)
    finally:
        await plain.remote.close()
        await local.remote.close()


def test_an_unusable_signed_reply_does_not_move_the_workers_window(keydir: KeyDir) -> None:
    """A worker-signed action whose chunk is unusable (NaN), arriving before that worker's
    earlier, genuine answer, is refused without moving the worker's sequence window: the
    genuine one is still accepted (it would be refused as a replay otherwise)."""
    run(unusable_first(keydir))


async def unusable_first(keydir: KeyDir) -> None:
    from schemas.arrays import pack_array
    from schemas.messages import Action, Frame
    from schemas.topics import action_topic, frame_topic
    from security.replay import ReplayGuard
    from vlabus.inbound import Rejections, accept
    from vlabus.wire import Decoder

    reset_memory("gw-window")
    cloud_bus = await open_transport("memory://gw-window", TransportOptions(client_id="worker-1"))
    await cloud_bus.subscribe(frame_topic("robot-a"))
    encoder = Encoder(keydir.signers["worker-1"])
    decoder = Decoder(keydir.ring, ReplayGuard())

    async def respond() -> None:
        message = await cloud_bus.receive()
        received = accept(decoder, message, Rejections())
        assert received is not None
        frame = received.message
        assert isinstance(frame, Frame)

        def action(values: np.ndarray) -> bytes:
            return encoder.encode(Action(
                robot_id="robot-a", step=frame.step, actions=pack_array(values), model="m",
                model_version=1, worker_id="worker-1"), corr=received.header.corr)

        genuine = action(np.zeros((4, 14), np.float32))  # sequence n
        unusable = action(np.full((4, 14), np.nan, np.float32))  # sequence n + 1
        for wire in (unusable, genuine):
            await cloud_bus.publish(action_topic("robot-a"), wire, qos=1)

    gw = await gateway("memory://gw-window", keydir)
    try:
        responder = asyncio.create_task(respond())
        answer = unpackb(await gw.answer(request()))  # type: ignore[arg-type]
        await responder
        assert answer["actions"].shape == (4, 14)
        assert gw.remote.rejections.by_reason == {"schema": 1}
    finally:
        await close(gw)
        await cloud_bus.close()
