"""``vlabus demo --fl``: federated rounds in the demo fleet, as real processes.

The robots run with ``--fl`` (each keeps its on-time cloud steps, trains in a low-priority
process, sends private deltas). A held-out robot (``robot-eval``, not in the rounds) drives for
a few seconds while ``vlabus record`` keeps its frames and the cloud's answers; then
``vlabus fl serve`` publishes the robots' model as release v1 and runs the rounds with that
recording as the release gate; the robots stop once the rounds are over. Each round
(participants, refusals, ε, the candidate's error against the current model's, released or
not) appears in the live view as it ends, and in the summary under ``fl``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlabus.cli.procs import Child

if TYPE_CHECKING:
    from vlabus.cli.fleet import Fleet

EVAL_SECONDS = 8.0
ROUND_TIMEOUT = 45.0  # a robot's first round pays its trainer process's start, at nice 19
EXAMPLES = 96
BATCH = 32


def robot_seconds(requested: float, rounds: int) -> float:
    """How long the robots must drive so that every round finds them running."""
    return max(requested, EVAL_SECONDS + 10.0 + rounds * ROUND_TIMEOUT + 10.0)


def robot_args(fleet: Fleet, robot: str) -> list[str]:
    """The ``vlabus edge`` flags that join ``robot`` to the rounds."""
    return ["--fl", "--models-dir", str(fleet.root / robot / "models"),
            "--fl-dir", str(fleet.root / robot / "fl")]


@dataclass
class FlDemo:
    fleet: Fleet
    rounds: int
    eval_robot: Child | None = None
    recorder: Child | None = None
    coordinator: Child | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False

    @property
    def heldout(self) -> Any:
        return self.fleet.root / "heldout.mcap"

    def start(self) -> None:
        """Drive the held-out robot and record it until it stops (the coordinator starts in
        :meth:`tick` once the recording is closed)."""
        fleet, cfg = self.fleet, self.fleet.config
        self.recorder = fleet.child("fl-recorder", [
            "record", "--bus", fleet.bus_url, "-o", str(self.heldout), "--topics",
            "vla/v1/robot-eval/#", "--quiet", "--json", "--client-id", "recorder"]).start()
        self.eval_robot = fleet.child("robot-eval", [
            "edge", "--robot-id", "robot-eval", "--bus", fleet.bus_url, "--keys",
            str(fleet.keys), "--sim", "--fps", str(cfg.fps), "--deadline-ms",
            str(cfg.deadline_ms), "--seconds", str(EVAL_SECONDS), "--json"]).start()

    def tick(self, t: float) -> None:
        """Start the coordinator once the held-out recording is complete; report rounds."""
        fleet = self.fleet
        if self.recorder is not None and self.recorder.running and \
                self.eval_robot is not None and not self.eval_robot.running:
            self.recorder.terminate()  # SIGTERM: the recorder closes its file and exits
        if self.coordinator is None and self.recorder is not None and \
                not self.recorder.running:
            self.coordinator = fleet.child("fl-coordinator", [
                "fl", "serve", "--bus", fleet.bus_url, "--keys", str(fleet.keys), "--model",
                "edge", "--rounds", str(self.rounds), "--min-clients", "1", "--max-clients",
                str(fleet.config.robots), "--round-timeout", str(ROUND_TIMEOUT), "--eval",
                str(self.heldout), "--examples", str(EXAMPLES), "--batch-size", str(BATCH),
                "--json"]).start()
            fleet.events.append(f"t={t:5.1f}s federated rounds start (held-out recording "
                                "of robot-eval done)")
        for report in self._new_reports():
            self.reports.append(report)
            fleet.events.append(f"t={t:5.1f}s {describe(report)}")
        if self.coordinator is not None and not self.coordinator.running and not self.done:
            self.done = True  # the rounds are over: the robots need not drive on
            fleet.events.append(f"t={t:5.1f}s federated rounds done; stopping the robots")
            for robot in fleet.robots:
                if robot.running and robot.process is not None:
                    robot.process.terminate()  # SIGTERM: the robot ends its run and reports

    def _new_reports(self) -> list[dict[str, Any]]:
        if self.coordinator is None:
            return []
        path = self.fleet.root / f"{self.coordinator.name}.{self.coordinator.restarts}.out"
        found = []
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith('{"round"'):
                try:
                    found.append(json.loads(line)["round"])
                except ValueError:
                    continue
        return found[len(self.reports):]

    def stop(self) -> None:
        for child in (self.eval_robot, self.recorder, self.coordinator):
            if child is not None and child.running:
                child.terminate()

    def summary(self, robots: dict[str, Any]) -> dict[str, Any]:
        self.tick(0.0)
        final = self.coordinator.stdout_json() if self.coordinator is not None else None
        return {
            "rounds": self.reports,
            "refused": (final or {}).get("refused", {}),
            "version": (final or {}).get("version"),
            "released": sum(1 for r in self.reports if r.get("released")),
            "noise_multiplier": (final or {}).get("noise_multiplier"),
            "coordinator_exit": None if self.coordinator is None or
            self.coordinator.process is None else self.coordinator.process.returncode,
            "robots": {name: (s or {}).get("fl") for name, s in robots.items()},
        }


def describe(report: dict[str, Any]) -> str:
    """One line of the live view for a finished round."""
    eps = max((e for e in report.get("epsilon", {}).values() if e is not None), default=0.0)
    text = (f"round {report['round']}: {len(report['participants'])} updates, refused "
            f"{report['refused'] or '{}'}, max ε {eps:.2f}")
    if report.get("candidate_error") is not None:
        text += f", error {report['base_error']:.4f} -> {report['candidate_error']:.4f}"
    return text + (f", released v{report['version']}" if report["released"] else
                   f", not released ({report['detail']})")
