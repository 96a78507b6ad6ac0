"""``vlabus edge --sim --robots N``: many simulated robots in this process (see
:mod:`edge_agent.fleet`), one ``/metrics`` for all of them, one JSON summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from vlabus.cli.busflags import transport_options

#: ``--seconds`` not given: run until SIGINT/SIGTERM
UNTIL_STOPPED = 10 * 365 * 86400.0


async def run_fleet_command(args: argparse.Namespace, first_id: str) -> dict[str, Any]:
    """Run the fleet the flags describe; the summary gets ``exit_code`` (2: bus unreachable)."""
    from prometheus_client import CollectorRegistry

    from edge_agent.fleet import FleetCollector, FleetSpec, robot_ids, run_fleet
    from edge_agent.stack import LocalModel
    from schemas.errors import BusError, TransportError
    from vlabus.metrics import MetricsServer

    try:
        robot_ids(first_id, args.robots)
    except ValueError as exc:
        return {"error": str(exc), "exit_code": 1}
    spec = FleetSpec(first_id=first_id, robots=args.robots, fps=args.fps,
                     deadline_ms=args.deadline_ms, chunk=args.chunk,
                     seconds=args.seconds if args.seconds is not None else UNTIL_STOPPED,
                     refill_below=args.refill_below,
                     model=LocalModel(name=args.local_model, width=args.local_width))
    collector = FleetCollector()
    server = None
    if args.metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(collector)
        server = MetricsServer(registry, args.metrics_host, args.metrics_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    ready = server.ready.set if server is not None else None
    try:
        summary = await run_fleet(args.bus, args.keys, spec, stop=stop, collector=collector,
                                  options_for=lambda rid: transport_options(args, rid),
                                  on_ready=ready)
    except TransportError as exc:
        return {"error": f"bus {args.bus}: {exc}", "exit_code": 2}
    except (BusError, OSError, ValueError) as exc:
        return {"error": str(exc), "exit_code": 1}
    finally:
        if server is not None:
            server.close()
    if server is not None:
        summary["metrics_port"] = server.port
    summary["exit_code"] = 0
    return summary
