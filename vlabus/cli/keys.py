"""``vlabus keys init|add|list``: the keyring directory.

Roles robot, worker, release and replay hold Ed25519 signing identities; ``pool`` holds a worker
pool's X25519 key for optional end-to-end body sealing (see ``security.seal``).

``schemas`` and ``security`` are imported inside the handlers, so a shadowed install still
builds the parser and ``vlabus doctor`` can report it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser("keys", help="create and list Ed25519 identities")
    keys = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    init = keys.add_parser("init", help="create a keyring directory")
    init.add_argument("dir")
    init.set_defaults(func=_init)

    add = keys.add_parser("add", help="generate a key pair for an identity or a worker pool")
    add.add_argument("role", help="robot, worker, release, replay, recorder or root (Ed25519 "
                     "signing identities), or pool (a worker pool's X25519 sealing key)")
    add.add_argument("id")
    add.add_argument("--dir", required=True)
    add.add_argument("--force", action="store_true", help="replace an existing key")
    add.set_defaults(func=_add)

    export = keys.add_parser(
        "export", help="a keyring for one service: every public key, only its private keys")
    export.add_argument("--dir", required=True, help="the full keyring")
    export.add_argument("--out", required=True, help="the service's keyring to write")
    export.add_argument("--private", action="append", default=[], metavar="ROLE[/ID]",
                        help="private keys to include: a role (all its identities) or one "
                             "identity (repeatable; none: public keys only)")
    export.add_argument("--broker-config", default=None, metavar="DIR",
                        help="also copy these identities' broker credentials from a rendered "
                             "configuration into OUT/broker (pass --broker-config OUT/broker), "
                             "with --flat into OUT; with no --private, the broker's CA")
    export.add_argument("--flat", action="store_true",
                        help="ROLE.ID.pub.pem files side by side: the layout of a Kubernetes "
                             "ConfigMap or Secret made with kubectl --from-file=OUT")
    export.add_argument("--no-public", action="store_true",
                        help="leave the public keys out (one identity's Kubernetes Secret)")
    export.set_defaults(func=_export)

    listing = keys.add_parser("list", help="list the identities in a keyring")
    listing.add_argument("--dir", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)


def _init(args: argparse.Namespace) -> int:
    from security.keys import KEY_ROLES, init_keyring

    root = init_keyring(args.dir)
    print(f"keyring at {root} (roles: {', '.join(KEY_ROLES)})")
    return 0


def _add(args: argparse.Namespace) -> int:
    from schemas.errors import BusError
    from security.keys import (
        KEY_ROLES,
        POOL,
        ROLES,
        add_key,
        add_pool_key,
    )

    if args.role not in KEY_ROLES:
        print(f"vlabus keys add: unknown role {args.role!r}; one of {', '.join(KEY_ROLES)}",
              file=sys.stderr)
        return 2
    try:
        if args.role == POOL:
            secret = add_pool_key(args.dir, args.id, overwrite=args.force)
            print(f"{POOL} {secret.pool} key {secret.public.key_id.hex()}")
            return 0
        role = next(r for r in ROLES if r == args.role)
        signer = add_key(args.dir, role, args.id, overwrite=args.force)
    except BusError as exc:
        print(f"vlabus keys add: {exc}", file=sys.stderr)
        return 1
    print(f"{signer.role} {signer.identity} key {signer.key_id}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.errors import BusError
    from security.export import export_keyring

    try:
        exported = export_keyring(args.dir, args.out, args.private, flat=args.flat,
                                  public=not args.no_public)
        if args.broker_config is not None:
            from vlabus.broker.render import export_credentials

            export_credentials(args.broker_config, [p.split("/")[1] for p in exported],
                               Path(args.out) if args.flat else Path(args.out) / "broker",
                               flat=args.flat)
    except BusError as exc:
        print(f"vlabus keys export: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: public keys and {len(exported)} private keys ({', '.join(exported)})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from schemas.errors import BusError
    from security.keys import POOL, Keyring, list_pool_keys

    try:
        ring = Keyring.load(args.dir)
        pools = list_pool_keys(args.dir)
    except BusError as exc:
        print(f"vlabus keys list: {exc}", file=sys.stderr)
        return 1
    rows = [{"role": k.role, "id": k.identity, "key_id": k.key_id} for k in ring]
    rows += [{"role": POOL, "id": p.pool, "key_id": p.key_id.hex()} for p in pools]
    if args.json:
        print(json.dumps({"keys": rows}))
    else:
        for row in rows:
            print(f"{row['role']:8} {row['id']:24} {row['key_id']}")
    return 0
