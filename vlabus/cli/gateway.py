"""``vlabus gateway openpi``: openpi's policy server protocol in front of a vlabus worker pool
(docs/openpi.md).

Prints ``{"event": "listening", "host", "port"}`` on stdout once it serves (with ``--json``),
and a JSON summary when it stops (Ctrl-C, SIGTERM or ``--seconds``). Exit status 0 on a normal
stop, 2 when the bus, the keys or the port cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
import time
from typing import Any

from schemas.errors import BusError
from vlabus.cli.busflags import add_bus_arguments, transport_options

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser = sub.add_parser("gateway", help="serve other projects' policy protocols from vlabus "
                                            "workers (openpi)")
    kinds = parser.add_subparsers(dest="gateway_kind", required=True, metavar="PROTOCOL")
    openpi = kinds.add_parser(
        "openpi", help="openpi's WebSocket policy server (openpi_client works unchanged)",
        description="Serve openpi's WebSocket policy protocol: each observation becomes a "
                    "signed frame of --robot-id, answered by a vlabus worker before the "
                    "deadline. See docs/openpi.md for the key mapping.")
    add_bus_arguments(openpi)
    openpi.add_argument("--keys", required=True, metavar="DIR",
                        help="keyring holding --robot-id's signing key and the workers' keys")
    openpi.add_argument("--robot-id", required=True, help="the robot identity that signs frames")
    openpi.add_argument("--host", default="127.0.0.1",
                        help="listen address (default 127.0.0.1; 0.0.0.0 for other machines)")
    openpi.add_argument("--port", type=int, default=8000, help="listen port (default 8000, "
                        "as openpi; 0 picks a free one)")
    openpi.add_argument("--preset", choices=["aloha", "droid", "libero"], default=None,
                        help="openpi example key names (docs/openpi.md)")
    openpi.add_argument("--map", action="append", default=[], metavar="KEY=SOURCE",
                        help="observation KEY -> camera:NAME, state or command (repeatable; "
                             "state keys are concatenated in order)")
    openpi.add_argument("--command", default="", help="command when the mapping has none")
    openpi.add_argument("--deadline-ms", type=float, default=250.0,
                        help="per-request deadline (default 250 ms)")
    openpi.add_argument("--fallback-policy", default=None, metavar="SPEC",
                        help="answer late requests locally with this policy (reference, "
                             "FILE.safetensors, DIR, FILE.pt, module:factory) instead of an "
                             "error")
    openpi.add_argument("--codec", choices=["raw", "jpeg"], default="raw",
                        help="camera codec on the bus (default raw)")
    openpi.add_argument("--quality", type=int, default=85, help="JPEG quality (default 85)")
    openpi.add_argument("--model", default="default", help="model name asked of the workers")
    openpi.add_argument("--record", default=None, metavar="FILE",
                        help="MCAP black box: frames sent, replies, one decision per request")
    openpi.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    openpi.add_argument("--json", action="store_true", help="JSON events and summary on stdout")
    openpi.set_defaults(func=run_openpi)


def run_openpi(args: argparse.Namespace) -> int:
    summary = asyncio.run(openpi_command(args))
    if args.json:
        print(json.dumps(summary), flush=True)
    elif summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
    return int(summary["exit_code"])


async def openpi_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run the gateway until stopped; return the JSON summary."""
    from schemas.topics import robot_status_topic
    from security.keys import Keyring, load_signer
    from vlabus.bus.transport import Will
    from vlabus.bus.wait import open_when_up
    from vlabus.gateway.mapping import MappingError, parse_map
    from vlabus.gateway.openpi import OpenpiGateway, serve
    from vlabus.gateway.remote import RemoteConfig, RemotePolicy
    from vlabus.log.record import Recorder
    from vlabus.wire import Encoder

    try:
        keymap = parse_map(args.map, args.preset)
        keyring = Keyring.load(args.keys)
        signer = load_signer(args.keys, "robot", args.robot_id)
        fallback = _fallback(args.fallback_policy)
        recorder = Recorder(args.record) if args.record else None
    except (MappingError, BusError, OSError, ValueError, ImportError) as exc:
        return {"exit_code": 2, "error": str(exc)}
    encoder = Encoder(signer)
    session = time.time_ns() // 1000
    # the broker (or hub) announces the robot's death if the gateway vanishes without closing
    will = Will(robot_status_topic(args.robot_id), encoder.encode(
        _status(args.robot_id, "offline", session)), qos=1, retain=True)
    try:
        transport = await open_when_up(
            args.bus, dataclasses.replace(transport_options(args, args.robot_id), will=will),
            what=f"gateway {args.robot_id}", timeout_s=args.connect_timeout)
    except (BusError, OSError) as exc:
        if recorder is not None:
            recorder.close()
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
    config = RemoteConfig(robot_id=args.robot_id, deadline_s=args.deadline_ms / 1e3,
                          codec=args.codec, quality=args.quality, model=args.model)
    remote = RemotePolicy(transport, encoder, keyring, config, recorder=recorder)
    gateway = OpenpiGateway(remote, keymap, fallback=fallback, default_command=args.command)
    server = None
    error = None
    try:
        await remote.start()
        await _announce(transport, encoder, args.robot_id, "online", session)
        server = await serve(gateway, args.host, args.port)
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        event = {"event": "listening", "host": args.host, "port": port}
        if args.json:
            print(json.dumps(event), flush=True)
        else:
            print(f"openpi gateway for {args.robot_id} on ws://{args.host}:{port}",
                  file=sys.stderr, flush=True)
        await _until_stopped(args.seconds)
    except (BusError, OSError) as exc:
        error = str(exc)
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
        await remote.close()
        await _announce(transport, encoder, args.robot_id, "offline", session)
        await transport.close()
        if recorder is not None:
            recorder.close()
    summary: dict[str, Any] = {
        "exit_code": 2 if error else 0, "robot_id": args.robot_id, **gateway.stats.as_dict(),
        "remote": remote.counts, "rejected": dict(remote.rejections.by_reason), "error": error}
    if recorder is not None:
        summary["recording"] = recorder.counters()
    return summary


def _status(robot_id: str, state: str, session: int) -> Any:
    from schemas.status import status_message

    return status_message(robot_id, "robot", state, session=session,
                          detail={"gateway": "openpi"})


async def _announce(transport: Any, encoder: Any, robot_id: str, state: str,
                    session: int) -> None:
    """Retained birth or death of the robot the gateway speaks for (best effort)."""
    from schemas.topics import robot_status_topic

    try:
        await transport.publish(robot_status_topic(robot_id),
                                encoder.encode(_status(robot_id, state, session)), qos=1,
                                retain=True)
    except BusError as exc:
        log.warning("%s status not published: %r", state, exc)


def _fallback(spec: str | None) -> Any:
    if spec is None:
        return None
    from vlabus.policy.load import load_policy

    return load_policy(spec, device="cpu")


async def _until_stopped(seconds: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
