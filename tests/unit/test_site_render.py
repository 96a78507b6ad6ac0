"""``vlabus broker render --site``: what the site and the cloud configurations say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.keys import KeyDir
from vlabus.broker.render import BrokerError, render
from vlabus.broker.site import render_site, uplink_address
from vlabus.cli import main


@pytest.fixture
def cloud(keydir: KeyDir, tmp_path: Path) -> Path:
    render(keydir.path, tmp_path / "cloud", tls=True)
    return tmp_path / "cloud"


def test_site_bridges_only_its_robots(keydir: KeyDir, cloud: Path, tmp_path: Path) -> None:
    conf = render_site(keydir.path, tmp_path / "site", site="berlin",
                       uplink="mqtts://cloud.example:8884", cloud=cloud, robots=["robot-a"])
    text = conf.read_text()
    assert "bridge_protocol_version mqttv50" in text
    assert "address cloud.example:8884" in text
    assert "bridge_certfile" in text
    assert "bridge_insecure false" in text
    topics = [line for line in text.splitlines() if line.startswith("topic ")]
    assert "topic vla/v1/robot-a/frame out 0" in topics
    assert "topic vla/v1/robot-a/action in 1" in topics
    assert not any("robot-b" in t or "robot-c" in t or "#" in t.split()[1][:-1] for t in topics
                   if "models" not in t)
    # the site's own broker admits only its robots
    site_dynsec = json.loads((tmp_path / "site" / "dynamic-security.json").read_text())
    assert {c["username"] for c in site_dynsec["clients"]} == {"robot-a", "broker-admin"}
    # the cloud knows the site identity, with exactly the bridged topics
    cloud_dynsec = json.loads((cloud / "dynamic-security.json").read_text())
    role = next(r for r in cloud_dynsec["roles"] if r["rolename"] == "site-berlin")
    sends = {a["topic"] for a in role["acls"] if a["acltype"] == "publishClientSend"}
    assert sends == {"vla/v1/robot-a/frame", "vla/v1/robot-a/task", "vla/v1/robot-a/status"}
    assert (tmp_path / "site" / "bridge" / "site-berlin.key").stat().st_mode & 0o077 == 0
    # rendering again replaces the site's role instead of adding a second one
    render_site(keydir.path, tmp_path / "site", site="berlin",
                uplink="mqtts://cloud.example:8884", cloud=cloud, robots=["robot-b"])
    again = json.loads((cloud / "dynamic-security.json").read_text())
    assert [r["rolename"] for r in again["roles"]].count("site-berlin") == 1


@pytest.mark.parametrize(("uplink", "site", "robots", "match"), [
    ("mqtt://cloud:1883", "berlin", None, "mutual TLS"),
    ("mqtts://cloud:8883", "Berlin!", None, "site name"),
    ("mqtts://cloud:8883", "berlin", ["worker-1"], "robot identities"),
])
def test_bad_site_settings_say_why(keydir: KeyDir, cloud: Path, tmp_path: Path, uplink: str,
                                   site: str, robots: list[str] | None, match: str) -> None:
    with pytest.raises(BrokerError, match=match):
        render_site(keydir.path, tmp_path / "site", site=site, uplink=uplink, cloud=cloud,
                    robots=robots)


def test_site_needs_a_rendered_cloud(keydir: KeyDir, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="render --tls"):
        render_site(keydir.path, tmp_path / "site", site="berlin",
                    uplink="mqtts://cloud:8883", cloud=tmp_path / "nothing")
    assert uplink_address("mqtts://cloud") == ("cloud", 8883)


def test_cli_renders_a_site(keydir: KeyDir, cloud: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["broker", "render", "--keys", str(keydir.path), "--out", str(tmp_path / "s"),
                 "--site", "lyon", "--uplink", "mqtts://10.0.0.2:8883", "--cloud-config",
                 str(cloud), "--robot", "robot-c", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "fleet"
    assert summary["site"]["identity"] == "site-lyon"
    assert summary["site"]["up"] == ["vla/v1/robot-c/frame", "vla/v1/robot-c/task",
                                     "vla/v1/robot-c/status"]
    assert main(["broker", "render", "--keys", str(keydir.path), "--out", str(tmp_path / "t"),
                 "--site", "lyon"]) == 1
    assert "needs --uplink" in capsys.readouterr().out
