"""Mosquitto configuration for a keyring, and a local Mosquitto to run it.

``render(keys, out, tls=...)`` fills the templates in ``broker_config/`` (shipped inside the
wheel as ``vlabus.broker.templates``) for the identities in a keyring and writes, under ``out``::

    mosquitto.conf              the broker configuration (absolute paths)
    passwd, clients/ID.password dev: hashed passwords for the broker, plain ones for clients (0600)
    dynamic-security.json       fleet: access control, subscribe denied by default
    tls/ca.crt, tls/broker.*    fleet: CA certificate and broker certificate and key (the CA's
                                private key stays in ``ca_dir``, default ``KEYS/ca/``: never
                                with the broker; see :mod:`security.tls`)
    tls/clients/ID.crt, ID.key  fleet: one client certificate per identity, CN = identity
    data/                       persistence

``client_options(out, identity)`` gives a client the credentials to connect.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from schemas.errors import BusError
from security.keys import Keyring
from security.tls import write_tls
from vlabus.bus.transport import MAX_PAYLOAD, TlsFiles, TransportOptions

#: Where distributions put Mosquitto's dynamic-security plugin: Debian/Ubuntu (multiarch),
#: then the eclipse-mosquitto image (Alpine).
DYNSEC_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                     "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
                     "/usr/lib/mosquitto_dynamic_security.so")
DYNSEC_PLUGIN = next((p for p in DYNSEC_CANDIDATES if Path(p).is_file()), DYNSEC_CANDIDATES[0])
#: The fleet broker's administrator: the one identity that may use the dynamic-security
#: plugin's control topics (``vlabus broker sync``). Its certificate stays with the broker's
#: configuration, never on a robot.
ADMIN = "broker-admin"
CONTROL = "$CONTROL/dynamic-security/v1"
#: The largest MQTT packet the broker takes: the clients' payload limit plus headers.
MAX_PACKET_SIZE = MAX_PAYLOAD + (64 << 10)


class BrokerError(BusError):
    """The broker could not be configured or started."""


TEMPLATE_FILES = ("dev.conf", "fleet.conf", "acl.json")


def __getattr__(name: str) -> Path:
    # ``TEMPLATES`` was a constant; resolving it lazily keeps importing this module cheap and
    # lets a broken installation fail where the templates are used, with the reason.
    if name == "TEMPLATES":
        return templates_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def templates_dir() -> Path:
    """Where the broker templates and access rules are: the ``vlabus.broker.templates``
    package data of an installed wheel, else ``broker_config/`` of the checkout (an editable
    install). Raises :class:`BrokerError` naming what is missing when neither holds them."""
    # a data-only (namespace) package: its folders, not resources.files()'s MultiplexedPath;
    # an editable install has no such package: the mapping exists only in built wheels
    spec = importlib.util.find_spec("vlabus.broker.templates")
    candidates = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    candidates.append(Path(__file__).resolve().parents[2] / "broker_config")
    for folder in candidates:
        if all((folder / name).is_file() for name in TEMPLATE_FILES):
            return folder
    raise BrokerError(f"broker templates ({', '.join(TEMPLATE_FILES)}) are missing from this "
                      f"installation (looked in {', '.join(map(str, candidates))}); "
                      "reinstall vlabus from its wheel")

@dataclass(frozen=True)
class Limits:
    """Broker limits written into the configuration."""

    max_packet_size: int = MAX_PACKET_SIZE
    max_queued_messages: int = 4096
    max_inflight_messages: int = 64
    persistence: bool = True
    autosave_interval: int = 5


def render(
    keys: str | Path,
    out: str | Path,
    *,
    tls: bool = False,
    bind: str = "127.0.0.1",
    port: int | None = None,
    hostnames: tuple[str, ...] = ("localhost",),
    limits: Limits = Limits(),
    templates: Path | None = None,
    dynsec_plugin: str = DYNSEC_PLUGIN,
    log_stdout: bool = False,
    only: Collection[str] | None = None,
    config_dir: str | None = None,
    ca_dir: str | Path | None = None,
) -> Path:
    """Write a Mosquitto configuration for the identities in keyring ``keys`` into ``out``.

    Without ``tls`` (dev): password authentication. With ``tls`` (fleet): client certificates,
    identity = certificate CN, and per-role access control. ``log_stdout`` sends the broker's
    log to stdout (a container) instead of ``out/mosquitto.log``. ``config_dir`` is where the
    broker will find these files when that is not ``out`` (a Kubernetes volume; the paths in
    mosquitto.conf use it). ``only``: just these identities of the keyring (a site broker's
    robots). ``ca_dir`` holds the fleet CA's private key (default ``keys/ca``), out of the
    broker's directory. Returns the path of mosquitto.conf.
    """
    templates = templates or templates_dir()
    ring = Keyring.load(keys)
    if len(ring) == 0:
        raise BrokerError(f"keyring {keys} holds no identities (run `vlabus keys add`)")
    root = Path(out).resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    identities = [(key.role, key.identity) for key in ring
                  if only is None or key.identity in only]
    if tls:
        if any(ident == ADMIN for _, ident in identities):
            raise BrokerError(f"{ADMIN!r} is the broker's own administrator; rename that key")
        write_tls(root / "tls", [ident for _, ident in identities] + [ADMIN], hostnames, bind,
                  ca_dir=Path(keys) / "ca" if ca_dir is None else ca_dir)
        _write_private(root / "dynamic-security.json", json.dumps(
            dynsec_config(identities, json.loads((templates / "acl.json").read_text())), indent=1))
    else:
        lines = []
        for _, ident in identities:
            password = _client_password(root, ident)
            lines.append(f"{ident}:{hash_password(password)}\n")
        _write_private(root / "passwd", "".join(lines))
    text = Template((templates / ("fleet.conf" if tls else "dev.conf")).read_text()).substitute(
        dir=config_dir or str(root), bind=bind, port=port or (8883 if tls else 1883),
        dynsec_plugin=dynsec_plugin,
        max_packet_size=limits.max_packet_size,
        max_queued_messages=limits.max_queued_messages,
        max_inflight_messages=limits.max_inflight_messages,
        persistence="true" if limits.persistence else "false",
        autosave_interval=limits.autosave_interval,
        log_dest="stdout" if log_stdout else f"file {config_dir or root}/mosquitto.log",
    )
    conf = root / "mosquitto.conf"
    conf.write_text(text)
    return conf


def dynsec_config(identities: Sequence[tuple[str, str]], rules: dict[str, Any]) -> dict[str, Any]:
    """The dynamic-security plugin's data: one client and one role per identity.

    Default access denies publishing, subscribing and delivery; each role allows only what
    ``rules`` (broker_config/acl.json) lists for it, with ``{id}`` replaced by the identity.
    """
    clients, roles = [], []
    for role, ident in identities:
        rule = rules.get(role, {})
        acls = []
        for kind, acltype in (("publish", "publishClientSend"), ("subscribe", "subscribePattern"),
                              ("receive", "publishClientReceive")):
            acls += [{"acltype": acltype, "topic": topic.replace("{id}", ident), "priority": 0,
                      "allow": True} for topic in rule.get(kind, [])]
        roles.append({"rolename": f"{role}-{ident}", "acls": acls})
        clients.append({"username": ident, "textname": f"{role} {ident}",
                        "roles": [{"rolename": f"{role}-{ident}"}]})
    roles.append({"rolename": ADMIN, "acls": [
        {"acltype": acltype, "topic": f"{CONTROL}/#" if acltype == "subscribePattern" else topic,
         "priority": 0, "allow": True}
        for acltype, topic in (("publishClientSend", CONTROL), ("subscribePattern", ""),
                               ("publishClientReceive", f"{CONTROL}/response"))]})
    clients.append({"username": ADMIN, "textname": "vlabus broker sync",
                    "roles": [{"rolename": ADMIN}]})
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": clients, "groups": [], "roles": roles,
    }


def hash_password(password: str, iterations: int = 101) -> str:
    """Mosquitto 2's ``$7$`` password-file hash (PBKDF2-SHA512, 12-byte salt)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def client_options(config: str | Path, identity: str, client_id: str | None = None,
                   **options: Any) -> TransportOptions:
    """Transport options that authenticate ``identity`` to the broker rendered in ``config``.

    Fleet (TLS): the client certificate, whose CN the broker also uses as the client id.
    Dev: the identity as username with its password. Besides a rendered configuration,
    ``config`` may be a flat folder (``ca.crt``, ``ID.crt``, ``ID.key`` or ``ID.password``), as
    :func:`export_credentials` writes it with ``flat`` and a Kubernetes Secret mounts it.
    """
    root = Path(config)
    cert = root / "tls" / "clients" / f"{identity}.crt"
    if cert.exists():
        tls = TlsFiles(root / "tls" / "ca.crt", cert, cert.with_suffix(".key"))
        return TransportOptions(client_id=client_id or identity, tls=tls, **options)
    if (root / f"{identity}.crt").exists():  # flat: a Kubernetes Secret/ConfigMap volume
        tls = TlsFiles(root / "ca.crt", root / f"{identity}.crt", root / f"{identity}.key")
        return TransportOptions(client_id=client_id or identity, tls=tls, **options)
    secret = root / "clients" / f"{identity}.password"
    if not secret.exists():
        secret = root / f"{identity}.password"
    if not secret.exists():
        raise BrokerError(f"no credentials for {identity!r} under {root}")
    return TransportOptions(client_id=client_id or identity, username=identity,
                            password=secret.read_text().strip(), **options)


def export_credentials(config: str | Path, identities: Sequence[str], out: str | Path, *,
                       flat: bool = False) -> Path:
    """Copy the broker credentials of ``identities`` (dev passwords, or the fleet CA and client
    certificates) from the rendered ``config`` into ``out``, which :func:`client_options` then
    reads like the whole configuration: a service mounts only its own identities'. ``flat``
    puts every file at the top of ``out`` (a Kubernetes Secret's layout)."""
    root, target = Path(config), Path(out)
    files = []
    if is_tls(root):
        files.append(Path("tls") / "ca.crt")
        for ident in identities:
            files += [Path("tls") / "clients" / f"{ident}.crt",
                      Path("tls") / "clients" / f"{ident}.key"]
    else:
        files += [Path("clients") / f"{ident}.password" for ident in identities]
    for relative in files:
        source = root / relative
        if not source.is_file():
            raise BrokerError(f"no {relative} under {root}: render the broker configuration "
                              "for this keyring first (`vlabus broker render`)")
        destination = target / (relative.name if flat else relative)
        destination.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        if relative.suffix in (".key", ".password"):
            _write_private(destination, data.decode())
        else:
            destination.write_bytes(data)
    return target


def is_tls(config: str | Path) -> bool:
    """Whether the configuration in ``config`` is a TLS (fleet) one."""
    return (Path(config) / "tls" / "ca.crt").exists()


def listener_of(conf_text: str) -> tuple[int, str]:
    """The (port, host to reach it on) of the configuration's listener."""
    found = re.search(r"^listener\s+(\d+)(?:\s+(\S+))?", conf_text, flags=re.M)
    if found is None:
        raise BrokerError("no listener line in the configuration")
    host = found.group(2) or "127.0.0.1"
    return int(found.group(1)), "127.0.0.1" if host in ("0.0.0.0", "::") else host


def with_port(conf_text: str, port: int) -> str:
    """``conf_text`` with the port of its listener replaced."""
    text, count = re.subn(r"^listener\s+\d+", f"listener {port}", conf_text, flags=re.M)
    if count != 1:
        raise BrokerError(f"expected one listener line in the configuration, found {count}")
    return text


def _client_password(root: Path, ident: str) -> str:
    path = root / "clients" / f"{ident}.password"
    if path.exists():  # keep passwords stable across re-renders
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, password + "\n")
    return password


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


