"""``vlabus log verify FILE --keys DIR``: prove a recording with public keys alone.

Exit status 0 when every recorded envelope is proven (signed ones by their signature, session
ones by a signed checkpoint chain), 1 when the file or keyring cannot be read, 2 when anything
is refused, missing from a checkpoint's range, mismatched or covered by no checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from schemas.errors import BusError


def add_verify(actions: Any) -> None:
    """Register ``log verify`` under the ``log`` command's actions."""
    verify = actions.add_parser(
        "verify", help="prove every recorded message with public keys (signatures, checkpoints)")
    verify.add_argument("file")
    verify.add_argument("--keys", required=True, metavar="DIR",
                        help="keyring directory (public keys are enough)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from security.keys import Keyring
    from vlabus.log.reader import iter_log
    from vlabus.log.verify import verify_records

    try:
        result = verify_records(iter_log(args.file), Keyring.load(args.keys))
    except (BusError, OSError) as exc:
        print(f"vlabus log verify: {exc}", file=sys.stderr)
        return 1
    report = {"file": args.file, **result.as_dict()}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{result.messages} messages: {result.signed} signed and verified, "
              f"{result.session_proven} session-mode proven by {result.checkpoints} "
              f"checkpoints; {'all proven' if result.ok else 'NOT all proven'}")
        for name in ("refused", "gaps", "mismatches", "uncovered"):
            for item in report[name]:
                print(f"  {name}: {json.dumps(item)}")
    return 0 if result.ok else 2
