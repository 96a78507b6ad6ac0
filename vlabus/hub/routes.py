"""The hub's routing table, without sockets (tested with plain calls); the frame grammar is
:mod:`vlabus.hub.protocol`.

Topic matching is MQTT's (``+``, ``#``), done here exactly: ZeroMQ SUB prefix filtering would
let ``vla/v1/robot-1`` match ``vla/v1/robot-10/...``. Shared groups deliver each message to one
member, round-robin, like ``$share/{group}/{pattern}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.topics import matches


@dataclass
class Peer:
    """What the hub knows about one connected client (keyed by ZeroMQ routing id)."""

    client_id: str = ""
    heartbeat_ns: int = 0
    last_seen_ns: int = 0
    fd: int = -1
    will: tuple[bytes, bytes, bool] | None = None
    user: str = ""  # the CURVE identity its subscriptions were granted to ("" without CURVE)


@dataclass
class _Group:
    members: list[bytes] = field(default_factory=list)
    turn: int = 0


class Routes:
    """Subscriptions, shared groups, retained messages and liveness; all keyed by routing id."""

    def __init__(self, max_retained: int = 10_000) -> None:
        self.peers: dict[bytes, Peer] = {}
        self.plain: dict[str, set[bytes]] = {}
        self.groups: dict[tuple[str, str], _Group] = {}
        self.retained: dict[str, bytes] = {}
        self.max_retained = max_retained
        # topic -> (plain recipients, groups); cleared on any subscription change.
        self._cache: dict[bytes, tuple[tuple[bytes, ...], tuple[_Group, ...]]] = {}

    def seen(self, rid: bytes, now_ns: int) -> Peer:
        peer = self.peers.get(rid)
        if peer is None:
            peer = self.peers[rid] = Peer()
        peer.last_seen_ns = now_ns
        return peer

    def take_over(self, client_id: str, new: bytes) -> bytes | None:
        """Forget another connection that said HELLO as ``client_id`` (``new`` takes the id
        over, as MQTT's session takeover); returns its routing id, or None."""
        for rid, peer in self.peers.items():
            if rid != new and peer.client_id == client_id:
                self.forget(rid)
                return rid
        return None

    def ping(self, rid: bytes, now_ns: int) -> bool:
        """A client's PING; False when the client is not known (forgotten: silent too long)."""
        peer = self.peers.get(rid)
        if peer is not None:
            peer.last_seen_ns = now_ns
        return peer is not None

    def subscribe(self, rid: bytes, pattern: str, group: str) -> list[tuple[str, bytes]]:
        """Add a subscription (idempotent); returns the retained messages it should get now."""
        self._cache.clear()
        if group:
            members = self.groups.setdefault((group, pattern), _Group()).members
            if rid not in members:
                members.append(rid)
            return []
        self.plain.setdefault(pattern, set()).add(rid)
        return [(t, p) for t, p in self.retained.items() if matches(pattern, t)]

    def subscriptions(self) -> list[tuple[bytes, str, str]]:
        """Every (routing id, pattern, group) held now; group "" for a plain subscription."""
        held = [(rid, pattern, "") for pattern, rids in self.plain.items() for rid in rids]
        held += [(rid, pattern, group) for (group, pattern), g in self.groups.items()
                 for rid in g.members]
        return held

    def unsubscribe(self, rid: bytes, pattern: str, group: str) -> None:
        self._cache.clear()
        if group:
            g = self.groups.get((group, pattern))
            if g is not None and rid in g.members:
                g.members.remove(rid)
        else:
            self.plain.get(pattern, set()).discard(rid)

    def forget(self, rid: bytes) -> Peer | None:
        """Drop a client and all its subscriptions; returns its record (for the will)."""
        self._cache.clear()
        for rids in self.plain.values():
            rids.discard(rid)
        for g in self.groups.values():
            if rid in g.members:
                g.members.remove(rid)
        return self.peers.pop(rid, None)

    def retain(self, topic: str, payload: bytes) -> None:
        """Store (or, for an empty payload, clear) the retained message of ``topic``."""
        if not payload:
            self.retained.pop(topic, None)
        elif topic in self.retained or len(self.retained) < self.max_retained:
            self.retained[topic] = payload

    def recipients(self, raw_topic: bytes) -> Sequence[bytes]:
        """Routing ids to deliver ``raw_topic`` (UTF-8) to: each plain subscriber once, one member
        per group. Raises ``UnicodeDecodeError`` for a topic that is not UTF-8."""
        entry = self._cache.get(raw_topic)
        if entry is None:
            if len(self._cache) >= 4096:
                self._cache.clear()
            topic = raw_topic.decode()
            plain: set[bytes] = set()
            for pattern, rids in self.plain.items():
                if rids and matches(pattern, topic):
                    plain |= rids
            groups = tuple(g for (_, p), g in self.groups.items() if matches(p, topic))
            entry = self._cache[raw_topic] = (tuple(sorted(plain)), groups)
        if not entry[1]:
            return entry[0]
        out = list(entry[0])
        for g in entry[1]:
            if g.members:
                out.append(g.members[g.turn % len(g.members)])
                g.turn += 1
        return out

    def expired(self, now_ns: int) -> list[bytes]:
        """Clients silent for more than three heartbeat intervals."""
        return [
            rid for rid, p in self.peers.items()
            if p.heartbeat_ns and now_ns - p.last_seen_ns > 3 * p.heartbeat_ns
        ]
