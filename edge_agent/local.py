"""The robot's own policy: timed on every call, swapped between steps, the previous kept.

Inference runs on one dedicated thread (the built-in policies are not thread-safe) with torch
capped at ``threads`` intra-op threads on it; the measured durations feed the estimator that
times the hedge.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from edge_agent.watchdog import LatencyEstimator
from vlabus.policy import Observation, Policy

Chunk = npt.NDArray[np.float32]
log = logging.getLogger(__name__)


def _limit_threads(threads: int) -> None:
    """Cap torch's intra-op threads for this thread (OpenMP's setting is per thread): a small
    model gains nothing from them on a robot's CPU, and two OpenMP threads here made the first
    calls ~70 ms and later ones spike while the control loop needed the other core."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class LocalPolicyError(RuntimeError):
    """The local policy raised or produced a non-finite or misshapen chunk."""


class LocalPolicy:
    """Holds the active policy (and the one before it) and runs it on its own thread."""

    def __init__(self, policy: Policy, version: int = 0, *, window: int = 128,
                 threads: int = 1) -> None:
        self.policy = policy
        self.version = version
        self.previous: tuple[Policy, int] | None = None
        self.latency = LatencyEstimator(window)
        self._staged: tuple[Policy, int] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="local-policy",
                                        initializer=_limit_threads, initargs=(threads,))
        self.shape: tuple[int, int] | None = None
        self.calls = 0

    def infer(self, observation: Observation) -> Chunk:
        """One HxD chunk; blocking. Raises :class:`LocalPolicyError` on a bad result."""
        policy = self.policy
        start = time.perf_counter_ns()
        try:
            out = np.asarray(policy.infer([observation]), dtype=np.float32)
        except Exception as exc:
            raise LocalPolicyError(f"local policy raised {exc!r}") from exc
        self.latency.add(time.perf_counter_ns() - start)
        self.calls += 1
        if out.ndim != 3 or out.shape[0] != 1 or not np.isfinite(out).all():
            raise LocalPolicyError(f"local policy gave {out.shape} or non-finite values")
        if self.shape is None:
            self.shape = (int(out.shape[1]), int(out.shape[2]))
        chunk: Chunk = out[0]
        return chunk

    async def retry(self, observation: Observation) -> Chunk | None:
        """The active policy's chunk for ``observation`` after a rollback; None (logged) when
        it fails too."""
        try:
            return await asyncio.wrap_future(self.submit(observation))
        except LocalPolicyError:
            log.exception("rolled-back policy failed too")
            return None

    def submit(self, observation: Observation) -> Future[Chunk]:
        """Run :meth:`infer` on the policy thread."""
        return self._pool.submit(self.infer, observation)

    def warm_up(self, observation: Observation, calls: int = 8, max_calls: int = 64) -> None:
        """Run inferences on the policy thread (blocking) until the last ``calls`` are steady
        (none over 3x their median), then keep only those in the latency estimate.

        The first calls of a torch model on a new thread can take 100x longer (thread pools,
        kernel selection: ~70 ms against 0.4 ms here); left in the estimate they would start
        every hedge at once, and left unrun they would make the first fallbacks late.
        """
        for done in range(1, max_calls + 1):
            self.submit(observation).result()
            recent = self.latency.recent(calls)
            if done >= calls and max(recent) <= 3 * sorted(recent)[len(recent) // 2]:
                break
        self.latency.keep_last(calls)

    def stage(self, policy: Policy, version: int) -> None:
        """Queue ``policy`` to become active at the next :meth:`swap_staged` (between steps)."""
        with self._lock:
            self._staged = (policy, version)

    def swap_staged(self) -> bool:
        """Activate a staged policy, keeping the current one for rollback."""
        with self._lock:
            staged, self._staged = self._staged, None
        if staged is None:
            return False
        self.previous = (self.policy, self.version)
        self.policy, self.version = staged
        # The old model's timings stay until the new one's push them out of the window: an
        # empty estimate would start the next hedge too late.
        return True

    def rollback(self) -> bool:
        """Go back to the previous policy; False when there is none."""
        if self.previous is None:
            return False
        self.policy, self.version = self.previous
        self.previous = None
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
