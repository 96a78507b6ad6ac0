"""What the direct socket refuses, on a worker over a real ZeroMQ hub and a real Mosquitto.

The test speaks the direct protocol by hand on a raw DEALER (``[topic, envelope]`` up, ``[reply,
queue depth]`` down): a flipped byte, a replayed sequence number, a MAC under another session,
an unknown and an expired session are each refused with their reason and counted, the unknown
one answered with a ``SessionRefused`` on the same connection; garbage (wrong frame counts,
topics that are not a robot's, bytes that are no envelope, a peer that does not speak ZMTP,
a message over the size cap) is counted and dropped, and the worker keeps serving."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio

from cloud_workers.direct import open_direct
from cloud_workers.runner import PolicyRunner
from cloud_workers.worker import Worker, WorkerConfig, open_worker
from schemas import topics
from schemas.messages import Action, SessionRefused
from security.keys import Keyring, load_pool_key, load_pool_secret, load_signer
from security.replay import ReplayGuard
from security.session import Rotation, SessionSender, SessionTable, offer_session
from tests.support.aio import TIMEOUT, eventually, run
from tests.support.buses import Bus
from tests.support.direct import ROBOT, pool_keys
from tests.support.keys import KeyDir
from tests.support.wire import frame
from vlabus.bus.transport import open_transport
from vlabus.policy.reference import NoopPolicy
from vlabus.session_link import PoolSessions
from vlabus.session_wire import SessionEncoder, SessionVerifier
from vlabus.wire import Decoder, Encoder

pytestmark = pytest.mark.integration
FRAME, SESSION = topics.frame_topic(ROBOT).encode(), topics.session_topic(ROBOT).encode()


@asynccontextmanager
async def scene(bus: Bus, keys: Path) -> AsyncIterator[tuple[Worker, HandRobot]]:
    """A direct worker and a hand robot connected to it; every socket closed on exit."""
    async with direct_worker(bus, keys) as (worker, endpoint):
        robot = HandRobot(keys, endpoint)
        try:
            yield worker, robot
        finally:
            robot.close()


@asynccontextmanager
async def direct_worker(bus: Bus, keys: Path) -> AsyncIterator[tuple[Worker, str]]:
    """An in-process worker of pool ``gpu`` (sessions end after 40 messages) with a direct
    socket; yields it and its endpoint."""
    plane = open_direct("tcp://127.0.0.1:0")
    sessions = PoolSessions(load_pool_secret(keys, "gpu"), rotation=Rotation(max_messages=40))
    runner = PolicyRunner({"noop": NoopPolicy()}, {})
    config = WorkerConfig(worker_id="worker-1", group="pool", max_delay_ns=0,
                          detail=plane.detail())
    worker = await open_worker(bus.url, load_signer(keys, "worker", "worker-1"),
                               Keyring.load(keys), runner, config=config,
                               options=bus.options("worker-1"),
                               opener=plane.opener(open_transport), sessions=sessions)
    plane.attach(worker)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 30)
    try:
        yield worker, plane.endpoint
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await worker.transport.close()


class HandRobot:
    """Robot ``robot-a`` speaking the direct protocol by hand, in session integrity."""

    def __init__(self, keys: Path, endpoint: str) -> None:
        self.endpoint = endpoint
        self.signer = load_signer(keys, "robot", ROBOT)
        self.pool = load_pool_key(keys, "gpu")
        self.sender = SessionSender(Rotation())
        self.table = SessionTable(Rotation())
        self.encoder = SessionEncoder(self.signer, lambda _m: self.sender.current(), "up")
        self.decoder = Decoder(Keyring.load(keys), ReplayGuard(),
                               sessions=SessionVerifier(self.table, "down"))
        self.ctx = zmq.asyncio.Context.instance()
        self.sockets: list[Any] = []
        self.dealer = self.socket(endpoint)

    def socket(self, endpoint: str) -> Any:
        """A DEALER to ``endpoint``, closed by :meth:`close`."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    async def offer(self) -> str:
        """A fresh session, offered on the direct socket; its id."""
        offer, fresh = offer_session(ROBOT, self.signer.key_id, self.pool, Rotation())
        self.sender.session = fresh
        self.table.add(fresh)
        await self.dealer.send_multipart([SESSION, Encoder(self.signer).encode(offer)])
        return fresh.sid

    def encode(self, n: int) -> bytes:
        return self.encoder.encode(frame(n), corr=f"c{n}",
                                   deadline_ns=time.time_ns() + 10_000_000_000)

    async def reply(self) -> Any:
        parts = await asyncio.wait_for(self.dealer.recv_multipart(), TIMEOUT)
        assert len(parts) == 2
        assert parts[1].isdigit()
        return self.decoder.decode(parts[0]).message

    async def round_trip(self, n: int) -> Action:
        await self.dealer.send_multipart([FRAME, self.encode(n)])
        while True:
            message = await self.reply()
            if isinstance(message, Action) and message.step == n:
                return message


async def refused(worker: Worker, reason: str, before: int) -> None:
    await eventually(lambda: worker.rejections.by_reason[reason] > before)


def test_bad_messages_on_the_direct_socket_are_refused_with_their_reason(
        real_bus: Bus, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)

    async def body() -> None:
        async with scene(real_bus, keys) as (worker, robot):
            first = await robot.offer()
            assert (await robot.round_trip(1)).worker_id == "worker-1"
            by = worker.rejections.by_reason

            good = robot.encode(2)
            await robot.dealer.send_multipart([FRAME, good])
            await robot.reply()
            await robot.dealer.send_multipart([FRAME, good])  # the same bytes again
            await refused(worker, "duplicate", 0)

            # another message under a sequence number already used
            again = SessionEncoder(robot.signer, lambda _m: robot.sender.current(), "up",
                                   start_seq=robot.encoder.next_seq() - 1)
            await robot.dealer.send_multipart([FRAME, again.encode(frame(3))])
            await refused(worker, "replay", by["replay"])

            flipped = bytearray(robot.encode(4))
            flipped[len(flipped) // 2] ^= 1
            await robot.dealer.send_multipart([FRAME, bytes(flipped)])
            await refused(worker, "bad_mac", by["bad_mac"])

            # a MAC under the wrong session: the first session's id on the second's MAC
            second = await robot.offer()
            await robot.round_trip(5)
            swapped = robot.encode(6).replace(second.encode(), first.encode())
            await robot.dealer.send_multipart([FRAME, swapped])
            await refused(worker, "bad_mac", by["bad_mac"])

            # a session no worker holds: refused, and the robot told on this connection
            unknown = robot.encode(7).replace(second.encode(), os.urandom(8).hex().encode())
            await robot.dealer.send_multipart([FRAME, unknown])
            await refused(worker, "unknown_session", 0)
            refusal = await robot.reply()
            assert isinstance(refusal, SessionRefused)
            assert refusal.reason == "unknown_session"

            # a session that ran out (the pool's rotation: 40 messages)
            for n in range(8, 60):
                await robot.dealer.send_multipart([FRAME, robot.encode(n)])
            await refused(worker, "expired_session", 0)
            assert worker.healthy()

    run(body, 90)


def test_garbage_on_the_direct_socket_is_counted_and_the_worker_keeps_serving(
        real_bus: Bus, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)

    async def body() -> None:
        async with scene(real_bus, keys) as (worker, robot):
            endpoint = robot.endpoint
            junk = robot.socket(endpoint)
            for parts in ([b"only one part"], [FRAME, b"x", b"three"], [b"", b""],
                          [b"vla/v1/robot-a/action", b"x"], [b"\xff" * 300, b"x"],
                          [b"vla/v1/workers/status", b"x"]):
                await junk.send_multipart(parts)
            for payload in (b"", os.urandom(200), b"VB\x02" + os.urandom(4000)):
                await junk.send_multipart([FRAME, payload])
            host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                raw.sendall(os.urandom(4096))  # not ZMTP at all
            big = robot.socket(endpoint)
            await big.send_multipart([FRAME, b"\0" * (17 << 20)])  # over the size cap
            counters = worker.transport.counters
            # at least what was sent above (the raw bytes may add more: libzmq reads some
            # garbage as messages of a ZMTP 1.0 peer)
            await eventually(lambda: counters().get("direct_refused_malformed", 0) >= 2
                             and counters().get("direct_refused_topic", 0) >= 4)
            await eventually(lambda: worker.rejections.by_reason["malformed"] >= 2
                             and worker.rejections.by_reason["too_large"] >= 1)

            await robot.offer()
            assert (await robot.round_trip(1)).step == 1  # still serving, directly
            assert worker.healthy()

    run(body, 90)


def test_unverified_bytes_never_take_a_robots_replies(
        real_bus: Bus, keydir: KeyDir, tmp_path: Path) -> None:
    keys = pool_keys(keydir, tmp_path)

    async def body() -> None:
        async with scene(real_bus, keys) as (worker, robot):
            endpoint = robot.endpoint
            await robot.offer()
            await robot.round_trip(1)
            thief = robot.socket(endpoint)
            forged = bytearray(robot.encode(2))  # the robot's own next frame, one byte off
            forged[len(forged) // 2] ^= 1
            await thief.send_multipart([FRAME, bytes(forged)])
            await refused(worker, "bad_mac", 0)
            # a frame over the bus: its reply takes the route of the last *verified* message
            bus = await open_transport(real_bus.url, real_bus.options(ROBOT))
            try:
                await bus.publish(topics.frame_topic(ROBOT), robot.encode(3))
                action = await robot.reply()
            finally:
                await bus.close()
            assert isinstance(action, Action)
            assert action.step == 3
            assert not await thief.poll(0)

    run(body, 90)
