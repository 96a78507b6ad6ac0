"""The robot's round client: answers announced rounds with a signed, private, quantised delta.

It listens on ``vla/v1/models/{model}/fl-round`` (on the agent's own connection: a fleet
broker admits one connection per robot identity) (announcements signed by a ``release`` key),
and for each new round whose deadline is ahead: waits for the announced base release to be the
one installed in the model store (the agent installs releases as usual), copies it, trains in
the trainer process (:mod:`.trainer`: lowest priority, one thread, a CPU share; the control
loop is never blocked), and publishes the delta as an :class:`~schemas.messages.UpdateManifest`
and its chunks on ``vla/v1/{robot_id}/fl-update``. Rounds it does not answer are counted by why
(``no_base``, ``busy``, ``expired``, ``budget_spent``, ``not_enough_data``, ``too_late``, ...).
The buffer's pairs never leave the robot; only the clipped, noised delta does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import multiprocessing
import shutil
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.fl.trainer import TrainJob, TrainResult, lower_priority, train
from edge_agent.store import ModelStore
from schemas.errors import BusError
from schemas.messages import RoundAnnouncement, UpdateChunk, UpdateManifest
from schemas.topics import fl_round_topic, fl_update_topic
from security.keys import Keyring
from security.replay import ReplayGuard
from vlabus.bus.transport import Message, Transport
from vlabus.fl.delta import describe_file, encode_delta
from vlabus.inbound import Rejections, accept
from vlabus.wire import Decoder, Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientConfig:
    """``state_dir`` holds the buffer (``buffer/``), the privacy accountant and the personal
    tensors; ``budget_epsilon`` is the most privacy this robot spends over all rounds."""

    robot_id: str
    model: str
    models_dir: Path
    state_dir: Path
    budget_epsilon: float = 8.0
    cpu_share: float = 0.5
    chunk_size: int = 64 << 10
    seed: int = 0

    @property
    def buffer_dir(self) -> Path:
        return self.state_dir / "buffer"


@dataclass
class ClientStats:
    skipped: Counter[str] = field(default_factory=Counter)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    epsilon: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"updates_sent": sum(1 for r in self.rounds if r["status"] == "sent"),
                "skipped": dict(self.skipped), "rounds": self.rounds,
                "epsilon": None if math.isinf(self.epsilon) else round(self.epsilon, 4)}


def trainer_pool(nice: int = 19) -> ProcessPoolExecutor:
    """The trainer process (spawned: no state shared with the control loop's process), at
    niceness ``nice`` (19: the lowest priority)."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=lower_priority, initargs=(nice,))


def warm_up() -> None:
    """Import what training needs (run in the trainer process before the first round)."""
    import opacus  # noqa: F401

    import vlabus.policy.reference  # noqa: F401


class RoundClient:
    """See the module docstring; ``executor`` runs :func:`~.trainer.train` (default: a
    :func:`trainer_pool` of its own)."""

    def __init__(self, transport: Transport, encoder: Encoder, keyring: Keyring,
                 config: ClientConfig, *, executor: Executor | None = None) -> None:
        self.transport = transport
        self.encoder = encoder
        self.config = config
        self.store = ModelStore(config.models_dir)
        self.decoder = Decoder(keyring, ReplayGuard())
        self.rejections = Rejections()
        self.stats = ClientStats()
        self._own_pool = executor is None
        self.executor = executor if executor is not None else trainer_pool()
        self._seen: set[tuple[str, int, int]] = set()
        self._busy: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._topic = fl_round_topic(config.model)
        self.round_done = asyncio.Event()  # set after each round this client finished with

    @property
    def topic(self) -> str:
        """Where rounds are announced (subscribe, and route its messages to :meth:`handle`)."""
        return self._topic

    async def start(self, *, consume: bool = True) -> None:
        """Subscribe to announcements; with ``consume``, read them off the transport here
        (else the owner of the transport routes them to :meth:`handle`)."""
        await self.transport.subscribe(self._topic, qos=1)
        if self._own_pool:  # pay the trainer process's start and imports now, not in a round
            self.executor.submit(warm_up)
        if consume:
            self._task = asyncio.create_task(self._receive(), name="fl-client")

    async def _receive(self) -> None:
        async for message in self.transport:
            self.handle(message)

    def handle(self, message: Message) -> None:
        """Verify one message from the round topic and act on it; never raises for bad input."""
        if message.topic != self._topic:
            return
        received = accept(self.decoder, message, self.rejections)
        if received is None or not isinstance(received.message, RoundAnnouncement):
            return
        self.on_announcement(received.message)

    def on_announcement(self, announced: RoundAnnouncement) -> None:
        """Start answering ``announced`` unless it is old, for another model, or busy."""
        key = (announced.coordinator, announced.round, announced.deadline_ns)
        if key in self._seen or announced.model != self.config.model:
            return
        self._seen.add(key)
        if announced.deadline_ns <= time.time_ns():
            self._skip(announced, "expired")
        elif self._busy is not None and not self._busy.done():
            self._skip(announced, "busy")
        else:
            self._busy = asyncio.create_task(self._answer(announced))

    def _skip(self, announced: RoundAnnouncement, why: str, **extra: Any) -> None:
        self.stats.skipped[why] += 1
        self.stats.rounds.append({"round": announced.round, "status": why, **extra})
        log.info("round %d not answered: %s", announced.round, why)
        self.round_done.set()

    async def _base(self, announced: RoundAnnouncement) -> Path | None:
        """A private copy of the announced base once the store has it installed."""
        copy = self.config.state_dir / "base.safetensors"
        while time.time_ns() < announced.deadline_ns:
            active = self.store.active(self.config.model)
            if active is not None and active.version == announced.base_version and \
                    active.sha256 == announced.base_sha256:
                with contextlib.suppress(OSError):  # pruned meanwhile: look again
                    await asyncio.to_thread(shutil.copyfile, active.path, copy)
                    data = await asyncio.to_thread(copy.read_bytes)
                    if hashlib.sha256(data).hexdigest() == announced.base_sha256:
                        return copy
            await asyncio.sleep(0.05)
        return None

    async def _answer(self, announced: RoundAnnouncement) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        base = await self._base(announced)
        if base is None:
            self._skip(announced, "no_base")
            return
        job = TrainJob(
            base_path=str(base), buffer_dir=str(cfg.buffer_dir), state_dir=str(cfg.state_dir),
            round=announced.round, examples=announced.examples,
            batch_size=announced.batch_size, epochs=announced.epochs, lr=announced.lr,
            example_clip=announced.example_clip, noise_multiplier=announced.noise_multiplier,
            delta=announced.delta, update_clip=announced.update_clip,
            budget_epsilon=cfg.budget_epsilon, trainable=tuple(announced.trainable),
            personal=tuple(announced.personal), seed=cfg.seed, cpu_share=cfg.cpu_share)
        loop = asyncio.get_running_loop()
        try:
            result: TrainResult = await loop.run_in_executor(self.executor, train, job)
        except BrokenProcessPool as exc:  # the trainer process died (killed, out of memory)
            if self._own_pool:
                self.executor = trainer_pool()
            self._skip(announced, "train_failed", error=repr(exc)[:200])
            return
        except Exception as exc:  # a failed training skips the round, never stops the robot
            log.exception("training for round %d failed", announced.round)
            self._skip(announced, "train_failed", error=repr(exc)[:200])
            return
        self.stats.epsilon = max(self.stats.epsilon, result.epsilon)
        if result.status != "trained":
            self._skip(announced, result.status, epsilon=_finite(result.epsilon))
            return
        if time.time_ns() >= announced.deadline_ns:
            self._skip(announced, "too_late", seconds=round(result.seconds, 3))
            return
        try:
            await self._send(announced, result)
        except BusError as exc:
            self._skip(announced, "not_sent", error=str(exc)[:200])
            return
        self.stats.rounds.append({
            "round": announced.round, "status": "sent", "epsilon": _finite(result.epsilon),
            "examples": result.examples, "steps": result.steps,
            "seconds": round(result.seconds, 3), "norm": round(result.norm, 6),
            "loss_before": round(result.loss_before, 6),
            "loss_after": round(result.loss_after, 6)})
        self.round_done.set()

    def updates(self, announced: RoundAnnouncement, result: TrainResult) -> list[bytes]:
        """The signed envelopes answering ``announced``: the manifest, then every chunk."""
        data = encode_delta(result.delta, announced.precision)
        manifest, chunks = describe_file(data, name=announced.model, version=announced.round,
                                         chunk_size=self.config.chunk_size)
        update = UpdateManifest(
            robot_id=self.config.robot_id, model=announced.model, round=announced.round,
            base_version=announced.base_version, base_sha256=announced.base_sha256,
            examples=result.examples, epsilon=result.epsilon, delta=announced.delta,
            precision=announced.precision, file=manifest)
        return [self.encoder.encode(update), *(self.encoder.encode(UpdateChunk(
            robot_id=self.config.robot_id, round=announced.round, index=index,
            data=memoryview(chunk))) for index, chunk in enumerate(chunks))]

    async def _send(self, announced: RoundAnnouncement, result: TrainResult) -> None:
        topic = fl_update_topic(self.config.robot_id)
        for payload in self.updates(announced, result):
            await self.transport.publish(topic, payload, qos=1)

    async def close(self) -> None:
        for task in (self._task, self._busy):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._own_pool:
            self.executor.shutdown(wait=False, cancel_futures=True)


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 4)
