"""``vlabus broker sync``: a running fleet broker's access control brought in line with the
keyring and rules through the dynamic-security plugin's control topic, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Any

from security.keys import Keyring
from vlabus.broker.render import (
    ADMIN,
    CONTROL,
    BrokerError,
    dynsec_config,
)
from vlabus.bus.transport import Transport


async def sync_access(transport: Transport, keys: str | Path, acl: str | Path, *,
                      timeout_s: float = 10.0) -> dict[str, list[str]]:
    """Bring a running fleet broker's access control in line with keyring ``keys`` and rules
    ``acl``, through the dynamic-security plugin's control topic, without a restart.

    ``transport`` is connected as :data:`ADMIN`. An identity new to the keyring gets its role
    and client (its certificate comes from ``render``, which reuses the CA); one gone from the
    keyring loses both, and the plugin disconnects it; one whose rules changed has its role's
    ACLs edited in place, or, when its role changed, is made again. Returns the identities
    ``added``, ``removed`` and ``changed`` (site bridges, ``site-NAME``, are left as
    ``render --site`` made them); raises :class:`BrokerError` when the broker refuses
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
    have = {name: r for name, r in have.items() if not _site_bridge(name, r)}
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


def _site_bridge(name: str, roles: list[str]) -> bool:
    """A site's bridge client (``render --site NAME`` adds ``site-NAME`` with its own role of
    that name): not a keyring identity, so a sync neither removes nor edits it."""
    return name.startswith("site-") and roles == [name]


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
            message = await asyncio.wait_for(transport.receive(), remaining)
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
