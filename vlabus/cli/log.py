"""``vlabus log info|cat|recover|export|evaluate|verify FILE``: look into MCAP recordings.

Exit status 0 on success, 1 when the file cannot be read or written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from schemas.errors import BusError, KeyringError
from security.keys import Keyring, load_pool_secret
from security.seal import Opener
from vlabus.cli.busflags import topic_pattern
from vlabus.cli.log_verify import add_verify

# mcap, numpy and torch load inside the handlers: `vlabus --help` stays fast.


POOL_HELP = "open sealed frames with this worker pool's secret key (from --keys DIR)"


def register(sub: Any) -> None:
    parser = sub.add_parser("log", help="inspect, recover, export or evaluate MCAP recordings")
    actions = parser.add_subparsers(dest="log_command", required=True, metavar="ACTION")

    info = actions.add_parser("info", help="topics, counts, time range, senders, sizes")
    info.add_argument("file")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=run_info)

    cat = actions.add_parser("cat", help="decoded messages as JSON lines (arrays summarised)")
    cat.add_argument("file")
    cat.add_argument("--topics", nargs="+", type=topic_pattern, default=None, metavar="PATTERN")
    cat.add_argument("--keys", default=None, metavar="DIR", help="verify signatures")
    cat.add_argument("--limit", type=int, default=None, help="stop after N messages")
    cat.add_argument("--pool", default=None, metavar="NAME", help=POOL_HELP)
    cat.set_defaults(func=run_cat)

    recover = actions.add_parser("recover", help="copy what a truncated file holds to a valid one")
    recover.add_argument("file")
    recover.add_argument("output")
    recover.add_argument("--json", action="store_true")
    recover.set_defaults(func=run_recover)

    export = actions.add_parser(
        "export", help="MCAP for Foxglove: JSON per kind, or native images and plots",
        description="--format json (default): every message as JSON with a JSON Schema per "
                    "kind. --format foxglove: cameras as foxglove.CompressedImage/RawImage, "
                    "state, actions, latency and decisions as JSON with JSON Schemas, "
                    "rejected messages on vlabus/rejected (docs/foxglove.md).")
    export.add_argument("file")
    export.add_argument("output", nargs="?", default=None, help="output MCAP (or -o)")
    export.add_argument("-o", "--output", dest="output_flag", default=None, metavar="OUT",
                        help="output MCAP file (replaced)")
    export.add_argument("--format", choices=["json", "foxglove"], default="json",
                        help="json (default) or foxglove (native image schemas)")
    export.add_argument("--topics", nargs="+", type=topic_pattern, default=None, metavar="PATTERN")
    export.add_argument("--keys", default=None, metavar="DIR",
                        help="verify signatures; skip messages that fail")
    export.add_argument("--pool", default=None, metavar="NAME", help=POOL_HELP)
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=run_export)

    evaluate = actions.add_parser("evaluate", help="compare a policy with recorded actions")
    evaluate.add_argument("file")
    evaluate.add_argument("--policy", required=True,
                          help="reference, noop, FILE.safetensors, DIR, FILE.pt2, FILE.pt "
                               "or module:factory (docs/policies.md)")
    evaluate.add_argument("--keys", default=None, metavar="DIR", help="verify signatures")
    evaluate.add_argument("--topics", nargs="+", type=topic_pattern, default=None,
                          metavar="PATTERN")
    evaluate.add_argument("--device", default="cpu", help="policy device (default cpu)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--pool", default=None, metavar="NAME", help=POOL_HELP)
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=run_evaluate)

    add_verify(actions)


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def _keyring(args: argparse.Namespace) -> Keyring | None:
    return Keyring.load(args.keys) if getattr(args, "keys", None) else None


def _opener(args: argparse.Namespace) -> Opener | None:
    """``--pool NAME``: open sealed bodies with that pool's secret from the ``--keys`` dir."""
    if not getattr(args, "pool", None):
        return None
    if not args.keys:
        raise KeyringError("--pool needs --keys DIR holding the pool's secret key")
    return Opener([load_pool_secret(args.keys, args.pool)])


def run_info(args: argparse.Namespace) -> int:
    from vlabus.log.reader import summarize

    try:
        summary = summarize(args.file)
    except BusError as exc:
        return _fail(exc)
    summary["start"] = wall_time(summary["start_ns"])
    summary["end"] = wall_time(summary["end_ns"])
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"file       {summary['file']} ({human_bytes(summary['file_bytes'])})")
    print(f"messages   {summary['messages']} ({human_bytes(summary['payload_bytes'])} payload, "
          f"{summary['not_envelope']} not envelopes)")
    print(f"start      {summary['start'] or '-'}")
    print(f"end        {summary['end'] or '-'}")
    print(f"duration   {human_duration(summary['duration_s'])}")
    print(f"senders    {', '.join(f'{k} ({v})' for k, v in summary['senders'].items())}")
    for topic, stats in summary["topics"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in stats["kinds"].items())
        print(f"  {topic}: {stats['messages']} msgs, {human_bytes(stats['bytes'])}, "
              f"max {human_bytes(stats['max_bytes'])} ({kinds})")
    return 0


def wall_time(ns: int | None) -> str | None:
    """``2026-12-03 12:34:56.789 UTC`` for a wall-clock time in ns since the epoch."""
    if ns is None:
        return None
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def human_duration(seconds: float) -> str:
    """``3.250 s``, ``2 min 05.0 s``, ``1 h 02 min 05 s``."""
    if seconds < 60:
        return f"{seconds:.3f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {rest:04.1f} s"
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours} h {minutes:02d} min {int(rest):02d} s"


def human_bytes(count: int) -> str:
    """``812 B``, ``3.7 KB``, ``22.8 MB`` (decimal units, as file managers show)."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def run_cat(args: argparse.Namespace) -> int:
    from vlabus.log.view import cat

    try:
        docs = cat(args.file, topics=args.topics, keyring=_keyring(args), opener=_opener(args))
        for index, doc in enumerate(docs):
            if args.limit is not None and index >= args.limit:
                break
            print(json.dumps(doc))
    except BusError as exc:
        return _fail(exc)
    except BrokenPipeError:  # `| head`
        return 0
    return 0


def run_recover(args: argparse.Namespace) -> int:
    from vlabus.log.reader import recover

    try:
        result = recover(args.file, args.output)
    except (BusError, OSError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        state = "complete" if result.complete else f"truncated ({result.stopped_by})"
        print(f"recovered {result.messages} messages in {result.chunks} chunks on "
              f"{result.channels} channels; source was {state}", file=sys.stderr)
    return 0


def run_export(args: argparse.Namespace) -> int:
    output = args.output_flag or args.output
    if output is None or (args.output_flag and args.output):
        return _fail(ValueError("give the output file once: OUT or -o OUT"))
    try:
        if args.format == "foxglove":
            from vlabus.log.foxglove_export import export_foxglove

            result = export_foxglove(args.file, output, topics=args.topics,
                                     keyring=_keyring(args), opener=_opener(args))
            print(json.dumps(result) if args.json else
                  f"exported {result['messages']} messages as {result['written']} Foxglove "
                  f"messages; rejected {result['rejected'] or 'none'}")
            return 0
        from vlabus.log.view import export

        counts = export(args.file, output, topics=args.topics, keyring=_keyring(args),
                        opener=_opener(args))
    except (BusError, OSError) as exc:
        return _fail(exc)
    except ImportError as exc:
        return _fail(ImportError(f"{exc}; --format foxglove needs foxglove-sdk "
                                 "(pip install 'vlabus[foxglove]')"))
    print(json.dumps(counts) if args.json else
          f"exported {counts['messages']} messages, skipped {counts['skipped']}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from vlabus.log.evaluate import evaluate
    from vlabus.policy.load import load_policy

    try:
        policy = load_policy(args.policy, device=args.device)
        result = evaluate(args.file, policy, keyring=_keyring(args), topics=args.topics,
                          batch_size=args.batch_size, opener=_opener(args)).as_dict()
    except (BusError, OSError, ValueError, ImportError) as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(result))
        return 0
    overall = result["overall"]
    print(f"{result['frames']} frames, {result['actions']} recorded actions, "
          f"{overall['count']} compared, {result['unmatched_frames']} frames without an action")
    for name, stats in [("overall", overall), *result["robots"].items()]:
        print(f"  {name:16} n={stats['count']:<6} mae={stats['mean_abs_error']:.6f} "
              f"rmse={stats['rmse']:.6f} max={stats['max_abs_error']:.6f} "
              f"shape_mismatch={stats['shape_mismatch']}")
    return 0
