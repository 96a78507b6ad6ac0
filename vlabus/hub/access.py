"""Per-identity topic access for the ZeroMQ hub: the fleet broker's rules, default deny.

The hub learns who a client is from CurveZMQ: its ZAP handler names each admitted key after its
file in ``authorized/`` (``NAME.key`` → ``NAME``), and libzmq attaches that name as the
``User-Id`` property of every frame the client sends. So the identity is read from each message
itself, never from a routing id or a name the client chose. The role of ``NAME`` comes from the
vlabus keyring (``robot``, ``worker``, ``release``, ``replay``), and each role's rules from
``broker_config/acl.json``, the file the Mosquitto fleet configuration is rendered from, so both
buses enforce the same rules (a robot may publish only under its own id and read only its
own actions, the model topics and the workers' status, where direct endpoints are advertised).

* **publish**: the topic must match one of the identity's ``publish`` patterns.
* **subscribe**: the filter (``$share/GROUP/PATTERN`` for a group) must be covered by one of
  its ``subscribe`` patterns, with the client's ``+`` and ``#`` taken literally, as Mosquitto's
  dynamic-security plugin does: a robot asking for ``vla/v1/+/action`` is refused even though
  its own action topic matches it.

An identity with no keyring entry, or a role with no rules, may do nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from schemas.topics import matches
from security.keys import Keyring

#: Decisions kept per identity before the cache is cleared (topics are few per identity, but a
#: client may invent any number of them).
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Rules:
    """One identity's allowed publish topics and subscription filters (MQTT patterns)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


class Access:
    """``may_publish`` and ``may_subscribe`` per identity; decisions are cached."""

    def __init__(self, rules: dict[str, Rules]) -> None:
        self.rules = rules
        self._published: dict[tuple[str, bytes], bool] = {}

    @classmethod
    def from_keyring(cls, keys: str | Path, acl: str | Path) -> Access:
        """Rules for every identity in keyring ``keys``, from ``acl`` (acl.json's format:
        ``{role: {"publish": [...], "subscribe": [...]}}``, ``{id}`` replaced by the identity)."""
        table = json.loads(Path(acl).read_text())
        ring = Keyring.load(keys)
        return cls.for_identities(((key.role, key.identity) for key in ring), table)

    @classmethod
    def for_identities(cls, identities: Iterable[tuple[str, str]],
                       table: dict[str, dict[str, list[str]]]) -> Access:
        rules = {}
        for role, identity in identities:
            rule = table.get(role, {})
            rules[identity] = Rules(
                publish=tuple(p.replace("{id}", identity) for p in rule.get("publish", [])),
                subscribe=tuple(p.replace("{id}", identity) for p in rule.get("subscribe", [])))
        return cls(rules)

    def may_publish(self, identity: str, topic: bytes) -> bool:
        """Whether ``identity`` may publish to ``topic``: one dict lookup once decided."""
        key = (identity, topic)
        decided = self._published.get(key)
        if decided is None:
            if len(self._published) >= _CACHE_LIMIT * max(1, len(self.rules)):
                self._published.clear()
            rules = self.rules.get(identity)
            text = topic.decode(errors="replace")
            decided = self._published[key] = rules is not None and any(
                matches(pattern, text) for pattern in rules.publish)
        return decided

    def may_subscribe(self, identity: str, pattern: str, group: str) -> bool:
        """Whether ``identity`` may subscribe to ``pattern`` (in shared ``group`` when given)."""
        rules = self.rules.get(identity)
        if rules is None:
            return False
        wanted = f"$share/{group}/{pattern}" if group else pattern
        return any(matches(allowed, wanted) for allowed in rules.subscribe)


def curve_names(authorized: str | Path) -> dict[bytes, str]:
    """Public key (32 raw bytes) → client name, from the ``authorized/NAME.key`` files."""
    names = {}
    for path in sorted(Path(authorized).glob("*.key")):
        public, _ = zmq.auth.load_certificate(path)
        names[z85.decode(public)] = path.stem
    return names
