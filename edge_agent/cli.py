"""``vlabus edge``: run a robot's edge agent (a simulated robot with ``--sim``).

Without ``--seconds`` it runs until SIGINT/SIGTERM. A bus that is down does not stop it: the robot
acts on its local policy (fallback cause ``disconnected``) from its first step and takes cloud
actions as soon as the bus answers. Exit status 0 after the run (or SIGTERM / Ctrl-C), 1 on a
configuration error (keys), 2 on a usage error, or when the bus refused the robot or did not
answer within ``--connect-timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from edge_agent.store import MAX_VERSION_STEP
from vlabus.cli.argtypes import positive_float, positive_int
from vlabus.cli.busflags import (
    add_bus_arguments,
    add_keys_watch_argument,
    add_status_argument,
    transport_options,
    watch_keyring,
)
from vlabus.cli.report import report


def register(sub: Any) -> None:
    parser = sub.add_parser("edge", help="run a robot's edge agent (deadline watchdog + local "
                                         "fallback); --sim drives a simulated robot")
    parser.add_argument("--robot-id", required=True, metavar="ID",
                        help="robot id, or 'auto': claim the first free robot key in --keys "
                             "whose id starts with --auto-prefix (scaled replicas)")
    parser.add_argument("--auto-prefix", default="robot-", metavar="PREFIX",
                        help="with --robot-id auto, only ids starting with this (default "
                             "robot-), so service identities such as a recorder are skipped")
    add_bus_arguments(parser)
    parser.add_argument("--keys", required=True, metavar="DIR",
                        help="keyring: this robot's private key, workers' and release public keys")
    parser.add_argument("--sim", action="store_true",
                        help="drive a simulated tabletop robot (the only built-in robot)")
    parser.add_argument("--fps", type=positive_float, default=30.0, metavar="F",
                        help="control rate")
    parser.add_argument("--deadline-ms", type=positive_float, default=25.0, metavar="D",
                        help="per-step budget for a cloud action (keep it under the control "
                             "period: a step waits up to D for the cloud)")
    parser.add_argument("--chunk", type=positive_int, default=1, metavar="H",
                        help="execute action chunks from a queue (H > 1); 1 = one action/step")
    parser.add_argument("--refill-below", type=int, default=None, metavar="N",
                        help="send a new frame when fewer queued actions are left "
                             "(default H/2)")
    parser.add_argument("--seconds", type=positive_float, default=None, metavar="S",
                        help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    add_status_argument(parser)
    add_keys_watch_argument(parser)
    parser.add_argument("--robots", type=positive_int, default=1, metavar="N",
                        help="simulate N robots in this process, each with its own identity, "
                             "connection and watchdog: --robot-id names the first (robot-1 "
                             "gives robot-1 … robot-N); their keys must be in --keys")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="P",
                        help="serve /metrics /healthz /readyz (0 picks a free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument("--record", default=None, metavar="FILE", type=Path,
                        help="MCAP black box: frames sent, replies received, every decision")
    parser.add_argument("--models-dir", default=None, metavar="DIR", type=Path,
                        help="accept signed model updates into this store (off when absent)")
    parser.add_argument("--max-version-step", type=int, default=MAX_VERSION_STEP, metavar="N",
                        help="refuse a release raising the installed version by more than N "
                             f"(default {MAX_VERSION_STEP}; recovery: docs/hardening.md)")
    parser.add_argument("--local-model", default="edge", metavar="NAME",
                        help="model name of the local policy (its update topic)")
    parser.add_argument("--local-width", type=int, default=16, metavar="W",
                        help="width of the seeded local reference policy")
    parser.add_argument("--codec", default="auto", type=_codec, metavar="CODEC",
                        help="camera images as auto (default: per camera and step, from the "
                             "uplink seen and the deadline), raw, lz4, jpeg or jpeg:QUALITY")
    parser.add_argument("--safety-every", type=int, default=0, metavar="N",
                        help="mark every Nth frame safety-critical (kept on the robot)")
    parser.add_argument("--fl", action="store_true",
                        help="take part in federated rounds (vlabus fl serve): keep on-time "
                             "cloud steps in a buffer, train locally, send private deltas; "
                             "needs --models-dir")
    parser.add_argument("--fl-dir", default=None, metavar="DIR", type=Path,
                        help="buffer, privacy accountant and personal tensors (default: "
                             "MODELS_DIR/../fl-ROBOT)")
    parser.add_argument("--fl-epsilon", type=float, default=8.0, metavar="E",
                        help="privacy budget of this robot over all rounds (default 8)")
    parser.add_argument("--fl-buffer-mb", type=float, default=256.0, metavar="MB",
                        help="size cap of the experience buffer; oldest pairs dropped")
    parser.add_argument("--fl-cpu-share", type=float, default=0.5, metavar="F",
                        help="share of one core local training may use (default 0.5)")
    parser.add_argument("--anonymize", action="append", default=[], metavar="WHAT",
                        help="before frames are encoded: 'faces' (blur faces, OpenCV Haar "
                             "cascade) or 'state:FIELD=SIGMA' (Gaussian noise on state field "
                             "FIELD: an index, A-B or all); repeatable")
    parser.add_argument("--session-pool", default=None, metavar="NAME",
                        help="send frames in session integrity (a keyed MAC after one signed "
                             "key exchange) to worker pool NAME, whose public X25519 key is "
                             "read from --keys; its workers need --session-pool NAME too")
    parser.add_argument("--direct", action="store_true",
                        help="send frames straight to a worker's direct socket (workers "
                             "started with --direct), chosen by the queue depth they advertise; "
                             "the bus carries everything else, and a frame no direct worker "
                             "can take")
    parser.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    parser.set_defaults(func=run)


def _codec(text: str) -> str:
    """argparse ``type=`` for ``--codec``: the text, or a usage error saying why not."""
    from edge_agent.codec import parse_codec

    try:
        parse_codec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def run(args: argparse.Namespace) -> int:
    if not args.sim:
        print("vlabus edge: only --sim is built in; embed edge_agent.EdgeAgent for a real robot",
              file=sys.stderr)
        return 1
    if args.robots > 1 and (args.robot_id == "auto" or args.record or args.models_dir):
        print("vlabus edge: --robots N takes a numbered --robot-id and no --record or "
              "--models-dir", file=sys.stderr)
    if args.fl and args.models_dir is None:
        print("vlabus edge: --fl needs --models-dir (rounds train on the installed release)",
              file=sys.stderr)
        return 1
    summary = asyncio.run(edge_command(args))
    return report(summary, as_json=args.json, command="vlabus edge", human=_human)


async def edge_command(args: argparse.Namespace) -> dict[str, Any]:
    # heavy imports (torch, paho, zmq, mcap) only when the command runs
    import torch

    from schemas.errors import BusError
    from schemas.topics import check_id

    torch.set_num_threads(1)  # small local model: threads only add jitter on a robot's CPU
    claim = None
    try:
        if args.robot_id == "auto":
            claim = claim_robot(args.keys, args.auto_prefix)
            robot_id = claim.identity
        else:
            robot_id = check_id(args.robot_id)
        options = transport_options(args, robot_id)
    except (BusError, OSError) as exc:
        return {"error": str(exc), "exit_code": 1}
    try:
        if args.robots > 1 and (args.session_pool or args.direct):
            return {"error": "--session-pool and --direct run one robot per process, not "
                             "with --robots", "exit_code": 1}
        if args.robots > 1:
            from edge_agent.fleetcli import run_fleet_command

            return await run_fleet_command(args, robot_id)
        return await _run(args, robot_id, options)
    finally:
        if claim is not None:
            claim.release()


def claim_robot(keys_dir: str, prefix: str) -> Any:
    """Claim (flock) the first free robot identity whose id starts with ``prefix``."""
    from schemas.errors import KeyringError
    from vlabus.claim import claim_identity

    skipped = []
    try:
        while True:  # claim_identity raises KeyringError once every identity is held
            claim = claim_identity(keys_dir, "robot")
            if claim.identity.startswith(prefix):
                return claim
            skipped.append(claim)  # held until we find ours, so the next call moves on
    except KeyringError as exc:
        raise KeyringError(f"no free robot identity starting with {prefix!r}: {exc}") from exc
    finally:
        for other in skipped:
            other.release()


async def _run(args: argparse.Namespace, robot_id: str, options: Any) -> dict[str, Any]:
    from edge_agent.anonymize import AnonymizeError, parse_anonymize
    from edge_agent.metrics import EdgeMetrics
    from edge_agent.sim import run_sim_robot
    from edge_agent.stack import LocalModel
    from schemas.errors import BusError, TransportError
    from vlabus.bus.deferred import DeferredTransport
    from vlabus.bus.wait import watch_connection
    from vlabus.log.record import Recorder
    from vlabus.metrics import MetricsServer

    model = LocalModel(name=args.local_model, width=args.local_width, models_dir=args.models_dir,
                       personal_dir=_fl_dir(args, robot_id) if args.fl else None,
                       max_version_step=args.max_version_step)
    try:
        anonymizer = parse_anonymize(args.anonymize)
        if anonymizer is not None:
            anonymizer.check_state(model.state_dim)
    except AnonymizeError as exc:
        return {"error": str(exc), "exit_code": 1}
    metrics = EdgeMetrics()
    server = None
    if args.metrics_port is not None:
        server = MetricsServer(metrics.registry, args.metrics_host, args.metrics_port,
                               labels={"robot": robot_id}).start()
    metadata = {"robot_id": robot_id}
    if anonymizer is not None:
        metadata["anonymized"] = anonymizer.describe()
    recorder = Recorder(args.record, metadata=metadata) if args.record else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Signal handlers exist only on the main thread of a Unix process; the agent is also
        # run from threads (tests, embedding), where Ctrl-C handling is the caller's.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    attach, joined = _federation(args, robot_id) if args.fl else (None, [])
    status: list[asyncio.Task[None]] = []
    failure: list[BaseException] = []

    async def open_bus(url: str, opts: Any) -> Any:
        # returns within a second even when the bus is down: the robot acts locally meanwhile
        transport = await DeferredTransport.start(url, opts, what=f"robot {robot_id}",
                                                  timeout_s=args.connect_timeout)

        def gave_up(task: asyncio.Task[None]) -> None:
            if transport.failure is not None:  # --connect-timeout or a refusal: end the run
                failure.append(transport.failure)
                stop.set()

        transport.connecting.add_done_callback(gave_up)
        if args.direct:  # frames straight to a worker's socket; the rest on the bus
            from security.keys import Keyring
            from vlabus.direct.robot import DirectTransport

            direct = DirectTransport(transport, robot_id, Keyring.load(args.keys))
            await direct.start()
            status.append(asyncio.create_task(watch_connection(direct, f"robot {robot_id}")))
            return direct
        status.append(asyncio.create_task(watch_connection(transport, f"robot {robot_id}")))
        return transport

    def started(agent: Any) -> None:
        # workers and releases added, removed or rotated in --keys apply without a restart
        status.append(watch_keyring(args.keys, agent.keyring,
                                    every_s=args.keys_poll, name=f"robot {robot_id}"))
        if args.direct:  # worker statuses are checked with the same, followed keyring
            agent.transport.decoder.keyring = agent.keyring
        if args.status_every > 0 and not args.json:
            status.append(asyncio.create_task(_status_lines(agent, args.status_every)))
        if server is not None:
            server.ready.set()

    try:
        summary = await run_sim_robot(
            args.bus, args.keys, robot_id, args.fps, args.deadline_ms, args.seconds,
            chunk=args.chunk, refill_below=args.refill_below, model=model, metrics=metrics,
            recorder=recorder, safety_every=args.safety_every, stop=stop, codec=args.codec,
            options=options, opener=open_bus, on_agent=started, transform=anonymizer,
            attach=attach, session_pool=args.session_pool)
    except TransportError as exc:
        return {"error": f"bus {args.bus}: {exc}", "exit_code": 2}
    except (BusError, OSError, ValueError) as exc:
        return {"error": str(exc), "exit_code": 1}
    finally:
        for task in status:
            task.cancel()
        if recorder is not None:
            recorder.close()
        if server is not None:
            server.close()
    if failure:
        summary["error"] = f"bus {args.bus}: {failure[0]}"
        summary["exit_code"] = 2
        return summary
    if recorder is not None:
        summary["recording"] = {"path": str(args.record), **recorder.counters()}
    if server is not None:
        summary["metrics_port"] = server.port
    if anonymizer is not None:
        summary["anonymize"] = anonymizer.counters()
    if joined:
        summary["fl"] = joined[0].summary()
    summary["exit_code"] = 0
    return summary


def _fl_dir(args: argparse.Namespace, robot_id: str) -> Path:
    if args.fl_dir is not None:
        return Path(args.fl_dir)
    return Path(args.models_dir).parent / f"fl-{robot_id}"


def _federation(args: argparse.Namespace, robot_id: str) -> tuple[Any, list[Any]]:
    """The ``attach`` hook joining the agent to rounds, and a list that receives the
    :class:`~edge_agent.fl.attach.Federated` handle (for the summary)."""
    from edge_agent.fl.attach import federated
    from edge_agent.fl.client import ClientConfig

    joined: list[Any] = []
    config = ClientConfig(robot_id=robot_id, model=args.local_model, models_dir=args.models_dir,
                          state_dir=_fl_dir(args, robot_id), budget_epsilon=args.fl_epsilon,
                          cpu_share=args.fl_cpu_share)

    @contextlib.asynccontextmanager
    async def attach(agent: Any) -> Any:
        async with federated(agent, agent.keyring, config,
                             buffer_bytes=int(args.fl_buffer_mb * (1 << 20))) as handle:
            joined.append(handle)
            yield handle

    return attach, joined


async def _status_lines(agent: Any, every_s: float) -> None:
    """A line on stderr every ``every_s``: steps, where actions came from, the bus."""
    while True:
        await asyncio.sleep(every_s)
        stats = agent.stats
        causes = ", ".join(f"{k} {v}" for k, v in sorted(stats.fallbacks_by_cause.items()))
        print(f"{agent.config.robot_id}: {stats.steps} steps, cloud "
              f"{stats.actions_by_source.get('cloud', 0)}, fallback "
              f"{stats.actions_by_source.get('fallback', 0)}"
              f"{f' ({causes})' if causes else ''}; bus "
              f"{'connected' if agent.transport.connected else 'DOWN'}", file=sys.stderr,
              flush=True)


def _human(summary: dict[str, Any]) -> str:
    late = summary["lateness_ms"]
    rtt = summary["rtt_ms"]
    return (f"{summary['steps']} steps: {summary['actions_by_source']}, fallbacks "
            f"{summary['fallbacks_by_cause']}; lateness p99 {late['p99']} ms max {late['max']} "
            f"ms; rtt p50 {rtt['p50']} ms p99 {rtt['p99']} ms; late replies discarded "
            f"{summary['late_replies_discarded']}")
