"""Installed = checkout: the wheel and the sdist carry what the commands read, and the installed
(non-editable) vlabus renders broker configurations, reports its version and passes doctor."""

from __future__ import annotations

import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.support.install import Installed

# the first test to use the session's installed wheel builds and installs it
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

TEMPLATES = ("dev.conf", "fleet.conf", "acl.json")


def test_wheel_and_sdist_carry_the_broker_templates(installed_vlabus: Installed) -> None:
    names = zipfile.ZipFile(installed_vlabus.wheel).namelist()
    for name in TEMPLATES:
        assert f"vlabus/broker/templates/{name}" in names
    with tarfile.open(installed_vlabus.sdist) as sdist:
        members = sdist.getnames()
    for name in TEMPLATES:
        assert any(m.endswith(f"/broker_config/{name}") for m in members), name


def test_installed_version_and_doctor(installed_vlabus: Installed, tmp_path: Path) -> None:
    done = installed_vlabus.run("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == "vlabus 0.1.0"
    done = installed_vlabus.run("doctor", "--json", cwd=tmp_path)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report["problems"]
    assert report["verdict"].startswith("vlabus doctor: OK")
    assert Path(report["templates"]).is_relative_to(installed_vlabus.site_packages)
    if shutil.which("mosquitto"):
        assert report["mosquitto"]["dynsec"] == "loads"


@pytest.mark.parametrize("mode", [[], ["--tls"]])
def test_installed_broker_render(installed_vlabus: Installed, tmp_path: Path,
                                 mode: list[str]) -> None:
    keys = tmp_path / "keys"
    for args in (["keys", "init", str(keys)], ["keys", "add", "robot", "robot-1", "--dir",
                                               str(keys)]):
        assert installed_vlabus.run(*args, cwd=tmp_path).returncode == 0
    done = installed_vlabus.run("broker", "render", "--keys", str(keys), "--out",
                                str(tmp_path / "broker"), "--json", *mode, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["clients"] == ["robot-1"]
    assert (tmp_path / "broker" / "mosquitto.conf").is_file()
