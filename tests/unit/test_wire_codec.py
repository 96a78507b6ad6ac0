"""Encoder and Decoder behaviour on good input: sequence numbers, adaptive lz4, roles, timing."""

from __future__ import annotations

import lz4.frame
import numpy as np
import pytest

from schemas.arrays import pack_array
from schemas.errors import Reason, SchemaError, TooLargeError, WireError
from schemas.messages import Action, ModelChunk, Status
from security.keys import Keyring, Role, Signer
from security.replay import ReplayGuard
from tests.support.clock import FakeClock
from tests.support.wire import NOW, Fleet, frame
from vlabus.envelope import ENC_LZ4, SENDER_ROLES
from vlabus.wire import Decoder, Encoder


def test_sequence_starts_at_the_clock_or_where_told() -> None:
    robot = Signer.generate("robot", "robot-a")
    clock = FakeClock(NOW)
    decoder = Decoder(Keyring([robot.public]), ReplayGuard(clock=clock))
    first = decoder.decode(Encoder(robot, clock=clock).encode(frame())).header.seq
    assert first == NOW // 1000 + 1
    # a restarted sender (later clock) continues above the previous session
    clock.now += 1_000_000
    again = decoder.decode(Encoder(robot, clock=clock).encode(frame())).header.seq
    assert again > first
    fixed = Encoder(robot, clock=clock, start_seq=7)
    fresh = Decoder(Keyring([robot.public]), ReplayGuard(clock=clock))
    assert [fresh.decode(fixed.encode(frame(step=i))).header.seq for i in range(3)] == [7, 8, 9]
    with pytest.raises(WireError) as info:  # far below the restarted sender's window
        decoder.decode(Encoder(robot, clock=clock, start_seq=7).encode(frame()))
    assert info.value.reason is Reason.REPLAY


def test_header_fields_travel(fleet: Fleet) -> None:
    wire = fleet.encoder.encode(frame(), deadline_ns=NOW + 5, priority=0, corr="robot-a/1",
                                sent_ns=NOW - 3)
    got = fleet.decoder.decode(wire)
    assert (got.header.kind, got.header.sender, got.header.key) == (
        "frame", "robot-a", fleet.robot.key_id)
    assert (got.header.deadline_ns, got.header.priority, got.header.corr, got.header.sent_ns) == (
        NOW + 5, 0, "robot-a/1", NOW - 3)
    assert got.wire is wire
    assert got.role == "robot"


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def test_adaptive_compression_backs_off(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = lz4.frame.compress

    def counting(data: object, **kwargs: object) -> bytes:
        calls.append(1)
        return real(data, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(lz4.frame, "compress", counting)  # the module vlabus.wire calls
    encoder = Encoder(fleet.robot, clock=fleet.clock, start_seq=1)
    noisy = frame(size=64, noise=True)
    headers = [fleet.decoder.decode(encoder.encode(noisy)).header for _ in range(200)]
    assert all(h.enc == 0 for h in headers)
    # tried at 1, then after 16 skipped, then after 32, then after 64
    assert len(calls) == 4
    smooth = frame(size=64)  # another kind would keep its own state; same kind here
    for _ in range(200):
        encoder.encode(smooth)
    got = fleet.decoder.decode(encoder.encode(smooth))
    assert got.header.enc == ENC_LZ4
    assert got.message == smooth


def test_compress_modes(fleet: Fleet) -> None:
    smooth = frame(size=64)
    never = Encoder(fleet.robot, clock=fleet.clock, compress="never", start_seq=1)
    always = Encoder(fleet.robot, clock=fleet.clock, compress="always", start_seq=2)
    assert fleet.decoder.decode(never.encode(smooth)).header.enc == 0
    assert fleet.decoder.decode(always.encode(smooth)).header.enc == ENC_LZ4
    tiny = Status(client_id="robot-a", role="robot", state="online", session=1, time_ns=NOW)
    assert fleet.decoder.decode(always.encode(tiny)).header.enc == 0  # under 256 bytes


def test_encoder_refuses_what_receivers_would_refuse(fleet: Fleet) -> None:
    with pytest.raises(SchemaError):
        fleet.encoder.encode(frame(), corr="c" * 65)
    release = Signer.generate("release", "release")
    huge = ModelChunk(name="pi0", version=1, index=0, data=memoryview(bytes(17 << 20)))
    with pytest.raises(TooLargeError):
        Encoder(release).encode(huge)


def test_roles_and_replay_mode(fleet: Fleet) -> None:
    replay = Signer.generate("replay", "replay")
    ring = Keyring([fleet.robot.public, replay.public, fleet.worker.public])
    restamped = Encoder(replay, clock=fleet.clock).encode(frame(robot_id="robot-a"))
    strict = Decoder(ring, ReplayGuard(clock=fleet.clock))
    with pytest.raises(WireError) as info:
        strict.decode(restamped)
    assert info.value.reason is Reason.IDENTITY_MISMATCH
    replay_role: frozenset[Role] = frozenset({"replay"})
    widened = {**SENDER_ROLES, "frame": SENDER_ROLES["frame"] | replay_role}
    replaying = Decoder(ring, ReplayGuard(clock=fleet.clock), sender_roles=widened)
    got = replaying.decode(restamped)
    assert got.role == "replay"
    assert got.message.robot_id == "robot-a"  # type: ignore[union-attr]
    action = Action(robot_id="robot-a", step=1, actions=pack_array(np.zeros((2, 3), np.float32)),
                    model="pi0", model_version=1, worker_id="worker-1")
    assert strict.decode(Encoder(fleet.worker, clock=fleet.clock).encode(action)).role == "worker"


def test_untimed_kinds_skip_the_clock_check(fleet: Fleet) -> None:
    status = Status(client_id="robot-a", role="robot", state="online", session=1, time_ns=1)
    old = fleet.encoder.encode(status, sent_ns=1)  # a retained birth from long ago
    assert fleet.decoder.decode(old).message == status
    with pytest.raises(WireError) as info:
        fleet.decoder.decode(fleet.encoder.encode(frame(), sent_ns=1))
    assert info.value.reason is Reason.STALE


def test_decoder_without_guard_accepts_duplicates(fleet: Fleet) -> None:
    plain = Decoder(fleet.ring)
    wire = fleet.encoder.encode(frame())
    assert plain.decode(wire).message == plain.decode(wire).message


def test_memoryview_input_and_zero_copy_images(fleet: Fleet) -> None:
    message = frame(size=32, noise=True)
    wire = fleet.encoder.encode(message)
    got = fleet.decoder.decode(memoryview(wire))
    data = got.message.cameras["front"].data  # type: ignore[union-attr]
    assert isinstance(data, memoryview)
    assert data.obj is wire  # the raw image is a view into the received bytes


def test_encoder_is_safe_to_share_between_threads(fleet: Fleet) -> None:
    from concurrent.futures import ThreadPoolExecutor

    messages = [frame(step=i, size=48, noise=True) for i in range(64)]
    with ThreadPoolExecutor(4) as pool:
        wires = list(pool.map(fleet.encoder.encode, messages))
    got = [fleet.decoder.decode(w) for w in wires]
    assert [g.message for g in got] == messages
    assert len({g.header.seq for g in got}) == len(messages)



def test_encode_view_builds_an_uncompressed_frame_in_place_with_the_same_bytes() -> None:
    robot = Signer.generate("robot", "robot-a")
    clock = FakeClock(NOW)
    viewed = Encoder(robot, clock=clock, start_seq=1, compress="never")
    copied = Encoder(robot, clock=clock, start_seq=1, compress="never")
    decoder = Decoder(Keyring([robot.public]), ReplayGuard(clock=clock))
    for step in range(3):
        message = frame(step, size=64, noise=True)
        view = viewed.encode_view(message, corr=f"robot-a/{step}")
        assert isinstance(view, memoryview)
        assert view.readonly
        assert bytes(view) == copied.encode(message, corr=f"robot-a/{step}")
        got = decoder.decode(view)
        assert got.message == message
        assert got.header.seq == step + 1


def test_encode_view_of_a_compressed_body_is_bytes() -> None:
    zeros = Action(robot_id="robot-a", step=1, actions=pack_array(np.zeros((50, 14), np.float32)),
                   model="m", model_version=0, worker_id="worker-1")
    worker = Signer.generate("worker", "worker-1")
    wire = Encoder(worker).encode_view(zeros)
    assert isinstance(wire, bytes)
    decoded = Decoder(Keyring([worker.public])).decode(wire)
    assert decoded.header.enc & ENC_LZ4
    assert decoded.message == zeros
