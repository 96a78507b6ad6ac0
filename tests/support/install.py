"""pytest plugin: vlabus built from this checkout and installed like a user installs it.

``installed_vlabus`` (session scope) builds the sdist and, from that sdist, the wheel
(``python -m build``), then installs the wheel, not editable, into a fresh virtual environment
in a temporary folder. The heavy dependencies (torch, numpy, …) are not downloaded again: after
the wheel is installed, a ``.pth`` file lets the new environment import them from this test
environment's site-packages. Python does not run the ``.pth`` files of a folder added that way,
so this environment's editable vlabus never becomes importable there: every ``vlabus`` module
and every broker template comes from the installed wheel (the fixture checks it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import ROOT


@dataclass(frozen=True)
class Installed:
    """A virtual environment holding vlabus installed from its wheel."""

    root: Path
    wheel: Path
    sdist: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def vlabus(self) -> Path:
        """The console script pip wrote for the ``vlabus`` entry point."""
        return self.bin / "vlabus"

    @property
    def site_packages(self) -> Path:
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.root),
                                                         "platbase": str(self.root)}))

    def env(self, **extra: str) -> dict[str, str]:
        """An environment that runs this installation's ``vlabus`` first, never the checkout."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        env.update(extra)
        return env

    def run(self, *args: str, cwd: Path, timeout: float = 120,
            **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.vlabus), *args], cwd=cwd, env=self.env(**extra),
                              capture_output=True, text=True, timeout=timeout, check=False)


def build_and_install(workdir: Path) -> Installed:
    """Build sdist and wheel from the checkout and install the wheel into ``workdir/venv``."""
    dist = workdir / "dist"
    # --no-isolation: the build backend (setuptools) of this environment, nothing downloaded
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("vlabus-*.whl"))
    sdist = next(dist.glob("vlabus-*.tar.gz"))
    root = workdir / "venv"
    venv.create(root, with_pip=False, symlinks=True)
    installed = Installed(root, wheel, sdist)
    python = root / "bin" / "python"
    # pip of this environment, acting on the new interpreter; before the .pth exists, so it
    # sees no other vlabus there
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    deps = sysconfig.get_path("purelib")
    (installed.site_packages / "_vlabus_test_dependencies.pth").write_text(deps + "\n")
    probe = subprocess.run(
        [str(python), "-c", "import json, vlabus, vlabus.broker.render as r; "
         "print(json.dumps([vlabus.__file__, str(r.templates_dir())]))"],
        cwd=workdir, env=installed.env(), capture_output=True, text=True, check=True)
    for path in json.loads(probe.stdout):
        assert Path(path).is_relative_to(installed.site_packages), (
            f"{path} is not from the installed wheel in {installed.site_packages}")
    return installed


@pytest.fixture(scope="session")
def installed_vlabus(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    return build_and_install(tmp_path_factory.mktemp("installed"))
