"""The schedulers alone, on an ideal host: a discrete-event simulation of one worker.

    python -m bench.goodput_sim --json

The same scheduler code the worker runs (``cloud_workers.schedulers.make_scheduler``) on an
injected clock; the device takes the profile's t(batch); requests arrive from periodic robots
with random phases (one draw per seed) and nothing else costs time: no bus, no signing, no
CPU contention. A request is on time when its batch ends ``REPLY_MS`` before its deadline, and
the deadline the worker sees is the robot's deadline less ``ROBOT_SLACK_MS`` (the robot decides
that much early). It separates what the scheduling rule buys from the noise of a shared 2-core
host, which ``bench.goodput`` measures with real processes. These are simulations, not
measurements.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Any

from bench.common import emit, parser
from cloud_workers.queue import Request
from cloud_workers.schedulers import SCHEDULERS, make_scheduler
from schemas.messages import Priority
from vlabus.policy.profile import Profile, ProfilePolicy, load_profile

MS = 1_000_000
REPLY_MS = 2.0
ROBOT_SLACK_MS = 10.0
SEEDS = (1, 2, 3, 4, 5)
ON_TIME = 0.99
#: requests sent in the first second are not counted, as in ``bench.goodput``
WARMUP_S = 1.0


@dataclass(frozen=True)
class Fleet:
    """Periodic robots: a request every ``period_ms`` with ``deadline_ms``; a ``high_fraction``
    of them (spread evenly) at high priority with half the deadline."""

    period_ms: float
    deadline_ms: float
    high_fraction: float = 0.0
    #: whether the robots may move their requests (chunked robots hold a buffer; reactive
    #: robots need an action every step, so they state no interval and get no hints)
    shiftable: bool = True

    def robots(self, count: int, seed: int) -> list[tuple[int, int, int]]:
        """(first send ns, priority, budget ns from send to the decision) per robot."""
        rng = random.Random(seed)
        out = []
        for i in range(count):
            high = math.floor((i + 1) * self.high_fraction) > math.floor(i * self.high_fraction)
            deadline = (self.deadline_ms / 2 if high else self.deadline_ms) - ROBOT_SLACK_MS
            out.append((round(rng.uniform(0.0, self.period_ms) * MS),
                        int(Priority.HIGH if high else Priority.NORMAL), round(deadline * MS)))
        return out


def simulate(kind: str, profile: Profile, fleet: Fleet, robots: int, seconds: float,
             seed: int, *, slots: bool = True) -> dict[str, int]:
    """Serve ``robots`` periodic robots for ``WARMUP_S`` + ``seconds`` with scheduler
    ``kind``; counts of requests, on time and computed after the warm-up. A robot sends its
    next request one period after the last one, or at the worker's hint (``Request.hint_ns``)
    when one came back in time and falls between half a period before that and a period
    after, or, with no answer in time, at a random moment in the half period after it is due
    (as :mod:`edge_agent.refill` does)."""
    period = round(fleet.period_ms * MS)
    queue, scheduler = make_scheduler(kind, {"m": ProfilePolicy(profile)}, max_batch=16,
                                      max_delay_ns=2 * MS, capacity=1024, slots=slots)
    plan = fleet.robots(robots, seed)
    end = round((seconds + WARMUP_S) * 1e9)
    counted = round(WARMUP_S * 1e9)
    # events: (time, order, robot or -1 for the device/scheduler, version)
    events: list[tuple[int, int, int, int]] = []
    version = [0] * robots
    for robot, (first, _, _) in enumerate(plan):
        heapq.heappush(events, (first, 1, robot, 0))
    requests = on_time = computed = 0
    rng = random.Random(seed)

    def follow(owner: int, req: Request, hint: int) -> None:
        """Move ``owner``'s next request as the robot does (``edge_agent.refill``): to the
        hint, or, with no answer in time (``hint`` -1), to a random moment in the half period
        after its due time."""
        nominal = req.sent_ns + period
        if not req.interval_ns or not hint or nominal >= end:
            return
        if hint < 0:
            hint = nominal + round(rng.uniform(0, period / 2))
        elif not nominal - period // 2 <= hint < nominal + period:
            return
        version[owner] += 1
        heapq.heappush(events, (hint, 1, owner, version[owner]))

    running: list[tuple[int, Request]] = []
    busy_until = 0
    while events:
        now, _, robot, ver = heapq.heappop(events)
        if robot >= 0:
            if ver != version[robot]:
                continue  # moved by a hint
            _, priority, budget = plan[robot]
            request = Request("m", priority, now + budget, now, source=f"robot-{robot}",
                              interval_ns=period if fleet.shiftable else 0, sent_ns=now)
            request.payload = robot
            queue.push(request)
            requests += now >= counted
            if now + period < end:
                heapq.heappush(events, (now + period, 1, robot, version[robot]))
        if running and now >= busy_until:
            for owner, req in running:
                in_time = busy_until + REPLY_MS * MS <= req.deadline_ns
                if req.sent_ns >= counted:
                    computed += 1
                    on_time += in_time
                follow(owner, req, req.hint_ns if in_time else -1)
            running = []
        if running:
            continue
        decision = scheduler.poll(now)
        for req in decision.expired:
            follow(req.payload, req, -1)
        if decision.batch is not None:
            running = [(req.payload, req) for req in decision.batch.requests]
            busy_until = now + profile.time_ns(len(running))
            heapq.heappush(events, (busy_until, 0, -1, 0))
        elif decision.wake_at_ns is not None and decision.wake_at_ns > now:
            heapq.heappush(events, (decision.wake_at_ns, 0, -1, 0))
    return {"requests": requests, "on_time": on_time, "computed": computed}


def most_robots(kind: str, profile: Profile, fleet: Fleet, *, seconds: float,
                limit: int) -> dict[str, Any]:
    """The most robots with ≥ 99% on time pooled over ``SEEDS``; the sweep stops after two
    failing loads in a row."""
    best, fails, points = 0, 0, {}
    for robots in range(1, limit + 1):
        runs = [simulate(kind, profile, fleet, robots, seconds, seed) for seed in SEEDS]
        requests = sum(r["requests"] for r in runs)
        on_time = sum(r["on_time"] for r in runs)
        computed = sum(r["computed"] for r in runs)
        fraction = on_time / requests if requests else 0.0
        points[robots] = {"on_time_fraction": round(fraction, 5),
                          "wasted_fraction": round(1 - on_time / computed, 4) if computed else 0}
        if fraction >= ON_TIME:
            best, fails = robots, 0
        else:
            fails += 1
            if fails == 2:
                break
    return {"max_robots": best, "at_max": points.get(best), "points": points}


SCENARIOS = {
    "reactive": ("smolvla-rtx4090-graphs", Fleet(1000 / 15, 100.0, shiftable=False)),
    "reactive_mixed": ("smolvla-rtx4090-graphs", Fleet(1000 / 15, 100.0, 0.3, shiftable=False)),
    "chunked": ("pi0-rtx4090-eager", Fleet(500.0, 300.0)),
    "chunked_mixed": ("pi0-rtx4090-eager", Fleet(500.0, 300.0, 0.3)),
    "chunked_h200": ("pi0-h200-eager", Fleet(500.0, 300.0)),
    "chunked_h200_mixed": ("pi0-h200-eager", Fleet(500.0, 300.0, 0.3)),
}


def overloaded(profile: Profile, fleet: Fleet, robots: int, seconds: float) -> dict[str, Any]:
    """Every scheduler at one load (pooled over ``SEEDS``): on-time and wasted fractions."""
    out: dict[str, Any] = {"robots": robots}
    for kind in SCHEDULERS:
        runs = [simulate(kind, profile, fleet, robots, seconds, seed) for seed in SEEDS]
        requests, on_time, computed = (sum(r[k] for r in runs)
                                       for k in ("requests", "on_time", "computed"))
        out[kind] = {"on_time_fraction": round(on_time / requests, 4) if requests else 0.0,
                     "wasted_fraction": round(1 - on_time / computed, 4) if computed else 0.0}
    return out


def run_all(seconds: float, limit: int) -> dict[str, Any]:
    """Every scenario and scheduler; ratios of robots served like ``bench.goodput``'s, and all
    three at a quarter more robots than FIFO's limit (``overload``)."""
    out: dict[str, Any] = {}
    for name, (profile_name, fleet) in SCENARIOS.items():
        profile = load_profile(profile_name)
        runs = {kind: most_robots(kind, profile, fleet, seconds=seconds, limit=limit)
                for kind in SCHEDULERS}
        best = {kind: run["max_robots"] for kind, run in runs.items()}
        over = overloaded(profile, fleet, math.ceil(1.25 * max(best["fifo"], 1)), seconds)
        out[name] = {"profile": profile_name, "schedulers": runs, "overload": over, "ratios": {
            "vlabus_over_serial": round(best["vlabus"] / best["serial"], 3)
            if best["serial"] else None,
            "vlabus_over_fifo": round(best["vlabus"] / best["fifo"], 3)
            if best["fifo"] else None}}
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    seconds = 5.0 if args.quick else 20.0
    report = {"bench": "goodput_sim", "simulated": True, "seconds_simulated": seconds,
              "seeds": list(SEEDS), "robot_slack_ms": ROBOT_SLACK_MS, "reply_ms": REPLY_MS,
              "scenarios": run_all(seconds, 120)}
    emit(report, compact=args.json)


if __name__ == "__main__":
    main()
