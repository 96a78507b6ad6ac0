"""A site's Mosquitto, bridged to the cloud's broker: the usual MQTT topology for a fleet.

``render_site(keys, out, site=NAME, uplink="mqtts://HOST:PORT", cloud=CLOUD_DIR)`` writes,
under ``out``, a fleet configuration (TLS, dynamic-security access control) for this site's
robots only, plus one bridge to the cloud broker over MQTT 5 and mutual TLS with a site
identity ``site-NAME`` whose certificate the cloud's CA signs. The bridge carries::

    up   (site → cloud)   vla/v1/{robot}/frame  (QoS 0)   vla/v1/{robot}/task, …/status (QoS 1)
    down (cloud → site)   vla/v1/{robot}/action (QoS 1)   vla/v1/models/#, vla/v1/workers/+/status

for the site's robots and nothing else; the cloud's access rules grant ``site-NAME`` exactly
those topics, so a site cannot publish for, or read, another site's robots, and the site's own
rules keep each robot to its own topics. Envelopes travel as the exact signed bytes, so the
header's deadline and priority arrive unchanged; MQTT 5 bridges forward the remaining Message
Expiry Interval, so a frame that outlives its deadline is dropped on either side.

The cloud side is written into ``CLOUD_DIR`` (rendered by ``vlabus broker render --tls``): the
site's client and role in its ``dynamic-security.json``. A running cloud broker takes it at its
next start; a later ``render --tls`` of the cloud rewrites that file, so render sites after it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from schemas.topics import action_topic, frame_topic, robot_status_topic, task_topic
from security.keys import Keyring
from security.tls import issue, write_pair
from vlabus.broker.render import DYNSEC_PLUGIN, BrokerError, render

_SITE = re.compile(r"^[a-z0-9][a-z0-9-]{0,57}$")
MODELS = "vla/v1/models/#"
WORKER_STATUS = "vla/v1/workers/+/status"

BRIDGE = Template("""
# --- bridge to the cloud broker (vlabus broker render --site ${site}) ---
# MQTT 5 + mutual TLS as ${identity}; only this site's robots' topics cross it (see the
# topic lines), and the cloud's access rules grant ${identity} exactly those.
connection ${identity}
address ${host}:${port}
bridge_protocol_version mqttv50
remote_clientid ${identity}
bridge_cafile ${dir}/bridge/ca.crt
bridge_certfile ${dir}/bridge/${identity}.crt
bridge_keyfile ${dir}/bridge/${identity}.key
bridge_tls_version tlsv1.2
bridge_insecure false
cleansession true
try_private false
notifications true
notifications_local_only true
keepalive_interval ${keepalive}
restart_timeout 1 ${restart_max}
${topics}
""")


def uplink_address(url: str) -> tuple[str, int]:
    """(host, port) of an ``mqtts://HOST:PORT`` uplink; BrokerError saying why otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "mqtts" or not parts.hostname:
        raise BrokerError(f"the uplink is mqtts://HOST:PORT (the bridge uses mutual TLS), "
                          f"not {url!r}")
    return parts.hostname, parts.port or 8883


def site_identity(site: str) -> str:
    """The client identity (certificate CN) a site's bridge uses at the cloud broker."""
    if not _SITE.match(site):
        raise BrokerError(f"invalid site name {site!r}: lowercase letters, digits and dashes")
    return f"site-{site}"


def bridge_topics(robots: Sequence[str]) -> tuple[list[str], list[str]]:
    """(topics up, topics down) the bridge carries for ``robots``."""
    up = [t for r in robots for t in (frame_topic(r), task_topic(r), robot_status_topic(r))]
    down = [action_topic(r) for r in robots] + [MODELS, WORKER_STATUS]
    return up, down


def site_role(identity: str, robots: Sequence[str]) -> dict[str, Any]:
    """The cloud's dynamic-security role for a site: publish up, subscribe/receive down."""
    up, down = bridge_topics(robots)
    acls = [{"acltype": "publishClientSend", "topic": t, "priority": 0, "allow": True}
            for t in up]
    for acltype in ("subscribePattern", "publishClientReceive"):
        acls += [{"acltype": acltype, "topic": t, "priority": 0, "allow": True} for t in down]
    return {"rolename": identity, "acls": acls}


def site_robots(keys: str | Path, robots: Sequence[str] | None = None) -> list[str]:
    """The site's robots: ``robots`` (each a robot identity in keyring ``keys``), or every
    robot identity there."""
    known = sorted(k.identity for k in Keyring.load(keys) if k.role == "robot")
    chosen = sorted(set(robots)) if robots else known
    unknown = sorted(set(chosen) - set(known))
    if unknown or not chosen:
        raise BrokerError(f"site robots must be robot identities in {keys}: "
                          f"{unknown or 'none given'}")
    return chosen


def render_site(keys: str | Path, out: str | Path, *, site: str, uplink: str,
                cloud: str | Path, robots: Sequence[str] | None = None,
                bind: str = "127.0.0.1", port: int | None = None,
                hostnames: tuple[str, ...] = ("localhost",), keepalive_s: int = 10,
                restart_max_s: int = 10, dynsec_plugin: str = DYNSEC_PLUGIN,
                ca_dir: str | Path | None = None) -> Path:
    """Write the site broker's configuration (see the module docstring); its mosquitto.conf.

    ``robots`` default to every robot identity in the keyring; each must be one. The fleet
    CA's private key is read from ``ca_dir`` (default ``keys/ca``, where ``render --tls``
    keeps it), or from a cloud directory rendered before the key moved out of it.
    """
    identity = site_identity(site)
    host, remote_port = uplink_address(uplink)
    chosen = site_robots(keys, robots)
    cloud_dir = Path(cloud).resolve()
    ca_home = Path(keys) / "ca" if ca_dir is None else Path(ca_dir)
    ca_key_path, ca_path = ca_home / "ca.key", cloud_dir / "tls" / "ca.crt"
    if not ca_key_path.exists():
        ca_key_path = cloud_dir / "tls" / "ca.key"
    dynsec = cloud_dir / "dynamic-security.json"
    if not (ca_path.exists() and dynsec.exists()):
        raise BrokerError(f"{cloud_dir} is not a fleet broker configuration "
                          "(run `vlabus broker render --tls` for the cloud first)")
    if not ca_key_path.exists():
        raise BrokerError(f"the fleet CA's private key is not in {ca_home} (pass --ca-dir "
                          "where `vlabus broker render --tls` kept it)")
    conf = render(keys, out, tls=True, bind=bind, port=port, hostnames=hostnames,
                  only=set(chosen), dynsec_plugin=dynsec_plugin, ca_dir=ca_dir)
    root = conf.parent
    _issue_bridge_cert(root / "bridge", identity, ca_key_path, ca_path)
    up, down = bridge_topics(chosen)
    lines = [f"topic {t} out {0 if t.endswith('/frame') else 1}" for t in up]
    lines += [f"topic {t} in 1" for t in down]
    with conf.open("a") as handle:
        handle.write(BRIDGE.substitute(
            site=site, identity=identity, host=host, port=remote_port, dir=str(root),
            keepalive=keepalive_s, restart_max=restart_max_s, topics="\n".join(lines)))
    _grant_site(dynsec, identity, chosen)
    return conf


def _issue_bridge_cert(folder: Path, identity: str, ca_key_path: Path, ca_path: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise BrokerError(f"{ca_key_path} is not an EC private key")
    ca_pem = ca_path.read_bytes()
    key, cert = issue(ca_key, x509.load_pem_x509_certificate(ca_pem), identity)
    write_pair(folder / identity, key, cert)
    (folder / "ca.crt").write_bytes(ca_pem)


def _grant_site(dynsec: Path, identity: str, robots: Sequence[str]) -> None:
    """Add (or replace) the site's client and role in the cloud's dynamic-security data."""
    data = json.loads(dynsec.read_text())
    data["roles"] = [r for r in data["roles"] if r["rolename"] != identity]
    data["roles"].append(site_role(identity, robots))
    data["clients"] = [c for c in data["clients"] if c["username"] != identity]
    data["clients"].append({"username": identity, "textname": f"site bridge {identity}",
                            "roles": [{"rolename": identity}]})
    tmp = dynsec.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.chmod(0o600)
    tmp.replace(dynsec)
