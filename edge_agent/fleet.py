"""Many simulated robots in one process: each its own identity (key, client id, will), its own
bus connection and its own agent (watchdog, breaker, action queue), on one event loop.

What they share is what does not make them a different robot: the rendered camera images (one
ring, rendered once) and the local fallback policy (one warmed model on one thread, so hundreds
of robots do not each hold a torch model and a thread). ``vlabus edge --sim --robots N`` and
``vlabus demo`` for large fleets run this; ``bench.goodput`` drives it as a library.

Robots start spread over one request period (seeded), so their frames do not arrive in lock
step. A ``high_fraction`` of them, spread evenly over the ids, run at ``Priority.HIGH`` with
``high_deadline_ms`` (default: half the deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from edge_agent.agent import AgentConfig, EdgeAgent
from edge_agent.breaker import BreakerConfig
from edge_agent.local import LocalPolicy
from edge_agent.metrics import EdgeMetrics
from edge_agent.sim import SimRobot, drive, summarize
from edge_agent.stack import LocalModel, build_local, load_identity, open_edge
from schemas.messages import Priority
from vlabus.bus.transport import TransportOptions
from vlabus.quantiles import quantiles

_NUMBERED = re.compile(r"^(.*?)(\d+)$")
#: a robot counts as served when at least this share of its requests was answered on time
ON_TIME = 0.99


def robot_ids(first: str, count: int) -> list[str]:
    """``robot-1``, 3 → robot-1, robot-2, robot-3 (the first id must end in a number)."""
    if count == 1:
        return [first]
    match = _NUMBERED.match(first)
    if match is None:
        raise ValueError(f"with several robots the first id must end in a number: {first!r}")
    prefix, start = match.group(1), int(match.group(2))
    return [f"{prefix}{start + i}" for i in range(count)]


@dataclass(frozen=True)
class FleetSpec:
    """What every robot of the fleet does (rates in Hz, times in ms and s)."""

    first_id: str = "robot-1"
    robots: int = 1
    fps: float = 15.0
    deadline_ms: float = 100.0
    seconds: float = 10.0
    chunk: int = 1
    refill_below: int | None = None
    high_fraction: float = 0.0
    high_deadline_ms: float | None = None
    #: ``None`` keeps the agent's circuit breaker; benches that measure a worker at a fixed
    #: offered load turn it off so no robot withdraws its requests
    breaker: BreakerConfig | None = None
    #: requests sent in the first ``warmup_s`` of ``seconds`` are not counted (the fleet's
    #: start, when every robot's first request comes at once, is not its steady state)
    warmup_s: float = 0.0
    seed: int = 0
    model: LocalModel = field(default_factory=LocalModel)

    def high(self, index: int) -> bool:
        """Whether robot ``index`` (from 0) is high priority: spread evenly, so any first n
        robots hold about ``high_fraction`` x n of them (0.3: the 4th, 7th, 10th, …)."""
        return math.floor((index + 1) * self.high_fraction) > math.floor(
            index * self.high_fraction)

    def request_period_s(self) -> float:
        per = self.chunk - (self.chunk // 2 if self.refill_below is None else self.refill_below)
        return max(1, per if self.chunk > 1 else 1) / self.fps


class _SharedLocal(LocalPolicy):
    """The fleet's one local policy: an agent closing must not stop it for the others."""

    def close(self) -> None:
        """Left to :meth:`close_shared` once every robot is done."""

    def close_shared(self) -> None:
        super().close()


async def run_fleet(bus_url: str, keys_dir: str | Path, spec: FleetSpec, *,
                    stop: asyncio.Event | None = None,
                    options_for: Callable[[str], TransportOptions] | None = None,
                    on_ready: Callable[[], None] | None = None,
                    collector: FleetCollector | None = None,
                    on_warm: Callable[[], None] | None = None) -> dict[str, Any]:
    """Connect the whole fleet, run it for ``spec.seconds`` and return its summary: fleet
    totals, and per robot its agent summary plus ``requests`` and ``on_time`` (those sent after
    ``spec.warmup_s``, when ``on_warm`` is called). Each robot's metrics join ``collector``
    when given (one ``/metrics`` for the process)."""
    ids = robot_ids(spec.first_id, spec.robots)
    first = SimRobot(cameras=spec.model.cameras, state_dim=spec.model.state_dim, seed=spec.seed)
    policy, version = build_local(spec.model)
    local = _SharedLocal(policy, version)
    local.warm_up(first.observe(0))
    agents: list[tuple[EdgeAgent, SimRobot, EdgeMetrics]] = []
    try:
        for index, robot_id in enumerate(ids):
            agents.append(await _connect(bus_url, keys_dir, spec, index=index,
                                         robot_id=robot_id, first=first, local=local,
                                         options_for=options_for))
            if collector is not None:
                collector.registries.append(agents[-1][2].registry)
        if on_ready is not None:
            on_ready()
        rng = random.Random(spec.seed)
        period = spec.request_period_s()
        started = time.monotonic()
        baseline = asyncio.create_task(_baseline(agents, spec.warmup_s, on_warm))
        results = await asyncio.gather(*(
            _run_one(agent, robot, spec, rng.uniform(0.0, period), stop)
            for agent, robot, _ in agents))
        elapsed = time.monotonic() - started - spec.warmup_s
        before = await baseline
    finally:
        for agent, _, _ in agents:
            await agent.close()
            with contextlib.suppress(Exception):
                await agent.transport.close()
        local.close_shared()
    robots = []
    for (agent, _, metrics), overruns, base in zip(agents, results, before, strict=True):
        counts = _requests(agent, metrics)
        counts = {key: max(0, value - base.get(key, 0)) for key, value in counts.items()}
        counts["on_time"] = min(counts["on_time"], counts["requests"])
        robots.append({**summarize(agent, overruns=overruns), **counts,
                       "priority": int(agent.config.priority),
                       "_rtt_ns": list(agent.stats.rtt_ns)[base.get("answered", 0):]})
    return fleet_summary(robots, elapsed)


async def _connect(bus_url: str, keys_dir: str | Path, spec: FleetSpec, *, index: int,
                   robot_id: str, first: SimRobot, local: LocalPolicy,
                   options_for: Callable[[str], TransportOptions] | None,
                   ) -> tuple[EdgeAgent, SimRobot, EdgeMetrics]:
    keys, signer = load_identity(keys_dir, robot_id)
    robot = SimRobot(cameras=spec.model.cameras, state_dim=spec.model.state_dim,
                     seed=spec.seed + index, frames=first.frames)
    high = spec.high(index)
    deadline = (spec.high_deadline_ms or spec.deadline_ms / 2) if high else spec.deadline_ms
    chunk = spec.chunk
    config = AgentConfig(
        robot_id=robot_id, deadline_ns=round(deadline * 1e6), chunk=chunk,
        refill_below=chunk // 2 if spec.refill_below is None else spec.refill_below,
        period_ns=round(1e9 / spec.fps), priority=Priority.HIGH if high else Priority.NORMAL,
        breaker=spec.breaker or BreakerConfig())
    metrics = EdgeMetrics()
    options = options_for(robot_id) if options_for is not None else None
    agent = await open_edge(bus_url, keys=keys, signer=signer, config=config,
                            probe=robot.observe(0), model=spec.model, metrics=metrics,
                            options=options, local=local)
    return agent, robot, metrics


async def _run_one(agent: EdgeAgent, robot: SimRobot, spec: FleetSpec, offset_s: float,
                   stop: asyncio.Event | None) -> int:
    await asyncio.sleep(offset_s)  # spread over one request period
    overruns = await drive(agent, robot, fps=spec.fps, seconds=spec.seconds, stop=stop)
    agent.stop_refill()  # a refill planned for after the end would not be counted
    # a request still in flight is answered or decided within its deadline: count it as such,
    # not as sent and never answered
    settle = time.monotonic() + spec.deadline_ms / 1000 + 0.1
    while agent.inbox.waiting and time.monotonic() < settle:
        await asyncio.sleep(0.01)  # polling the robot's own pending replies, bounded
    return overruns


async def _baseline(agents: list[tuple[EdgeAgent, SimRobot, EdgeMetrics]],
                    warmup_s: float, on_warm: Callable[[], None] | None
                    ) -> list[dict[str, int]]:
    """Each robot's request counts once ``warmup_s`` have passed (none: zeros); ``on_warm``
    is called at that moment."""
    if warmup_s > 0:
        await asyncio.sleep(warmup_s)
    counts: list[dict[str, int]] = []
    for agent, _, metrics in agents:
        count = _requests(agent, metrics) if warmup_s > 0 else {}
        if count:  # a request in flight now is answered (or missed) after: count it after
            count["requests"] -= agent.inbox.waiting
        counts.append(count)
    if on_warm is not None:
        on_warm()
    return counts


def _requests(agent: EdgeAgent, metrics: EdgeMetrics) -> dict[str, int]:
    """Frames sent to the cloud and how many were answered on time (before the robot decided)."""
    sent = metrics.registry.get_sample_value("vlabus_edge_frames_sent_total") or 0.0
    stats = agent.stats
    answered = len(stats.rtt_ns)
    return {"requests": int(sent), "answered": answered,
            "on_time": answered - stats.late_replies_discarded}


def fleet_summary(robots: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    """Totals over the fleet: requests, on-time fraction, round trips, per priority class."""
    def totals(group: list[dict[str, Any]]) -> dict[str, Any]:
        requests = sum(r["requests"] for r in group)
        on_time = sum(r["on_time"] for r in group)
        served = sum(1 for r in group if r["requests"] and r["on_time"] >= ON_TIME * r["requests"])
        return {"robots": len(group), "requests": requests, "on_time": on_time,
                "robots_served": served,
                "answered": sum(r["answered"] for r in group),
                "on_time_fraction": round(on_time / requests, 5) if requests else 0.0}

    rtts = [ns for r in robots for ns in r.get("_rtt_ns", [])]
    tallies: dict[str, Counter[str]] = {key: Counter() for key in (
        "actions_by_source", "fallbacks_by_cause", "rejected_by_reason")}
    for r in robots:
        for key, tally in tallies.items():
            tally.update(r.get(key, {}))
    out = totals(robots)
    out["seconds"] = round(elapsed, 3)
    out["by_priority"] = {str(p): totals([r for r in robots if r["priority"] == p])
                          for p in sorted({r["priority"] for r in robots})}
    out["rtt_ms"] = quantiles(rtts, (0.5, 0.99), scale=1e6)
    out["overruns"] = sum(r.get("overruns", 0) for r in robots)
    # the keys of one robot's summary, over the fleet (what `vlabus demo` folds)
    for key in ("steps", "steps_without_action", "late_replies_discarded"):
        out[key] = sum(r.get(key, 0) for r in robots)
    out.update({key: dict(tally) for key, tally in tallies.items()})
    out["lateness_ms"] = {q: max((r["lateness_ms"][q] for r in robots), default=0.0)
                          for q in ("p99", "max")}
    out["per_robot"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in robots]
    return out


class FleetCollector:
    """One ``/metrics`` for a fleet process: every robot's counters and histograms summed,
    gauges as their maximum, so a live view shows the fleet as one row."""

    def __init__(self) -> None:
        self.registries: list[CollectorRegistry] = []

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for registry in self.registries:
            for family in registry.collect():
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation,
                                                   family.type)
                    sums[family.name] = {}
                acc = sums[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    old = acc.get(key)
                    acc[key] = sample.value if old is None else (
                        max(old, sample.value) if family.type == "gauge" else old + sample.value)
        for name, family in families.items():
            for (sample_name, labels), value in sums[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family
