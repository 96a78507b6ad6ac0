"""``vlabus broker render|run``: what the rendered configuration contains, and that the command
line writes and runs it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import ROOT
from tests.support.keys import IDENTITIES, KeyDir
from vlabus.broker.render import (
    ADMIN,
    CONTROL,
    BrokerError,
    client_options,
    hash_password,
    listener_of,
    render,
    with_port,
)
from vlabus.bus.transport import open_transport
from vlabus.cli import main

ALL_IDS = sorted(ident for _, ident in IDENTITIES)


def test_dev_config_has_passwords_and_nodelay(keydir: KeyDir, tmp_path: Path) -> None:
    conf = render(keydir.path, tmp_path / "dev", port=1999)
    text = conf.read_text()
    assert "listener 1999 127.0.0.1" in text
    assert "set_tcp_nodelay true" in text
    assert "allow_anonymous false" in text
    assert "${" not in text
    lines = (tmp_path / "dev" / "passwd").read_text().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ALL_IDS
    password = (tmp_path / "dev" / "clients" / "robot-a.password").read_text().strip()
    entry = next(line for line in lines if line.startswith("robot-a:")).split(":", 1)[1]
    _, kind, iterations, salt, digest = entry.split("$")
    assert kind == "7"
    again = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt),
                                int(iterations), 64)
    assert base64.b64encode(again).decode() == digest
    for secret in [tmp_path / "dev" / "passwd", tmp_path / "dev" / "clients" / "robot-a.password"]:
        assert secret.stat().st_mode & 0o077 == 0
    # Re-rendering keeps the client passwords stable.
    render(keydir.path, tmp_path / "dev")
    again_pw = (tmp_path / "dev" / "clients" / "robot-a.password").read_text().strip()
    assert again_pw == password
    options = client_options(tmp_path / "dev", "robot-a", "robot-a-1")
    assert (options.username, options.password, options.client_id) == (
        "robot-a", password, "robot-a-1")


def test_fleet_config_tls_and_access_control(keydir: KeyDir, tmp_path: Path) -> None:
    root = render(keydir.path, tmp_path / "fleet", tls=True).parent
    text = (root / "mosquitto.conf").read_text()
    for line in ["require_certificate true", "use_identity_as_username true",
                 "set_tcp_nodelay true", "persistence true", "allow_anonymous false"]:
        assert line in text
    assert "mosquitto_dynamic_security.so" in text
    assert listener_of(text) == (8883, "127.0.0.1")
    ca = x509.load_pem_x509_certificate((root / "tls" / "ca.crt").read_bytes())
    for ident in ALL_IDS:
        cert_path = root / "tls" / "clients" / f"{ident}.crt"
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == ident
        cert.verify_directly_issued_by(ca)
        assert (root / "tls" / "clients" / f"{ident}.key").stat().st_mode & 0o077 == 0
    broker = x509.load_pem_x509_certificate((root / "tls" / "broker.crt").read_bytes())
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert isinstance(broker.public_key(), ec.EllipticCurvePublicKey)

    dynsec = json.loads((root / "dynamic-security.json").read_text())
    assert dynsec["defaultACLAccess"] == {"publishClientSend": False,
                                         "publishClientReceive": False,
                                         "subscribe": False, "unsubscribe": True}
    acls = {role["rolename"]: {(a["acltype"], a["topic"]) for a in role["acls"]}
            for role in dynsec["roles"]}
    robot = acls["robot-robot-a"]
    assert ("publishClientSend", "vla/v1/robot-a/frame") in robot
    assert ("subscribePattern", "vla/v1/robot-a/action") in robot
    assert not any("robot-b" in topic or topic.startswith("$share") for _, topic in robot)
    assert ("subscribePattern", "$share/+/vla/v1/+/task") in acls["worker-worker-1"]
    assert sorted(c["username"] for c in dynsec["clients"]) == sorted([*ALL_IDS, ADMIN])
    # the administrator may use the control topics and nothing else
    assert acls[ADMIN] == {("publishClientSend", CONTROL), ("subscribePattern", f"{CONTROL}/#"),
                           ("publishClientReceive", f"{CONTROL}/response")}
    assert not any(topic.startswith("$CONTROL") for role, rules in acls.items()
                   if role != ADMIN for _, topic in rules)
    assert client_options(root, "worker-2").tls is not None


def test_port_rewriting() -> None:
    assert listener_of(with_port("a 1\nlistener 1883 0.0.0.0\n", 5)) == (5, "127.0.0.1")
    with pytest.raises(BrokerError):
        with_port("no listener here", 5)


def test_hash_password_salts_each_time() -> None:
    assert hash_password("same") != hash_password("same")


def test_cli_render_json(
    keydir: KeyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["broker", "render", "--keys", str(keydir.path), "--out", str(out), "--tls",
                 "--hostname", "broker.example", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "fleet"
    assert summary["clients"] == ALL_IDS
    assert "dynamic-security.json" in summary["files"]
    assert main(["broker", "render", "--keys", str(tmp_path / "missing"), "--out",
                 str(out)]) == 1


@pytest.mark.integration
def test_cli_run_serves_until_terminated(keydir: KeyDir, tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    config = render(keydir.path, tmp_path / "run").parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlabus", "broker", "run", "--config", str(config), "--port", "0",
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "mosquitto running at mqtt://127.0.0.1:" in line
        url = line.split()[3]

        async def use() -> None:
            client = await open_transport(url, client_options(config, "robot-a"))
            await client.subscribe("vla/v1/robot-a/action")
            await client.publish("vla/v1/robot-a/action", b"hi", qos=1)
            assert (await asyncio.wait_for(client.receive(), 10)).payload == b"hi"
            await client.close()

        asyncio.run(use())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads(out)
    assert summary["url"] == url
    assert summary["stopped_by_signal"] is True
    assert proc.returncode == 0
