"""``vlabus demo``: the whole loop on one machine, with a live view and a final summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="run a fleet (bus, workers, simulated robots) on this machine",
        description="Start a bus (embedded ZeroMQ hub by default), cloud workers and simulated "
                    "robots as processes, show a live view, and print a summary.")
    parser.add_argument("--bus", default="zmq",
                        help="zmq (embedded hub, default), mqtt (local Mosquitto) or a bus URL")
    parser.add_argument("--robots", type=int, default=2, help="simulated robots (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="cloud workers (default 2)")
    parser.add_argument("--seconds", type=float, default=20.0, help="run time (default 20)")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second per robot")
    parser.add_argument("--deadline-ms", type=float, default=100.0,
                        help="per-step deadline (default 100 ms)")
    parser.add_argument("--chunk", type=int, default=0, help="action chunk length (0: single)")
    parser.add_argument("--chaos", action="store_true",
                        help="kill and restart a worker and cut the bus off mid-run")
    parser.add_argument("--record", type=Path, default=None, metavar="FILE",
                        help="record all traffic to an MCAP file")
    parser.add_argument("--policy", default=None, metavar="MODULE:FACTORY",
                        help="worker policy (default: the built-in reference VLA)")
    parser.add_argument("--foxglove", type=int, default=None, metavar="PORT",
                        help="also serve the fleet to Foxglove on ws://127.0.0.1:PORT "
                             "(vlabus view; needs the foxglove extra)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--fl", action="store_true",
                        help="federated rounds: robots learn from the cloud, privately "
                             "(vlabus fl serve; the run lasts as long as the rounds need)")
    parser.add_argument("--fl-rounds", type=int, default=3, metavar="R")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlabus.cli.fleet import DemoConfig, run_demo

    seconds = args.seconds
    if args.fl:
        from vlabus.cli.flfleet import robot_seconds

        seconds = robot_seconds(seconds, args.fl_rounds)
    config = DemoConfig(
        bus=args.bus, robots=args.robots, workers=args.workers, seconds=seconds,
        fps=args.fps, deadline_ms=args.deadline_ms, chunk=args.chunk, chaos=args.chaos,
        record=args.record, policy=args.policy, keep=args.keep, foxglove=args.foxglove,
        fl_rounds=args.fl_rounds if args.fl else 0)
    summary = run_demo(config, view=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    else:
        src = summary["actions_by_source"]
        print(f"\n{summary['steps']} steps over {summary['robots']} robots in "
              f"{summary['seconds']} s: {src.get('cloud', 0)} cloud actions, "
              f"{src.get('fallback', 0)} fallbacks {summary['fallbacks_by_cause']}, "
              f"{summary['steps_without_action']} steps without an action")
        lat = summary["latency_ms"]
        print(f"round trip p50 {lat['rtt_p50_median_robot']} ms (median robot), "
              f"p99 {lat['rtt_p99_worst_robot']} ms (worst robot)")
        if summary["rejected_by_reason"]:
            print(f"rejected: {summary['rejected_by_reason']}")
        for line in summary.get("fl", {}).get("rounds", []):
            from vlabus.cli.flfleet import describe

            print(describe(line))
        for failure in summary["failures"]:
            print(f"FAILED: {failure}", file=sys.stderr)
        if "workdir" in summary:
            print(f"kept {summary['workdir']} (keys, broker configuration, logs"
                  f"{', recording' if args.record else ''})")
    return 0 if summary["ok"] else 1
