"""``--id auto``: replicas over one keyring each claim a different identity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import KeyringError
from security.keys import add_key
from vlabus.claim import claim_identity


def test_claims_are_exclusive_and_released(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        add_key(tmp_path, "worker", f"worker-{i}")
    first = claim_identity(tmp_path, "worker")
    second = claim_identity(tmp_path, "worker")
    third = claim_identity(tmp_path, "worker")
    taken = [first.identity, second.identity, third.identity]
    assert taken == ["worker-1", "worker-2", "worker-10"]
    with pytest.raises(KeyringError, match="taken"):
        claim_identity(tmp_path, "worker")
    second.release()
    assert claim_identity(tmp_path, "worker").identity == "worker-2"


def test_claim_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    add_key(tmp_path, "robot", "robot-1")
    add_key(tmp_path, "robot", "robot-2")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from vlabus.claim import claim_identity;"
         f"c = claim_identity({str(tmp_path)!r}, 'robot'); print(c.identity, flush=True);"
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "robot-1"
        assert claim_identity(tmp_path, "robot").identity == "robot-2"
    finally:
        holder.communicate(timeout=10)
