"""``vlabus worker``: serve robots' frames and task requests from a shared group.

Exit status 0 after a graceful stop (SIGTERM / Ctrl-C), 1 on a configuration error (keys,
policy, device), 2 when the bus could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from schemas.errors import BusError
from vlabus.cli.busflags import add_bus_arguments, transport_options
from vlabus.cli.report import report

log = logging.getLogger(__name__)


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
                        help="reference | noop | FILE.safetensors | module:factory; repeat to "
                             "serve several models (the first also answers model 'default')")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: all cores but one, left to the loop)")
    parser.add_argument("--max-batch", type=int, default=16, metavar="N")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, metavar="T",
                        help="longest a request waits for company before its batch runs")
    parser.add_argument("--inline-below-us", type=float, default=200.0, metavar="US",
                        help="run frame models measured faster than this on the event loop "
                             "instead of the inference thread (0: always use the thread)")
    parser.add_argument("--queue-size", type=int, default=1024, metavar="N",
                        help="bounded queue; beyond it the lowest priority is shed")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve /metrics /healthz /readyz (0 picks a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--replay-mode", action="store_true",
                        help="also accept frames signed by replay-role keys (restamped recordings)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return report(asyncio.run(worker_command(args)), as_json=args.json,
                  command="vlabus worker")


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
    from cloud_workers.tasks import default_handlers
    from cloud_workers.worker import WorkerConfig, open_worker
    from schemas.topics import check_id, check_name
    from security.keys import Keyring, load_signer
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
                          detail={"device": device, "max_batch": str(args.max_batch),
                                  "threads": str(threads)})
    try:
        worker = await open_worker(args.bus, signer, keyring, runner, config=config,
                                   metrics=metrics, options=options)
    except (BusError, OSError) as exc:
        return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}

    server = None
    if args.metrics_port is not None:
        server = MetricsServer(metrics.registry, args.metrics_host, args.metrics_port).start()
        log.warning("metrics on http://%s:%d/metrics", args.metrics_host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def mark_ready() -> None:
        await worker.ready.wait()
        if server is not None:
            server.ready.set()
        print(json.dumps({"event": "ready", "worker": worker_id, "models": runner.models,
                          "metrics_port": server.port if server else None}),
              file=sys.stderr, flush=True)

    ready_task = asyncio.create_task(mark_ready())
    try:
        await worker.run(stop)
    finally:
        ready_task.cancel()
        if server is not None:
            server.ready.clear()
            server.close()
        await worker.transport.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return {"exit_code": 0, "worker": worker_id, "models": runner.models, "device": device,
            **metrics.summary.as_dict(), "transport": worker.transport.counters()}
