"""``vlabus worker``: serve robots' frames and task requests from a shared group.

A bus that is down does not stop it: it waits for the hub or broker at start (a log line says
what it waits for; ``--connect-timeout`` bounds it) and the adapter reconnects after any later
loss. ``/healthz`` answers while it waits, ``/readyz`` only once it serves. Exit status 0 after a
graceful stop (SIGTERM / Ctrl-C), 1 on a configuration error (keys, policy, device), 2 on a
usage error or when the bus refused the worker or did not answer within ``--connect-timeout``,
3 when a batch stalled for longer than ``--stall-exit-s`` (the process exits at once, without
waiting for the hung inference thread: its supervisor restarts it). ``/readyz`` answers 503
while the bus is disconnected or a batch is stalled.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
from typing import Any

from schemas.errors import BusError
from vlabus.cli.argtypes import non_negative_float, positive_float, positive_int
from vlabus.cli.busflags import (
    add_bus_arguments,
    add_keys_watch_argument,
    add_status_argument,
    transport_options,
    watch_keyring,
)
from vlabus.cli.report import report

log = logging.getLogger(__name__)
STALLED_EXIT = 3


def register(sub: Any) -> None:
    parser = sub.add_parser("worker", help="serve VLA inference for robots in a worker group")
    add_bus_arguments(parser)
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="keyring: this worker's private key and the robots' public keys")
    parser.add_argument("--id", required=True,
                        help="worker id (its key identity and client id); `auto` claims the "
                             "first worker identity in the keyring no other replica holds")
    parser.add_argument("--group", default="workers", help="shared-subscription group")
    parser.add_argument("--policy", action="append", default=None, metavar="[NAME=]SPEC",
                        help="reference | noop | FILE.safetensors | profile:NAME (a stand-in "
                             "timed by a model profile) | module:factory; repeat to "
                             "serve several models (the first also answers model 'default')")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch CPU threads (default: all cores but one, left to the loop)")
    parser.add_argument("--max-batch", type=positive_int, default=16, metavar="N")
    parser.add_argument("--max-delay-ms", type=non_negative_float, default=2.0, metavar="T",
                        help="longest a request waits for company before its batch runs")
    parser.add_argument("--inline-below-us", type=non_negative_float, default=200.0,
                        metavar="US",
                        help="run frame models measured faster than this on the event loop "
                             "instead of the inference thread (0: always use the thread)")
    parser.add_argument("--scheduler", default="vlabus", choices=["vlabus", "fifo", "serial"],
                        help="vlabus: priority/deadline order, batch size from t(batch), "
                             "hopeless requests dropped; fifo: dynamic batching in arrival "
                             "order (max batch, max delay); serial: one at a time, in order")
    parser.add_argument("--no-slot-hints", dest="slot_hints", action="store_false",
                        help="vlabus: do not plan periodic robots' next frames nor suggest "
                             "when to send them (docs/goodput.md, send-time hints)")
    parser.add_argument("--queue-size", type=positive_int, default=1024, metavar="N",
                        help="bounded queue; beyond it the lowest priority is shed")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve /metrics /healthz /readyz (0 picks a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--stall-factor", type=positive_float, default=10.0, metavar="F",
                        help="a batch running F times its estimate (and --stall-min-s) takes "
                             "the worker out of its group until it returns (default 10)")
    parser.add_argument("--stall-min-s", type=positive_float, default=2.0, metavar="S",
                        help="never call a batch stalled before S seconds (default 2)")
    parser.add_argument("--stall-exit-s", type=non_negative_float, default=60.0, metavar="S",
                        help="exit (status 3) after S seconds stalled, for the supervisor to "
                             "restart the process; 0: never (default 60)")
    parser.add_argument("--replay-mode", action="store_true",
                        help="also accept frames signed by replay-role keys (restamped recordings)")
    add_status_argument(parser)
    add_keys_watch_argument(parser)
    parser.add_argument("--session-pool", default=None, metavar="NAME",
                        help="accept session integrity (keyed MACs after a signed key "
                             "exchange) from robots offering it to pool NAME; its X25519 secret "
                             "is read from --keys (docs/security-session.md)")
    parser.add_argument("--direct", default=None, metavar="tcp://HOST:PORT",
                        help="also serve robots' frames on this ZeroMQ socket (port 0: any "
                             "free one), advertised in the worker's status with its queue "
                             "depth; replies return on the same connection "
                             "(docs/security-session.md)")
    parser.add_argument("--direct-advertise", default=None, metavar="tcp://HOST:PORT",
                        help="the endpoint robots are told to connect to (default: the bound "
                             "one; needed when --direct binds every interface)")
    parser.add_argument("--direct-curve", action="store_true",
                        help="encrypt the direct socket with CurveZMQ (a key pair made at "
                             "start, its public key advertised in the signed status)")
    parser.add_argument("--direct-status-s", type=positive_float, default=1.0, metavar="S",
                        help="with --direct, repeat the status with the queue depth every S "
                             "seconds (default 1; robots skip a worker silent for 10 s)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    code = report(asyncio.run(worker_command(args)), as_json=args.json,
                  command="vlabus worker", human=_human)
    if code == STALLED_EXIT:
        # the hung inference thread would keep the interpreter from exiting
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _human(summary: dict[str, Any]) -> str:
    """The summary printed on a stop (SIGTERM / Ctrl-C) without --json."""
    return (f"worker {summary['worker']}: served {summary['served']} of {summary['received']} "
            f"received in {summary['batches']} batches, rejected {summary['rejected_total']}, "
            f"dropped {summary['dropped_total']}")

def parse_policies(specs: list[str] | None) -> list[tuple[str | None, str]]:
    """``[NAME=]SPEC`` strings → (name or None, spec); a Windows-free ``=`` split."""
    out: list[tuple[str | None, str]] = []
    for spec in specs or ["reference"]:
        name, sep, rest = spec.partition("=")
        out.append((name, rest) if sep and ":" not in name else (None, spec))
    return out


async def worker_command(args: argparse.Namespace) -> dict[str, Any]:
    # heavy imports (torch, paho) only when the command runs
    from cloud_workers.metrics import WorkerMetrics
    from cloud_workers.runner import PolicyRunner
    from cloud_workers.stall import StallConfig
    from cloud_workers.tasks import default_handlers
    from cloud_workers.worker import WorkerConfig, open_worker
    from schemas.topics import check_id, check_name
    from security.keys import Keyring, load_signer
    from vlabus.bus.wait import open_when_up, watch_connection
    from vlabus.claim import claim_identity
    from vlabus.metrics import MetricsServer
    from vlabus.policy import describe
    from vlabus.policy.load import load_policy
    from vlabus.policy.reference import resolve_device, set_threads

    claim = None
    try:
        if args.id == "auto":
            claim = claim_identity(args.keys, "worker")  # held until this process exits
        worker_id = check_id(claim.identity if claim else args.id)
        signer = load_signer(args.keys, "worker", worker_id)
        keyring = Keyring.load(args.keys)
        device = resolve_device(args.device)
        threads = set_threads(args.threads)
        policies = {}
        for name, spec in parse_policies(args.policy):
            policy = load_policy(spec, device=device)
            policies[check_name(name or describe(policy)[0])] = policy
        options = transport_options(args, worker_id)
        sessions = None
        if args.session_pool:
            from security.keys import load_pool_secret
            from vlabus.session_link import PoolSessions

            sessions = PoolSessions(load_pool_secret(args.keys, args.session_pool))
        direct = None
        if args.direct:
            from cloud_workers.direct import open_direct

            direct = open_direct(args.direct, args.direct_advertise, curve=args.direct_curve)
    except (BusError, ValueError, TypeError, RuntimeError, ImportError, AttributeError,
            OSError) as exc:
        return {"exit_code": 1, "error": str(exc)}

    runner = PolicyRunner(policies, {})
    runner.handlers = default_handlers(runner.models)
    metrics = WorkerMetrics()
    config = WorkerConfig(worker_id=worker_id, group=args.group, max_batch=args.max_batch,
                          max_delay_ns=int(args.max_delay_ms * 1e6),
                          inline_below_ns=int(args.inline_below_us * 1e3),
                          queue_capacity=args.queue_size, replay_mode=args.replay_mode,
                          stall=StallConfig(factor=args.stall_factor,
                                            min_ns=int(args.stall_min_s * 1e9),
                                            exit_after_ns=int(args.stall_exit_s * 1e9)),
                          scheduler=args.scheduler, slot_hints=args.slot_hints,
                          detail={"device": device, "max_batch": str(args.max_batch),
                                  "scheduler": args.scheduler, "threads": str(threads),
                                  **(direct.detail() if direct else {})})
    # /healthz answers while the bus is waited for, so an orchestrator does not restart a
    # worker for its bus being down; /readyz follows once it serves
    server = None
    if args.metrics_port is not None:
        server = MetricsServer(metrics.registry, args.metrics_host, args.metrics_port,
                               labels={"worker": worker_id}).start()
        log.warning("metrics on http://%s:%d/metrics", args.metrics_host, server.port)
    opener: Any = functools.partial(open_when_up, what=f"worker {worker_id}",
                                    timeout_s=args.connect_timeout)
    if direct is not None:
        log.warning("direct data plane on %s", direct.endpoint)
        opener = direct.opener(opener)
    try:
        worker = await _interruptible(open_worker(args.bus, signer, keyring, runner,
                                                  config=config, metrics=metrics,
                                                  options=options, opener=opener,
                                                  sessions=sessions))
    except (BusError, OSError) as exc:
        if server is not None:
            server.close()
        if direct is not None:
            direct.close()
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
    if worker is None:  # SIGINT/SIGTERM while waiting for the bus
        if server is not None:
            server.close()
        if direct is not None:
            direct.close()
        return {"exit_code": 0, "worker": worker_id, "models": runner.models, "device": device,
                **metrics.summary.as_dict(), "transport": {}}

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    background = [
        asyncio.create_task(watch_connection(worker.transport, f"worker {worker_id}")),
        watch_keyring(args.keys, keyring, every_s=args.keys_poll, name=f"worker {worker_id}",
                      on_change=lambda added, removed: worker.revoke(
                          {key.key_id for key in removed})),
    ]
    if args.status_every > 0 and not args.json:
        background.append(asyncio.create_task(_status_lines(worker, args.status_every)))
    if direct is not None:
        from cloud_workers.direct import advertise

        direct.attach(worker)
        background.append(asyncio.create_task(advertise(worker, args.direct_status_s)))

    async def mark_ready() -> None:
        await worker.ready.wait()
        if server is not None:
            server.readiness = worker.healthy  # disconnected or stalled: 503
            server.ready.set()
        print(json.dumps({"event": "ready", "worker": worker_id, "models": runner.models,
                          "metrics_port": server.port if server else None}),
              file=sys.stderr, flush=True)

    ready_task = asyncio.create_task(mark_ready())
    try:
        await worker.run(stop)
    finally:
        ready_task.cancel()
        for task in background:
            task.cancel()
        if server is not None:
            server.ready.clear()
            server.close()
        await worker.transport.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return {"exit_code": STALLED_EXIT if worker.exit_reason else 0,
            "stalled": worker.exit_reason or None, "worker": worker_id,
            "models": runner.models, "device": device,
            "scheduler": args.scheduler, **metrics.summary.as_dict(),
            # messages with a key not in the keyring, by the sender their header claims
            "unknown_senders": dict(worker.rejections.unknown_senders),
            "transport": worker.transport.counters()}


async def _interruptible(opening: Any) -> Any:
    """Await ``opening`` (the wait for the bus) unless SIGINT/SIGTERM comes first: None then."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(opening)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled():
            return None
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _status_lines(worker: Any, every_s: float) -> None:
    """A line on stderr every ``every_s``: what was received, served, queued; the bus."""
    while True:
        await asyncio.sleep(every_s)
        counts = worker.metrics.summary
        print(f"worker {worker.config.worker_id}: received {counts.received}, served "
              f"{counts.served}, queued {len(worker.queue)}, rejected "
              f"{sum(counts.rejected.values())}; bus "
              f"{'connected' if worker.transport.connected else 'DOWN'}", file=sys.stderr,
              flush=True)
