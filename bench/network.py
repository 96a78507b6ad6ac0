"""Robots on a shared, shaped site uplink: what each camera codec gets answered on time.

    python -m bench.network --json [--quick]

4 robots, two 224x224 cameras at 15 Hz, a 100 ms deadline, behind a site uplink of 5, 10, 20,
50 and 100 Mbit/s (``tc tbf`` on a veth pair between two network namespaces, see
``tests/support/netbed.py``), over the ZeroMQ hub (robots connect across the link) and over a
site Mosquitto bridged to the cloud's (``vlabus broker render --site``); for the codecs raw,
lz4, JPEG 85 and auto. Per run:

* ``on_time`` — share of steps whose action came from the cloud before the deadline;
* ``fallbacks`` — steps the robot's local policy answered instead;
* ``uplink_utilisation`` — bytes the uplink carried / what the rate allows in the run;
* ``action_diff`` — mean ||a - a_raw|| / ||a_raw|| over sampled cloud steps, where a_raw is the
  same policy's action on the raw images (what the codec costs the policy; 0 for lossless);
* ``rungs`` — images sent per codec rung (what auto chose);
* ``load_1m`` — the machine's load average after the run: above its core count, the robots,
  the worker and the hub wait for a CPU and steps miss for that reason, whatever the codec.

The floor measured in the same run is raw at the uplink where it fits (the lossless reference).
Needs root (network namespaces, ``tc``) and says so otherwise. ``--quick``: the hub only, 10
Mbit/s, raw and auto, 2 s each.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import emit, environment, parser
from bench.network_stack import (
    CloudStack,
    RobotRun,
    cloud_policy,
    make_keys,
    run_robots,
)
from bench.network_stack import wait_idle as drain
from tests.support.netbed import NetBed, open_netbed, unavailable

CODECS = {"raw": "raw", "lz4": "lz4", "jpeg85": "jpeg:85", "auto": "auto"}


def action_diff(samples: list[tuple[Any, Any]], policy: Any) -> float | None:
    """Mean relative L2 distance between the cloud's actions and the policy's on raw images."""
    if not samples:
        return None
    diffs = []
    for observation, action in samples:
        reference = np.asarray(policy.infer([observation]))[0, 0]
        diffs.append(float(np.linalg.norm(np.asarray(action) - reference)
                           / max(float(np.linalg.norm(reference)), 1e-9)))
    return float(f"{np.mean(diffs):.3g}")


def row(run: RobotRun, *, mbit: float, policy: Any) -> dict[str, Any]:
    """One run's figures (see the module docstring)."""
    rungs: collections.Counter[str] = collections.Counter()
    causes: collections.Counter[str] = collections.Counter()
    for summary in run.summaries:
        rungs.update(summary["codec"]["frames_by_rung"])
        causes.update(summary["fallbacks_by_cause"])
    allowed = mbit * 1e6 / 8 * run.seconds
    return {
        "steps": run.steps,
        "on_time": round(run.cloud / run.steps, 4) if run.steps else None,
        "fallbacks": sum(causes.values()),
        "fallbacks_by_cause": dict(causes),
        "steps_without_action": sum(s["steps_without_action"] for s in run.summaries),
        "uplink_utilisation": round(run.uplink_bytes / allowed, 3),
        "uplink_mbit_s_seen": [s["codec"]["uplink_mbit_s"] for s in run.summaries],
        "action_diff": action_diff(run.samples, policy),
        "diff_samples": len(run.samples),
        "rungs": dict(rungs),
        "rtt_ms_p50": [s["rtt_ms"]["p50"] for s in run.summaries],
    }


def measure(bed: NetBed, stack: CloudStack, *, uplinks: list[float], codecs: list[str],
            seconds: float, policy: Any, log: Any) -> list[dict[str, Any]]:
    rows = []
    for mbit in uplinks:
        bed.shape(mbit)
        for name in codecs:
            stack.reset()
            drain(bed)
            run = bed.run("site", lambda name=name: asyncio.run(run_robots(  # type: ignore[misc]
                stack, codec=CODECS[name], seconds=seconds, fps=15.0, deadline_ms=100.0)))
            figures = row(run, mbit=mbit, policy=policy)
            rows.append({"bus": stack.bus, "uplink_mbit_s": mbit, "codec": name, **figures,
                         "load_1m": round(os.getloadavg()[0], 2)})
            print(f"{stack.bus} {mbit:>5} Mbit/s {name:>6}: on time {figures['on_time']}, "
                  f"diff {figures['action_diff']}, util {figures['uplink_utilisation']}",
                  file=log, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--uplinks", default="5,10,20,50,100", help="Mbit/s, comma-separated")
    parse.add_argument("--buses", default="hub,bridge")
    parse.add_argument("--codecs", default="raw,lz4,jpeg85,auto")
    parse.add_argument("--seconds", type=float, default=8.0, help="per run")
    parse.add_argument("--robots", type=int, default=4)
    args = parse.parse_args(argv)
    reason = unavailable()
    if reason is not None:
        emit({"error": f"bench.network needs root and network namespaces: {reason}"},
             compact=args.json)
        return 2
    if args.quick:
        args.uplinks, args.buses, args.codecs, args.seconds = "10", "hub", "raw,auto", 2.0
    uplinks = [float(x) for x in args.uplinks.split(",")]
    codecs = args.codecs.split(",")
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        parse.error(f"unknown codecs {unknown}; choose from {sorted(CODECS)}")
    import torch

    torch.set_num_threads(1)  # the robots' local policies
    policy = cloud_policy()
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-network-") as tmp:
        keys = Path(tmp) / "keys"
        robots = make_keys(keys, args.robots)
        for bus in args.buses.split(","):
            bed = open_netbed()
            stack = CloudStack(bed, bus, keys, Path(tmp) / bus, robots)
            stack.workdir.mkdir()
            try:
                stack.start()
                # warm-up (not reported): worker, bridge and codec calibration
                bed.run("site", lambda stack=stack: asyncio.run(run_robots(  # type: ignore[misc]
                    stack, codec="auto", seconds=1.0, fps=15.0, deadline_ms=100.0)))
                rows += measure(bed, stack, uplinks=uplinks, codecs=codecs,
                                seconds=args.seconds, policy=policy, log=sys.stderr)
            finally:
                stack.close()
                bed.close()
    emit({"bench": "network", "robots": args.robots, "cameras": "2 x 224x224x3", "fps": 15,
          "deadline_ms": 100, "seconds_per_run": args.seconds, "rows": rows,
          "wall_s": round(time.monotonic() - started, 1), "environment": environment()},
         compact=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
