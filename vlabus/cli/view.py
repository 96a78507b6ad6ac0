"""``vlabus view``: a live Foxglove WebSocket server showing a running fleet's verified traffic
(see :mod:`vlabus.log.live` and docs/foxglove.md).

Read-only on both sides: it only subscribes to the bus, and its Foxglove server offers no
client publishing, services or parameters. Prints ``{"event": "listening", "port", "url"}``
once serving (with ``--json``) and a JSON summary on exit. Exit status 0 on Ctrl-C, SIGTERM or
``--seconds``; 2 when the bus, the keys or the port cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from schemas.errors import BusError, SubscribeRejected
from vlabus.cli.busflags import add_bus_arguments, topic_pattern, transport_options


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "view", help="live Foxglove view of a running fleet (WebSocket server)",
        description="Serve the bus's verified traffic to Foxglove (open ws://HOST:PORT): "
                    "cameras, actions, per-step decisions, round trips, fallbacks and workers' "
                    "queues as seen on the bus.")
    add_bus_arguments(parser)
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="keyring: only messages whose signatures verify are shown")
    parser.add_argument("--port", type=int, default=8765,
                        help="Foxglove WebSocket port (default 8765; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--identity", default="recorder",
                        help="bus identity whose credentials to use (default recorder: an "
                             "access-controlled bus lets the recorder role read vla/v1/#)")
    parser.add_argument("--client-id", default=None, help="bus client id (default view-PID)")
    parser.add_argument("--topics", nargs="+", type=topic_pattern, default=["vla/v1/#"],
                        metavar="PATTERN", help="topic patterns (default vla/v1/#)")
    parser.add_argument("--stats-interval", type=float, default=1.0, metavar="S",
                        help="publish robot and worker stats this often (default 1 s)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--json", action="store_true", help="JSON events and summary on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = asyncio.run(view_command(args))
    if args.json:
        print(json.dumps(summary), flush=True)
    elif summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
    return int(summary["exit_code"])


async def view_command(args: argparse.Namespace) -> dict[str, Any]:
    """Serve until stopped; return the JSON summary."""
    from security.keys import Keyring
    from vlabus.bus.wait import open_when_up

    try:
        import foxglove

        from vlabus.log.foxglove_msgs import FoxgloveSink
        from vlabus.log.live import LiveView, live_schemas, run_live
    except ImportError as exc:
        return {"exit_code": 2, "error": f"{exc}; vlabus view needs foxglove-sdk "
                                         "(pip install 'vlabus[foxglove]')"}
    try:
        keyring = Keyring.load(args.keys)
    except (BusError, OSError) as exc:
        return {"exit_code": 2, "error": str(exc)}
    client_id = args.client_id or f"view-{os.getpid()}"
    try:
        transport = await open_when_up(args.bus, transport_options(args, args.identity,
                                                                   client_id),
                                       what="view", timeout_s=args.connect_timeout)
    except (BusError, OSError) as exc:
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
    context = foxglove.Context()
    server = None
    error = None
    view = LiveView(FoxgloveSink(context, metadata={"vlabus.verification": "ed25519"},
                                 schemas=live_schemas()),
                    keyring, stats_interval_s=args.stats_interval)
    try:
        for pattern in args.topics:
            await transport.subscribe(pattern)
        server = foxglove.start_server(name="vlabus", host=args.host, port=args.port,
                                       context=context)
        url = f"ws://{args.host}:{server.port}"
        if args.json:
            print(json.dumps({"event": "listening", "port": server.port, "url": url}),
                  flush=True)
        else:
            print(f"Foxglove: open a connection to {url}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.seconds is not None:
            loop.call_later(args.seconds, stop.set)
        await run_live(transport, view, stop=stop)
    except SubscribeRejected as exc:
        error = (f"{exc}; on an access-controlled bus identity {args.identity!r} needs the "
                 "recorder role")
    except (BusError, OSError, RuntimeError) as exc:  # foxglove raises RuntimeError on bind
        error = str(exc)
    finally:
        if server is not None:
            server.stop()
        await transport.close()
    return {"exit_code": 2 if error else 0, "messages": view.messages,
            "logged": view.sink.logged, "rejected": dict(view.rejections.by_reason),
            "robots": sorted(view.robots), "workers": sorted(view.workers), "error": error}
