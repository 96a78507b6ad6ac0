"""The robot's agent: one action per step, from the cloud when it is in time, else local.

``act(observation)`` publishes the signed frame (QoS 0, expiring with the deadline, the absolute
time the robot will decide — its deadline less its timer slack — and a per-step correlation id
in the header) and returns the first verified cloud action for that correlation id and step if
it arrives before the deadline; otherwise the local
policy's action, marked ``fallback`` with its cause. Local inference is hedged: it starts at the
deadline minus its measured p99 latency, so a fallback is ready at the deadline, and its result
is dropped when the cloud answers first. A cloud action arriving after its step was decided is
discarded and counted, never executed.

With ``chunk > 1`` the agent executes action chunks from an :class:`ActionQueue` at the control
rate, sends a new frame when fewer than ``refill_below`` actions are left (or at a worker's
hint, :mod:`edge_agent.refill`), and lets the local policy fill the gap when the cloud would
answer after the queue runs dry.

The agent owns its deadline logic, built on its injected clocks: the
:class:`~edge_agent.watchdog.Watchdog` and the :class:`~edge_agent.breaker.OffloadBreaker` (plain
classes), and the :class:`~edge_agent.inbox.ActionInbox` that matches verified replies against
that watchdog. This module is the loop shell around them; decisions are the values of
:mod:`edge_agent.decisions`, model releases arrive through an optional
:class:`~edge_agent.feed.ModelFeed` and an optional :class:`~edge_agent.blackbox.BlackBox`
observes what is sent, received and decided.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edge_agent.agentconfig import AgentConfig
from edge_agent.blackbox import BlackBox
from edge_agent.breaker import OffloadBreaker, Route
from edge_agent.cameras import CameraEncoder
from edge_agent.chunks import ActionQueue
from edge_agent.decisions import ActionResult, Cause, Decision, Source
from edge_agent.feed import ModelFeed
from edge_agent.frames import frame_of
from edge_agent.inbox import ActionInbox, CloudReply
from edge_agent.local import Chunk, LocalPolicy, LocalPolicyError
from edge_agent.metrics import EdgeMetrics
from edge_agent.receiver import Receiver
from edge_agent.refill import RefillTimer
from edge_agent.stats import RunStats
from edge_agent.updates import UpdateResult
from edge_agent.watchdog import HedgeTiming, TimerSlack, Watchdog, plan_hedge
from schemas.deadline import SYSTEM_CLOCKS, Clocks, Deadline
from schemas.errors import TransportError
from schemas.messages import Status
from schemas.status import status_message
from schemas.topics import frame_topic, robot_status_topic
from security.keys import Keyring
from vlabus.bus.transport import Transport
from vlabus.inbound import Rejections
from vlabus.policy import Observation
from vlabus.wire import Encoder

__all__ = ["ActionResult", "AgentConfig", "Cause", "Decision", "EdgeAgent", "Source"]

log = logging.getLogger(__name__)


def _retrieve(future: asyncio.Future[Chunk]) -> None:
    if not future.cancelled():
        future.exception()


class EdgeAgent:
    """Per-step cloud-or-local decisions for one robot; run it on one event loop."""

    def __init__(self, transport: Transport, encoder: Encoder, keyring: Keyring,
                 local: LocalPolicy, config: AgentConfig, *,
                 metrics: EdgeMetrics | None = None, session: int | None = None,
                 clocks: Clocks = SYSTEM_CLOCKS, feed: ModelFeed | None = None,
                 blackbox: BlackBox | None = None,
                 rejections: Rejections | None = None) -> None:
        self.transport = transport
        self.encoder = encoder
        #: the trusted keys; a keyring watcher updates it in place (``vlabus edge --keys-poll``)
        self.keyring = keyring
        self.local = local
        self.config = config
        self.metrics = metrics = metrics or EdgeMetrics()
        self.clocks = clocks
        self._now = clocks.monotonic
        self.feed = feed
        self.blackbox = blackbox
        self.stats = RunStats()
        self.rejections = rejections or Rejections(metrics.on_reject)
        self.watchdog = Watchdog(clocks.monotonic)
        self.breaker = OffloadBreaker(config.breaker, clocks.monotonic)
        self.inbox = ActionInbox(keyring, config.robot_id, self.watchdog,
                                 rejections=self.rejections, stats=self.stats, metrics=metrics,
                                 period_ns=config.period_ns, on_late=self.breaker.late_reply,
                                 clock=clocks.monotonic)
        self.receiver = Receiver(transport, inbox=self.inbox, feed=feed, blackbox=blackbox)
        self.queue = ActionQueue(config.period_ns)
        self.slack = TimerSlack(config.timer_slack_ns)
        self._session = os.urandom(4).hex()  # correlation ids of this run only
        # status session (as in the will): grows across restarts without state on disk
        self.session = clocks.wall() // 1000 if session is None else session
        self._step = 0
        self._inflight: asyncio.Task[Decision] | None = None
        self.refill = RefillTimer(clocks, config.frame_interval_ns)
        self._latest: tuple[int, Observation] | None = None  # the last tick's observation
        self._topic = frame_topic(config.robot_id)
        self.metrics.model_version.set(local.version)
        self.cameras = CameraEncoder(config.codec, interval_ns=config.frame_interval_ns,
                                     clock=clocks.monotonic)
        self.cameras.on_choice = metrics.frame_sent
        metrics.uplink.set_function(self.cameras.uplink_bits_per_second)
        self.inbox.on_transfer = self.cameras.reply
        self._frame_codec: dict[str, str] | None = None
        #: called with (observation, chunk) for every step the cloud answered on time (the
        #: federated experience buffer); must return at once
        self.on_cloud: Callable[[Observation, Chunk], None] | None = None

    @property
    def step(self) -> int:
        return self._step

    async def start(self) -> None:
        """Subscribe to actions (and model releases with a feed) and start receiving."""
        await self.receiver.start()

    async def act(self, observation: Observation, *, safety_critical: bool = False) -> ActionResult:
        """The action for the next step; see the module docstring for the guarantees."""
        if self.local.swap_staged():
            self.metrics.model_version.set(self.local.version)
        step = self._step
        self._step += 1
        if self.config.chunk <= 1:
            decision = await self._resolve(step, observation, self._now()
                                           + self.config.deadline_ns, safety_critical)
            action = None if decision.chunk is None else decision.chunk[0]
            result = self._result(step, action, decision, blended=False)
        else:
            result = await self._act_chunked(step, observation, safety_critical)
        if self._frame_codec is not None:
            result = dataclasses.replace(result, codec=self._frame_codec)
            self._frame_codec = None
        self._account(result)
        return result

    async def _act_chunked(self, tick: int, observation: Observation,
                           safety_critical: bool) -> ActionResult:
        now = self._now()
        decision: Decision | None = None
        if safety_critical:
            # Never execute cloud plans queued before a safety-critical observation.
            if self._inflight is not None:
                self._inflight.cancel()
                self._inflight = None
            self.queue.clear()
            decision = await self._request(tick, observation, now + self.config.deadline_ns,
                                           safety_critical=True)
        if not self.queue.has(tick) and self._inflight is not None:
            decision = await asyncio.shield(self._inflight)
        if not self.queue.has(tick):
            decision = await self._request(tick, observation, now + self.config.deadline_ns)
        item = self.queue.pop(tick)
        ahead = self.queue.ahead()
        self._latest = (tick, observation)
        early = self.refill.due(now + self.config.period_ns) and ahead < (
            self.config.refill_below + (self.config.chunk - self.config.refill_below) // 2)
        if (ahead < self.config.refill_below or early) and self._inflight is None:
            # The reply must land before the queue runs dry; if not, the local policy fills in.
            dry_ns = now + (ahead + 1) * self.config.period_ns
            send_at = self.refill.send_at(now, dry_ns - self.config.deadline_ns)
            self._inflight = asyncio.create_task(self._refill(send_at, dry_ns))
        lateness = 0 if decision is None else decision.lateness_ns
        rtt = None if decision is None else decision.rtt_ns
        worker = None if decision is None else decision.worker_id
        if item is None:
            source = Source.FALLBACK if decision is None else decision.source
            return ActionResult(tick, None, source, None, lateness, rtt, worker,
                                self.local.version)
        cause = None if item.cause is None else Cause(item.cause)
        return ActionResult(tick, item.action, Source(item.source), cause, lateness, rtt,
                            worker, self.local.version, item.blended)

    async def _refill(self, send_at: int, dry_ns: int) -> Decision:
        """Ask for the next chunk at ``send_at`` (a worker's hint), with the latest tick's
        observation; its answer is due by the robot's deadline and before ``dry_ns``."""
        if send_at > self._now():
            await asyncio.sleep((send_at - self._now()) / 1e9)
        assert self._latest is not None
        tick, observation = self._latest
        return await self._request(tick, observation,
                                   min(self._now() + self.config.deadline_ns, dry_ns))

    async def _request(self, tick: int, observation: Observation, deadline_ns: int, *,
                       safety_critical: bool = False) -> Decision:
        """Resolve one frame and merge its chunk into the queue (rows from ``tick`` on)."""
        try:
            decision = await self._resolve(tick, observation, deadline_ns, safety_critical)
        finally:
            if self._inflight is asyncio.current_task():
                self._inflight = None
        if decision.chunk is not None:
            self.queue.add_chunk(decision.step, decision.chunk, decision.source.value,
                                 tick_stride=decision.tick_stride,
                                 cause=None if decision.cause is None else decision.cause.value)
        return decision

    async def _resolve(self, step: int, observation: Observation, deadline_ns: int,
                       safety_critical: bool) -> Decision:
        """Decide one request: cloud if a verified reply beats the deadline, else local."""
        if safety_critical:
            return await self._local_now(step, observation, deadline_ns, Cause.SAFETY_CRITICAL)
        if not self.transport.connected:
            return await self._local_now(step, observation, deadline_ns, Cause.DISCONNECTED)
        route = self.breaker.route(deadline_ns - self._now())
        self.metrics.breaker_open.set(1 if self.breaker.open else 0)
        if route is Route.LOCAL:
            return await self._local_now(step, observation, deadline_ns, Cause.BREAKER_OPEN)
        probe = route is Route.PROBE
        corr = f"{self._session}-{step}"
        timing = plan_hedge(deadline_ns, self.local.latency, slack_ns=self.config.hedge_slack_ns,
                            timer_slack_ns=self.slack.for_deadline(
                                deadline_ns - self._now()))
        reply_future = self.inbox.expect(corr, step, timing.decide_ns, probe=probe)
        try:
            # The header carries when this robot decides, not the step's deadline: a reply
            # after that is never used, so that is what the worker must schedule against.
            await self._publish(step, observation, timing.decide_ns, corr)
        except TransportError as exc:
            log.warning("frame %d not sent: %r", step, exc)
            self.inbox.expire(corr)
            return await self._local_now(step, observation, deadline_ns, Cause.DISCONNECTED)
        return await self._race(step, observation, corr=corr, deadline_ns=deadline_ns,
                                timing=timing, reply_future=reply_future, probe=probe)

    async def _publish(self, step: int, observation: Observation, deadline_ns: int,
                       corr: str) -> None:
        deadline = Deadline(deadline_ns)
        wall_deadline = deadline.wall_ns(self.clocks)
        budget = deadline_ns - self._now()
        started = time.perf_counter_ns()
        encoded = self.cameras.encode(observation.images, budget_ns=budget)
        self.refill.sending_took(time.perf_counter_ns() - started)
        hints = self.config.slot_hints and self.config.chunk > 1
        frame = frame_of(observation, robot_id=self.config.robot_id, step=step,
                         capture_ns=self.clocks.wall(), model=self.config.model,
                         cameras=encoded.cameras,
                         interval_ns=self.config.frame_interval_ns if hints else 0)
        wire = self.encoder.encode_view(frame, deadline_ns=wall_deadline,
                                        priority=self.config.priority, corr=corr)
        self.inbox.sent(corr, time.perf_counter_ns() - started)
        self.cameras.sent(corr, encoded, len(wire), budget)
        self._frame_codec = encoded.choice
        if self.blackbox is not None:
            self.blackbox.sent(self._topic, wire)
        expiry = deadline.expiry_s(self.clocks)
        await self.transport.publish(self._topic, wire, qos=0, expiry_s=expiry)
        self.metrics.frames.inc()

    async def _race(self, step: int, observation: Observation, *, corr: str, deadline_ns: int,
                    timing: HedgeTiming, reply_future: asyncio.Future[CloudReply],
                    probe: bool) -> Decision:
        loop = asyncio.get_running_loop()
        hedge: asyncio.Future[Chunk] | None = None

        def submit() -> asyncio.Future[Chunk]:
            future = asyncio.wrap_future(self.local.submit(observation))
            future.add_done_callback(_retrieve)  # a dropped hedge may fail unobserved
            self.stats.hedges_started += 1
            return future

        def start_hedge() -> None:
            nonlocal hedge
            if not reply_future.done():
                hedge = submit()

        handle = loop.call_later(max(0.0, (timing.start_ns - self._now()) / 1e9),
                                 start_hedge)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reply_future),
                                       max(0.0, (timing.decide_ns - self._now()) / 1e9))
        except asyncio.CancelledError:
            self.inbox.expire(corr)
            raise
        finally:
            handle.cancel()
        woke = self._now()
        if woke >= timing.decide_ns:  # the timer fired: learn how late this loop's timers are
            self.slack.observe(woke - timing.decide_ns)
        reply = None
        if reply_future.done() and not reply_future.cancelled():
            reply = reply_future.result()
            self.refill.hinted(reply.slot_ns)
        if reply is not None and reply.chunk is not None:
            if hedge is not None:
                self.stats.hedges_wasted += 1
            self.breaker.on_time(reply.rtt_ns, probe=probe)
            if self.on_cloud is not None:
                self.on_cloud(observation, reply.chunk)
            return Decision(step, reply.chunk, Source.CLOUD, None, deadline_ns,
                            self._now(), reply.rtt_ns, reply.worker_id,
                            reply.tick_stride)
        pending = self.inbox.expire(corr)
        cause = Cause.REJECTED_REPLY if pending is not None and pending.rejected else Cause.TIMEOUT
        if reply is not None:  # declined by the worker: decided now, not at the deadline
            cause = Cause.DECLINED
        elif cause is Cause.TIMEOUT:
            self.cameras.missed(corr)  # no reply in time: the uplink may be what is slow
        if cause is not Cause.REJECTED_REPLY and self.config.slot_hints and not (
                reply is not None and reply.slot_ns):
            self.refill.missed()  # no answer and no hint: leave lock step with the batches
        self.breaker.missed(probe=probe)
        if hedge is None:  # its timer did not get to run (a stalled loop): start it now
            hedge = submit()
        return await self._finish_local(step, observation, deadline_ns, cause, hedge)

    async def _local_now(self, step: int, observation: Observation, deadline_ns: int,
                         cause: Cause) -> Decision:
        future = asyncio.wrap_future(self.local.submit(observation))
        return await self._finish_local(step, observation, deadline_ns, cause, future)

    async def _finish_local(self, step: int, observation: Observation, deadline_ns: int,
                            cause: Cause, future: asyncio.Future[Chunk]) -> Decision:
        try:
            chunk: Chunk | None = await future
        except LocalPolicyError as exc:
            chunk = await self._after_local_failure(observation, exc)
        return Decision(step, chunk, Source.FALLBACK, cause, deadline_ns, self._now())

    async def _after_local_failure(self, observation: Observation,
                                   exc: LocalPolicyError) -> Chunk | None:
        failed = self.local.version
        log.error("local policy v%d failed: %r", failed, exc)
        if not self.local.rollback():
            return None
        if self.feed is not None:
            self.feed.rolled_back(failed)
        else:
            self.metrics.model_updates.labels(UpdateResult.ROLLED_BACK.value).inc()
        self.metrics.model_version.set(self.local.version)
        return await self.local.retry(observation)

    def _result(self, step: int, action: npt.NDArray[np.float32] | None, decision: Decision,
                *, blended: bool) -> ActionResult:
        return ActionResult(step, action, decision.source, decision.cause,
                            decision.lateness_ns, decision.rtt_ns, decision.worker_id,
                            self.local.version, blended)

    def _account(self, result: ActionResult) -> None:
        stats, metrics = self.stats, self.metrics
        stats.steps += 1
        stats.lateness_ns.append(result.lateness_ns)
        metrics.lateness.observe(result.lateness_ns / 1e9)
        if result.action is None:
            stats.steps_without_action += 1
            return
        stats.actions_by_source[result.source.value] += 1
        metrics.actions.labels(result.source.value).inc()
        if result.cause is not None:
            stats.fallbacks_by_cause[result.cause.value] += 1
            metrics.fallbacks.labels(result.cause.value).inc()
        if self.blackbox is not None:
            self.blackbox.decided(result)

    def status(self, state: str) -> Status:
        """The robot's retained birth/death message (its will is the ``offline`` one)."""
        return status_message(self.config.robot_id, "robot", state, session=self.session,
                              models={self.config.local_model: self.local.version},
                              time_ns=self.clocks.wall())

    async def announce(self, state: str) -> None:
        """Publish :meth:`status` retained at QoS 1; a failure is logged, never raised."""
        try:
            await self.transport.publish(robot_status_topic(self.config.robot_id),
                                         self.encoder.encode(self.status(state)), qos=1,
                                         retain=True)
        except TransportError as exc:
            log.warning("%s status not published: %r", state, exc)

    def stop_refill(self) -> None:
        """Drop a refill planned for later and not sent yet (the robot is stopping)."""
        if self._inflight is not None and self.refill.waiting:
            self._inflight.cancel()

    async def close(self) -> None:
        if self.transport.connected:
            await self.announce("offline")
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight
        await self.receiver.close()
        self.local.close()
