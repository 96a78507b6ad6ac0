"""Test doubles for the edge agent that speak the real wire format.

``FakeCloud`` answers frames over any transport with signed Actions after a chosen delay, or
not at all, or with a broken signature; ``TinyPolicy`` is a fast deterministic policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from schemas.arrays import pack_array
from schemas.messages import Action, Declined, Frame
from schemas.topics import ALL_FRAMES, action_topic
from security.keys import Keyring, Signer
from security.replay import ReplayGuard
from vlabus.bus.transport import Transport
from vlabus.inbound import Rejections, accept
from vlabus.policy import Observation
from vlabus.wire import Decoder, Encoder


class TinyPolicy:
    """(1, H, D) of a constant ``value``; counts calls. Optionally broken (NaN output)."""

    def __init__(self, value: float = -0.5, horizon: int = 4, dim: int = 7, *,
                 broken: bool = False, name: str = "edge", version: int = 0) -> None:
        self.value = value
        self.horizon = horizon
        self.dim = dim
        self.broken = broken
        self.name = name
        self.version = version
        self.calls = 0

    def infer(self, batch: Sequence[Observation]) -> np.ndarray:
        self.calls += 1
        fill = np.nan if self.broken else self.value
        return np.full((len(batch), self.horizon, self.dim), fill, np.float32)


class SlowPolicy(TinyPolicy):
    """A TinyPolicy that takes ``seconds`` per call (blocking its own thread, like a model)."""

    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds

    def infer(self, batch: Sequence[Observation]) -> np.ndarray:
        time.sleep(self.seconds)
        return super().infer(batch)


def observation(step: int = 0) -> Observation:
    return Observation(images={"front": np.full((8, 8, 3), step % 255, np.uint8)},
                       command="pick", state=np.zeros(14, np.float32))


@dataclass
class FakeCloud:
    """A responder over a real transport: verifies each frame, replies after ``delay_s``."""

    transport: Transport
    signer: Signer
    keyring: Keyring
    delay_s: float = 0.0
    value: float = 0.5
    horizon: int = 4
    dim: int = 7
    alive: bool = True
    forge: bool = False
    #: with a value, replies suggest sending the next frame this long after the reply
    slot_in_s: float | None = None
    #: answer every frame with a ``Declined`` notice instead of an action
    decline: bool = False
    intervals: list[int] = field(default_factory=list)
    frames: int = 0
    replies: int = 0
    rejections: Rejections = field(default_factory=Rejections)
    _task: asyncio.Task[None] | None = None
    _pending: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, group: str = "workers") -> FakeCloud:
        self._encoder = Encoder(self.signer)
        self._decoder = Decoder(self.keyring, ReplayGuard())
        await self.transport.subscribe(ALL_FRAMES, group=group, qos=0)
        self._task = asyncio.create_task(self._serve())
        return self

    async def _serve(self) -> None:
        async for message in self.transport:
            received = accept(self._decoder, message, self.rejections)
            if received is None or not isinstance(received.message, Frame):
                continue
            self.frames += 1
            self.intervals.append(received.message.interval_ns or 0)
            if not self.alive:
                continue
            task = asyncio.create_task(self._reply(received.message, received.header.corr))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _reply(self, frame: Frame, corr: str) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        slot = (time.time_ns() + round(self.slot_in_s * 1e9)) if self.slot_in_s is not None \
            else msgspec.UNSET
        if self.decline:
            notice = Declined(robot_id=frame.robot_id, step=frame.step,
                              worker_id=self.signer.identity, reason="deadline", slot_ns=slot)
            await self.transport.publish(action_topic(frame.robot_id),
                                         self._encoder.encode(notice, corr=corr), qos=1)
            return
        chunk = np.full((self.horizon, self.dim), self.value, np.float32)
        action = Action(robot_id=frame.robot_id, step=frame.step, actions=pack_array(chunk),
                        model="default", model_version=1, worker_id=self.signer.identity,
                        decode_ns=10_000, queue_wait_ns=20_000, inference_ns=30_000,
                        encode_ns=5_000, span_ns=70_000,
                        slot_ns=slot)
        wire = self._encoder.encode(action, corr=corr)
        if self.forge:
            wire = wire[:-1] + bytes([wire[-1] ^ 1])
        with contextlib.suppress(Exception):
            await self.transport.publish(action_topic(frame.robot_id), wire, qos=1)
            self.replies += 1

    async def close(self) -> None:
        for task in [self._task, *self._pending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
