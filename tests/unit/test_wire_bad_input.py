"""The bad-input suite: every hostile or broken envelope gets its reason code, allocates no more
than the caps allow, and never escapes as anything but a WireError."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable

import lz4.frame
import msgpack
import pytest

from schemas.errors import Reason, WireError
from security.keys import Signer
from tests.support.wire import NOW, Fleet, body_of, craft, frame, header_map
from vlabus.envelope import Limits
from vlabus.wire import Encoder


def reason_of(call: Callable[..., object], *args: object) -> Reason:
    with pytest.raises(WireError) as info:
        call(*args)
    return info.value.reason


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def test_a_real_envelope_decodes(fleet: Fleet) -> None:
    got = fleet.decoder.decode(fleet.encoder.encode(frame()))
    assert got.message == frame()


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes(fleet: Fleet, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.choice([0, 1, 5, 68, 69, 200, 5000]))
    if seed % 2:
        data = b"VB\x01" + data  # get past the magic and version now and then
    assert reason_of(lambda: fleet.decoder.decode(data)) in {
        Reason.MALFORMED, Reason.TOO_LARGE, Reason.UNSUPPORTED}


def test_truncation_at_every_offset(fleet: Fleet) -> None:
    wire = fleet.encoder.encode(frame())
    for cut in range(len(wire)):
        reason = reason_of(fleet.decoder.decode, wire[:cut])
        assert reason in {Reason.MALFORMED, Reason.BAD_SIGNATURE}, cut
    assert fleet.decoder.decode(wire).header.seq == 1  # nothing above advanced the guard


def test_trailing_bytes(fleet: Fleet) -> None:
    wire = fleet.encoder.encode(frame())
    assert reason_of(lambda: fleet.decoder.decode(wire + b"\0")) is Reason.BAD_SIGNATURE
    assert reason_of(lambda: fleet.decoder.decode(wire + wire)) is Reason.BAD_SIGNATURE


def test_bad_magic_and_version(fleet: Fleet) -> None:
    wire = fleet.encoder.encode(frame())
    assert reason_of(lambda: fleet.decoder.decode(b"XX" + wire[2:])) is Reason.MALFORMED
    assert reason_of(lambda: fleet.decoder.decode(wire[:2] + b"\x02" + wire[3:])) \
        is Reason.UNSUPPORTED


@pytest.mark.parametrize(("field", "value"), [
    ("seq", "1"), ("seq", -1), ("seq", (1 << 64) - 1), ("sent_ns", 1.5), ("kind", 7),
    ("key", "not-hex"), ("key", b"\x00" * 8), ("priority", 9), ("enc", "lz4"), ("corr", "x" * 65),
    ("raw_len", 1 << 41), ("sender", ["robot-a"]),
])
def test_wrong_header_types(fleet: Fleet, field: str, value: object) -> None:
    wire = craft(fleet.robot, header_map(fleet.robot, **{field: value}), b"")
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.MALFORMED


def test_header_not_a_map_or_missing_fields(fleet: Fleet) -> None:
    for head in (msgpack.packb([1, 2, 3]), msgpack.packb({"kind": "frame"}), b"\xc1", b""):
        wire = craft(fleet.robot, head, b"")
        assert reason_of(fleet.decoder.decode, wire) is Reason.MALFORMED


def test_unknown_kind_and_encoding_flags(fleet: Fleet) -> None:
    wire = craft(fleet.robot, header_map(fleet.robot, kind="teleport"), b"")
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.UNSUPPORTED
    wire = craft(fleet.robot, header_map(fleet.robot, enc=4), b"")
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.UNSUPPORTED


def test_huge_declared_lengths_in_header(fleet: Fleet) -> None:
    for head in (b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                 b"\xc6\xff\xff\xff\xff"):
        wire = craft(fleet.robot, head, b"")
        tracemalloc.start()
        try:
            assert reason_of(fleet.decoder.decode, wire) is Reason.MALFORMED
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 256 << 10


def test_huge_declared_lengths_in_signed_body(fleet: Fleet) -> None:
    for seq, bomb in enumerate((b"\xdf\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                                b"\xc6\xff\xff\xff\xff"), start=1):
        body = b"\x81\xa7cameras" + bomb
        wire = craft(fleet.robot, header_map(fleet.robot, seq=seq, raw_len=len(body)), body)
        tracemalloc.start()
        try:
            assert reason_of(fleet.decoder.decode, wire) is Reason.SCHEMA
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 256 << 10


def test_deep_nesting(fleet: Fleet) -> None:
    # in the header: within the 1 KiB header cap, as an unknown key and as a known one
    nested = b"\x91" * 900 + b"\xc0"
    for head in (b"\x81\xa1z" + nested, b"\x81\xa4kind" + nested):
        wire = craft(fleet.robot, head, b"")
        assert reason_of(fleet.decoder.decode, wire) is Reason.MALFORMED
    # in a signed body: 100 000 levels where a map is expected, and under an unknown field
    deep = b"\x91" * 100_000 + b"\xc0"
    valid = body_of(frame())
    for seq, body in enumerate((b"\x81\xa7cameras" + deep,
                                b"\x8a" + valid[1:] + b"\xa5extra" + deep), start=10):
        wire = craft(fleet.robot, header_map(fleet.robot, seq=seq, raw_len=len(body)), body)
        assert reason_of(fleet.decoder.decode, wire) is Reason.SCHEMA


def test_oversize_envelope_and_header() -> None:
    fleet = Fleet(limits=Limits(max_envelope=4096, max_header=200, max_body=4096))
    big = fleet.encoder.encode(frame(size=40, noise=True))
    assert len(big) > 4096
    assert reason_of(lambda: fleet.decoder.decode(big)) is Reason.TOO_LARGE
    head = msgpack.packb(header_map(fleet.robot, corr="c" * 60, sender="s" * 64))
    assert len(head) > 200
    wire = craft(fleet.robot, head, b"")
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.TOO_LARGE
    # a header length running past the end of the data
    assert reason_of(lambda: fleet.decoder.decode(b"VB\x01\x00\xc0" + bytes(100))) \
        is Reason.MALFORMED


def _signed_lz4(fleet: Fleet, frame_bytes: bytes, raw_len: int, seq: int) -> bytes:
    header = header_map(fleet.robot, seq=seq, enc=1, raw_len=raw_len)
    return craft(fleet.robot, header, frame_bytes)


def _set_content_size(frame_bytes: bytes, size: int) -> bytes:
    """Rewrite an lz4 frame's declared content size (and its header checksum)."""
    patched = bytearray(frame_bytes)
    assert patched[4] & 0x08  # content size present
    patched[6:14] = size.to_bytes(8, "little")
    for check in range(256):  # the descriptor checksum is one byte: find it by trial
        patched[14] = check
        try:
            lz4.frame.get_frame_info(bytes(patched))
        except RuntimeError:
            continue
        return bytes(patched)
    raise AssertionError("no checksum fits")


def test_lz4_bomb_with_valid_signature() -> None:
    fleet = Fleet(limits=Limits(max_body=1 << 20))
    bomb = lz4.frame.compress(bytes(64 << 20), store_size=True)  # 64 MiB in ~270 KB
    cases = [
        (bomb, 64 << 20),  # honest header: declared size over the cap
        (bomb, 1000),  # header says 1000, the frame says 64 MiB
        (lz4.frame.compress(bytes(64 << 20), store_size=False), 1000),  # no declared size
        (_set_content_size(bomb, 1000), 1000),  # the frame lies about its content size
    ]
    for seq, (packed, raw_len) in enumerate(cases, start=1):
        wire = _signed_lz4(fleet, packed, raw_len, seq)
        tracemalloc.start()
        try:
            reason = reason_of(fleet.decoder.decode, wire)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert reason is Reason.DECOMPRESS_LIMIT, seq
        assert peak < 1 << 20, (seq, peak)


def test_lz4_garbage_with_valid_signature(fleet: Fleet) -> None:
    for seq, packed in enumerate((b"", b"\x04\x22\x4d\x18", bytes(50), b"not lz4 at all"), 1):
        wire = _signed_lz4(fleet, packed, 10, seq)
        assert reason_of(fleet.decoder.decode, wire) in {
            Reason.MALFORMED, Reason.DECOMPRESS_LIMIT}
    # a valid frame header followed by corrupt blocks
    good = lz4.frame.compress(bytes(range(256)) * 64, store_size=True)
    broken = good[:20] + bytes(len(good) - 20)
    wire = _signed_lz4(fleet, broken, 256 * 64, 99)
    assert reason_of(lambda: fleet.decoder.decode(wire)) in {
        Reason.MALFORMED, Reason.DECOMPRESS_LIMIT}


def test_raw_body_length_must_match_header(fleet: Fleet) -> None:
    body = body_of(frame())
    wire = craft(fleet.robot, header_map(fleet.robot, raw_len=len(body) + 1), body)
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.MALFORMED


def test_single_bit_flips_never_pass() -> None:
    fleet = Fleet()
    wire = Encoder(fleet.robot, clock=fleet.clock, start_seq=500).encode(frame(size=4))
    header_end = 5 + int.from_bytes(wire[3:5], "big")
    sig_at = len(wire) - 64
    for byte in range(len(wire)):
        for bit in range(8):
            flipped = bytearray(wire)
            flipped[byte] ^= 1 << bit
            reason = reason_of(fleet.decoder.decode, bytes(flipped))
            if byte >= header_end:  # body or signature
                assert reason is Reason.BAD_SIGNATURE, (byte, bit, reason)
            else:
                assert reason is not Reason.SCHEMA, (byte, bit, reason)
        assert sig_at > header_end
    assert fleet.decoder.decode(wire).header.seq == 500  # no flip advanced the window


def test_unknown_key(fleet: Fleet) -> None:
    stranger = Signer.generate("robot", "robot-a")
    wire = Encoder(stranger, clock=fleet.clock).encode(frame())
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.UNKNOWN_KEY


def test_sender_id_not_matching_its_key(fleet: Fleet) -> None:
    # header names robot-b but carries robot-a's key id
    head = header_map(fleet.robot, sender="robot-b")
    body = body_of(frame(robot_id="robot-b"))
    head["raw_len"] = len(body)
    assert reason_of(lambda: fleet.decoder.decode(craft(fleet.robot, head, body))) \
        is Reason.IDENTITY_MISMATCH
    # body claims another robot than the signer
    wire = fleet.encoder.encode(frame(robot_id="robot-b"))
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.IDENTITY_MISMATCH
    # a robot key may not send actions, a worker key may not send frames
    head = header_map(fleet.robot, kind="action")
    assert reason_of(lambda: fleet.decoder.decode(craft(fleet.robot, head, b""))) \
        is Reason.IDENTITY_MISMATCH
    worker_frame = Encoder(fleet.worker, clock=fleet.clock).encode(frame())
    assert reason_of(lambda: fleet.decoder.decode(worker_frame)) is Reason.IDENTITY_MISMATCH


def test_duplicate_and_replay(fleet: Fleet) -> None:
    wire = fleet.encoder.encode(frame(step=1))
    fleet.decoder.decode(wire)
    assert reason_of(lambda: fleet.decoder.decode(wire)) is Reason.DUPLICATE
    # same sequence number, other bytes: a replay
    again = Encoder(fleet.robot, clock=fleet.clock, start_seq=1).encode(frame(step=2))
    assert reason_of(lambda: fleet.decoder.decode(again)) is Reason.REPLAY
    # far behind the window
    for _ in range(fleet.guard.window + 2):
        fleet.encoder.next_seq()
    fleet.decoder.decode(fleet.encoder.encode(frame(step=3)))
    old = Encoder(fleet.robot, clock=fleet.clock, start_seq=2).encode(frame(step=4))
    assert reason_of(lambda: fleet.decoder.decode(old)) is Reason.REPLAY


def test_stale_and_future(fleet: Fleet) -> None:
    stale = fleet.encoder.encode(frame(), sent_ns=NOW - fleet.guard.max_age_ns - 1)
    assert reason_of(lambda: fleet.decoder.decode(stale)) is Reason.STALE
    future = fleet.encoder.encode(frame(), sent_ns=NOW + fleet.guard.max_future_ns + 1)
    assert reason_of(lambda: fleet.decoder.decode(future)) is Reason.FUTURE
    assert fleet.decoder.decode(fleet.encoder.encode(frame())).header.seq == 3


def test_forged_huge_sequence_does_not_lock_out_the_sender(fleet: Fleet) -> None:
    first = fleet.encoder.encode(frame(step=1))
    fleet.decoder.decode(first)
    forged = craft(fleet.robot, header_map(fleet.robot, seq=(1 << 63) - 1), b"", sign=False)
    assert reason_of(lambda: fleet.decoder.decode(forged)) is Reason.BAD_SIGNATURE
    # a validly signed message from a stranger claiming robot-a's key id fails the same way
    stranger = Signer.generate("robot", "robot-a")
    forged = craft(stranger, header_map(fleet.robot, seq=(1 << 63) - 1), b"")
    assert reason_of(lambda: fleet.decoder.decode(forged)) is Reason.BAD_SIGNATURE
    nxt = fleet.decoder.decode(fleet.encoder.encode(frame(step=2)))
    assert nxt.header.seq == 2
    assert nxt.message.step == 2  # type: ignore[union-attr]


def test_schema_errors_name_the_field(fleet: Fleet) -> None:
    body = body_of(frame()).replace(b"\xa4pick", b"\xcc\x07\x00\x00\x00")[: -4]
    body = msgpack.packb({**msgpack.unpackb(body_of(frame())), "step": -5})
    wire = craft(fleet.robot, header_map(fleet.robot, raw_len=len(body)), body)
    with pytest.raises(WireError) as info:
        fleet.decoder.decode(wire)
    assert info.value.reason is Reason.SCHEMA
    assert getattr(info.value, "path", "") == "$.step"
