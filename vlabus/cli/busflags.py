"""Bus connection flags shared by every subcommand that talks to a bus.

    --bus URL             memory://NAME, mqtt://HOST:PORT, mqtts://HOST:PORT, zmq://HOST:PORT
                          (default: $VLABUS_BUS)
    --broker-config DIR   credentials from a config rendered by `vlabus broker render`:
                          the identity's password (dev) or client certificate (fleet TLS)
                          (default: $VLABUS_BROKER_CONFIG)
    --username/--password-file, --tls-ca/--tls-cert/--tls-key   explicit MQTT credentials
    --curve DIR           CurveZMQ keys made by `vlabus hub --curve DIR --add-client NAME`
    --connect-timeout S   how long to wait for a bus that is down (default: forever)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

from schemas.topics import topic_filter_problem
from vlabus.bus.transport import CurveKeys, TlsFiles, TransportOptions
from vlabus.cli.argtypes import non_negative_float, positive_float


def topic_pattern(text: str) -> str:
    """argparse ``type=`` for ``--topics``: an MQTT topic filter, or a usage error saying why."""
    problem = topic_filter_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"invalid topic filter {text!r}: it {problem}")
    return text


def add_bus_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    default = os.environ.get("VLABUS_BUS")
    group = parser.add_argument_group("bus connection")
    group.add_argument("--bus", default=default, required=required and default is None,
                       metavar="URL", help="bus URL: zmq://, mqtt://, mqtts://, memory:// "
                       "(default $VLABUS_BUS)")
    group.add_argument("--broker-config", default=os.environ.get("VLABUS_BROKER_CONFIG"),
                       metavar="DIR", type=Path,
                       help="rendered broker config holding this identity's credentials")
    group.add_argument("--username", default=None, help="MQTT username")
    group.add_argument("--password-file", default=None, type=Path, metavar="FILE",
                       help="file holding the MQTT password")
    group.add_argument("--tls-ca", default=None, type=Path, metavar="FILE")
    group.add_argument("--tls-cert", default=None, type=Path, metavar="FILE")
    group.add_argument("--tls-key", default=None, type=Path, metavar="FILE")
    group.add_argument("--curve", default=None, type=Path, metavar="DIR",
                       help="CurveZMQ key directory (zmq:// only)")
    group.add_argument("--connect-timeout", type=positive_float, default=None, metavar="S",
                       help="give up (exit 2) when the bus has not answered within S seconds "
                            "(default: wait for it forever, logging what is waited for)")


def add_status_argument(parser: argparse.ArgumentParser, default: float = 10.0) -> None:
    """``--status-every S``: a status line on stderr every S seconds (0 = off)."""
    parser.add_argument("--status-every", type=non_negative_float, default=default,
                        metavar="S", help=f"print a status line every S seconds when not in "
                        f"--json mode (default {default:g}; 0 = off)")


def transport_options(args: argparse.Namespace, identity: str, client_id: str | None = None,
                      **extra: Any) -> TransportOptions:
    """The :class:`TransportOptions` that ``args`` describe for ``identity``."""
    client = client_id or identity
    if args.broker_config is not None and str(args.bus).startswith("mqtt"):
        from vlabus.broker.render import client_options

        return client_options(args.broker_config, identity, client, **extra)
    password = None
    if args.password_file is not None:
        password = Path(args.password_file).read_text().strip()
    tls = None
    if args.tls_ca is not None:
        tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    curve = None
    if args.curve is not None and str(args.bus).startswith("zmq"):
        from security.curve import load_client_keys

        server_public, public, secret = load_client_keys(args.curve, identity)
        curve = CurveKeys(server_public=server_public, public=public, secret=secret)
    return TransportOptions(client_id=client, username=args.username or
                            (identity if password else None), password=password, tls=tls,
                            curve=curve, **extra)


def add_keys_watch_argument(parser: argparse.ArgumentParser) -> None:
    """``--keys-poll S``: how often the keyring directory is checked for changes."""
    parser.add_argument("--keys-poll", type=non_negative_float, default=2.0, metavar="S",
                        help="look for added, removed or rotated keys in --keys every S "
                             "seconds (default 2; 0 = only on SIGHUP, which always works)")


def watch_keyring(directory: str | Path, keyring: Any, *, every_s: float, name: str,
                  on_change: Any = None) -> asyncio.Task[None]:
    """Follow ``directory`` (polling every ``every_s`` and on SIGHUP) into ``keyring``, in
    place, until the returned task is cancelled. See :mod:`security.watch`."""
    from security.watch import KeyringWatcher

    watcher = KeyringWatcher(directory, keyring, interval_s=every_s, on_change=on_change,
                             name=name)
    loop = asyncio.get_running_loop()
    # only the main thread of a Unix process can take signals; polling still works elsewhere
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, watcher.poke)
    return asyncio.create_task(watcher.run(), name=f"watch {directory}")
