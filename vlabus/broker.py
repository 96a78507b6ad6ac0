"""Mosquitto configuration for a keyring, and a local Mosquitto to run it.

``render(keys, out, tls=...)`` fills the templates in ``broker_config/`` for the identities in a
keyring and writes, under ``out``::

    mosquitto.conf              the broker configuration (absolute paths)
    passwd, clients/ID.password dev: hashed passwords for the broker, plain ones for clients (0600)
    dynamic-security.json       fleet: access control, subscribe denied by default
    tls/ca.crt, tls/broker.*    fleet: CA and broker certificate (see :mod:`security.tls`)
    tls/clients/ID.crt, ID.key  fleet: one client certificate per identity, CN = identity
    data/                       persistence

``LocalMosquitto(out).start()`` runs that configuration on a free loopback port and returns its
URL; ``stop()``, ``restart()`` (same port) and ``kill()`` serve fault tests and demos.
``client_options(out, identity)`` gives a client the credentials to connect.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import pwd
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

from schemas.errors import BusError
from security.keys import Keyring
from security.tls import write_tls
from vlabus.transport import TlsFiles, Transport, TransportOptions

TEMPLATES = Path(__file__).resolve().parent.parent / "broker_config"
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
#: The fleet broker's administrator: the one identity that may use the dynamic-security
#: plugin's control topics (``vlabus broker sync``). Its certificate stays with the broker's
#: configuration, never on a robot.
ADMIN = "broker-admin"
CONTROL = "$CONTROL/dynamic-security/v1"
#: The largest MQTT packet the broker takes: the transport's 16 MiB payload cap plus headers.
MAX_PACKET_SIZE = (16 << 20) + (64 << 10)


class BrokerError(BusError):
    """The broker could not be configured or started."""


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
    templates: Path = TEMPLATES,
    dynsec_plugin: str = DYNSEC_PLUGIN,
) -> Path:
    """Write a Mosquitto configuration for the identities in keyring ``keys`` into ``out``.

    Without ``tls`` (dev): password authentication. With ``tls`` (fleet): client certificates,
    identity = certificate CN, and per-role access control. Returns the path of mosquitto.conf.
    """
    ring = Keyring.load(keys)
    if len(ring) == 0:
        raise BrokerError(f"keyring {keys} holds no identities (run `vlabus keys add`)")
    root = Path(out).resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    identities = [(key.role, key.identity) for key in ring]
    if tls:
        if any(ident == ADMIN for _, ident in identities):
            raise BrokerError(f"{ADMIN!r} is the broker's own administrator; rename that key")
        write_tls(root / "tls", [ident for _, ident in identities] + [ADMIN], hostnames, bind)
        _write_private(root / "dynamic-security.json", json.dumps(
            dynsec_config(identities, json.loads((templates / "acl.json").read_text())), indent=1))
    else:
        lines = []
        for _, ident in identities:
            password = _client_password(root, ident)
            lines.append(f"{ident}:{hash_password(password)}\n")
        _write_private(root / "passwd", "".join(lines))
    text = Template((templates / ("fleet.conf" if tls else "dev.conf")).read_text()).substitute(
        dir=str(root), bind=bind, port=port or (8883 if tls else 1883),
        dynsec_plugin=dynsec_plugin,
        max_packet_size=limits.max_packet_size,
        max_queued_messages=limits.max_queued_messages,
        max_inflight_messages=limits.max_inflight_messages,
        persistence="true" if limits.persistence else "false",
        autosave_interval=limits.autosave_interval,
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
    Dev: the identity as username with its password.
    """
    root = Path(config)
    cert = root / "tls" / "clients" / f"{identity}.crt"
    if cert.exists():
        tls = TlsFiles(root / "tls" / "ca.crt", cert, cert.with_suffix(".key"))
        return TransportOptions(client_id=client_id or identity, tls=tls, **options)
    secret = root / "clients" / f"{identity}.password"
    if not secret.exists():
        raise BrokerError(f"no credentials for {identity!r} under {root}")
    return TransportOptions(client_id=client_id or identity, username=identity,
                            password=secret.read_text().strip(), **options)


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


class LocalMosquitto:
    """A Mosquitto process running a rendered configuration on a loopback port.

    ``port=0`` picks a free port at the first start; ``restart()`` keeps it, so clients can
    reconnect. Use as a context manager or call ``stop()``. Logs go to ``DIR/mosquitto.log``.
    """

    def __init__(self, config_dir: str | Path, port: int = 0, *, executable: str = "mosquitto",
                 start_timeout_s: float = 10.0) -> None:
        self.config_dir = Path(config_dir).resolve()
        self.port = port
        self.host = "127.0.0.1"
        self.executable = executable
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "mqtts" if is_tls(self.config_dir) else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def options(self, identity: str, client_id: str | None = None,
                **options: Any) -> TransportOptions:
        """Transport options for ``identity`` on this broker (see :func:`client_options`)."""
        return client_options(self.config_dir, identity, client_id, **options)

    def start(self) -> str:
        """Start the broker and wait until it accepts connections; returns its URL."""
        if self.running:
            return self.url
        choose = self.port == 0
        for _ in range(5 if choose else 1):
            if choose:
                self.port = free_port()
            try:
                self._launch()
                return self.url
            except BrokerError:
                if not choose or "in use" not in self.log_tail():
                    raise
        raise BrokerError(f"no free port for mosquitto after 5 tries:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: the broker saves its persistence file first)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> str:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its configuration and password file again (a dev broker
        then admits identities added by a new ``render``). The dynamic-security plugin does
        not re-read its file: a fleet broker takes changes through :func:`sync_access`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def wait(self) -> int:
        """Block until the broker exits; its exit status."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log and its stderr."""
        text = ""
        for name in ("mosquitto.stderr", "mosquitto.log"):
            path = self.config_dir / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self) -> None:
        conf = self.config_dir / "mosquitto.conf"
        if not conf.exists():
            raise BrokerError(f"{conf} not found (run `vlabus broker render`)")
        text = with_port(conf.read_text(), self.port)
        _, self.host = listener_of(text)
        if os.geteuid() == 0:
            # Mosquitto drops root to user "mosquitto", which cannot read our 0600 key files.
            text += f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
        run_conf = self.config_dir / "mosquitto.run.conf"
        run_conf.write_text(text)
        errors = self.config_dir / "mosquitto.stderr"
        try:
            with errors.open("wb") as err_file:
                self._proc = subprocess.Popen(
                    [self.executable, "-c", str(run_conf)],
                    stdin=subprocess.DEVNULL, stdout=err_file, stderr=err_file)
        except OSError as exc:
            raise BrokerError(f"cannot run {self.executable!r}: {exc}") from exc
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise BrokerError(f"mosquitto exited at start: {errors.read_text(errors='replace')}"
                                  f"\n{self.log_tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)  # polling a port that is not open yet; not synchronisation
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} in {self.start_timeout_s} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def sync_access(transport: Transport, keys: str | Path, acl: str | Path, *,
                      timeout_s: float = 10.0) -> dict[str, list[str]]:
    """Bring a running fleet broker's access control in line with keyring ``keys`` and rules
    ``acl``, through the dynamic-security plugin's control topic, without a restart.

    ``transport`` is connected as :data:`ADMIN`. An identity new to the keyring gets its role
    and client (its certificate comes from ``render``, which reuses the CA); one gone from the
    keyring loses both, and the plugin disconnects it; one whose rules changed has its role's
    ACLs edited in place, or, when its role changed, is made again. Returns the identities
    ``added``, ``removed`` and ``changed``; raises :class:`BrokerError` when the broker refuses
    a command. Run one sync at a time: the plugin's responses share one topic.
    """
    ring = Keyring.load(keys)
    wanted = dynsec_config([(key.role, key.identity) for key in ring],
                           json.loads(Path(acl).read_text()))
    clients = {c["username"]: c for c in wanted["clients"] if c["username"] != ADMIN}
    roles = {r["rolename"]: r for r in wanted["roles"]}
    await transport.subscribe(f"{CONTROL}/response")
    listed = await _control(transport, [{"command": "listClients", "verbose": True}], timeout_s)
    have = {c["username"]: [r["rolename"] for r in c.get("roles", [])]
            for c in listed[0].get("data", {}).get("clients", []) if c["username"] != ADMIN}
    added = sorted(set(clients) - set(have))
    removed = sorted(set(have) - set(clients))
    changed: list[str] = []
    commands: list[dict[str, Any]] = []
    for name in removed:  # its own roles go with it ("ROLE-ID", as render names them)
        commands.append({"command": "deleteClient", "username": name})
        commands += [{"command": "deleteRole", "rolename": role} for role in have[name]
                     if role.endswith(f"-{name}")]
    for name in sorted(set(have) & set(clients)):
        role = clients[name]["roles"][0]["rolename"]
        if have[name] != [role]:  # its keyring role changed: make it again
            changed.append(name)
            commands.append({"command": "deleteClient", "username": name})
            commands += [{"command": "deleteRole", "rolename": r} for r in have[name]
                         if r.endswith(f"-{name}")]
            commands += _create(clients[name], roles[role])
            continue
        found = await _control(transport, [{"command": "getRole", "rolename": role}], timeout_s)
        current = {(a["acltype"], a["topic"], a.get("allow", True))
                   for a in found[0].get("data", {}).get("role", {}).get("acls", [])}
        target = {(a["acltype"], a["topic"], a["allow"]) for a in roles[role]["acls"]}
        if current != target:
            changed.append(name)
            commands += [{"command": "removeRoleACL", "rolename": role, "acltype": t,
                          "topic": topic} for t, topic, _ in sorted(current - target)]
            commands += [{"command": "addRoleACL", "rolename": role, "acltype": t,
                          "topic": topic, "priority": 0, "allow": allow}
                         for t, topic, allow in sorted(target - current)]
    for name in added:
        commands += _create(clients[name], roles[clients[name]["roles"][0]["rolename"]])
    if commands:
        answers = await _control(transport, commands, timeout_s)
        errors = [f"{c['command']} {c.get('username') or c.get('rolename')}: {a['error']}"
                  for c, a in zip(commands, answers, strict=True)
                  if a.get("error") and not (c["command"] == "deleteRole"
                                             and a["error"] == "Role not found")]
        if errors:
            raise BrokerError("the broker refused: " + "; ".join(errors))
    return {"added": added, "removed": removed, "changed": changed}


def _create(client: dict[str, Any], role: dict[str, Any]) -> list[dict[str, Any]]:
    """Commands that make ``client`` with its ``role`` (a stale role of that name goes first)."""
    return [{"command": "deleteRole", "rolename": role["rolename"]},
            {"command": "createRole", **role},
            {"command": "createClient", **client}]


async def _control(transport: Transport, commands: list[dict[str, Any]],
                   timeout_s: float) -> list[dict[str, Any]]:
    """Send ``commands`` to the plugin in one message; its answers, in order. Other messages on
    the response topic (another admin's) are skipped by their correlation data."""
    tag = secrets.token_hex(6)
    sent = [dict(c, correlationData=f"{tag}-{i}") for i, c in enumerate(commands)]
    await transport.publish(CONTROL, json.dumps({"commands": sent}).encode(), qos=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise BrokerError(f"no answer on {CONTROL}/response in {timeout_s} s")
        try:
            message = await asyncio.wait_for(transport.recv(), remaining)
        except TimeoutError:
            continue
        try:
            answers = json.loads(bytes(message.payload))["responses"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(answers, list) and len(answers) == len(sent) and all(
                isinstance(a, dict) and a.get("correlationData") == c["correlationData"]
                for a, c in zip(answers, sent, strict=True)):
            return answers
