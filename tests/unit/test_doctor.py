"""``vlabus doctor`` fails loudly when ``schemas`` or ``security`` resolve to foreign code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def doctor(cwd: Path, pythonpath: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    # run from outside the checkout so the repository root is not first on sys.path
    return subprocess.run([sys.executable, "-m", "vlabus", "doctor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_clean_install_passes(tmp_path: Path) -> None:
    done = doctor(tmp_path, None, "--json")
    report = json.loads(done.stdout)
    assert report["problems"] == [], report
    assert done.returncode == 0
    assert report["versions"]["msgspec"]


@pytest.mark.parametrize("name", ["schemas", "security"])
def test_shadowing_package_fails_loudly(tmp_path: Path, name: str) -> None:
    fake = tmp_path / "site" / name
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('"""An unrelated PyPI package with a clashing name."""\n')
    done = doctor(tmp_path, tmp_path / "site")
    assert done.returncode == 1
    assert f"PROBLEM: `{name}` imports from {fake}" in done.stderr
    assert "own virtual environment" in done.stderr


def test_shadowing_single_module_fails(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "schemas.py").write_text("VALUE = 1\n")
    done = doctor(tmp_path, site, "--json")
    assert done.returncode == 1
    assert any("schemas.py" in p for p in json.loads(done.stdout)["problems"])
