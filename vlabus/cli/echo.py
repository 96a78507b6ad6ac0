"""``vlabus echo FILTER``: watch decoded bus traffic live, like ``ros2 topic echo`` or
``mosquitto_sub -v``.

Each message is verified with ``--keys`` (no replay guard: echo only watches, and a QoS 1
redelivery is not an attack here) and printed as one line: topic, kind, sender, sequence
number, age (now − sender time), time left to its deadline, and a body summary where arrays
show as dtype and shape; a message that fails the receive pipeline is printed with its reason.
``--json`` prints one JSON object per message (the ``vlabus log cat`` document plus
``age_ms`` and ``deadline_in_ms``); ``--raw`` prints the bytes as received, in hex, without
decoding. ``--count N`` stops after N messages. Exit status 0, 2 on a usage error or when the
bus refused the subscription.
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

from vlabus.cli.argtypes import positive_int
from vlabus.cli.busflags import add_bus_arguments, topic_pattern, transport_options

#: bytes of a payload ``--raw`` prints before it says how many more there are
RAW_LIMIT = 256


def register(sub: Any) -> None:
    parser = sub.add_parser("echo", help="print verified, decoded bus messages as they arrive")
    parser.add_argument("filter", type=topic_pattern, metavar="FILTER",
                        help="MQTT topic filter, e.g. 'vla/v1/+/action' or 'vla/v1/#'")
    add_bus_arguments(parser)
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="keyring whose public keys verify what is shown")
    parser.add_argument("--identity", default="recorder",
                        help="identity whose bus credentials to use (default recorder)")
    parser.add_argument("--client-id", default=None, help="bus client id (default echo-PID)")
    parser.add_argument("--count", type=positive_int, default=None, metavar="N",
                        help="stop after N messages")
    parser.add_argument("--json", action="store_true", help="one JSON object per message")
    parser.add_argument("--raw", action="store_true",
                        help="the bytes as received, in hex, not decoded")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(echo_command(args))


async def echo_command(args: argparse.Namespace) -> int:
    from schemas.errors import BusError
    from security.keys import Keyring
    from vlabus.bus.wait import open_when_up, watch_connection
    from vlabus.log.reader import LogRecord
    from vlabus.log.view import Viewer

    try:
        keyring = Keyring.load(args.keys)
    except BusError as exc:
        print(f"vlabus echo: {exc}", file=sys.stderr)
        return 1
    viewer = Viewer(keyring)
    client_id = args.client_id or f"echo-{os.getpid()}"
    try:
        transport = await open_when_up(args.bus, transport_options(args, args.identity,
                                                                   client_id),
                                       what="echo", timeout_s=args.connect_timeout)
        await transport.subscribe(args.filter)
    except (BusError, OSError) as exc:
        print(f"vlabus echo: {args.bus}: {exc}", file=sys.stderr)
        return 2
    watcher = asyncio.create_task(watch_connection(transport, "echo"))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    shown = 0
    try:
        while args.count is None or shown < args.count:
            receive = asyncio.ensure_future(transport.receive())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({receive, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if receive not in done:
                receive.cancel()
                break
            message = receive.result()
            data = bytes(message.payload)
            if args.raw:
                print(raw_line(message.topic, data), flush=True)
            else:
                record = LogRecord(message.topic, data, message.received_ns, message.received_ns,
                                   shown)
                doc = timed(viewer.view(record), time.time_ns())
                print(json.dumps(doc) if args.json else human(doc), flush=True)
            shown += 1
    except BusError:
        pass  # the transport closed
    finally:
        watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(BusError, OSError):
            await transport.close()
    return 0


def timed(doc: dict[str, Any], now_ns: int) -> dict[str, Any]:
    """``doc`` plus ``age_ms`` (now − sender time) and ``deadline_in_ms`` (negative: past)."""
    header = doc.get("header")
    if isinstance(header, dict):
        doc["age_ms"] = round((now_ns - int(header.get("sent_ns", now_ns))) / 1e6, 3)
        deadline = int(header.get("deadline_ns", 0) or 0)
        doc["deadline_in_ms"] = round((deadline - now_ns) / 1e6, 3) if deadline else None
    return doc


def human(doc: dict[str, Any]) -> str:
    """One line for a person: topic, kind, sender, seq, age, deadline, body summary."""
    if "error" in doc:
        error = doc["error"]
        return f"{doc['topic']}  REJECTED {error['reason']}: {error['detail']}"
    header = doc.get("header") or {}
    parts = [doc["topic"], doc.get("kind", "?")]
    if header:
        parts.append(f"from {header.get('sender')} #{header.get('seq')}")
    if "age_ms" in doc:
        parts.append(f"age {doc['age_ms']:.1f} ms")
    if doc.get("deadline_in_ms") is not None:
        parts.append(f"deadline {'in' if doc['deadline_in_ms'] >= 0 else 'missed by'} "
                     f"{abs(doc['deadline_in_ms']):.1f} ms")
    parts.append(summary(doc.get("message")))
    return "  ".join(parts)


def summary(value: Any, depth: int = 0) -> str:
    """A short body view: arrays as ``dtype[shape]``, byte fields as their length."""
    if isinstance(value, dict):
        if {"dtype", "shape"} <= value.keys():
            return f"{value['dtype']}[{','.join(map(str, value['shape']))}]"
        if depth >= 2:
            return "{…}"
        items = [f"{k}: {summary(v, depth + 1)}" for k, v in value.items()
                 if v not in (None, "", [], {})]
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return f"[{len(value)} items]" if len(value) > 4 else \
            "[" + ", ".join(summary(v, depth + 1) for v in value) + "]"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    return str(value)


def raw_line(topic: str, data: bytes) -> str:
    """``topic  N bytes  hex…`` (the first :data:`RAW_LIMIT` bytes)."""
    shown = data[:RAW_LIMIT].hex()
    more = f" (+{len(data) - RAW_LIMIT} bytes)" if len(data) > RAW_LIMIT else ""
    return f"{topic}  {len(data)} bytes  {shown}{more}"
