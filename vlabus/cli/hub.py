"""``vlabus hub --bind tcp://HOST:PORT [--curve DIR [--keys DIR]] [--metrics-port P] [--json]``:
run the ZeroMQ hub.

Runs in the foreground until SIGINT or SIGTERM, then prints its counters (one JSON object with
``--json``). ``--metrics-port`` serves them to Prometheus while it runs. ``--curve DIR
--add-client NAME`` creates CurveZMQ key pairs and exits. With ``--keys`` as well, each client
may publish and subscribe only as its keyring role allows (``broker_config/acl.json``, the fleet
broker's rules). SIGHUP re-reads the CURVE allow-list, the keyring and the rules
(:meth:`vlabus.hub.server.Hub.reload`); a reload that fails to read them keeps the ones in force.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from vlabus.bus.transport import MAX_PAYLOAD
from vlabus.cli.argtypes import non_negative_float


def register(sub: Any) -> None:
    parser = sub.add_parser("hub", help="run the ZeroMQ hub (broker-free rendezvous)")
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555",
                        help="ZeroMQ endpoint to bind; port 0 picks a free one "
                             "(default tcp://127.0.0.1:5555)")
    parser.add_argument("--curve", metavar="DIR", type=Path,
                        help="require CurveZMQ: DIR holds hub.key_secret and authorized/*.key "
                             "(created when missing)")
    parser.add_argument("--keys", metavar="DIR", type=Path,
                        help="with --curve: enforce per-role topic access; DIR is the vlabus "
                             "keyring that gives each CURVE client NAME its role")
    parser.add_argument("--acl", metavar="FILE", type=Path, default=None,
                        help="access rules per role (default broker_config/acl.json)")
    parser.add_argument("--add-client", metavar="NAME", action="append", default=[],
                        help="with --curve: create and admit a client key pair, then exit "
                             "(repeatable)")
    parser.add_argument("--hwm", type=int, default=10_000,
                        help="high-water mark per peer, in messages (default 10000)")
    parser.add_argument("--max-msg-size", type=int, default=32 << 20,
                        help="largest message accepted; a peer sending more is disconnected "
                             "(default 33554432)")
    parser.add_argument("--max-payload", type=int, default=MAX_PAYLOAD, metavar="B",
                        help="the deployment's message-size limit: a larger publish is "
                             f"refused (NACK) and counted in too_large (default {MAX_PAYLOAD}, "
                             "what clients accept)")
    parser.add_argument("--heartbeat-ms", type=int, default=1000,
                        help="a client silent for 3x this is gone (its will published); TCP "
                             "keepalive probes a silent connection after this (default 1000)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve /metrics /healthz /readyz (0 picks a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--keys-poll", type=non_negative_float, default=2.0, metavar="S",
                        help="with --keys: look for changed keys and CURVE clients every S "
                             "seconds and reload like SIGHUP (default 2; 0 = only on SIGHUP)")
    parser.add_argument("--status-every", type=non_negative_float, default=10.0, metavar="S",
                        help="a status line on stderr every S seconds when not in --json mode "
                             "(default 10; 0 = off)")
    parser.add_argument("--json", action="store_true", help="print the final counters as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from schemas.errors import BusError
    from security.curve import add_curve_client, init_curve
    from vlabus.broker.render import templates_dir
    from vlabus.hub.access import Access
    from vlabus.hub.config import HubConfig
    from vlabus.hub.server import Hub
    from vlabus.metrics import HubCollector, MetricsServer

    try:
        if args.add_client:
            if args.curve is None:
                print("vlabus hub: --add-client needs --curve DIR", file=sys.stderr)
                return 2
            made = {name: add_curve_client(args.curve, name).decode() for name in args.add_client}
            print(json.dumps({"clients": made}) if args.json else
                  "\n".join(f"{n} {k}" for n, k in made.items()))
            return 0
        if args.curve is not None:
            init_curve(args.curve)
        access = None
        if args.keys is not None:
            if args.curve is None:
                print("vlabus hub: --keys needs --curve DIR (identities come from CurveZMQ)",
                      file=sys.stderr)
                return 2
            access = Access.from_keyring(args.keys, args.acl or templates_dir() / "acl.json")
        hub = Hub(HubConfig(bind=args.bind, curve_dir=args.curve, hwm=args.hwm,
                            max_msg_size=max(args.max_msg_size, args.max_payload + (64 << 10)),
                            max_payload=args.max_payload, heartbeat_ms=args.heartbeat_ms,
                            access=access))
        hub.start()
    except (BusError, OSError, ValueError) as exc:
        print(f"vlabus hub: {exc}", file=sys.stderr)
        return 1
    server = None
    if args.metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(HubCollector(hub.counters))
        try:
            server = MetricsServer(registry, args.metrics_host, args.metrics_port).start()
        except OSError as exc:
            hub.stop()
            print(f"vlabus hub: metrics on {args.metrics_host}:{args.metrics_port}: {exc}",
                  file=sys.stderr)
            return 1
        server.ready.set()
    wake, hup, stop = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        (hup if signum == signal.SIGHUP else stop).set()
        wake.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    mode = " (CURVE, access rules)" if access else " (CURVE)" if args.curve else ""
    print(f"hub listening on {hub.url}{mode}", file=sys.stderr, flush=True)
    if server is not None:
        print(f"metrics on http://{args.metrics_host}:{server.port}/metrics", file=sys.stderr,
              flush=True)
    watched = _watched(args)
    seen = watched()
    every = args.status_every if args.status_every > 0 and not args.json else 0.0
    next_status = time.monotonic() + every
    while not stop.is_set():
        # polling the key folders costs a few stat calls; SIGHUP reloads at once
        timeout = min(t for t in (args.keys_poll, every) if t > 0) \
            if args.keys_poll or every else None
        if not wake.wait(timeout=timeout) and args.keys_poll and watched() != seen:
            hup.set()
        wake.clear()
        if every and time.monotonic() >= next_status:
            next_status = time.monotonic() + every
            c = hub.counters()
            print(f"hub: {c['clients']} clients, received {c['received']}, delivered "
                  f"{c['delivered']}, denied {c['denied']}", file=sys.stderr, flush=True)
        if hup.is_set() and not stop.is_set():
            hup.clear()
            seen = watched()
            _reload(hub, args)
    hub.stop()
    if server is not None:
        server.close()
    counters = {"url": hub.url, "curve": args.curve is not None,
                "access": access is not None, **hub.counters()}
    if server is not None:
        counters["metrics_port"] = server.port
    if args.json:
        print(json.dumps(counters))
    else:
        print(" ".join(f"{k}={v}" for k, v in counters.items()))
    return 0


def _watched(args: argparse.Namespace) -> Any:
    """What a reload would read: the keyring's public keys and the CURVE allow-list."""
    from security.watch import snapshot

    def look() -> tuple[object, ...]:
        keys = snapshot(args.keys) if args.keys is not None else frozenset()
        allowed = (frozenset((p.name, p.stat().st_mtime_ns) for p in
                             (args.curve / "authorized").glob("*.key"))
                   if args.curve is not None and (args.curve / "authorized").is_dir()
                   else frozenset())
        return keys, allowed

    return look


def _reload(hub: Any, args: argparse.Namespace) -> None:
    """SIGHUP: read the allow-list, keyring and rules again, and hand them to the hub."""
    from schemas.errors import BusError
    from vlabus.broker.render import templates_dir
    from vlabus.hub.access import Access

    try:
        access = (Access.from_keyring(args.keys, args.acl or templates_dir() / "acl.json")
                  if args.keys is not None else None)
        done = hub.reload(access)
    except (BusError, OSError, ValueError) as exc:
        print(f"vlabus hub: reload failed, the previous keys and rules stay: {exc}",
              file=sys.stderr, flush=True)
        return
    print(f"hub reloaded: {done['clients_admitted']} clients admitted, "
          f"{done['revoked']} subscriptions revoked", file=sys.stderr, flush=True)
