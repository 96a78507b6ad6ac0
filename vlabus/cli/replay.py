"""``vlabus replay``: publish a recording back onto a bus (see :mod:`vlabus.log.replay`).

Exit status 0 when the replay ended (end of file, ``--duration``, Ctrl-C, SIGTERM), 1 when the
file or keys cannot be read, 2 when the bus cannot be reached.
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
from pathlib import Path
from typing import Any

from schemas.errors import BusError, KeyringError
from security.keys import Keyring, Signer, load_pool_secret, load_signer
from security.seal import Opener
from vlabus.bus.wait import open_when_up
from vlabus.cli.argtypes import non_negative_float, positive_float
from vlabus.cli.busflags import (
    add_bus_arguments,
    add_status_argument,
    topic_pattern,
    transport_options,
)


def register(sub: Any) -> None:
    parser = sub.add_parser("replay", help="publish an MCAP recording back onto a bus")
    parser.add_argument("file", help="MCAP file written by `vlabus record`")
    add_bus_arguments(parser)
    parser.add_argument("--identity", default="replay",
                        help="identity whose bus credentials to use (default replay)")
    parser.add_argument("--rate", type=positive_float, default=1.0,
                        help="speed factor (default 1.0)")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument("--topics", nargs="+", type=topic_pattern, default=None,
                        metavar="PATTERN",
                        help="only topics matching these patterns (MQTT wildcards)")
    parser.add_argument("--start-offset", type=non_negative_float, default=0.0, metavar="S",
                        help="skip the first S seconds of the recording (an error when that "
                             "is past its end)")
    parser.add_argument("--duration", type=positive_float, default=None, metavar="S",
                        help="stop after S seconds of wall time (useful with --loop)")
    parser.add_argument("--restamp", default=None, metavar="KEYDIR",
                        help="re-sign with the replay key KEYDIR/replay/ID.key.pem (or that file)")
    parser.add_argument("--restamp-id", default="replay", metavar="ID",
                        help="identity of the replay key (default: replay)")
    parser.add_argument("--keys", default=None, metavar="DIR",
                        help="keyring: verify recorded signatures before restamping")
    parser.add_argument("--pool", default=None, metavar="NAME",
                        help="open sealed frames with this pool's secret (from --keys DIR) "
                        "to restamp them")
    parser.add_argument("--onto-live", action="store_true",
                        help="publish on the recorded topics themselves (needs --restamp); "
                             "default: under replay/ (replay/vla/v1/...)")
    parser.add_argument("--with-status", action="store_true",
                        help="also replay status messages (retained births and deaths; "
                             "skipped by default)")
    parser.add_argument("--client-id", default=None, help="bus client id (default replay-PID)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    add_status_argument(parser, default=1.0)
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = asyncio.run(replay_command(args))
    if args.json:
        print(json.dumps(summary))
    elif summary.get("error"):
        print(f"error: {summary['error']}", file=sys.stderr)
    else:
        offsets = summary["offset_ms"]
        print(f"published {summary['published']} messages in {summary['duration_s']} s; "
              f"schedule offset p50 {offsets['p50_ms']} ms, p99 {offsets['p99_ms']} ms, "
              f"max {offsets['max_ms']} ms", file=sys.stderr)
    return int(summary["exit_code"])


def _signer(args: argparse.Namespace) -> Signer | None:
    """``--restamp KEYDIR`` (+ ``--restamp-id``) or ``--restamp KEYDIR/replay/ID.key.pem``."""
    if args.restamp is None:
        return None
    path = Path(args.restamp)
    if path.is_file() and path.name.endswith(".key.pem") and path.parent.name == "replay":
        return load_signer(path.parent.parent, "replay", path.name.removesuffix(".key.pem"))
    return load_signer(path, "replay", args.restamp_id)


async def replay_command(args: argparse.Namespace) -> dict[str, Any]:
    """Open the bus, play the file, return the JSON summary."""
    from vlabus.log.reader import time_range
    from vlabus.log.replay import REPLAY_PREFIX, Replayer, Restamper

    if args.onto_live and args.restamp is None:
        return {"exit_code": 1, "error": "--onto-live needs --restamp KEYDIR: live receivers "
                "take a replay only re-signed by a replay identity (docs/hardening.md)"}
    try:
        first_ns, last_ns, _ = time_range(args.file)
        span_s = (last_ns - first_ns) / 1e9
        if args.start_offset > span_s:
            return {"exit_code": 2, "error": f"--start-offset {args.start_offset:g} s is past the "
                    f"end of {args.file} ({span_s:.3f} s long)"}
        signer = _signer(args)
        keyring = Keyring.load(args.keys) if args.keys else None
        opener = None
        if args.pool:
            if not args.keys:
                raise KeyringError("--pool needs --keys DIR holding the pool's secret key")
            opener = Opener([load_pool_secret(args.keys, args.pool)])
        restamper = (Restamper(signer, keyring=keyring, opener=opener)
                     if signer is not None else None)
    except (BusError, OSError, ValueError) as exc:
        return {"exit_code": 1, "error": str(exc)}
    client_id = args.client_id or f"replay-{os.getpid()}"
    try:
        transport = await open_when_up(args.bus, transport_options(args, args.identity, client_id),
                                       what="replay", timeout_s=args.connect_timeout)
    except (BusError, OSError) as exc:
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
    replayer = Replayer(transport, args.file, rate=args.rate, loop=args.loop, topics=args.topics,
                        start_offset_s=args.start_offset, restamper=restamper,
                        prefix="" if args.onto_live else REPLAY_PREFIX,
                        with_status=args.with_status)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(replayer.run())
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    quiet = args.quiet or args.status_every == 0 or args.json
    progress = None if quiet else asyncio.create_task(_progress(replayer, args.status_every))
    started = time.monotonic()
    error = None
    try:
        await asyncio.wait_for(task, args.duration)
    except (TimeoutError, asyncio.CancelledError):
        pass  # --duration or a signal: a normal end
    except (BusError, OSError) as exc:
        error = str(exc)
    finally:
        elapsed = time.monotonic() - started
        if progress is not None:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await transport.close()
    return {"exit_code": 1 if error else 0, "error": error, "file": str(args.file),
            "bus": args.bus, "rate": args.rate, "loop": args.loop,
            "start_offset_s": args.start_offset, "restamped": restamper is not None,
            "onto_live": args.onto_live,
            "duration_s": round(elapsed, 3), **replayer.stats.as_dict()}


async def _progress(replayer: Any, every_s: float) -> None:
    tty = sys.stderr.isatty()
    while True:
        await asyncio.sleep(every_s)
        stats = replayer.stats
        line = (f"replayed {stats.published} msgs, {stats.bytes / 1e6:.1f} MB, "
                f"pass {stats.passes + 1}, offset p50 {stats.offsets.summary()['p50_ms']} ms")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)
