"""``vlabus broker render|run``: Mosquitto configuration for a keyring, and a local broker."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from schemas.errors import BusError


def register(sub: Any) -> None:
    parser = sub.add_parser("broker", help="render and run a Mosquitto configuration")
    broker = parser.add_subparsers(dest="broker_command", required=True, metavar="ACTION")

    render = broker.add_parser("render", help="write config, ACLs, passwords and TLS material")
    render.add_argument("--keys", required=True, help="keyring directory (vlabus keys init)")
    render.add_argument("--out", required=True, help="directory to write the configuration to")
    render.add_argument("--tls", action="store_true",
                        help="fleet configuration: TLS client certificates and access control "
                             "(default: dev, loopback with passwords)")
    render.add_argument("--bind", default="127.0.0.1", help="listener address (127.0.0.1)")
    render.add_argument("--port", type=int, default=None, help="listener port (1883, TLS 8883)")
    render.add_argument("--hostname", action="append", default=None,
                        help="DNS name for the broker certificate (repeatable; localhost)")
    render.add_argument("--json", action="store_true", help="print a JSON summary")
    render.set_defaults(func=_render)

    run = broker.add_parser("run", help="run Mosquitto in the foreground from a rendered config")
    run.add_argument("--config", required=True, help="directory written by `broker render`")
    run.add_argument("--port", type=int, default=None,
                     help="override the configured port (0: any free port)")
    run.add_argument("--executable", default="mosquitto", help="the mosquitto binary")
    run.add_argument("--json", action="store_true", help="print a JSON summary at exit")
    run.set_defaults(func=_run)


def _render(args: argparse.Namespace) -> int:
    from vlabus.broker import render

    hostnames = tuple(args.hostname or ["localhost"])
    try:
        conf = render(args.keys, args.out, tls=args.tls, bind=args.bind, port=args.port,
                      hostnames=hostnames)
    except BusError as exc:
        print(f"vlabus broker render: {exc}")
        return 1
    root = conf.parent
    clients = sorted(p.name.split(".")[0] for p in (root / "tls" / "clients").glob("*.crt")) \
        if args.tls else sorted(p.stem for p in (root / "clients").glob("*.password"))
    summary = {"config": str(conf), "mode": "fleet" if args.tls else "dev",
               "clients": clients, "files": sorted(str(p.relative_to(root))
                                                   for p in root.rglob("*") if p.is_file())}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['mode']} broker configuration in {root} for {len(clients)} clients")
        print(f"run it with: vlabus broker run --config {root}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from vlabus.broker import BrokerError, LocalMosquitto, listener_of

    conf = Path(args.config) / "mosquitto.conf"
    try:
        port = args.port if args.port is not None else listener_of(conf.read_text())[0]
    except (OSError, BrokerError) as exc:
        print(f"vlabus broker run: {exc}")
        return 1
    broker = LocalMosquitto(args.config, port=port, executable=args.executable)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        url = broker.start()
    except BrokerError as exc:
        print(f"vlabus broker run: {exc}")
        return 1
    # With --json, stdout carries only the final summary; the address goes to stderr.
    print(f"mosquitto running at {url} (Ctrl-C stops it)", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    status, stopped = 0, False
    try:
        status = broker.wait()
    except KeyboardInterrupt:
        stopped = True
    finally:
        broker.stop()
    summary = {"url": url, "config": str(conf.resolve()), "exit_status": status,
               "stopped_by_signal": stopped, "uptime_s": round(time.monotonic() - started, 3)}
    if args.json:
        print(json.dumps(summary), flush=True)
    elif status:
        print(f"mosquitto exited with status {status}:\n{broker.log_tail()}")
    return 0 if stopped or status == 0 else 1
