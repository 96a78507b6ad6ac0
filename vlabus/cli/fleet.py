"""``vlabus demo``: a whole fleet on one machine — bus, workers, simulated robots — with a live
view, optional chaos (a worker killed and restarted, the bus cut off for a few seconds), and a
final summary.

Everything runs as real processes of the ``vlabus`` command over a real bus: the embedded
ZeroMQ hub by default, a local Mosquitto with ``--bus mqtt``, or any broker URL.
"""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from security.keys import add_key, init_keyring
from vlabus.cli.liveview import Totals, render, robot_row, worker_row
from vlabus.cli.procs import Child, free_port, workdir

#: fleets larger than this run as processes of this many simulated robots each
ROBOTS_PER_PROCESS = 16


@dataclass
class DemoConfig:
    bus: str = "zmq"
    robots: int = 2
    workers: int = 2
    seconds: float = 20.0
    fps: float = 15.0
    deadline_ms: float = 100.0
    chunk: int = 0
    chaos: bool = False
    record: Path | None = None
    policy: str | None = None
    keep: bool = False
    foxglove: int | None = None  # port of a `vlabus view` Foxglove server, when asked for
    fl_rounds: int = 0  # federated rounds (vlabus demo --fl); 0: none


@dataclass
class Event:
    at: float
    what: str
    action: Callable[[], None]
    done: bool = False


@dataclass
class Fleet:
    """The processes of one demo run and what happened to them."""

    config: DemoConfig
    root: Path
    bus_url: str = ""
    bus: Child | None = None
    mosquitto: Any = None
    broker_dir: Path | None = None
    workers: list[Child] = field(default_factory=list)
    robots: list[Child] = field(default_factory=list)
    recorder: Child | None = None
    viewer: Child | None = None
    events: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)
    fl: Any = None  # vlabus.cli.flfleet.FlDemo with --fl

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    def child(self, name: str, args: list[str], metrics: bool = False) -> Child:
        port = free_port() if metrics else None
        extra = ["--metrics-port", str(port)] if port else []
        if self.broker_dir is not None:
            extra += ["--broker-config", str(self.broker_dir)]
        return Child(name, [*args, *extra], self.root, metrics_port=port)

    # -- set-up ---------------------------------------------------------------------------------

    def make_keys(self) -> None:
        init_keyring(self.keys)
        for i in range(1, self.config.robots + 1):
            add_key(self.keys, "robot", f"robot-{i}")
        for i in range(1, self.config.workers + 1):
            add_key(self.keys, "worker", f"worker-{i}")
        add_key(self.keys, "release", "release")
        if self.config.fl_rounds:
            add_key(self.keys, "robot", "robot-eval")
            add_key(self.keys, "recorder", "recorder")

    def start_bus(self) -> None:
        bus = self.config.bus
        if bus == "zmq":
            port = free_port()
            self.bus = Child("hub", ["hub", "--bind", f"tcp://127.0.0.1:{port}"], self.root)
            self.bus.start()
            self.bus_url = f"zmq://127.0.0.1:{port}"
            _wait_port(port, 15.0, self.bus)
        elif bus == "mqtt":
            from vlabus.broker.local import LocalMosquitto
            from vlabus.broker.render import render as render_broker

            if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
                raise RuntimeError("--bus mqtt needs mosquitto installed (apt-get install "
                                   "mosquitto), or pass --bus mqtt://HOST:PORT")
            self.broker_dir = self.root / "broker"
            render_broker(self.keys, self.broker_dir)
            exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            self.mosquitto = LocalMosquitto(self.broker_dir, executable=exe)
            self.bus_url = self.mosquitto.start()
        else:
            self.bus_url = bus

    def start_workers(self) -> None:
        cfg = self.config
        for i in range(1, cfg.workers + 1):
            args = ["worker", "--bus", self.bus_url, "--keys", str(self.keys),
                    "--id", f"worker-{i}", "--group", "demo", "--json"]
            if cfg.policy:
                args += ["--policy", cfg.policy]
            self.workers.append(self.child(f"worker-{i}", args, metrics=True).start())
        deadline = time.monotonic() + 120.0
        for worker in self.workers:
            while not _ready(worker):
                if not worker.running:
                    raise RuntimeError(f"{worker.name} exited at start:\n{worker.stderr_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker.name} not ready after 120 s")
                time.sleep(0.1)  # polling a child's /readyz

    def start_recorder(self) -> None:
        if self.config.record is None:
            return
        args = ["record", "--bus", self.bus_url, "-o", str(self.config.record.resolve()),
                "--quiet", "--json", "--client-id", "recorder"]
        self.recorder = self.child("recorder", args).start()

    def start_view(self) -> None:
        """``vlabus view`` on the demo's bus and keys, for Foxglove (``--foxglove PORT``)."""
        if self.config.foxglove is None:
            return
        args = ["view", "--bus", self.bus_url, "--keys", str(self.keys), "--port",
                str(self.config.foxglove), "--client-id", "view", "--json"]
        self.viewer = self.child("view", args).start()
        self.events.append(f"Foxglove view on ws://127.0.0.1:{self.config.foxglove}")

    def start_robots(self) -> None:
        """One process per robot for small fleets; past ``ROBOTS_PER_PROCESS`` robots, processes
        of up to that many simulated robots each (``vlabus edge --sim --robots N``)."""
        cfg = self.config
        per = 1 if cfg.robots <= ROBOTS_PER_PROCESS or self.fl is not None else ROBOTS_PER_PROCESS
        for first in range(1, cfg.robots + 1, per):
            count = min(per, cfg.robots - first + 1)
            args = ["edge", "--robot-id", f"robot-{first}", "--bus", self.bus_url,
                    "--keys", str(self.keys), "--sim", "--fps", str(cfg.fps),
                    "--deadline-ms", str(cfg.deadline_ms), "--seconds", str(cfg.seconds),
                    "--json"]
            if cfg.chunk:
                args += ["--chunk", str(cfg.chunk)]
            if self.fl is not None:  # one process per robot: each has its own model store
                from vlabus.cli.flfleet import robot_args

                args += robot_args(self, f"robot-{first}")
            name = f"robot-{first}"
            if count > 1:
                args += ["--robots", str(count)]
                name = f"robots-{first}-{first + count - 1}"
            self.robots.append(self.child(name, args, metrics=True).start())

    # -- chaos ----------------------------------------------------------------------------------

    def chaos_events(self) -> list[Event]:
        total = self.config.seconds
        victim = self.workers[0]
        events = [
            Event(0.25 * total, f"kill -9 {victim.name}", victim.kill),
            Event(0.25 * total + 2.0, f"restart {victim.name}", victim.restart),
        ]
        if self.bus is not None or self.mosquitto is not None:
            events += [
                Event(0.55 * total, "cut the bus off", self.cut_bus),
                Event(0.55 * total + 3.0, "bring the bus back", self.restore_bus),
            ]
        return events

    def cut_bus(self) -> None:
        if self.bus is not None:
            self.bus.kill()
        elif self.mosquitto is not None:
            self.mosquitto.kill()

    def restore_bus(self) -> None:
        if self.bus is not None:
            self.bus.restart()
        elif self.mosquitto is not None:
            self.mosquitto.start()

    # -- tear-down ------------------------------------------------------------------------------

    def stop(self) -> None:
        if self.fl is not None:
            self.fl.stop()
        for child in [*self.robots, *self.workers]:
            if child.running:
                child.terminate()
        for extra in (self.recorder, self.viewer):
            if extra is not None:
                extra.terminate()
        if self.bus is not None:
            self.bus.terminate()
        if self.mosquitto is not None:
            self.mosquitto.stop()


def run_demo(config: DemoConfig, view: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run the demo and return its summary (``summary["ok"]`` says whether it succeeded)."""
    fleet = Fleet(config, workdir("vlabus-demo-"))
    started = time.monotonic()
    try:
        fleet.make_keys()
        fleet.start_bus()
        fleet.start_workers()
        fleet.start_recorder()
        fleet.start_view()
        if config.fl_rounds:
            from vlabus.cli.flfleet import FlDemo

            fleet.fl = FlDemo(fleet, config.fl_rounds)
        fleet.start_robots()
        if fleet.fl is not None:
            fleet.fl.start()
        _watch(fleet, view)
        for robot in fleet.robots:
            code = robot.wait(timeout=config.seconds + 60.0)
            if code != 0:
                fleet.failures.append(f"{robot.name} exited {code}: {robot.stderr_tail(5)}")
    except (RuntimeError, OSError) as exc:
        fleet.failures.append(str(exc))
    finally:
        fleet.stop()
    for worker in fleet.workers:
        status = worker.process.returncode if worker.process else None
        if status not in (0, None):
            fleet.failures.append(f"{worker.name} exited {status}: {worker.stderr_tail(5)}")
    summary = summarize(fleet, time.monotonic() - started)
    if not config.keep and not fleet.failures:
        shutil.rmtree(fleet.root, ignore_errors=True)
    else:
        summary["workdir"] = str(fleet.root)
    return summary


def _watch(fleet: Fleet, view: TextIO | None) -> None:
    cfg = fleet.config
    events = fleet.chaos_events() if cfg.chaos else []
    start = time.monotonic()
    before = {c.name: c.scrape() for c in [*fleet.robots, *fleet.workers]}
    totals = Totals()
    restarts = {c.name: c.restarts for c in [*fleet.robots, *fleet.workers]}
    last = start
    tty = view is not None and view.isatty()
    while any(r.running for r in fleet.robots):
        time.sleep(1.0)  # the view's refresh period
        now = time.monotonic()
        if fleet.fl is not None:
            fleet.fl.tick(now - start)
        for event in events:
            if not event.done and now - start >= event.at:
                event.action()
                event.done = True
                fleet.events.append(f"t={now - start:5.1f}s {event.what}")
        after = {c.name: c.scrape() for c in [*fleet.robots, *fleet.workers]}
        for child in [*fleet.robots, *fleet.workers]:
            if child.restarts != restarts[child.name]:  # its counters started again at zero
                restarts[child.name] = child.restarts
                before[child.name] = {}
        robots = [robot_row(r.name, before[r.name], after[r.name], now - last, totals)
                  for r in fleet.robots]
        fleet.timeline.append(_tick(now - start, before, after))
        workers = [worker_row(w.name, before[w.name], after[w.name], totals)
                   for w in fleet.workers]
        # a child that did not answer keeps its last samples: the next interval differences
        # against them instead of against nothing (totals would drop to zero)
        before = {name: samples or before[name] for name, samples in after.items()}
        last = now
        if view is not None:
            frame = render(now - start, cfg.seconds, robots, workers, fleet.events)
            view.write(("\x1b[H\x1b[2J" if tty else "\n") + frame + "\n")
            view.flush()


def summarize(fleet: Fleet, elapsed: float) -> dict[str, Any]:
    """Fold the children's JSON summaries into one."""
    robots = {r.name: r.stdout_json() for r in fleet.robots}
    workers = {w.name: w.stdout_json() for w in fleet.workers}
    by_source: Counter[str] = Counter()
    by_cause: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    steps = without = late = 0
    for name, s in robots.items():
        if s is None:
            fleet.failures.append(f"{name} printed no summary")
            continue
        steps += int(s.get("steps", 0))
        without += int(s.get("steps_without_action", 0))
        late += int(s.get("late_replies_discarded", 0))
        by_source.update(s.get("actions_by_source", {}))
        by_cause.update(s.get("fallbacks_by_cause", {}))
        rejected.update(s.get("rejected_by_reason", {}))
    for s in workers.values():
        if s is not None:
            rejected.update(s.get("rejected", {}))

    def worst(key: str, q: str) -> float | None:
        values = [s[key][q] for s in robots.values() if s and s.get(key)
                  and s[key].get(q) is not None]
        return max(values) if values else None

    def median(key: str, q: str) -> float | None:
        values = sorted(s[key][q] for s in robots.values() if s and s.get(key)
                        and s[key].get(q) is not None)
        return values[len(values) // 2] if values else None

    summary: dict[str, Any] = {
        "bus": fleet.config.bus,
        "bus_url": fleet.bus_url,
        "robots": fleet.config.robots,
        "workers": fleet.config.workers,
        "seconds": round(elapsed, 2),
        "frames": steps,
        "steps": steps,
        "actions_by_source": dict(by_source),
        "fallbacks_by_cause": dict(by_cause),
        "rejected_by_reason": {k: v for k, v in rejected.items() if v},
        "steps_without_action": without,
        "late_replies_discarded": late,
        "latency_ms": {
            "rtt_p50_median_robot": median("rtt_ms", "p50"),
            "rtt_p99_worst_robot": worst("rtt_ms", "p99"),
            "lateness_p99_worst_robot": worst("lateness_ms", "p99"),
            "lateness_max_worst_robot": worst("lateness_ms", "max"),
        },
        "chaos_events": fleet.events,
        "timeline": fleet.timeline,
        "per_robot": robots,
        "per_worker": workers,
        "failures": fleet.failures,
    }
    summary["ok"] = not fleet.failures and without == 0 and by_source.get("cloud", 0) > 0
    if fleet.fl is not None:
        summary["fl"] = fleet.fl.summary(robots)
        summary["ok"] = summary["ok"] and summary["fl"]["coordinator_exit"] == 0 and any(
            r["participants"] for r in summary["fl"]["rounds"])
    return summary


def _tick(t: float, before: dict[str, dict[str, float]],
          after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Actions by source across all robots during the last refresh period."""
    out = {"t": round(t, 1), "cloud": 0.0, "fallback": 0.0}
    for name, samples in after.items():
        if not samples:
            continue
        for source in ("cloud", "fallback"):
            key = f"vlabus_edge_actions_total{{source={source}}}"
            out[source] += samples.get(key, 0.0) - before.get(name, {}).get(key, 0.0)
    return out


def _ready(child: Child) -> bool:
    if child.metrics_port is None:
        return child.running
    try:
        url = f"http://127.0.0.1:{child.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=0.5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _wait_port(port: int, timeout: float, child: Child) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.running:
            raise RuntimeError(f"{child.name} exited at start:\n{child.stderr_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet
    raise RuntimeError(f"{child.name} did not listen on {port} within {timeout} s")
