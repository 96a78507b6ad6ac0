"""``vlabus fl serve``: coordinate federated rounds of a robot model over the bus.

Exit status 0 after the last round (or SIGTERM / Ctrl-C), 1 on a configuration error (keys,
weights, flags), 2 when the bus could not be reached or refused a publish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from vlabus.cli.busflags import add_bus_arguments, transport_options


def register(sub: Any) -> None:
    parser = sub.add_parser("fl", help="federated learning of the robots' local policy")
    fl = parser.add_subparsers(dest="fl_command", required=True, metavar="ACTION")
    serve = fl.add_parser("serve", help="announce signed rounds, check and aggregate robot "
                                        "updates, release a better model")
    add_bus_arguments(serve)
    serve.add_argument("--keys", required=True, metavar="DIR",
                       help="keyring: the release key and the robots' public keys")
    serve.add_argument("--model", required=True, metavar="NAME",
                       help="the robots' local model name (their --local-model)")
    serve.add_argument("--rounds", required=True, type=int, metavar="R")
    serve.add_argument("--min-clients", required=True, type=int, metavar="K",
                       help="updates needed to aggregate a round")
    serve.add_argument("--round-timeout", required=True, type=float, metavar="S",
                       help="seconds robots have to answer a round")
    serve.add_argument("--max-clients", type=int, default=None, metavar="M",
                       help="close a round early once M robots have answered (accepted "
                            "or refused)")
    serve.add_argument("--dp-epsilon", type=float, default=8.0, metavar="E",
                       help="privacy budget per robot over all rounds: sets the noise "
                            "(default 8)")
    serve.add_argument("--dp-delta", type=float, default=1e-5, metavar="D")
    serve.add_argument("--noise-multiplier", type=float, default=None, metavar="Z",
                       help="announce this DP-SGD noise instead of calibrating it from -E")
    serve.add_argument("--clip", type=float, default=2.0, metavar="C",
                       help="L2 bound of one update (robots clip to it, the coordinator "
                            "clips again and refuses over --over-norm x C)")
    serve.add_argument("--over-norm", type=float, default=2.0, metavar="F")
    serve.add_argument("--aggregate", choices=["fedavg", "trimmed-mean", "median"],
                       default="fedavg")
    serve.add_argument("--trim", type=float, default=0.2, metavar="B",
                       help="trimmed mean: share of updates cut at each end (default 0.2)")
    serve.add_argument("--central-noise", type=float, default=0.0, metavar="Z",
                       help="Gaussian noise on the aggregate, std Z x C / updates")
    serve.add_argument("--eval", type=Path, default=None, metavar="RECORDING.mcap",
                       help="held-out recording: release only a candidate with a lower "
                            "action error than the current model")
    serve.add_argument("--weights", type=Path, default=None, metavar="FILE.safetensors",
                       help="current model (default: the seeded policy `vlabus edge` starts "
                            "with, at --width)")
    serve.add_argument("--width", type=int, default=16, metavar="W")
    serve.add_argument("--version", type=int, default=1, metavar="N",
                       help="release version of --weights, published first (default 1)")
    serve.add_argument("--examples", type=int, default=512, metavar="N",
                       help="examples each robot trains on per round")
    serve.add_argument("--batch-size", type=int, default=128, metavar="B")
    serve.add_argument("--epochs", type=int, default=2, metavar="N")
    serve.add_argument("--lr", type=float, default=5.0)
    serve.add_argument("--example-clip", type=float, default=0.1, metavar="C",
                       help="per-example gradient bound of DP-SGD")
    serve.add_argument("--precision", choices=["fp16", "int8"], default="fp16")
    serve.add_argument("--trainable", default="state.,head.", metavar="PREFIXES",
                       help="comma-separated tensor prefixes trained and averaged")
    serve.add_argument("--personal", default="", metavar="PREFIXES",
                       help="tensor prefixes each robot trains but keeps (e.g. head.2.)")
    serve.add_argument("--release-id", default="release", metavar="ID")
    serve.add_argument("--spool", type=Path, default=None, metavar="DIR",
                       help="where update parts are written (default: a temporary folder)")
    serve.add_argument("--json", action="store_true",
                       help="one JSON line per round, then a JSON summary")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        summary: dict[str, Any] = {"exit_code": 1, "error": problem}
    else:
        summary = asyncio.run(serve_command(args))
    if args.json:
        print(json.dumps(_jsonable(summary)), flush=True)
    elif summary.get("error"):
        print(f"vlabus fl serve: {summary['error']}", file=sys.stderr)
    else:
        print(f"{len(summary['rounds'])} rounds, model v{summary['version']}, refused "
              f"{summary['refused']}")
    return int(summary["exit_code"])


def _check(args: argparse.Namespace) -> str | None:
    if args.rounds < 1 or args.min_clients < 1 or args.round_timeout <= 0:
        return "--rounds, --min-clients and --round-timeout must be positive"
    if not 0 < args.dp_delta < 1 or args.dp_epsilon <= 0 or args.clip <= 0:
        return "--dp-epsilon and --clip must be positive, --dp-delta in (0, 1)"
    if args.eval is not None and not args.eval.is_file():
        return f"--eval {args.eval}: no such recording"
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _hyper(args: argparse.Namespace) -> dict[str, Any]:
    from vlabus.fl.privacy import calibrate_noise

    noise = args.noise_multiplier
    if noise is None:
        noise = calibrate_noise(args.dp_epsilon, args.dp_delta, rounds=args.rounds,
                                examples=args.examples, batch_size=args.batch_size,
                                epochs=args.epochs)
    return {"epochs": args.epochs, "examples": args.examples, "batch_size": args.batch_size,
            "lr": args.lr, "example_clip": args.example_clip, "noise_multiplier": noise,
            "delta": args.dp_delta, "update_clip": args.clip, "precision": args.precision}


def _prefixes(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


async def serve_command(args: argparse.Namespace) -> dict[str, Any]:
    from cloud_workers.fl.coordinator import Coordinator, CoordinatorConfig, RoundReport
    from schemas.errors import BusError
    from security.keys import Keyring, load_signer
    from vlabus.bus.transport import open_transport
    from vlabus.wire import Encoder

    with contextlib.ExitStack() as stack:
        spool = args.spool or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="vlabus-fl-")))
        try:
            signer = load_signer(args.keys, "release", args.release_id)
            keyring = Keyring.load(args.keys)
            base = _base(args, spool)
            config = CoordinatorConfig(
                model=args.model, rounds=args.rounds, min_clients=args.min_clients,
                round_timeout_s=args.round_timeout, spool=spool, aggregate=args.aggregate,
                max_clients=args.max_clients, trim=args.trim, over_norm=args.over_norm,
                central_noise=args.central_noise, eval_path=args.eval,
                trainable=_prefixes(args.trainable), personal=_prefixes(args.personal),
                hyper=_hyper(args))
            options = transport_options(args, args.release_id, f"fl-{args.release_id}")
        except (BusError, OSError, ValueError) as exc:
            return {"exit_code": 1, "error": str(exc)}
        try:
            transport = await open_transport(args.bus, options)
        except (BusError, OSError) as exc:
            return {"exit_code": 2, "error": f"cannot reach {args.bus}: {exc}"}
        try:
            coordinator = Coordinator(transport, Encoder(signer), keyring, config, base=base,
                                      base_version=args.version)
        except ValueError as exc:
            await transport.close()
            return {"exit_code": 1, "error": str(exc)}

        def show(report: RoundReport) -> None:
            if args.json:
                print(json.dumps(_jsonable({"round": report.as_dict()})), flush=True)
            else:
                print(_human(report), flush=True)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        reports: list[RoundReport] = []
        try:
            await coordinator.start()
            for number in range(config.rounds):
                if stop.is_set():
                    break
                report = await coordinator.run_round(number)
                reports.append(report)
                show(report)
        except BusError as exc:
            return {"exit_code": 2, "error": str(exc),
                    "rounds": [r.as_dict() for r in reports]}
        except (ValueError, OSError) as exc:  # a held-out recording that cannot score
            return {"exit_code": 1, "error": f"--eval {args.eval}: {exc}",
                    "rounds": [r.as_dict() for r in reports]}
        finally:
            await coordinator.close()
            await transport.close()
        return {"exit_code": 0, "model": args.model, "version": coordinator.version,
                "noise_multiplier": config.hyper["noise_multiplier"],
                "rounds": [r.as_dict() for r in reports], "refused": coordinator.refused(),
                "released": sum(1 for r in reports if r.released)}


def _base(args: argparse.Namespace, spool: Path) -> bytes:
    from cloud_workers.publisher import read_weights
    from vlabus.policy.reference import ReferencePolicy

    if args.weights is not None:
        return read_weights(args.weights)
    policy = ReferencePolicy.seeded(device="cpu", width=args.width, name=args.model)
    return policy.save_safetensors(spool / "base.safetensors").read_bytes()


def _human(report: Any) -> str:
    errors = ""
    if report.candidate_error is not None:
        errors = f", error {report.base_error:.4f} -> {report.candidate_error:.4f}"
    eps = max(report.epsilon.values(), default=0.0)
    return (f"round {report.round}: {len(report.participants)} updates, refused "
            f"{report.refused or '{}'}, max epsilon {eps:.3g}{errors}, "
            + (f"released v{report.version}" if report.released else
               f"not released ({report.detail})"))
