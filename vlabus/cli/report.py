"""How a command that returns a summary dict ends: JSON, an error line, or a human line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def report(summary: dict[str, Any], *, as_json: bool, command: str,
           human: Callable[[dict[str, Any]], str] | None = None) -> int:
    """Print ``summary`` as one JSON line (``--json``), else its ``error`` on stderr prefixed
    with ``command``, else ``human(summary)`` on stdout when given; return its ``exit_code``
    (0 when absent)."""
    if as_json:
        print(json.dumps(summary), flush=True)
    elif summary.get("error"):
        print(f"{command}: {summary['error']}", file=sys.stderr)
    elif human is not None:
        print(human(summary))
    return int(summary.get("exit_code", 0))
