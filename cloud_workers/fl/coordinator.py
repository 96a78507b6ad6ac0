"""The federated-learning coordinator: announce, collect, aggregate, evaluate, release.

Each round it publishes a signed, retained :class:`~schemas.messages.RoundAnnouncement` on
``vla/v1/models/{model}/fl-round`` naming the base release (version and SHA-256), the training
hyper-parameters and a deadline; it takes updates from ``vla/v1/+/fl-update`` through a
:class:`~.intake.RoundIntake` into a streaming :mod:`~.aggregate` aggregator until the deadline
(or ``max_clients`` updates), then, with at least ``min_clients``, patches the base with the
aggregate (optionally plus central Gaussian noise), scores base and candidate on the held-out
recording with ``vlabus log evaluate``'s metric (mean absolute action error), and publishes the
candidate as the next signed model release only when its error is lower. Without a recording
every aggregated candidate is released. Each round ends with a retained
:class:`~schemas.messages.RoundResult` on ``.../fl-result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_workers.fl.aggregate import make_aggregator
from cloud_workers.fl.intake import RoundIntake
from cloud_workers.publisher import build_release, publish_release
from schemas.messages import RoundAnnouncement, RoundResult
from schemas.topics import ALL_FL_UPDATES, fl_result_topic, fl_round_topic
from security.keys import Keyring
from security.replay import ReplayGuard
from vlabus.bus.transport import Transport
from vlabus.fl.delta import Delta, patch, read_tensors, select
from vlabus.wire import Decoder, Encoder

log = logging.getLogger(__name__)
DEFAULT_TRAINABLE = ("state.", "head.")


@dataclass(frozen=True)
class CoordinatorConfig:
    """What ``vlabus fl serve`` was asked for; ``hyper`` holds the announced training fields
    (epochs, examples, batch_size, lr, example_clip, noise_multiplier, delta, update_clip,
    precision)."""

    model: str
    rounds: int
    min_clients: int
    round_timeout_s: float
    spool: Path
    aggregate: str = "fedavg"
    max_clients: int | None = None  # close a round once this many robots have answered
    trim: float = 0.2
    over_norm: float = 2.0
    central_noise: float = 0.0
    eval_path: Path | None = None
    trainable: tuple[str, ...] = DEFAULT_TRAINABLE
    personal: tuple[str, ...] = ()
    hyper: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 64 << 10
    seed: int = 0


@dataclass
class RoundReport:
    round: int
    base_version: int
    participants: list[str] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    base_error: float | None = None
    candidate_error: float | None = None
    released: bool = False
    version: int = 0
    detail: str = ""
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Coordinator:
    """Runs the rounds of one model over ``transport``; signs as ``encoder``'s release key."""

    def __init__(self, transport: Transport, encoder: Encoder, keyring: Keyring,
                 config: CoordinatorConfig, *, base: bytes, base_version: int,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.transport = transport
        self.encoder = encoder
        self.keyring = keyring
        self.config = config
        self.base = base
        self.version = base_version
        self._clock = clock
        config.spool.mkdir(parents=True, exist_ok=True)
        tensors, _ = read_tensors(base)
        names = select(tensors, config.trainable)
        self.shared = [n for n in names if n not in select(names, config.personal)]
        if not self.shared:
            raise ValueError(f"no tensor of the base starts with {config.trainable}")
        self.shapes = {n: tuple(int(d) for d in tensors[n].shape) for n in self.shared}
        self.decoder = Decoder(keyring, ReplayGuard())
        self._intakes: list[RoundIntake] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._intake: RoundIntake | None = None
        self._rng = np.random.default_rng(config.seed)
        self._errors: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._round_done = asyncio.Event()
        self._aggregator: Any = None
        self._accepted: list[str] = []

    async def start(self, *, publish_base: bool = True) -> None:
        """Subscribe to updates and (by default) publish the base as release ``version``.
        Raises ``ValueError`` when the held-out recording cannot score the base."""
        if self.config.eval_path is not None:
            await asyncio.to_thread(self.error_of, self.base)
        await self.transport.subscribe(ALL_FL_UPDATES, qos=1)
        self._task = asyncio.create_task(self._receive(), name="fl-intake")
        if publish_base:
            await self._release(self.base, self.version, {"fl_round": "base"})

    async def run(self, on_report: Callable[[RoundReport], None] | None = None
                  ) -> list[RoundReport]:
        """Every round in turn; ``on_report`` sees each report as it is made."""
        reports = []
        for number in range(self.config.rounds):
            report = await self.run_round(number)
            reports.append(report)
            if on_report is not None:
                on_report(report)
        return reports

    def announcement(self, number: int) -> RoundAnnouncement:
        cfg = self.config
        deadline = self._clock() + int(cfg.round_timeout_s * 1e9)
        return RoundAnnouncement(
            coordinator=self.encoder.signer.identity, model=cfg.model, round=number,
            base_version=self.version, base_sha256=_sha(self.base), deadline_ns=deadline,
            trainable=list(cfg.trainable), personal=list(cfg.personal), **cfg.hyper)

    async def run_round(self, number: int) -> RoundReport:
        cfg = self.config
        announced = self.announcement(number)
        intake = RoundIntake(announced, self.shapes, cfg.spool / f"round-{number}",
                             over_norm=cfg.over_norm, seen=self._seen, refused=Counter())
        self._aggregator = make_aggregator(cfg.aggregate, self.shapes,
                                           cfg.spool / f"round-{number}.f32", trim=cfg.trim)
        self._accepted = []
        self._round_done.clear()
        self._intake = intake
        self._intakes.append(intake)
        report = RoundReport(number, self.version)
        started = time.monotonic()
        try:
            await self.transport.publish(fl_round_topic(cfg.model), self.encoder.encode(
                announced), qos=1, retain=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._round_done.wait(), cfg.round_timeout_s)
            intake.close()
            report.participants = sorted(self._accepted)
            report.epsilon = dict(sorted(intake.epsilon.items()))
            if len(self._accepted) < cfg.min_clients:
                report.detail = (f"{len(self._accepted)} updates, fewer than "
                                 f"--min-clients {cfg.min_clients}")
            else:
                await self._conclude(self._aggregator.result(), report)
        finally:
            self._aggregator.close()
            report.refused = dict(sorted(intake.refused.items()))
            report.seconds = round(time.monotonic() - started, 3)
        await self._publish_result(report)
        return report

    async def _conclude(self, aggregate: Delta, report: RoundReport) -> None:
        cfg = self.config
        if cfg.central_noise > 0:
            std = cfg.central_noise * float(cfg.hyper.get("update_clip", 1.0)) / len(
                self._accepted)
            aggregate = {k: v + self._rng.normal(0, std, v.shape).astype(np.float32)
                         for k, v in aggregate.items()}
        candidate = patch(self.base, aggregate, add=True)
        if cfg.eval_path is not None:
            try:
                report.base_error = await asyncio.to_thread(self.error_of, self.base)
                report.candidate_error = await asyncio.to_thread(self.error_of, candidate)
            except (ValueError, OSError) as exc:  # e.g. an unusable candidate: not released
                report.detail = f"evaluation failed: {exc}"
                return
            if not report.candidate_error < report.base_error:
                report.detail = "candidate is not better than the current model"
                return
        self.version += 1
        await self._release(candidate, self.version, {"fl_round": str(report.round)})
        self.base = candidate
        report.released = True
        report.version = self.version

    def error_of(self, weights: bytes) -> float:
        """Mean absolute action error of ``weights`` on the held-out recording (cached)."""
        from vlabus.log.evaluate import evaluate
        from vlabus.policy.reference import ReferencePolicy

        sha = _sha(weights)
        if sha not in self._errors:
            assert self.config.eval_path is not None
            path = self.config.spool / f"eval-{sha[:16]}.safetensors"
            path.write_bytes(weights)
            try:
                policy = ReferencePolicy.load_safetensors(path, device="cpu")
                result = evaluate(self.config.eval_path, policy, keyring=self.keyring)
            finally:
                path.unlink(missing_ok=True)
            if result.overall.pairs == 0:
                raise ValueError(f"{self.config.eval_path} has no frame with a recorded action")
            self._errors[sha] = float(result.overall.as_dict()["mean_abs_error"])
        return self._errors[sha]

    async def _release(self, weights: bytes, version: int, metadata: dict[str, str]) -> None:
        release = build_release(weights, name=self.config.model, version=version,
                                chunk_size=self.config.chunk_size,
                                metadata={"release_id": self.encoder.signer.identity,
                                          **metadata})
        await publish_release(self.transport, self.encoder, release)

    async def _publish_result(self, report: RoundReport) -> None:
        result = RoundResult(
            coordinator=self.encoder.signer.identity, model=self.config.model,
            round=report.round, participants=report.participants, refused=report.refused,
            epsilon=report.epsilon, base_error=report.base_error,
            candidate_error=report.candidate_error, released=report.released,
            version=report.version, detail=report.detail[:1024])
        await self.transport.publish(fl_result_topic(self.config.model),
                                     self.encoder.encode(result), qos=1, retain=True)

    async def _receive(self) -> None:
        async for message in self.transport:
            intake = self._intake
            if intake is None:
                continue
            try:
                accepted = intake.on_message(self.decoder, message)
            except Exception:  # one bad update never ends the coordinator
                log.exception("unexpected error on an update from %r", message.topic)
                continue
            if accepted is not None and intake.open:
                self._aggregator.add(accepted.delta, float(accepted.examples))
                self._accepted.append(accepted.robot_id)
            if self.config.max_clients and intake.open and \
                    intake.answered() >= self.config.max_clients:
                self._round_done.set()

    def refused(self) -> dict[str, int]:
        """Refusals by reason over every round so far, late arrivals after a close included."""
        total: Counter[str] = Counter()
        for intake in self._intakes:
            total.update(intake.refused)
        return dict(sorted(total.items()))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
