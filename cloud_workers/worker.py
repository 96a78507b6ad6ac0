"""The cloud worker: receive → verify → queue → batch → infer (thread) → sign → reply.

Two asyncio tasks share one event loop: ``_receive`` runs every message through
:func:`vlabus.inbound.accept` and queues what passes; ``_serve`` asks the scheduler
(:mod:`cloud_workers.schedulers`) for work and runs it on one inference thread, so receiving
and verifying continue while the model runs. A frame model measured faster than
``WorkerConfig.inline_below_ns`` runs on the loop itself instead: for a cheap policy the two
thread hand-offs cost more than the work; an idle worker answers such a frame in the
transport's receive callback (``Transport.consume``). A frame dropped before the model (its
deadline cannot be met) is answered with a ``Declined`` notice at once.

A watchdog (:mod:`cloud_workers.stall`) follows the batch on the inference thread: one running
far past its estimate (a hung policy) takes the worker out of its shared group (unsubscribed, so
the others get its share), drops what queued behind it (``stalled``), marks it not ready and
announces it degraded; it rejoins when the batch returns, or :meth:`Worker.run` ends after
``StallConfig.exit_after_ns`` with :attr:`Worker.exit_reason` set, for the supervisor to restart
the process (the hung thread cannot be stopped from Python).

This module is the loop shell: :mod:`cloud_workers.intake` makes typed requests,
:mod:`cloud_workers.replies` builds the answers (pure), :mod:`cloud_workers.sender` signs and
publishes them with a bound on unacknowledged replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from cloud_workers.batcher import Batch
from cloud_workers.config import WorkerConfig, worker_status
from cloud_workers.intake import Refused, decodes, frame_decoder, to_request
from cloud_workers.metrics import WorkerMetrics
from cloud_workers.queue import Request, RequestMeta
from cloud_workers.runner import TASK_PREFIX, BatchResult, PolicyRunner
from cloud_workers.schedulers import Scheduler, WorkQueue, make_scheduler
from cloud_workers.sender import ReplySender, ReplySigner
from cloud_workers.stall import StallWatch, Verdict
from schemas import topics
from schemas.errors import BusError, WireError
from security.keys import Keyring, Signer
from vlabus.bus.transport import Message as BusMessage
from vlabus.bus.transport import Transport, TransportOptions, Will, open_transport
from vlabus.bus.wait import Opener
from vlabus.direct.server import Routed
from vlabus.inbound import Rejections, accept
from vlabus.session_link import PoolSessions
from vlabus.session_wire import SessionEncoder
from vlabus.wire import Decoder, Encoder

__all__ = ["Worker", "WorkerConfig", "open_worker"]

log = logging.getLogger(__name__)


class Worker:
    """One worker process's serving loop. Build with :func:`open_worker`."""

    def __init__(self, transport: Transport, encoder: Encoder, decoder: Decoder,
                 runner: PolicyRunner, *, config: WorkerConfig, session: int,
                 metrics: WorkerMetrics | None = None,
                 sessions: PoolSessions | None = None) -> None:
        self.transport = transport
        self.sessions = sessions
        self.encoder = encoder
        self.decoder = decoder
        self.runner = runner
        self.config = config
        self.session = session
        self.metrics = metrics or WorkerMetrics()
        self.rejections = Rejections(self.metrics.on_reject)
        self.queue: WorkQueue
        self.batcher: Scheduler
        self.queue, self.batcher = make_scheduler(
            config.scheduler, runner.policies, max_batch=config.max_batch,
            max_delay_ns=config.max_delay_ns, capacity=config.queue_capacity,
            registry=self.metrics.registry, slots=config.slot_hints)
        self.ready = asyncio.Event()
        # The serving loop sleeps on this future; arrivals and shutdown complete it. A bare
        # future costs one loop iteration to wake, an Event under wait_for three and a task.
        self._wake: asyncio.Future[None] | None = None
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.replies = ReplySender(transport, self.metrics, config.max_inflight_replies)
        self.signer = ReplySigner(encoder, self.metrics, config.worker_id)
        self._measured: set[str] = set()  # models with a measured inference time
        self._status_topic = topics.worker_status_topic(config.worker_id)
        self._default_model = next(iter(runner.policies))  # frames naming "default" get it
        self.stall = StallWatch(config.stall)
        self._membership = asyncio.Lock()  # leaving and rejoining the group, one at a time
        #: why :meth:`run` ended on its own (a batch stalled past the limit), else ""
        self.exit_reason = ""

    def healthy(self) -> bool:
        """Ready to serve: started, not stalled, connected (``/readyz``)."""
        return self.ready.is_set() and not self.stall.stalled and self.transport.connected

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down gracefully (see :meth:`_shutdown`)."""
        loop = asyncio.get_running_loop()
        warm = await loop.run_in_executor(self._pool, self.runner.warm_up)
        for model, duration_ns in warm.items():
            self._observe(model, duration_ns)
        if self.sessions is not None:  # offers are for every worker: not the shared group
            await self.transport.subscribe(topics.ALL_SESSION_OFFERS, qos=1)
        await self._join()
        receive = asyncio.create_task(self._receive(), name="receive")
        serve = asyncio.create_task(self._serve(), name="serve")
        watch = asyncio.create_task(self._watch(), name="stall-watch")
        self.transport.consume(self._arrived)
        self.ready.set()
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({receive, serve, stopper, watch},
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            await self._shutdown(receive, serve, stopper)

    async def _join(self) -> None:
        """Subscribe to the shared group's work and announce the worker healthy."""
        await self.transport.subscribe(topics.ALL_FRAMES, group=self.config.group, qos=0)
        await self.transport.subscribe(topics.ALL_TASKS, group=self.config.group, qos=1)
        await self._publish_status("online")

    async def _watch(self) -> None:
        """Check the batch in hand a few times per stall limit; returns to end :meth:`run`
        when a stall outlasts its limit."""
        tick = min(0.1, self.config.stall.min_ns / 4e9)
        while True:
            await asyncio.sleep(tick)
            verdict = self.stall.check()
            if verdict is Verdict.STALLED:
                await self._leave(self.stall.reason)
            elif verdict is Verdict.EXIT:
                self.exit_reason = f"stalled: {self.stall.reason}"
                log.error("worker %s: %s; exiting for the supervisor", self.config.worker_id,
                          self.exit_reason)
                return

    async def _leave(self, reason: str) -> None:
        """Out of the pool while the policy hangs: its share goes to the other workers."""
        async with self._membership:
            log.error("worker %s leaves group %r: %s", self.config.worker_id, self.config.group,
                      reason)
            self.metrics.stalled.set(1)
            self.metrics.on_drop("stalled", len(self.queue.drain()))
            self.metrics.queue_depth.set(0)
            try:
                for pattern in (topics.ALL_FRAMES, topics.ALL_TASKS):
                    await self.transport.unsubscribe(pattern, group=self.config.group)
                await self._publish_status("online", degraded=reason)
            except BusError as exc:
                log.warning("leaving the group: %r", exc)

    async def _rejoin(self) -> None:
        async with self._membership:
            log.warning("worker %s: the policy returned; rejoining group %r",
                        self.config.worker_id, self.config.group)
            try:
                await self._join()
            except BusError as exc:
                log.warning("rejoining the group: %r", exc)
            self.metrics.stalled.set(0)

    def revoke(self, key_ids: set[str]) -> int:
        """Keys removed from the keyring: drop their requests still queued (counted as
        ``revoked``); their messages not yet decoded fail verification from now on."""
        gone = self.queue.remove_if(
            lambda req: req.meta is not None and req.meta.header.key in key_ids)
        self.metrics.on_drop("revoked", len(gone))
        self.metrics.queue_depth.set(len(self.queue))
        return len(gone)

    async def _shutdown(self, receive: asyncio.Task[None], serve: asyncio.Task[None],
                        stopper: asyncio.Task[bool]) -> None:
        """Stop taking work, finish the batch in hand, drop the rest, publish the death."""
        self._stopping = True
        self.transport.consume(None)
        self.ready.clear()
        stalled = self.stall.stalled
        for task in (receive, stopper, *((serve,) if stalled else ())):
            task.cancel()  # a stalled batch is never answered: do not wait for it
        self._wake_up()
        try:
            await serve  # returns after the batch in hand is answered
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("serving loop failed")
        self.metrics.on_drop("shutdown", len(self.queue.drain()))
        self.metrics.queue_depth.set(0)
        self._checkpoints(final=True)
        await self.replies.settle(timeout=5.0)
        try:
            await self._publish_status("offline")
        except Exception as exc:  # noqa: BLE001 - the broker publishes the will instead
            log.warning("death status not published: %r", exc)
        self._pool.shutdown(wait=not stalled, cancel_futures=True)

    async def _publish_status(self, state: str, *, degraded: str = "") -> None:
        status = worker_status(self.config, state, self.session, self.runner.models,
                               degraded=degraded)
        await self.transport.publish(self._status_topic, self.encoder.encode(status), qos=1,
                                     retain=True)

    async def _receive(self) -> None:
        async for message in self.transport:
            self._take(message)
            # the inbox hands a backlog over without suspending: yield after each message, so
            # a finished batch is answered (and the next started) between two decodes
            await asyncio.sleep(0)

    def _take(self, message: BusMessage, *, wake: bool = True) -> Request | None:
        """Verify, decode and queue one message; the queued request, or None (rejected).
        ``wake``: wake the serving loop for it."""
        self.metrics.received.inc()
        self.metrics.summary.received += 1
        start = time.perf_counter_ns()
        got = accept(self.decoder, message, self.rejections, on_error=self._refused)
        if got is None or (self.sessions is not None and self.sessions.take(got)):
            return None
        if isinstance(message, Routed):  # direct plane: answer on the connection it came on
            message.verified(got.header.sender)
        meta = RequestMeta(got.header, message.received_ns, time.perf_counter_ns() - start)
        request = to_request(got.header, got.message, meta, models=self.runner.policies,
                             default_model=self._default_model, now_ns=time.time_ns())
        if isinstance(request, Refused):
            log.warning("%s", request.detail)
            if request.cause is not None:
                self.metrics.on_drop(request.cause)
            return None
        if self.stall.stalled:  # arrived before the unsubscribe took effect
            self.metrics.on_drop("stalled")
            return None
        self.metrics.on_drop("shed", len(self.queue.push(request)))
        self.metrics.queue_depth.set(len(self.queue))
        if wake:
            self._wake_up()
        return request

    def _arrived(self, message: BusMessage) -> bool:
        """The idle worker's path (:meth:`Transport.consume`): a message that finds the serving
        loop asleep and the queue empty is taken in the receive callback and, when its batch is
        due at once and runs inline, answered there, without the receive and serve tasks'
        wake-ups (~25 µs of a round trip). Anything else is left to the inbox and the tasks."""
        wake = self._wake
        if (wake is None or wake.done() or self.queue or self._stopping
                or self.replies.full):
            return False
        request = self._take(message, wake=False)
        if request is None:
            return True
        inline = self._inline(request.model) and not decodes(request)
        batch = self._due_batch() if inline else None
        if batch is None:
            # not a cheap model, or the batcher waits for company: the serving loop takes it
            self._wake_up()
            return True
        result = self.runner.run(batch)  # never raises for bad input
        for reply in self.signer.sign(batch, result, self.runner.models):
            self.replies.send_now(*reply)
        self._checkpoints()
        self._observe(batch.model, result.inference_ns, len(batch.requests))
        self.metrics.on_batch(len(batch.requests), result.inference_ns)
        return True

    def _refused(self, exc: WireError, message: BusMessage) -> None:
        """Tell a robot its session is unknown or expired here (``--session-pool``)."""
        if self.sessions is None:
            return
        refusal = self.sessions.refusal(exc, message.topic, self.config.worker_id)
        if refusal is not None:
            self.transport.publish_nowait(refusal[0], self.encoder.encode(refusal[1]), qos=1)

    def _checkpoints(self, *, final: bool = False) -> None:
        """Publish the signed checkpoints of session-mode replies that are due."""
        if isinstance(self.encoder, SessionEncoder):
            topic = topics.worker_checkpoint_topic(self.config.worker_id)
            for point in self.encoder.checkpoints(final=final):
                self.transport.publish_nowait(topic, self.encoder.encode(point), qos=1)

    def _wake_up(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _serve(self) -> None:
        """Run batches one at a time on the inference thread. As soon as a batch's result is
        back, the next due batch is started before this one's replies are encoded and signed,
        so the model and the reply path overlap under load."""
        loop = asyncio.get_running_loop()
        running: tuple[Batch, asyncio.Future[BatchResult]] | None = None
        while True:
            if running is None:
                batch = await self._next_batch()
                if batch is None:
                    return
                running = (batch, self._start(loop, batch))
            batch, future = running
            # shielded: a cancelled serve task still answers the batch it holds
            result = await asyncio.shield(future)
            running = None
            if self.stall.finished():
                await self._rejoin()
            if not self._stopping:
                following = self._due_batch()
                if following is not None:
                    running = (following, self._start(loop, following))
            for reply in self.signer.sign(batch, result, self.runner.models):
                await self.replies.send(*reply)
            self._checkpoints()
            # bookkeeping after the replies are handed off: it is not on their critical path
            self._observe(batch.model, result.inference_ns, len(batch.requests))
            self.metrics.on_batch(len(batch.requests), result.inference_ns)

    def _start(self, loop: asyncio.AbstractEventLoop, batch: Batch) -> asyncio.Future[BatchResult]:
        """Run ``batch`` on the inference thread, or right here when its model is known to be
        cheap (see ``WorkerConfig.inline_below_ns``); tasks always go to the thread."""
        if self._inline(batch.model) and not any(decodes(r) for r in batch.requests):
            done: asyncio.Future[BatchResult] = loop.create_future()
            done.set_result(self.runner.run(batch))  # run() never raises for bad input
            return done
        self.stall.started(batch.model, self.queue.estimate.time(batch.model, len(batch.requests)))
        return loop.run_in_executor(self._pool, self.runner.run, batch)

    def _inline(self, model: str) -> bool:
        return (model in self._measured and not model.startswith(TASK_PREFIX)
                and self.queue.estimate.get(model) < self.config.inline_below_ns)

    def _observe(self, model: str, duration_ns: int, size: int = 1) -> None:
        self.queue.estimate.observe(model, duration_ns, size)
        self._measured.add(model)

    def _due_batch(self) -> Batch | None:
        decision = self.batcher.poll()
        self._expired(decision.expired)
        self.metrics.queue_depth.set(len(self.queue))
        return decision.batch

    def _expired(self, dropped: list[Request]) -> None:
        """Frames dropped before the model: counted, and each robot told at once."""
        if dropped:
            self.metrics.on_drop("deadline", len(dropped))
            for reply in self.signer.decline(dropped, "deadline"):
                self.replies.send_now(*reply)

    async def _next_batch(self) -> Batch | None:
        """Wait until a batch is due; None once the worker is stopping."""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            decision = self.batcher.poll()
            self._expired(decision.expired)
            if decision.batch is not None:
                self.metrics.queue_depth.set(len(self.queue))
                return decision.batch
            wake = self._wake = loop.create_future()
            timer = None
            if decision.wake_at_ns is not None:
                delay = max(0.0, (decision.wake_at_ns - time.time_ns()) / 1e9)
                timer = loop.call_later(delay, self._wake_up)
            try:
                await wake
            finally:
                self._wake = None
                if timer is not None:
                    timer.cancel()
        return None


async def open_worker(url: str, signer: Signer, keyring: Keyring, runner: PolicyRunner, *,
                      config: WorkerConfig, metrics: WorkerMetrics | None = None,
                      options: TransportOptions | None = None,
                      opener: Opener = open_transport,
                      sessions: PoolSessions | None = None) -> Worker:
    """Connect with the death status as the will, and return a worker ready to :meth:`run`.
    ``opener`` opens the bus (``vlabus worker`` passes one that waits for a bus that is down)."""
    encoder = Encoder(signer) if sessions is None else sessions.encoder(signer)
    session = time.time_ns() // 1000  # grows across restarts without state on disk
    death = encoder.encode(worker_status(config, "offline", session, runner.models))
    will = Will(topics.worker_status_topic(config.worker_id), death, qos=1, retain=True)
    base = options or TransportOptions(client_id=config.worker_id)
    # no persistent session: the broker must stop routing this worker's share the moment it
    # vanishes (known trap 1), and frames are QoS 0 anyway
    extra = {"session_expiry_s": "0", **base.extra}
    transport = await opener(url, dataclasses.replace(base, will=will, extra=extra))
    decoder = frame_decoder(keyring, replay_mode=config.replay_mode,
                            sessions=None if sessions is None else sessions.verifier)
    return Worker(transport, encoder, decoder, runner, config=config, session=session,
                  metrics=metrics, sessions=sessions)
