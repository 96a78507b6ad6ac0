"""A replay is not live traffic unless asked (issue 16, item 7): ``vlabus replay`` publishes
under ``replay/`` unless ``--onto-live`` (which needs ``--restamp``), skips retained status
messages unless ``--with-status``; the fleet broker render keeps the CA's private key out of
the broker's directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from schemas.status import status_message
from schemas.topics import robot_status_topic
from tests.support.keys import KeyDir
from tests.support.logs import write_log
from vlabus.broker.render import render
from vlabus.cli import main
from vlabus.log.record import Recorder
from vlabus.wire import Encoder


def log_with_status(keydir: KeyDir, path: Path) -> int:
    """A log of frames and actions, then robot-a's retained birth; returns the bus messages."""
    written = write_log(path, keydir.signers, steps=2)
    birth = Encoder(keydir.signers["robot-a"]).encode(
        status_message("robot-a", "robot", "online", session=1))
    with Recorder(path.with_name("status.mcap")) as recorder:
        for topic, wire, log_ns in written:
            recorder.write(topic, wire, log_ns)
        recorder.write(robot_status_topic("robot-a"), birth, written[-1][2] + 1000)
    path.unlink()
    path.with_name("status.mcap").rename(path)
    return len(written) + 1


def replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    code = main(["replay", *args, "--rate", "100", "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


def test_replay_goes_under_replay_prefix_without_status(
        keydir: KeyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    total = log_with_status(keydir, path)
    code, summary = replay(capsys, str(path), "--bus", "memory://iso-1")
    assert code == 0
    assert summary["published"] == total - 1
    assert summary["skipped"] == {"status": 1}
    topics = summary["topics"]
    assert isinstance(topics, dict)
    assert topics
    assert all(topic.startswith("replay/vla/v1/") for topic in topics)


def test_status_only_when_asked_and_live_topics_only_restamped(
        keydir: KeyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    total = log_with_status(keydir, path)
    code, summary = replay(capsys, str(path), "--bus", "memory://iso-2", "--with-status")
    assert code == 0
    assert summary["published"] == total
    assert "replay/vla/v1/robot-a/status" in summary["topics"]  # type: ignore[operator]
    code, summary = replay(capsys, str(path), "--bus", "memory://iso-2", "--onto-live")
    assert code == 1
    assert "--restamp" in str(summary["error"])
    code, summary = replay(capsys, str(path), "--bus", "memory://iso-2", "--onto-live",
                           "--restamp", str(keydir.path), "--keys", str(keydir.path))
    assert code == 0
    assert summary["onto_live"] is True
    assert all(t.startswith("vla/v1/") for t in summary["topics"])  # type: ignore[union-attr]


def test_fleet_render_keeps_the_ca_key_out_of_the_broker_directory(
        keydir: KeyDir, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    out = tmp_path / "fleet"
    render(keydir.path, out, tls=True, ca_dir=ca_dir)
    private = [p for p in out.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert private  # the broker's and clients' own keys
    ca_key = (ca_dir / "ca.key").read_bytes()
    assert all(p.read_bytes() != ca_key for p in private)
    assert not (out / "tls" / "ca.key").exists()
    assert (ca_dir.stat().st_mode & 0o077) == 0
    first = (out / "tls" / "ca.crt").read_bytes()
    # rendered again: the same CA signs, so issued certificates stay valid
    render(keydir.path, out, tls=True, ca_dir=ca_dir)
    assert (out / "tls" / "ca.crt").read_bytes() == first
    cert = x509.load_pem_x509_certificate((out / "tls" / "clients" / "robot-a.crt").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(first))


def test_a_ca_key_left_by_an_older_render_is_moved_out(
        keydir: KeyDir, tmp_path: Path) -> None:
    from security.tls import write_tls

    out = tmp_path / "fleet"
    write_tls(out / "tls", ["robot-a"])  # the old layout: CA key beside the broker's files
    old_ca = (out / "tls" / "ca.crt").read_bytes()
    render(keydir.path, out, tls=True, ca_dir=tmp_path / "ca")
    assert not (out / "tls" / "ca.key").exists()
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == old_ca
    assert (out / "tls" / "ca.crt").read_bytes() == old_ca
