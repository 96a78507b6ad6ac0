"""A robot client that speaks the real wire format, for the worker and hub tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from schemas import topics
from schemas.messages import Action, Declined, Frame, Priority, TaskRequest, TaskResult
from security.keys import Keyring, Signer
from security.replay import ReplayGuard
from tests.support.clock import MS
from vlabus.bus.transport import Transport, TransportOptions, open_transport
from vlabus.wire import Decoder, Encoder


@dataclass
class Robot:
    """A robot client: publishes signed frames/tasks and collects verified replies."""

    transport: Transport
    encoder: Encoder
    decoder: Decoder
    replies: dict[str, Action | TaskResult] = field(default_factory=dict)
    #: frames the worker declined (dropped before the model), by correlation id
    declined: dict[str, Declined] = field(default_factory=dict)
    arrived_ns: dict[str, int] = field(default_factory=dict)
    got: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, signer: Signer, ring: Keyring,
                      options: TransportOptions | None = None) -> Robot:
        transport = await open_transport(url, options or TransportOptions(
            client_id=signer.identity))
        await transport.subscribe(topics.action_topic(signer.identity), qos=1)
        robot = cls(transport, Encoder(signer), Decoder(ring, ReplayGuard()))
        robot._task = asyncio.create_task(robot._collect())
        return robot

    async def _collect(self) -> None:
        async for message in self.transport:
            got = self.decoder.decode(message.payload)
            if isinstance(got.message, Declined):
                self.declined[got.header.corr] = got.message
                continue
            assert isinstance(got.message, Action | TaskResult)
            self.replies[got.header.corr] = got.message
            self.arrived_ns[got.header.corr] = time.time_ns()
            self.got.set()

    async def send_frame(self, frame: Frame, corr: str, *, budget_ms: float = 1000,
                         priority: int = Priority.NORMAL) -> int:
        deadline = time.time_ns() + int(budget_ms * MS)
        await self.transport.publish(
            topics.frame_topic(frame.robot_id),
            self.encoder.encode(frame, deadline_ns=deadline, priority=priority, corr=corr))
        return deadline

    async def send_task(self, task: TaskRequest, corr: str) -> None:
        await self.transport.publish(
            topics.task_topic(task.robot_id),
            self.encoder.encode(task, deadline_ns=time.time_ns() + 5_000 * MS, corr=corr), qos=1)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async def loop() -> None:
            while len(self.replies) < count:
                self.got.clear()
                await self.got.wait()
        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        await self.transport.close()
        if self._task is not None:
            self._task.cancel()
