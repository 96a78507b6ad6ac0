"""Signed checkpoints prove session-mode messages with public keys alone; gaps are reported."""

from __future__ import annotations

from security.checkpoint import ZERO, Chain, chain_over
from security.keys import Keyring, Signer
from security.seal import PoolSecret
from security.session import Rotation, SessionSender, digest_of, offer_session
from tests.support.clock import FakeClock
from tests.support.wire import NOW, frame
from vlabus.log.reader import LogRecord
from vlabus.log.verify import Verification, verify_records
from vlabus.session_wire import SessionEncoder
from vlabus.wire import Decoder, Encoder


class Recording:
    """A robot in session mode sending ``count`` frames, and what a recorder kept."""

    def __init__(self, count: int = 6, *, interval_s: float = 1.0) -> None:
        self.clock = FakeClock(NOW)
        self.robot = Signer.generate("robot", "robot-a")
        self.ring = Keyring([self.robot.public])
        sender = SessionSender(Rotation(), self.clock)
        _, sender.session = offer_session("robot-a", self.robot.key_id,
                                          PoolSecret.generate("gpu").public, Rotation(),
                                          clock=self.clock)
        self.encoder = SessionEncoder(self.robot, lambda _m: sender.current(), "up",
                                      checkpoint_interval_s=interval_s, clock=self.clock)
        self.records: list[tuple[str, bytes]] = []
        for step in range(count):
            self.records.append(("vla/v1/robot-a/frame", self.encoder.encode(frame(step))))
            self.clock.advance(400)
            for point in self.encoder.checkpoints():
                self.checkpoint(self.encoder.encode(point))
        for point in self.encoder.checkpoints(final=True):
            self.checkpoint(self.encoder.encode(point))

    def checkpoint(self, data: bytes) -> None:
        self.records.append(("vla/v1/robot-a/checkpoint", data))

    def verify(self, records: list[tuple[str, bytes]] | None = None) -> Verification:
        kept = self.records if records is None else records
        return verify_records((LogRecord(topic, data, NOW, NOW, i)
                               for i, (topic, data) in enumerate(kept)), self.ring)


def test_chain_cuts_link_and_recompute() -> None:
    clock = FakeClock(NOW)
    chain = Chain("robot-a", "00" * 8, 1_000_000_000, clock)
    digests = [digest_of(bytes([i])) for i in range(3)]
    chain.add(5, digests[0])
    assert not chain.due()
    clock.advance(1_000)
    assert chain.due()
    first = chain.cut()
    chain.add(6, digests[1])
    chain.add(8, digests[2])
    second = chain.cut(final=True)
    assert first is not None
    assert second is not None
    assert first.prev == ZERO
    assert second.prev == first.chain
    assert (second.first_seq, second.last_seq, second.count) == (6, 8, 2)
    assert chain_over(first.chain, [(6, digests[1]), (8, digests[2])]) == second.chain
    assert chain.cut() is None  # nothing new: no empty checkpoint


def test_every_session_message_is_proven_by_checkpoints() -> None:
    rec = Recording()
    result = rec.verify()
    assert result.ok, result.as_dict()
    assert result.session_proven == 6
    assert result.checkpoints >= 3


def test_a_recording_with_a_gap_is_reported() -> None:
    rec = Recording()
    kept = [r for i, r in enumerate(rec.records) if i != 1]  # the second frame was lost
    result = rec.verify(kept)
    assert not result.ok
    assert len(result.gaps) == 1
    assert "not in the recording" in result.gaps[0]["reason"]
    assert result.gaps[0]["expected"] == result.gaps[0]["recorded"] + 1


def test_a_lost_checkpoint_leaves_its_messages_uncovered_and_breaks_the_link() -> None:
    rec = Recording()
    first_point = next(i for i, (t, _) in enumerate(rec.records) if t.endswith("checkpoint"))
    result = rec.verify([r for i, r in enumerate(rec.records) if i != first_point])
    assert result.uncovered
    assert all(u["sender"] == "robot-a" for u in result.uncovered)
    assert any("missing" in g["reason"] for g in result.gaps)


def test_a_forged_checkpoint_is_refused_and_proves_nothing() -> None:
    rec = Recording(count=2, interval_s=100)  # one checkpoint, the final one, last
    frames = [r for r in rec.records if r[0].endswith("frame")]
    honest = rec.records[-1][1]
    point = Decoder(rec.ring).decode(honest).message
    forger = Signer.generate("robot", "robot-a")  # the robot's name, a key nobody trusts
    forged = Encoder(forger, clock=rec.clock).encode(point)
    result = rec.verify([*frames, ("vla/v1/robot-a/checkpoint", forged)])
    assert [r["reason"] for r in result.refused] == ["unknown_key"]
    assert len(result.uncovered) == 2
    assert result.session_proven == 0
    tampered = bytearray(honest)
    tampered[-70] ^= 1  # the checkpoint's body: its chain, say
    result = rec.verify([*frames, ("vla/v1/robot-a/checkpoint", bytes(tampered))])
    assert [r["reason"] for r in result.refused] == ["bad_signature"]
    assert len(result.uncovered) == 2


def test_an_altered_session_message_does_not_match_the_signed_chain() -> None:
    rec = Recording(count=3, interval_s=100)
    topic, data = rec.records[1]
    altered = bytearray(data)
    altered[-40] ^= 1  # inside the body: its MAC is unchecked offline, the chain catches it
    result = rec.verify([rec.records[0], (topic, bytes(altered)), *rec.records[2:]])
    assert len(result.mismatches) == 1
    assert "altered" in result.mismatches[0]["reason"]
    assert result.session_proven == 0
