"""``vlabus record``: write bus traffic to an MCAP file (see :mod:`vlabus.log.record`).

Exit status 0 when the recording ended normally (duration, Ctrl-C, SIGTERM), 1 when the file
could not be written (e.g. a full disk), 2 when the bus could not be reached or refused a
subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from schemas.errors import BusError, SubscribeRejected, WireError
from security.keys import Keyring
from vlabus.bus.transport import Message
from vlabus.bus.wait import open_when_up
from vlabus.cli.argtypes import byte_size, positive_float
from vlabus.cli.busflags import (
    add_bus_arguments,
    add_keys_watch_argument,
    add_status_argument,
    topic_pattern,
    transport_options,
    watch_keyring,
)
from vlabus.inbound import Rejections
from vlabus.wire import Decoder


def register(sub: Any) -> None:
    parser = sub.add_parser("record", help="record bus traffic to an MCAP file")
    add_bus_arguments(parser)
    parser.add_argument("--identity", default="recorder",
                        help="identity whose bus credentials to use (default recorder)")
    parser.add_argument("-o", "--output", required=True,
                        help="MCAP file to write (refused when it exists, unless --overwrite); "
                             "with --split-*, the parts are NAME-0001.mcap, NAME-0002.mcap, …")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file")
    parser.add_argument("--split-size", type=byte_size, default=None, metavar="SIZE",
                        help="start a new part once one holds SIZE (e.g. 500M, 2G)")
    parser.add_argument("--split-duration", type=positive_float, default=None, metavar="S",
                        help="start a new part every S seconds; numbering continues after the "
                             "parts already there, so a restart never replaces one")
    parser.add_argument("--topics", nargs="+", type=topic_pattern, default=["#"],
                        metavar="PATTERN", help="topic patterns with MQTT wildcards (default: #)")
    parser.add_argument("--duration", type=positive_float, default=None, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C / SIGTERM)")
    parser.add_argument("--keys", default=None, metavar="DIR",
                        help="keyring: count messages whose signature verifies (all are kept)")
    parser.add_argument("--flush-interval", type=positive_float, default=1.0, metavar="S",
                        help="close the chunk and flush at least this often (default 1.0)")
    parser.add_argument("--chunk-size", type=byte_size, default=64 << 10, metavar="BYTES",
                        help="close a chunk once it holds this much (default 65536)")
    parser.add_argument("--compression", choices=["none", "zstd", "lz4"], default="none",
                        help="chunk compression (default none: frames are lz4 already)")
    parser.add_argument("--client-id", default=None, help="bus client id (default recorder-PID)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve /metrics /healthz /readyz (ready once subscribed; 0 picks "
                             "a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_status_argument(parser, default=1.0)
    add_keys_watch_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = asyncio.run(record_command(args))
    if args.json:
        print(json.dumps(summary))
    elif summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
    return int(summary["exit_code"])


async def record_command(args: argparse.Namespace) -> dict[str, Any]:
    """Connect, subscribe, record until the end condition; return the JSON summary."""
    from vlabus.log.record import Recorder, RecordError, record_from
    from vlabus.log.split import SplitRecorder

    client_id = args.client_id or f"recorder-{os.getpid()}"
    options: dict[str, Any] = {
        "flush_interval_s": args.flush_interval, "chunk_size": args.chunk_size,
        "compression": args.compression,
        "metadata": {"bus": args.bus, "topics": " ".join(args.topics)}}
    recorder: Recorder | SplitRecorder
    try:
        if args.split_size is not None or args.split_duration is not None:
            recorder = SplitRecorder(args.output, max_bytes=args.split_size,
                                     max_seconds=args.split_duration, **options)
        else:
            recorder = Recorder(args.output, overwrite=args.overwrite, **options)
    except RecordError as exc:
        return {"exit_code": 1, "error": str(exc)}
    try:
        transport = await open_when_up(args.bus, transport_options(args, args.identity, client_id),
                                       what="recorder", timeout_s=args.connect_timeout)
    except (BusError, OSError) as exc:
        _abandon(recorder)
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
    try:
        for pattern in args.topics:
            await transport.subscribe(pattern)
    except (BusError, OSError) as exc:
        _abandon(recorder)
        await transport.close()
        refused = f"{args.bus}: {exc}"
        if isinstance(exc, SubscribeRejected) and exc.pattern[:1] in ("#", "+"):
            refused += (f"; on an access-controlled bus identity {args.identity!r} needs the "
                      "recorder role and --topics 'vla/v1/#'")
        return {"exit_code": 2, "error": refused}

    server = _serve_metrics(args, recorder, client_id)
    verified = 0
    rejections = Rejections()
    inspect = None
    watcher = None
    if args.keys:
        keyring = Keyring.load(args.keys)
        decoder = Decoder(keyring)  # no replay guard: a recorder keeps copies
        watcher = watch_keyring(args.keys, keyring, every_s=args.keys_poll, name="recorder")

        def inspect(message: Message) -> None:
            nonlocal verified
            try:
                decoder.decode(message.payload)
                verified += 1
            except WireError as exc:
                rejections.count(exc.reason)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    error = None
    try:
        quiet = args.quiet or args.status_every == 0 or args.json
        await record_from(transport, recorder, duration_s=args.duration, stop=stop,
                          on_progress=None if quiet else _progress(started),
                          progress_interval_s=args.status_every or 1.0, inspect=inspect)
    except RecordError as exc:
        error = str(exc)
    finally:
        if server is not None:
            server.close()
        if watcher is not None:
            watcher.cancel()
        recorder.close()
        transport_counters = transport.counters()
        await transport.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    elapsed = time.monotonic() - started
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    summary: dict[str, Any] = {
        "exit_code": 1 if error else 0,
        "file": str(recorder.path),
        "bus": args.bus,
        "topics": recorder.topics,
        "duration_s": round(elapsed, 3),
        **recorder.counters(),
        "msgs_per_s": round(recorder.messages / elapsed, 1) if elapsed else 0.0,
        "mb_per_s": round(recorder.bytes / elapsed / 1e6, 3) if elapsed else 0.0,
        "transport": transport_counters,
        "error": error or recorder.error,
    }
    if isinstance(recorder, SplitRecorder):
        summary["parts"] = [str(path) for path in recorder.parts]
    if args.keys:
        summary["verified"] = verified
        summary["rejected"] = dict(rejections.by_reason)
    return summary


def _abandon(recorder: Any) -> None:
    """Close a recording that never started (no bus, a refused subscription) and remove the
    empty file(s) it created, so running the corrected command again is not refused."""
    recorder.close()
    for path in getattr(recorder, "parts", [recorder.path]):
        with contextlib.suppress(OSError):
            path.unlink()


def _serve_metrics(args: argparse.Namespace, recorder: Any, client_id: str) -> Any:
    """``--metrics-port``: the recorder's counters, ready once subscribed (now)."""
    if args.metrics_port is None:
        return None
    from prometheus_client import CollectorRegistry

    from vlabus.metrics import CountersCollector, MetricsServer

    registry = CollectorRegistry()
    registry.register(CountersCollector("vlabus_record", recorder.counters))
    server = MetricsServer(registry, args.metrics_host, args.metrics_port,
                           labels={"recorder": client_id}).start()
    server.ready.set()
    return server


def _progress(started: float) -> Any:
    tty = sys.stderr.isatty()

    def show(recorder: Any) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        line = (f"recorded {recorder.messages} msgs, {recorder.bytes / 1e6:.1f} MB, "
                f"{recorder.messages / elapsed:.0f} msg/s, {recorder.bytes / elapsed / 1e6:.2f}"
                f" MB/s -> {recorder.path}")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    return show
