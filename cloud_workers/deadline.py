"""vlabus's scheduler: priority and deadline order, batch size chosen from t(batch).

Pure logic with an injected clock. Each :meth:`DeadlineScheduler.poll`:

1. **Drop rule.** A request whose deadline falls before ``now + t(model, 1) + margin`` cannot be
   answered in time even alone and started now: it is removed before the model and returned
   in ``expired`` (``margin`` covers encoding, signing and the trip back to the robot).
2. **Head.** The best request by (priority, deadline, arrival), except that after
   ``starve_after`` batches in a row led by a higher class while a lower class waited, the best
   request of the lower classes leads the next batch (safety-critical frames always lead).
3. **Batch size.** The largest ``b ≤ max_batch`` with ``now + t(model, b) + margin`` no later
   than the head's deadline; then other requests of the model join in service order, each only
   if the batch, one larger, still meets the earliest deadline in it. So no answer computed is
   expected to arrive late; a request that does not fit waits for a later, smaller batch or is
   dropped by rule 1. Under a backlog (more waiting than that batch holds) a larger batch that
   leaves the most urgent requests out is taken instead when it loses fewer requests (when
   more than a full batch waits: when it serves at least as many more as it loses) — a
   request is lost when it is left out and would miss its deadline in one batch of the rest
   run next; high priority weighs ``LOST_WEIGHT_HIGH``. That keeps batches efficient when the
   device falls behind, rather than shrinking them while the backlog grows.
4. **Release.** Now, when the batch cannot grow (size limit reached), or its head is
   ``CRITICAL``; otherwise at the earlier of the oldest request's arrival + ``max_delay`` and
   the last moment one more member could still join in time.
5. **Slots** (with a :class:`~cloud_workers.slots.SlotPlanner`). A batch that would still be
   running when a planned batch is due to start waits for that start instead, when its head
   can; a planned batch whose frames are still arriving waits up to ``slot_grace`` past its
   start for them, while the batch they make still meets the deadlines of those present.
   Each released or dropped frame that states its robot's interval gets the planned start
   for its robot's next frame (``Request.hint_ns``, on the robot's clock); a dropped one
   carries it in the worker's ``Declined`` notice, so a robot whose frames keep arriving when
   they cannot be served learns its slot at once.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

from cloud_workers.batcher import Batch, Decision
from cloud_workers.batchtime import BatchTimes
from cloud_workers.queue import NO_DEADLINE, Clock, DeadlineQueue, Request
from cloud_workers.slots import SlotPlanner
from schemas.messages import Priority

#: observer(model, size, predicted_ns, slacks_ns): a batch was formed
BatchObserver = Callable[[str, int, int, list[int]], None]
#: drop passes without a batch of the model before its estimate is relaxed
RELAX_AFTER = 8
#: a high-priority request left to expire costs as much as this many normal ones
LOST_WEIGHT_HIGH = 4


class ServiceQueue(DeadlineQueue):
    """The deadline queue plus what the scheduler needs: t(batch), service-order views and
    removal."""

    def __init__(self, capacity: int, *, clock: Clock = time.time_ns,
                 estimate: BatchTimes | None = None) -> None:
        times = estimate or BatchTimes()
        super().__init__(capacity, clock=clock, estimate=times)
        self.estimate: BatchTimes = times

    def ordered(self, model: str | None = None) -> Iterator[Request]:
        """Requests best first (all models, or one)."""
        for _, req in reversed(self._items):
            if model is None or req.model == model:
                yield req

    def remove(self, requests: list[Request]) -> None:
        gone = {id(req) for req in requests}
        self._items = [item for item in self._items if id(item[1]) not in gone]

    def drop_where(self, hopeless: Callable[[Request], bool]) -> list[Request]:
        """Remove and return (best first) every request ``hopeless`` says cannot be met."""
        dropped = [req for req in self.ordered() if hopeless(req)]
        if dropped:
            self.remove(dropped)
        return dropped


class DeadlineScheduler:
    """See the module docstring; t(batch) comes from ``queue.estimate``."""

    def __init__(self, queue: ServiceQueue, *, max_batch: int, max_delay_ns: int,
                 margin_ns: int = 3_000_000, starve_after: int = 4,
                 clock: Clock = time.time_ns, observer: BatchObserver | None = None,
                 planner: SlotPlanner | None = None, slot_grace_ns: int = 30_000_000) -> None:
        if max_batch < 1 or max_delay_ns < 0 or margin_ns < 0 or starve_after < 1:
            raise ValueError("max_batch and starve_after >= 1; max_delay, margin >= 0")
        self.queue = queue
        self.times: BatchTimes = queue.estimate
        self.max_batch = max_batch
        self.max_delay_ns = max_delay_ns
        self.margin_ns = margin_ns
        self.starve_after = starve_after
        self.observer = observer
        self.planner = planner
        self.slot_grace_ns = slot_grace_ns
        self._clock = clock
        self._streak = 0  # batches in a row led by a higher class while a lower one waited
        self._idle_drops: dict[str, int] = {}

    def poll(self, now_ns: int | None = None) -> Decision:
        """Form a batch if one is due; see the module docstring for the rules."""
        now = self._clock() if now_ns is None else now_ns
        expired = self._drop(now)
        head, yielded = self._head()
        if head is None:
            return Decision(expired=expired)
        members, earliest, limit = self._members(head, now)
        if not yielded and head.priority != Priority.CRITICAL and len(members) == limit:
            wider = self._wider(members, now)
            if wider is not members:  # a backlog: release the larger batch at once
                members, head, limit = wider, wider[0], len(wider)
        count = len(members)
        if self.planner is not None and head.priority != Priority.CRITICAL:
            hold = self._slot_hold(head.model, count, earliest, now)
            if hold is not None:
                return Decision(wake_at_ns=hold, expired=expired)
        if head.priority == Priority.CRITICAL or count >= limit:
            return self._release(head, members, now, expired, yielded)
        oldest = min(req.arrived_ns for req in members)
        due = oldest + self.max_delay_ns
        if earliest != NO_DEADLINE:
            due = min(due, earliest - self.times.time(head.model, count + 1) - self.margin_ns)
        if now >= due:
            return self._release(head, members, now, expired, yielded)
        return Decision(wake_at_ns=due, expired=expired)

    def _slot_hold(self, model: str, count: int, earliest: int, now: int) -> int | None:
        """When to look again instead of releasing now, for a planned batch (rule 5)."""
        assert self.planner is not None
        arriving = self.planner.due(model, now, self.slot_grace_ns)
        if arriving is not None and count < arriving[1]:
            # wait for the rest of its robots, while the batch they make still meets the
            # earliest deadline of those already here
            until = min(arriving[0] + self.slot_grace_ns,
                        earliest - self.times.time(model, arriving[1]) - self.margin_ns)
            if now < until:
                return until
        following = self.planner.next_start(model, now)
        if following is None or now + self.times.time(model, count) + self.margin_ns \
                <= following[0]:
            return None
        joined = max(count + 1, following[1])
        if following[0] + self.times.time(model, joined) + self.margin_ns <= earliest:
            return following[0]
        return None

    def hopeless(self, request: Request, now: int) -> bool:
        """The drop rule: not answerable in time even alone, started at ``now``."""
        return bool(request.deadline_ns) and request.deadline_ns < (
            now + self.times.time(request.model, 1) + self.margin_ns)

    def _drop(self, now: int) -> list[Request]:
        dropped = self.queue.drop_where(lambda req: self.hopeless(req, now))
        if self.planner is not None:  # its robot is told when to send instead (Declined)
            for req in dropped:
                self._hint(req, now)
        for model in {req.model for req in dropped}:
            # An estimate is corrected only by running the model: if it stays too high for
            # every request, relax it slowly so a request runs and measures it afresh.
            passes = self._idle_drops[model] = self._idle_drops.get(model, 0) + 1
            if passes >= RELAX_AFTER:
                self.times.relax(model)
                self._idle_drops[model] = 0
        return dropped

    def _head(self) -> tuple[Request | None, bool]:
        """The request that leads the next batch, and whether a lower class got its turn."""
        best = self.queue.head()
        if best is None or best.priority == Priority.CRITICAL:
            return best, False
        lower = next((req for req in self.queue.ordered() if req.priority > best.priority), None)
        if lower is not None and self._streak >= self.starve_after:
            return lower, True
        return best, False

    def _members(self, head: Request, now: int) -> tuple[list[Request], int, int]:
        """(the batch led by ``head``, its earliest deadline, the size it may grow to)."""
        model = head.model
        earliest = head.deadline_ns or NO_DEADLINE
        limit = self.max_batch
        if earliest != NO_DEADLINE:
            limit = max(1, self.times.largest_within(
                model, earliest - now - self.margin_ns, self.max_batch))
        members = [head]
        for req in self.queue.ordered(model):
            if len(members) >= limit:
                break
            if req is head:
                continue
            deadline = min(earliest, req.deadline_ns or NO_DEADLINE)
            if deadline == NO_DEADLINE or (
                    now + self.times.time(model, len(members) + 1) + self.margin_ns <= deadline):
                members.append(req)
                earliest = deadline
        return members, earliest, limit

    def _wider(self, members: list[Request], now: int) -> list[Request]:
        """Under a backlog, a larger batch that leaves the most urgent requests out, when that
        loses fewer requests (see :meth:`_lost`); ties go to the larger batch. When the device
        is behind (more than a full batch waiting), when what it serves less what it loses is at
        least as much: there a full batch that lets one request go serves more than a smaller
        one that keeps it, and smaller batches lose more later. ``members`` otherwise."""
        model = members[0].model
        candidates = list(itertools.islice(self.queue.ordered(model), 4 * self.max_batch))
        if len(candidates) <= len(members):
            return members
        behind = len(candidates) > self.max_batch
        best = members
        best_net = (len(members) if behind else 0) - self._lost(candidates, members, now)
        for size in range(len(members) + 1, self.max_batch + 1):
            cut = now + self.times.time(model, size) + self.margin_ns
            chosen = [r for r in candidates if not r.deadline_ns or r.deadline_ns >= cut][:size]
            if len(chosen) < size:  # not enough can wait that long: larger is no better
                break
            net = (size if behind else 0) - self._lost(candidates, chosen, now)
            if net >= best_net:
                best, best_net = chosen, net
        return best

    def _lost(self, candidates: list[Request], chosen: list[Request], now: int) -> int:
        """Weighted count of ``candidates`` left out of ``chosen`` that would miss their
        deadline in one batch of the rest run after it (high priority and above count
        ``LOST_WEIGHT_HIGH``)."""
        model = chosen[0].model
        inside = {id(r) for r in chosen}
        rest = [r for r in candidates if id(r) not in inside]
        if not rest:
            return 0
        after = (now + self.times.time(model, len(chosen))
                 + self.times.time(model, min(self.max_batch, len(rest))) + self.margin_ns)
        return sum(LOST_WEIGHT_HIGH if r.priority < Priority.NORMAL else 1
                   for r in rest if r.deadline_ns and r.deadline_ns < after)

    def _release(self, head: Request, members: list[Request], now: int,
                 expired: list[Request], yielded: bool) -> Decision:
        self.queue.remove(members)
        lower_waits = any(req.priority > head.priority for req in self.queue.ordered())
        self._streak = 0 if yielded or not lower_waits else self._streak + 1
        self._idle_drops.pop(head.model, None)
        predicted = self.times.time(head.model, len(members))
        if self.planner is not None:
            for req in members:
                self._hint(req, now)
        if self.observer is not None:
            slacks = [req.deadline_ns - now - predicted for req in members if req.deadline_ns]
            self.observer(head.model, len(members), predicted, slacks)
        return Decision(batch=Batch(head.model, members, now), expired=expired)

    def _hint(self, request: Request, now: int) -> None:
        """Plan the next frame of ``request``'s robot and suggest when to send it (rule 5): the
        start of its slot in the interval from half an interval after this frame was sent
        (a robot may send up to half an interval early), less the uplink time this frame took
        (robot clock to worker clock, so a clock offset cancels) and less the planner's
        ``early``, so a little jitter still lands before the start."""
        assert self.planner is not None
        if request.interval_ns <= 0 or request.sent_ns <= 0 or not request.deadline_ns:
            return
        uplink = request.arrived_ns - request.sent_ns
        # the robot's own budget (deadline less send, both its clock) from the planned start,
        # when it sends as suggested: less the uplink and the early margin, which shrinks for a
        # short budget (high priority) so that a batch of one still fits
        own = request.deadline_ns - request.sent_ns - max(0, uplink)
        early = max(0, min(self.planner.early_ns, own - self.planner.smallest(request.model)))
        budget = own - early
        start = self.planner.reserve(
            request.model, request.source,
            earliest_ns=request.arrived_ns + request.interval_ns - request.interval_ns // 2 + early,
            interval_ns=request.interval_ns, budget_ns=budget, priority=request.priority,
            now_ns=now)
        if start is not None:
            request.hint_ns = max(1, start - uplink - early)
