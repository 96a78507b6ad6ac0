"""The documentation points at things that exist, and the README's commands are CI's.

Users follow the README's two commands on a fresh machine and script against the paths the
docs name; a moved file or a renamed flag must fail here, not in a newcomer's terminal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(
    r"`((?:vlabus|schemas|security|edge_agent|cloud_workers|bench|tests|broker_config|deploy"
    r"|docs)/[A-Za-z0-9_./-]*)`")
NOT_PATHS = {"vlabus/rejected"}  # the Foxglove export's channel of rejected messages


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_there_is_documentation_to_check() -> None:
    assert len(PAGES) > 10
    assert (ROOT / "docs" / "index.md") in PAGES


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on this page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_named_repository_paths_exist(page: Path) -> None:
    """A path in backticks that starts with one of our folders names a real file or folder
    (patterns with ``*`` are globs and must match something; upper-case segments such as
    ``NAME`` are placeholders)."""
    text = page.read_text(encoding="utf-8")
    missing = []
    for path in REPO_PATH.findall(text):
        if path in NOT_PATHS or re.search(r"(^|/)[A-Z]+(\.|/|$)", path):
            continue
        if "*" in path:
            if not list(ROOT.glob(path)):
                missing.append(path)
        elif not (ROOT / path.rstrip("/.")).exists():
            missing.append(path)
    assert missing == []


def test_the_readme_gives_the_two_newcomer_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    demo = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
            "pip install -e . && vlabus demo")
    tests = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
             "pip install -e '.[dev]' && pip install --no-deps -r tests/peers.txt && "
             "python -m pytest")
    assert demo in readme
    assert tests in readme
    # .ci/run performs the test command's steps, in order
    steps = ["python3 -m venv .venv", ". .venv/bin/activate", "pip install --quiet torch==2.13.0",
             "pip install --quiet -e '.[dev]'", "pip install --quiet --no-deps -r tests/peers.txt",
             "python -m pytest"]
    positions = [ci.find(step) for step in steps]
    assert -1 not in positions, dict(zip(steps, positions, strict=True))
    assert positions == sorted(positions)
