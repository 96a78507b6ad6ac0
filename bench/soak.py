"""A bounded soak: a fleet on a real ZeroMQ hub with periodic worker kills and hub restarts.

``python -m bench.soak --minutes M --json`` runs the real commands as processes (``vlabus hub``,
two ``vlabus worker --policy noop``, two ``vlabus edge --sim``) for M minutes. Every
``--kill-every`` seconds one worker is SIGKILLed and started again; every ``--restart-every``
seconds the hub is stopped and started on the same port. Each process's RSS and open files are
sampled every ``--sample-every`` seconds from /proc, and their slopes over the run (MB/min,
files/min, least squares, the first minute or fifth left out as warm-up) are reported per
process. A process that was restarted is fitted with one slope and an intercept per run of it
(the first ``SETTLE_S`` of each run left out), so the restarts' own start-up does not count as
growth. The accounting: each robot's summary must show one action per step (cloud + fallback
= steps, none without an action), and each worker's frames received = served + rejected +
counted drops (the sum of its ``dropped`` causes), for the last run of each worker process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import environment

ROBOTS = ("robot-a", "robot-b")
SETTLE_S = 15.0  # of each run of a restarted process, start-up rather than steady state
WORKERS = ("worker-1", "worker-2")


@dataclass
class Proc:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)  # t, MB, fds, run
    summaries: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0

    def start(self) -> None:
        self.popen = subprocess.Popen(self.argv, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)

    def sample(self, t: float) -> None:
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        try:
            status = Path(f"/proc/{popen.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{popen.pid}/fd"))
        except OSError:
            return
        rss_kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
        self.samples.append((t, rss_kb / 1024, fds, self.restarts))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(sig)
        try:
            out, _ = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, _ = popen.communicate()
        if sig != signal.SIGKILL and out.strip():
            with contextlib.suppress(ValueError):
                self.summaries.append(json.loads(out.strip().splitlines()[-1]))
        self.popen = None


def slope(points: list[tuple[float, float]], runs: list[int] | None = None) -> float | None:
    """Least-squares slope of ``points`` per minute (None with fewer than 3); with ``runs``
    (which run of the process each point is from), one common slope with an intercept per run."""
    if len(points) < 3:
        return None
    groups: dict[int, list[tuple[float, float]]] = {}
    for i, point in enumerate(points):
        groups.setdefault(runs[i] if runs is not None else 0, []).append(point)
    cov = var = 0.0
    for group in groups.values():
        mean_t = sum(t for t, _ in group) / len(group)
        mean_v = sum(v for _, v in group) / len(group)
        var += sum((t - mean_t) ** 2 for t, _ in group)
        cov += sum((t - mean_t) * (v - mean_v) for t, v in group)
    return None if var == 0 else 60 * cov / var


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from security.keys import add_key

    seconds = args.minutes * 60
    keys = Path(tempfile.mkdtemp(prefix="vlabus-soak-"))
    for robot in ROBOTS:
        add_key(keys, "robot", robot)
    for worker_id in WORKERS:
        add_key(keys, "worker", worker_id)
    port = free_port()
    url = f"zmq://127.0.0.1:{port}"
    vlabus = [sys.executable, "-m", "vlabus"]
    hub = Proc("hub", [*vlabus, "hub", "--bind", f"tcp://127.0.0.1:{port}", "--json"])
    workers = [Proc(w, [*vlabus, "worker", "--bus", url, "--keys", str(keys), "--id", w,
                        "--group", "soak", "--policy", "noop", "--json"]) for w in WORKERS]
    robots = [Proc(r, [*vlabus, "edge", "--robot-id", r, "--bus", url, "--keys", str(keys),
                       "--sim", "--fps", str(args.fps), "--deadline-ms", "100",
                       "--seconds", str(seconds), "--json"]) for r in ROBOTS]
    everyone = [hub, *workers, *robots]
    hub.start()
    time.sleep(1.0)
    for proc in [*workers, *robots]:
        proc.start()
    start = time.monotonic()
    next_kill, next_restart, victim = args.kill_every, args.restart_every, 0
    try:
        while (elapsed := time.monotonic() - start) < seconds + 5:
            for proc in everyone:
                proc.sample(elapsed)
            if all(r.popen is None or r.popen.poll() is not None for r in robots):
                break
            if args.kill_every and elapsed >= next_kill and elapsed < seconds - 5:
                killed = workers[victim % len(workers)]
                killed.stop(signal.SIGKILL)
                killed.start()
                killed.restarts += 1
                victim += 1
                next_kill += args.kill_every
            if args.restart_every and elapsed >= next_restart and elapsed < seconds - 5:
                hub.stop()
                hub.start()
                hub.restarts += 1
                next_restart += args.restart_every
            time.sleep(args.sample_every)
    finally:
        for proc in robots:
            proc.stop(timeout=60)
        for proc in [*workers, hub]:
            proc.stop()
    return report(everyone, robots, workers, seconds)


def report(everyone: list[Proc], robots: list[Proc], workers: list[Proc],
           seconds: float) -> dict[str, Any]:
    warm = min(60.0, seconds / 5)
    processes = {}
    for proc in everyone:
        started: dict[int, float] = {}
        for t, _, _, run in proc.samples:
            started.setdefault(run, t)
        kept = [s for s in proc.samples if s[0] >= warm
                and (s[3] == 0 or s[0] >= started[s[3]] + SETTLE_S)]
        runs = [run for *_, run in kept]
        processes[proc.name] = {
            "restarts": proc.restarts, "samples": len(kept),
            "rss_mb_last": round(kept[-1][1], 1) if kept else None,
            "rss_mb_per_min": _round(slope([(t, mb) for t, mb, _, _ in kept], runs)),
            "open_files_last": kept[-1][2] if kept else None,
            "open_files_per_min": _round(slope([(t, float(fds)) for t, _, fds, _ in kept], runs)),
        }
    accounting = {}
    for proc in robots:
        summary = proc.summaries[-1] if proc.summaries else {}
        by_source = summary.get("actions_by_source", {})
        steps = summary.get("steps", 0)
        accounting[proc.name] = {
            "steps": steps, "actions_by_source": by_source,
            "steps_without_action": summary.get("steps_without_action"),
            "consistent": bool(steps) and sum(by_source.values()) == steps
            and summary.get("steps_without_action") == 0}
    for proc in workers:
        summary = proc.summaries[-1] if proc.summaries else {}
        received = summary.get("received", 0)
        accounted = (summary.get("served", 0) + summary.get("rejected_total", 0)
                     + summary.get("dropped_total", 0))
        accounting[proc.name] = {"received": received, "served": summary.get("served"),
                                 "rejected_total": summary.get("rejected_total"),
                                 "dropped": summary.get("dropped"),
                                 "consistent": received == accounted}
    return {"bench": "soak", "minutes": round(seconds / 60, 2), "warm_up_s": warm,
            "environment": environment(), "processes": processes, "accounting": accounting,
            "consistent": all(a["consistent"] for a in accounting.values())}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--kill-every", type=float, default=45.0, metavar="S")
    parser.add_argument("--restart-every", type=float, default=120.0, metavar="S")
    parser.add_argument("--sample-every", type=float, default=2.0, metavar="S")
    parser.add_argument("--quick", action="store_true", help="a 15 s run (smoke)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.kill_every, args.restart_every, args.sample_every = 0.25, 6, 9, 1
    result = run(args)
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return 0 if result["consistent"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
