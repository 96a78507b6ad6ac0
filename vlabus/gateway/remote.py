"""One robot's signed request/reply over the bus: a frame out, the worker's action back.

:class:`RemotePolicy` signs each observation as a frame of ``robot_id`` (absolute deadline and
a correlation id in the header, QoS 0, expiring with the deadline), and waits for the first
verified action for that correlation id. Actions go through the receive pipeline with a strict
replay guard (each worker's sequence only increases), must be signed by a worker key, name this
robot and step, and carry a finite HxD chunk; anything else is counted by reason and dropped.
No action by the deadline raises :class:`CloudLateError`; the caller decides what that means.

A recorder, when given, receives every frame sent, every reply received and one decision
record per request (the same black box as ``vlabus edge --record``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from schemas.arrays import pack_array, unpack_array
from schemas.errors import BusError, SchemaError, TransportError, WireError
from schemas.images import Codec, encode_image
from schemas.messages import Action, Declined, Frame
from schemas.topics import action_topic, frame_topic
from security.keys import Keyring
from security.replay import ReplayGuard
from vlabus.bus.transport import Transport
from vlabus.envelope import Received
from vlabus.inbound import Rejections, accept
from vlabus.log.formats import DECISION
from vlabus.log.record import Recorder
from vlabus.policy import Observation
from vlabus.wire import Decoder, Encoder

log = logging.getLogger(__name__)

MAX_CHUNK_ELEMENTS = 1024 * 256


class CloudLateError(BusError):
    """No verified action arrived before the deadline; ``cause`` is ``timeout`` (the cloud did
    not answer in time), ``declined`` (a worker dropped the frame before its model and said so,
    before the deadline) or ``disconnected`` (the frame could not be sent)."""

    def __init__(self, detail: str, cause: str = "timeout") -> None:
        super().__init__(detail)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class Reply:
    """A verified cloud action for one request."""

    chunk: npt.NDArray[np.float32]
    worker_id: str
    model: str
    model_version: int
    rtt_ns: int
    queue_wait_ns: int
    inference_ns: int


@dataclass
class RemoteConfig:
    robot_id: str
    deadline_s: float = 0.25
    codec: Codec = "raw"
    quality: int = 85
    model: str = "default"
    priority: int = 2


class RemotePolicy:
    """See the module docstring. ``start()`` subscribes; ``infer()`` is one round trip."""

    def __init__(self, transport: Transport, encoder: Encoder, keyring: Keyring,
                 config: RemoteConfig, *, recorder: Recorder | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.transport = transport
        self.encoder = encoder
        self.config = config
        self.recorder = recorder
        self.rejections = Rejections()
        self.counts = {"requests": 0, "replies": 0, "late": 0, "declined": 0,
                       "unexpected_replies": 0}
        self._decoder = Decoder(keyring, ReplayGuard(window=1))
        self._clock = clock
        self._pending: OrderedDict[str, tuple[int, int, asyncio.Future[Reply]]] = OrderedDict()
        self._session = os.urandom(4).hex()
        self._step = 0
        self._task: asyncio.Task[None] | None = None
        self._topic = frame_topic(config.robot_id)
        self._pack = msgspec.msgpack.Encoder()

    async def start(self) -> RemotePolicy:
        await self.transport.subscribe(action_topic(self.config.robot_id), qos=1)
        self._task = asyncio.create_task(self._receive(), name="gateway-replies")
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for _step, _sent, future in self._pending.values():
            future.cancel()
        self._pending.clear()

    async def infer(self, observation: Observation) -> Reply:
        """Send one frame and return its verified action; :class:`CloudLateError` by the deadline.
        Raises ``SchemaError`` when the observation cannot travel (e.g. bad image)."""
        step = self._step
        self._step += 1
        self.counts["requests"] += 1
        corr = f"{self._session}-{step}"
        now = self._clock()
        deadline_ns = now + int(self.config.deadline_s * 1e9)
        frame = Frame(robot_id=self.config.robot_id, step=step, command=observation.command,
                      cameras={name: encode_image(pixels, self.config.codec, self.config.quality)
                               for name, pixels in observation.images.items()},
                      state=pack_array(np.asarray(observation.state, dtype=np.float32)),
                      capture_ns=now, model=self.config.model)
        wire = self.encoder.encode_view(frame, deadline_ns=deadline_ns, corr=corr,
                                        priority=self.config.priority)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[corr] = (step, time.perf_counter_ns(), future)
        while len(self._pending) > 64:  # a client that stopped waiting leaves no debris
            self._pending.popitem(last=False)[1][2].cancel()
        self._record(self._topic, wire)
        try:
            await self.transport.publish(self._topic, wire, qos=0,
                                         expiry_s=max(self.config.deadline_s, 0.001))
            return await asyncio.wait_for(asyncio.shield(future), self.config.deadline_s)
        except TransportError as exc:  # the bus is down: as late as it gets
            self.counts["late"] += 1
            raise CloudLateError(f"the bus is unavailable: {exc}", "disconnected") from exc
        except TimeoutError as exc:
            self.counts["late"] += 1
            budget_ms = self.config.deadline_s * 1e3
            raise CloudLateError(
                f"no action from the cloud within {budget_ms:.0f} ms (the deadline)") from exc
        finally:
            self._pending.pop(corr, None)
            future.cancel()

    def note(self, step_record: dict[str, Any]) -> None:
        """Record one decision (the gateway's answer to a request) in the black box."""
        self._record(f"vla/v1/{self.config.robot_id}/decision",
                     self._pack.encode(step_record), decision=True)

    async def _receive(self) -> None:
        async for message in self.transport:
            self._record(message.topic, message.payload)
            # commit=False: a worker's sequence window moves only for an action that passed
            # every check, so a signed but unusable one cannot get its later ones refused
            received = accept(self._decoder, message, self.rejections, commit=False)
            if received is None or not isinstance(received.message, Action):
                if received is not None and self._commit(received, message.topic):
                    self._declined(received)
                continue
            action = received.message
            pending = self._pending.get(received.header.corr)
            try:
                chunk = _chunk_of(action)
            except SchemaError as exc:
                self.rejections.count(exc.reason)
                log.warning("unusable action from %s: %r", action.worker_id, exc)
                continue
            if not self._commit(received, message.topic):
                continue
            if (pending is None or action.robot_id != self.config.robot_id
                    or action.step != pending[0]):
                self.counts["unexpected_replies"] += 1
                continue
            _step, sent, future = pending
            if not future.done():
                self.counts["replies"] += 1
                future.set_result(Reply(chunk, action.worker_id, action.model,
                                        action.model_version, time.perf_counter_ns() - sent,
                                        action.queue_wait_ns, action.inference_ns))

    def _declined(self, received: Received) -> None:
        """A worker will not answer this request: the client is answered now, not at the
        deadline."""
        notice = received.message
        pending = self._pending.get(received.header.corr)
        if (isinstance(notice, Declined) and pending is not None and not pending[2].done()
                and notice.robot_id == self.config.robot_id and notice.step == pending[0]):
            self.counts["declined"] += 1
            pending[2].set_exception(CloudLateError(
                f"{notice.worker_id} declined the request ({notice.reason})", "declined"))

    def _commit(self, received: Received, topic: str) -> bool:
        """Move the sender's sequence window; False (counted) when another message took the
        sequence meanwhile."""
        try:
            self._decoder.commit(received)
        except WireError as exc:
            self.rejections.reject(exc, topic)
            return False
        return True

    def _record(self, topic: str, payload: bytes | memoryview, *, decision: bool = False) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.write(topic, payload, time.time_ns(),
                                channel=DECISION if decision else None)
        except BusError as exc:  # a full disk ends the recording, never the gateway
            log.error("recording stopped: %r", exc)  # noqa: TRY400 - expected
            self.recorder = None


def _chunk_of(action: Action) -> npt.NDArray[np.float32]:
    array = unpack_array(action.actions, path="actions", max_elements=MAX_CHUNK_ELEMENTS)
    if array.dtype.kind != "f":
        raise SchemaError(f"actions are {array.dtype}, expected floats", "actions.dtype")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or 0 in array.shape:
        raise SchemaError(f"actions have shape {array.shape}, expected HxD", "actions.shape")
    chunk = array.astype(np.float32)
    if not np.isfinite(chunk).all():
        raise SchemaError("actions are not finite", "actions.data")
    return chunk
