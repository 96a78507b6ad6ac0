"""The ``vlabus`` command line: one module per subcommand (``vlabus.cli.NAME``, or a plugin's).

Each module exposes ``register(subparsers)`` and keeps heavy imports (torch, paho, zmq) inside
its handler, so ``vlabus --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import logging
import sys
from collections.abc import Sequence

from vlabus import version

#: Commands of the bus core, in the order ``--help`` lists them. The robot's and the cloud's
#: commands (``edge``, ``worker``, ``model``) are registered by their own packages through the
#: ``vlabus.commands`` entry-point group, so the core never imports them.
COMMANDS = ["demo", "keys", "doctor", "hub", "broker", "record", "replay", "log", "echo", "view",
            "gateway"]
PLUGIN_GROUP = "vlabus.commands"


def command_modules() -> dict[str, str]:
    """``name -> "module:function"`` for every command: the core's, then the plugins'."""
    found = {name: f"vlabus.cli.{name}:register" for name in COMMANDS}
    for entry in sorted(md.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        found.setdefault(entry.name, entry.value)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlabus",
        description="Message bus for offloading VLA inference from robots to cloud GPUs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"vlabus {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, target in command_modules().items():
        module_name, _, attr = target.partition(":")
        try:
            register = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            # A foreign `schemas`/`security` on sys.path breaks these imports; keep the other
            # commands, `vlabus doctor` above all, usable so it can say what is wrong.
            print(f"vlabus: command {name!r} unavailable: {exc!r} (run `vlabus doctor`)",
                  file=sys.stderr)
            continue
        register(sub)
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
