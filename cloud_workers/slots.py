"""When periodic robots should ask: a cyclic plan of batches, handed out as send-time hints.

A robot refilling an action chunk has seconds of actions in hand, so it can choose within
limits when its next frame goes out. With a deadline ``D`` and batches that cannot be
interrupted, a request arriving just after a batch starts waits for it and then runs in the
next, so on-time service needs batches of at most about ``D/2``. A request that arrives just
before its batch starts waits for nothing, and batches may then run up to about ``D`` less a
margin: larger batches, more robots per device.

:class:`SlotPlanner` keeps, per model and robot interval ``P`` (how long a robot waits between
frames on its own, stated in its frame), the robots that sent such frames and lays them out on
a cycle of length ``P`` (phases of the wall clock): robots in order of priority, then of
joining, fill back-to-back slots from phase 0, each slot a batch that takes another robot while
its estimated time t(b + 1) stays within every member's budget (from the batch's start to its
deadline, when the robot sends as suggested; less the scheduler's margin and ``guard``) and,
with ``gap`` after it, within the cycle. So high-priority robots (short budgets) get their own
small batches at the start of the cycle, the rest the largest batches their budget allows, and
what does not fit in one cycle gets no slot (and no hint). A robot whose largest batch
(t(``max_batch``)) fits in half its budget gets none either: batching alone serves it. Every
robot keeps sending once per ``P``, at its slot's phase: its period is kept, only its phase
moves (the hint is at least half an interval after its last frame went out, and less than one
interval after that).

The worker returns the next start of the robot's slot as a hint (``Action.slot_ns``, less the
frame's own uplink time so clock offsets cancel). A robot not heard from for two intervals
leaves the plan. Pure logic: every time is passed in (wall-clock ns, the worker's clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloud_workers.batchtime import BatchTimes

#: a robot that has not sent for this many intervals leaves the plan
FORGET_AFTER = 2
#: how much a robot's budget may rise per frame
RISE_NS = 1_000_000


@dataclass(frozen=True, slots=True)
class Slot:
    """A batch started at ``phase_ns`` (mod the cycle's interval) for ``robots``."""

    phase_ns: int
    robots: tuple[str, ...]


@dataclass(slots=True)
class Member:
    priority: int
    budget_ns: int
    joined: int
    seen_ns: int


@dataclass(slots=True)
class Cycle:
    """The robots of one model with one interval, and their layout (recomputed on change)."""

    interval_ns: int
    members: dict[str, Member] = field(default_factory=dict)
    joined: int = 0
    layout: list[Slot] | None = None
    slot_of: dict[str, Slot] = field(default_factory=dict)

    def next_at(self, slot: Slot, at_ns: int) -> int:
        """The first start of ``slot`` at or after ``at_ns``."""
        return at_ns + (slot.phase_ns - at_ns) % self.interval_ns


class SlotPlanner:
    """See the module docstring. ``margin_ns`` is the scheduler's (signing, the trip back);
    ``guard_ns`` keeps room in every member's budget for a frame arriving a little late;
    ``gap_ns`` is left free after each slot's batch for jitter and requests outside the plan;
    hints ask robots to send ``early_ns`` before the start (the batch waits for its start)."""

    def __init__(self, times: BatchTimes, *, max_batch: int, margin_ns: int,
                 guard_ns: int = 15_000_000, gap_ns: int = 5_000_000,
                 early_ns: int = 25_000_000) -> None:
        if max_batch < 1 or min(margin_ns, guard_ns, gap_ns, early_ns) < 0:
            raise ValueError("max_batch >= 1; margin, guard, gap and early >= 0")
        self.times = times
        self.max_batch = max_batch
        self.margin_ns = margin_ns
        self.guard_ns = guard_ns
        self.gap_ns = gap_ns
        self.early_ns = early_ns
        self._cycles: dict[tuple[str, int], Cycle] = {}

    def reserve(self, model: str, robot: str, *, earliest_ns: int, interval_ns: int,
                budget_ns: int, priority: int, now_ns: int) -> int | None:
        """The start, at or after ``earliest_ns`` and before one ``interval_ns`` more, of the
        batch planned for ``robot``'s next frame (``budget_ns`` from that start to its
        deadline); None when the cycle has no room for it (no hint)."""
        if interval_ns <= 0 or not robot or self.times.time(
                model, self.max_batch) + self.margin_ns <= (budget_ns + self.early_ns) // 2:
            return None  # its largest batch fits in half its budget: nothing to gain
        cycle = self._cycles.setdefault((model, interval_ns), Cycle(interval_ns))
        self._forget(cycle, now_ns)
        member = cycle.members.get(robot)
        if member is None:
            cycle.joined += 1
            cycle.members[robot] = Member(priority, budget_ns, cycle.joined, now_ns)
            cycle.layout = None
        else:
            member.seen_ns = now_ns
            # budgets vary from frame to frame (the robot's timer slack, the uplink): take a
            # fall at once, a rise slowly, and lay out afresh only when the robot's batch no
            # longer fits it, as every new layout moves other robots
            member.budget_ns = min(budget_ns, member.budget_ns + RISE_NS)
            held = cycle.slot_of.get(robot)
            if member.priority != priority or (held is not None and self.times.time(
                    model, len(held.robots)) > member.budget_ns - self.margin_ns
                    - self.guard_ns):
                member.priority = priority
                cycle.layout = None
        slot = self._layout(model, cycle).get(robot)
        return None if slot is None else cycle.next_at(slot, earliest_ns)

    def smallest(self, model: str) -> int:
        """The least budget a robot of ``model`` needs for a slot: t(1), margin and guard."""
        return self.times.time(model, 1) + self.margin_ns + self.guard_ns

    def slots(self, model: str, interval_ns: int) -> list[Slot]:
        """The current layout of ``model``'s robots with ``interval_ns``."""
        cycle = self._cycles.get((model, interval_ns))
        if cycle is None:
            return []
        self._layout(model, cycle)
        return list(cycle.layout or [])

    def next_start(self, model: str, now_ns: int) -> tuple[int, int] | None:
        """(start, robots) of the first slot of ``model`` starting after ``now_ns``."""
        later = [(start + (0 if start > now_ns else interval), count)
                 for start, count, interval in self._starts(model, now_ns)]
        return min(later, default=None)

    def due(self, model: str, now_ns: int, grace_ns: int) -> tuple[int, int] | None:
        """(start, robots) of a slot of ``model`` that started at most ``grace_ns`` ago."""
        return next(((start, count) for start, count, _ in self._starts(model, now_ns)
                     if now_ns - grace_ns <= start <= now_ns), None)

    def _starts(self, model: str, now_ns: int) -> list[tuple[int, int, int]]:
        """(latest start at or before ``now_ns``, robots, interval) of each slot of model."""
        out: list[tuple[int, int, int]] = []
        for (name, interval), cycle in self._cycles.items():
            if name == model:
                self._layout(model, cycle)
                out.extend((now_ns - (now_ns - slot.phase_ns) % interval, len(slot.robots),
                            interval) for slot in cycle.layout or [])
        return out

    def _layout(self, model: str, cycle: Cycle) -> dict[str, Slot]:
        """Lay the cycle's robots out (see the module docstring); robot → slot."""
        if cycle.layout is not None:
            return cycle.slot_of
        period = cycle.interval_ns
        order = sorted(cycle.members.items(), key=lambda item: (item[1].priority,
                                                                item[1].joined))
        slots: list[tuple[int, list[str], int]] = []  # phase, robots, smallest budget
        at = 0
        for robot, member in order:
            if slots:
                phase, robots, budget = slots[-1]
                size, budget = len(robots) + 1, min(budget, member.budget_ns)
                duration = self.times.time(model, size)
                if (size <= self.max_batch and duration <= budget - self.margin_ns
                        - self.guard_ns and phase + duration + self.gap_ns <= period):
                    robots.append(robot)
                    slots[-1] = (phase, robots, budget)
                    continue
                at = phase + self.times.time(model, len(robots)) + self.gap_ns
            one = self.times.time(model, 1)
            if one <= member.budget_ns - self.margin_ns - self.guard_ns \
                    and at + one + self.gap_ns <= period:
                slots.append((at, [robot], member.budget_ns))
        cycle.layout = [Slot(phase, tuple(robots)) for phase, robots, _ in slots]
        cycle.slot_of = {robot: slot for slot in cycle.layout for robot in slot.robots}
        return cycle.slot_of

    def _forget(self, cycle: Cycle, now_ns: int) -> None:
        """Robots not heard from for ``FORGET_AFTER`` intervals leave the plan."""
        cut = now_ns - FORGET_AFTER * cycle.interval_ns
        gone = [robot for robot, member in cycle.members.items() if member.seen_ns < cut]
        for robot in gone:
            del cycle.members[robot]
        if gone:
            cycle.layout = None
