"""A keyring as a Kubernetes ConfigMap or Secret volume holds it: flat ``ROLE.ID.pub.pem`` and
``ROLE.ID.key.pem`` files, private keys readable by the pod's fsGroup (mode 0440, root-owned)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schemas.errors import KeyringError
from security.export import export_keyring
from security.keys import Keyring, add_key, load_signer
from security.watch import KeyringWatcher
from vlabus.broker.render import client_options, export_credentials, render


def test_flat_export_reads_back_like_the_keyring(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    signer = add_key(keys, "worker", "worker-1")
    add_key(keys, "robot", "robot-a")
    add_key(keys, "release", "release")
    flat = tmp_path / "flat"
    assert export_keyring(keys, flat, ["worker/worker-1"], flat=True) == ["worker/worker-1"]
    assert sorted(p.name for p in flat.iterdir()) == [
        "release.release.pub.pem", "robot.robot-a.pub.pem", "worker.worker-1.key.pem",
        "worker.worker-1.pub.pem"]
    assert {(k.role, k.identity) for k in Keyring.load(flat)} == {
        ("worker", "worker-1"), ("robot", "robot-a"), ("release", "release")}
    assert load_signer(flat, "worker", "worker-1").key_id == signer.key_id
    with pytest.raises(KeyringError):
        load_signer(flat, "release", "release")  # its private key was not exported


def test_flat_keyring_changes_are_followed(tmp_path: Path) -> None:
    keys, flat = tmp_path / "keys", tmp_path / "flat"
    add_key(keys, "robot", "robot-a")
    export_keyring(keys, flat, [], flat=True)
    ring = Keyring.load(flat)
    watcher = KeyringWatcher(flat, ring)
    add_key(keys, "robot", "robot-b")
    export_keyring(keys, flat, [], flat=True)
    assert watcher.check()
    assert ring.find("robot", "robot-b") is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a file to root")
def test_secret_volume_permissions_are_accepted_group_write_is_not(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    add_key(keys, "worker", "worker-1")
    flat = tmp_path / "flat"
    export_keyring(keys, flat, ["worker"], flat=True)
    private = flat / "worker.worker-1.key.pem"
    os.chown(private, 0, os.getgid())
    private.chmod(0o440)  # kubelet: root-owned, read-only, readable by the pod's fsGroup
    load_signer(flat, "worker", "worker-1")
    for mode in (0o640, 0o444, 0o460):
        private.chmod(mode)
        with pytest.raises(KeyringError, match="chmod 600"):
            load_signer(flat, "worker", "worker-1")


def test_flat_broker_credentials(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    add_key(keys, "robot", "robot-a")
    render(keys, tmp_path / "broker", tls=True)
    export_credentials(tmp_path / "broker", ["robot-a"], tmp_path / "flat", flat=True)
    options = client_options(tmp_path / "flat", "robot-a")
    assert options.tls is not None
    assert options.tls.ca == tmp_path / "flat" / "ca.crt"
    assert options.tls.cert == tmp_path / "flat" / "robot-a.crt"
