"""A kill at any point of an install leaves the old or the new model, never a partial one.

Each case runs a real install of v2 over an active v1 in a child process that dies with
``os._exit`` (no cleanup, no flush of Python buffers) at one named point; the parent then
opens the store as a restarted robot would.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.store import ModelStore

NAME = "edge"
OLD = b"old-model-" * 3000
NEW = b"new-model-" * 5000

CHILD = textwrap.dedent("""
    import hashlib, os, sys
    from pathlib import Path
    from edge_agent.store import ModelStore

    root, kill_at = Path(sys.argv[1]), sys.argv[2]
    new = b"new-model-" * 5000

    def checkpoint(point):
        if point == kill_at:
            os._exit(137)

    store = ModelStore(root, checkpoint=checkpoint)
    part = store.part_path("edge", 2)
    with open(part, "wb") as handle:
        handle.write(new[: len(new) // 2])
        handle.flush()
        if kill_at == "download":
            os._exit(137)
        handle.write(new[len(new) // 2:])
    digest = hashlib.sha256(new).hexdigest()
    path = store.commit_part("edge", 2, digest)
    store.point("edge", 2, path, digest, previous=1)
    print("done")
""")

POINTS = ["download", "part_synced", "file_renamed", "pointer_written", "pointer_synced",
          "pointer_renamed", "never"]


def install_old(root: Path) -> None:
    store = ModelStore(root)
    part = store.part_path(NAME, 1)
    part.write_bytes(OLD)
    digest = hashlib.sha256(OLD).hexdigest()
    store.point(NAME, 1, store.commit_part(NAME, 1, digest), digest, previous=None)


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_install_leaves_old_or_new(tmp_path: Path, point: str) -> None:
    root = tmp_path / "models"
    install_old(root)
    child = subprocess.run([sys.executable, "-c", CHILD, str(root), point],
                           capture_output=True, text=True, timeout=30, check=False)
    assert child.returncode == (0 if point == "never" else 137), child.stderr
    store = ModelStore(root)  # the robot restarts
    active = store.active(NAME)
    assert active is not None, "no usable model after the kill"
    content = active.path.read_bytes()
    assert content in (OLD, NEW)
    assert hashlib.sha256(content).hexdigest() == active.sha256
    # The switch happens exactly at the pointer rename.
    after_switch = point in ("pointer_renamed", "never")
    assert active.version == (2 if after_switch else 1)
    store.clean_partials(NAME)
    leftovers = [p.name for p in (root / NAME).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_corrupted_active_file_is_not_trusted(tmp_path: Path) -> None:
    root = tmp_path / "models"
    install_old(root)
    store = ModelStore(root)
    active = store.active(NAME)
    assert active is not None
    active.path.write_bytes(OLD[:-1])
    assert store.active(NAME) is None  # a robot falls back to its built-in policy
