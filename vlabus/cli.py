"""The ``vlabus`` command line: one module per subcommand under ``vlabus.commands``.

Each module exposes ``register(subparsers)`` and keeps heavy imports (torch, paho, zmq) inside
its handler, so ``vlabus --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS = [
    "demo", "keys", "doctor", "hub", "broker", "worker", "model", "edge", "record", "replay", "log",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlabus",
        description="Message bus for offloading VLA inference from robots to cloud GPUs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vlabus.commands.{name}")
        except ImportError as exc:
            # A foreign `schemas`/`security` on sys.path breaks these imports; keep the other
            # commands, `vlabus doctor` above all, usable so it can say what is wrong.
            print(f"vlabus: command {name!r} unavailable: {exc!r} (run `vlabus doctor`)",
                  file=sys.stderr)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
