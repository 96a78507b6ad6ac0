"""Key files, the keyring directory and the ``vlabus keys`` command."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from schemas.errors import KeyringError
from security.keys import (
    KEY_ROLES,
    ROLES,
    Keyring,
    Signer,
    add_key,
    add_pool_key,
    init_keyring,
    load_pool_key,
    load_pool_secret,
    load_signer,
)
from vlabus.cli import main


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_add_key_writes_private_0600_and_loads_back(tmp_path: Path) -> None:
    signer = add_key(tmp_path, "robot", "robot-a")
    private = tmp_path / "robot" / "robot-a.key.pem"
    assert mode_of(private) == 0o600
    assert (tmp_path / "robot" / "robot-a.pub.pem").read_bytes().startswith(b"-----BEGIN PUBLIC")
    loaded = load_signer(tmp_path, "robot", "robot-a")
    assert loaded.key_id == signer.key_id
    assert len(signer.key_id) == 16
    assert int(signer.key_id, 16) >= 0
    signature = loaded.sign(b"hello")
    assert signer.public.verify(signature, b"hel", b"lo")  # parts hash as one byte string
    assert not signer.public.verify(signature, b"hello!")


def test_private_key_stays_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        add_key(tmp_path, "worker", "worker-1")
        add_pool_key(tmp_path, "gpu")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "worker" / "worker-1.key.pem") == 0o600
    assert mode_of(tmp_path / "pool" / "gpu.key.pem") == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_private_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    add_key(tmp_path, "robot", "robot-a")
    add_pool_key(tmp_path, "gpu")
    (tmp_path / "robot" / "robot-a.key.pem").chmod(mode)
    (tmp_path / "pool" / "gpu.key.pem").chmod(mode)
    with pytest.raises(KeyringError, match="chmod 600"):
        load_signer(tmp_path, "robot", "robot-a")
    with pytest.raises(KeyringError, match="chmod 600"):
        load_pool_secret(tmp_path, "gpu")


def test_refuses_to_replace_a_key_unless_asked(tmp_path: Path) -> None:
    first = add_key(tmp_path, "robot", "robot-a")
    with pytest.raises(KeyringError, match="exists"):
        add_key(tmp_path, "robot", "robot-a")
    second = add_key(tmp_path, "robot", "robot-a", overwrite=True)
    assert second.key_id != first.key_id
    assert load_signer(tmp_path, "robot", "robot-a").key_id == second.key_id


def test_bad_role_id_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="unknown role"):
        add_key(tmp_path, "admin", "x")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="invalid id"):
        add_key(tmp_path, "robot", "Robot A")
    with pytest.raises(KeyringError):
        load_signer(tmp_path, "robot", "nobody")
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.load(tmp_path / "missing")
    (tmp_path / "robot").mkdir(exist_ok=True)
    (tmp_path / "robot" / "junk.pub.pem").write_text("not a key")
    with pytest.raises(KeyringError, match="cannot load public key"):
        Keyring.load(tmp_path)


def test_wrong_key_kind_is_refused(tmp_path: Path) -> None:
    add_pool_key(tmp_path, "gpu")
    add_key(tmp_path, "robot", "robot-a")
    # an X25519 key in a signing folder, an Ed25519 key in the pool folder
    x25519_pem = (tmp_path / "pool" / "gpu.pub.pem").read_bytes()
    (tmp_path / "robot" / "gpu.pub.pem").write_bytes(x25519_pem)
    with pytest.raises(KeyringError, match="not an Ed25519"):
        Keyring.load(tmp_path)
    (tmp_path / "robot" / "gpu.pub.pem").unlink()
    (tmp_path / "pool" / "bad.pub.pem").write_bytes(
        (tmp_path / "robot" / "robot-a.pub.pem").read_bytes())
    with pytest.raises(KeyringError, match="not an X25519"):
        load_pool_key(tmp_path, "bad")


def test_keyring_load_find_and_order(tmp_path: Path) -> None:
    made = {ident: add_key(tmp_path, role, ident)  # type: ignore[arg-type]
            for role, ident in [("worker", "w-2"), ("robot", "r-1"), ("release", "rel")]}
    add_pool_key(tmp_path, "gpu")  # pool keys never enter the signing keyring
    ring = Keyring.load(tmp_path)
    assert len(ring) == 3
    assert [(k.role, k.identity) for k in ring] == [
        ("release", "rel"), ("robot", "r-1"), ("worker", "w-2")]
    assert ring.get(made["r-1"].key_id) is not None
    assert ring.get("0" * 16) is None
    found = ring.find("worker", "w-2")
    assert found is not None
    assert found.key_id == made["w-2"].key_id
    assert ring.find("robot", "w-2") is None


def test_init_keyring_is_idempotent(tmp_path: Path) -> None:
    init_keyring(tmp_path)
    init_keyring(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(KEY_ROLES)
    assert set(ROLES) < set(KEY_ROLES)


def test_in_memory_signer_checks_its_id() -> None:
    with pytest.raises(Exception, match="invalid id"):
        Signer.generate("robot", "UPPER")


def test_keys_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keydir = str(tmp_path / "ring")
    assert main(["keys", "init", keydir]) == 0
    assert main(["keys", "add", "robot", "robot-a", "--dir", keydir]) == 0
    assert main(["keys", "add", "worker", "worker-1", "--dir", keydir]) == 0
    assert main(["keys", "add", "pool", "gpu", "--dir", keydir]) == 0
    capsys.readouterr()
    assert main(["keys", "add", "robot", "robot-a", "--dir", keydir]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["keys", "add", "admin", "x", "--dir", keydir]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert main(["keys", "list", "--dir", keydir, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["keys"]
    assert [(r["role"], r["id"]) for r in rows] == [
        ("robot", "robot-a"), ("worker", "worker-1"), ("pool", "gpu")]
    assert rows[2]["key_id"] == load_pool_key(keydir, "gpu").key_id.hex()
    assert main(["keys", "list", "--dir", keydir]) == 0
    assert "robot-a" in capsys.readouterr().out
    assert main(["keys", "list", "--dir", str(tmp_path / "nope")]) == 1


def test_one_key_cannot_hold_two_roles(tmp_path: Path) -> None:
    add_key(tmp_path, "robot", "robot-a")  # creates every role folder
    (tmp_path / "release" / "release.pub.pem").write_bytes(
        (tmp_path / "robot" / "robot-a.pub.pem").read_bytes())
    with pytest.raises(KeyringError, match="both"):
        Keyring.load(tmp_path)
