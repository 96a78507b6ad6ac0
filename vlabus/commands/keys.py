"""``vlabus keys init|add|list``: the Ed25519 keyring directory."""

from __future__ import annotations

import argparse
import json
from typing import Any, cast

from schemas.errors import BusError
from security.keys import ROLES, Keyring, Role, add_key, init_keyring


def register(sub: Any) -> None:
    parser = sub.add_parser("keys", help="create and list Ed25519 identities")
    keys = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    init = keys.add_parser("init", help="create a keyring directory")
    init.add_argument("dir")
    init.set_defaults(func=_init)

    add = keys.add_parser("add", help="generate a key pair for an identity")
    add.add_argument("role", choices=ROLES)
    add.add_argument("id")
    add.add_argument("--dir", required=True)
    add.add_argument("--force", action="store_true", help="replace an existing key")
    add.set_defaults(func=_add)

    listing = keys.add_parser("list", help="list the identities in a keyring")
    listing.add_argument("--dir", required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)


def _init(args: argparse.Namespace) -> int:
    root = init_keyring(args.dir)
    print(f"keyring at {root} (roles: {', '.join(ROLES)})")
    return 0


def _add(args: argparse.Namespace) -> int:
    try:
        signer = add_key(args.dir, cast(Role, args.role), args.id, overwrite=args.force)
    except BusError as exc:
        print(f"vlabus keys add: {exc}")
        return 1
    print(f"{signer.role} {signer.identity} key {signer.key_id}")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        ring = Keyring.load(args.dir)
    except BusError as exc:
        print(f"vlabus keys list: {exc}")
        return 1
    rows = [{"role": k.role, "id": k.identity, "key_id": k.key_id} for k in ring]
    if args.json:
        print(json.dumps({"keys": rows}))
    else:
        for row in rows:
            print(f"{row['role']:8} {row['id']:24} {row['key_id']}")
    return 0
