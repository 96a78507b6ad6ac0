"""Session integrity (envelope version 2): key agreement, MAC, rotation and every refusal."""

from __future__ import annotations

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.errors import Reason, WireError
from security.keys import Keyring, Signer, key_id_of
from security.replay import ReplayGuard
from security.seal import PoolSecret
from security.session import (
    Rotation,
    Session,
    SessionSender,
    SessionTable,
    accept_offer,
    offer_session,
)
from tests.support.clock import FakeClock
from tests.support.logs import make_action
from tests.support.wire import NOW, frame
from vlabus.envelope import SESSION_VERSION, VERSION
from vlabus.session_wire import SessionEncoder, SessionVerifier
from vlabus.wire import Decoder, Encoder


class Pair:
    """A robot and a worker of pool ``gpu`` that agreed a session, with an injected clock."""

    def __init__(self, rotation: Rotation | None = None) -> None:
        self.clock = FakeClock(NOW)
        self.rotation = rotation or Rotation(max_age_s=60, max_messages=100)
        self.robot = Signer.generate("robot", "robot-a")
        self.worker = Signer.generate("worker", "worker-1")
        self.secret = PoolSecret.generate("gpu")
        self.ring = Keyring([self.robot.public, self.worker.public])
        self.sender = SessionSender(self.rotation, self.clock)
        self.robot_table = SessionTable(self.rotation, clock=self.clock)
        self.pool_table = SessionTable(self.rotation, clock=self.clock)
        self.encoder = SessionEncoder(self.robot, lambda _m: self.sender.current(), "up",
                                      clock=self.clock, start_seq=1)
        self.decoder = Decoder(self.ring, ReplayGuard(clock=self.clock),
                               sessions=SessionVerifier(self.pool_table, "up"))
        self.handshake()

    def handshake(self) -> str:
        offer, session = offer_session("robot-a", self.robot.key_id, self.secret.public,
                                       self.rotation, clock=self.clock)
        self.sender.session = session
        self.robot_table.add(session)
        self.pool_table.add(accept_offer(offer, self.robot.key_id, self.secret, self.rotation))
        return session.sid


def refused(decoder: Decoder, data: bytes) -> WireError:
    with pytest.raises(WireError) as info:
        decoder.decode(data)
    return info.value


def test_both_sides_derive_the_same_keys_and_a_frame_verifies() -> None:
    pair = Pair()
    data = pair.encoder.encode(frame(1))
    assert data[2] == SESSION_VERSION
    got = pair.decoder.decode(data)
    assert got.message == frame(1)
    assert got.role == "robot"
    assert pair.encoder.sent == {"session": 1, "signed": 0}


def test_worker_replies_under_the_down_key_and_the_robot_verifies() -> None:
    pair = Pair()
    reply = SessionEncoder(pair.worker, lambda m: pair.pool_table.for_robot("robot-a"), "down",
                           clock=pair.clock)
    action = make_action("robot-a", 1, "worker-1")
    robot_side = Decoder(pair.ring, ReplayGuard(clock=pair.clock),
                         sessions=SessionVerifier(pair.robot_table, "down"))
    assert robot_side.decode(reply.encode(action)).message == action
    # the up key does not verify a down message: the directions cannot be swapped
    wrong_way = Decoder(pair.ring, sessions=SessionVerifier(pair.pool_table, "up"))
    assert refused(wrong_way, reply.encode(action)).reason is Reason.BAD_MAC


def test_a_flipped_byte_is_refused_as_bad_mac() -> None:
    pair = Pair()
    data = bytearray(pair.encoder.encode(frame(1)))
    data[len(data) // 2] ^= 1
    assert refused(pair.decoder, bytes(data)).reason is Reason.BAD_MAC


def test_a_replayed_message_is_refused_with_its_reason() -> None:
    pair = Pair()
    data = pair.encoder.encode(frame(1))
    pair.decoder.decode(data)
    assert refused(pair.decoder, data).reason is Reason.DUPLICATE
    pair.clock.advance(30_000)  # past the skew window: a recorded message replayed later
    assert refused(pair.decoder, data).reason is Reason.STALE


def test_a_mac_under_the_wrong_session_is_refused() -> None:
    pair = Pair()
    first = pair.sender.session
    assert first is not None
    data = pair.encoder.encode(frame(1))
    other = pair.handshake()  # a second live session the worker holds too
    forged = data.replace(first.sid.encode(), other.encode())
    assert refused(pair.decoder, forged).reason is Reason.BAD_MAC


def test_unknown_and_expired_sessions_are_refused_with_their_reason() -> None:
    pair = Pair(Rotation(max_age_s=1, max_messages=100, overlap_s=0))
    stranger = Decoder(pair.ring, sessions=SessionVerifier(SessionTable(clock=pair.clock), "up"))
    error = refused(stranger, pair.encoder.encode(frame(1)))
    assert error.reason is Reason.UNKNOWN_SESSION
    assert "no offer" in str(error)
    data = pair.encoder.encode(frame(2))
    pair.clock.advance(1_500)
    error = refused(pair.decoder, data)
    assert error.reason is Reason.EXPIRED_SESSION
    assert "time" in str(error)
    assert refused(pair.decoder, data).reason is Reason.EXPIRED_SESSION  # remembered


def test_a_session_expires_by_message_count_on_both_sides() -> None:
    pair = Pair(Rotation(max_age_s=60, max_messages=2))
    for step in (1, 2):
        pair.decoder.decode(pair.encoder.encode(frame(step)))
    assert pair.sender.current() is None
    assert pair.sender.ended == "count"
    # a robot that ignored its own limit is refused by the pool
    assert pair.pool_table.get(pair.robot_table.for_robot("robot-a").sid).used == 2  # type: ignore[union-attr]
    rogue = SessionEncoder(pair.robot, lambda _m: pair.robot_table.for_robot("robot-a"), "up",
                           clock=pair.clock)
    assert refused(pair.decoder, rogue.encode(frame(3))).reason is Reason.EXPIRED_SESSION


def test_without_a_session_the_encoder_signs_and_old_decoders_read_signed_mode() -> None:
    pair = Pair()
    pair.sender.end("reconnect")
    data = pair.encoder.encode(frame(1))
    assert data[2] == VERSION
    assert pair.encoder.sent["signed"] == 1
    assert Decoder(pair.ring).decode(data).message == frame(1)
    pair.handshake()
    session_data = pair.encoder.encode(frame(2))
    error = refused(Decoder(pair.ring), session_data)  # no sessions held: refused, by reason
    assert error.reason is Reason.UNSUPPORTED
    assert Decoder(pair.ring).decode(Encoder(pair.robot, clock=pair.clock).encode(frame(3)))


def test_a_newer_session_leaves_the_older_one_valid_for_the_overlap_only() -> None:
    pair = Pair(Rotation(max_age_s=60, max_messages=100, overlap_s=2))
    in_flight = pair.encoder.encode(frame(1))
    too_late = pair.encoder.encode(frame(2))
    pair.handshake()
    pair.clock.advance(1_000)
    pair.decoder.decode(in_flight)  # sent before the rotation, arrives during the overlap
    pair.clock.advance(1_500)
    assert refused(pair.decoder, too_late).reason is Reason.EXPIRED_SESSION
    pair.decoder.decode(pair.encoder.encode(frame(3)))  # the new session works


def test_an_offer_for_another_pool_is_not_accepted() -> None:
    pair = Pair()
    offer, _ = offer_session("robot-a", pair.robot.key_id, PoolSecret.generate("cpu").public,
                             pair.rotation, clock=pair.clock)
    with pytest.raises(WireError) as info:
        accept_offer(offer, pair.robot.key_id, pair.secret, pair.rotation)
    assert info.value.reason is Reason.UNKNOWN_SESSION


def test_a_session_binds_the_robot_identity() -> None:
    pair = Pair()
    impostor = Signer.generate("robot", "robot-b")
    pair.ring.add(impostor.public)
    sneaky = SessionEncoder(impostor, lambda _m: pair.sender.session, "up", clock=pair.clock)
    error = refused(pair.decoder, sneaky.encode(frame(1, robot_id="robot-b")))
    assert error.reason is Reason.IDENTITY_MISMATCH


def test_golden_session_envelope_is_stable_and_verifies() -> None:
    """Fixed keys, clock and sequence: the version-2 bytes and their MAC do not drift."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    signer = Signer(key_id_of(key.public_key()), "robot", "robot-a", key)
    session = Session("0123456789abcdef", "robot-a", signer.key_id, "gpu", bytes(range(32)),
                      bytes(range(32, 64)), NOW + 10**12, 100)
    encoder = SessionEncoder(signer, lambda _m: session, "up", clock=lambda: NOW, start_seq=1,
                             compress="never")
    wire = encoder.encode(frame(1))
    assert wire[:3] == b"VB\x02"
    assert wire[-32:].hex() == ("d6e15513dc105f90dee382329b49b2d3"
                                "666963639f81ece6e5c04a8f45d0c609")
    assert blake3.blake3(wire).hexdigest() == ("9db5e379062be1f4d6f92d32200b31ab"
                                               "8032664c60b754625d41eee584457279")
    table = SessionTable(clock=lambda: NOW)
    table.add(Session(session.sid, "robot-a", signer.key_id, "gpu", session.up, session.down,
                      session.expires_ns, 100))
    decoder = Decoder(Keyring([signer.public]), sessions=SessionVerifier(table, "up"))
    assert decoder.decode(wire).message == frame(1)
