"""The coordinator's intake refuses bad updates, each with its counted reason, and passes
good ones through clipped."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from cloud_workers.fl.intake import Refusal, RoundIntake
from schemas.messages import RoundAnnouncement, UpdateChunk, UpdateManifest
from security.keys import Signer
from security.replay import ReplayGuard
from tests.support.keys import KeyDir
from vlabus.bus.transport import Message
from vlabus.fl.delta import describe_file, encode_delta
from vlabus.wire import Decoder, Encoder

SHAPES = {"head.weight": (8, 4), "head.bias": (8,)}
BASE = "ab" * 32


def announcement(number: int = 3, **extra: object) -> RoundAnnouncement:
    fields: dict[str, object] = {
        "coordinator": "release", "model": "edge", "round": number, "base_version": 2,
        "base_sha256": BASE, "deadline_ns": time.time_ns() + 60_000_000_000,
        "update_clip": 1.0, "examples": 64}
    fields.update(extra)
    return RoundAnnouncement(**fields)  # type: ignore[arg-type]


def good_delta(scale: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, scale / 6, s).astype(np.float32) for k, s in SHAPES.items()}


def messages(encoder: Encoder, robot: str, delta: dict[str, np.ndarray], *, number: int = 3,
             base: str = BASE, precision: str = "fp16", data: bytes | None = None,
             chunk_size: int = 100) -> list[Message]:
    data = encode_delta(delta, precision) if data is None else data
    manifest, chunks = describe_file(data, name="edge", version=number, chunk_size=chunk_size)
    update = UpdateManifest(robot_id=robot, model="edge", round=number, base_version=2,
                            base_sha256=base, examples=64, epsilon=1.5, delta=1e-5,
                            precision=precision, file=manifest)  # type: ignore[arg-type]
    out = [Message("vla/v1/x/fl-update", encoder.encode(update), 0)]
    out += [Message("vla/v1/x/fl-update", encoder.encode(UpdateChunk(
        robot_id=robot, round=number, index=i, data=memoryview(c))), 0)
        for i, c in enumerate(chunks)]
    return out


@pytest.fixture
def intake(tmp_path: Path) -> RoundIntake:
    return RoundIntake(announcement(), SHAPES, tmp_path / "spool")


def feed(intake: RoundIntake, decoder: Decoder, batch: list[Message]) -> list[object]:
    return [a for m in batch if (a := intake.on_message(decoder, m)) is not None]


def encoders(keydir: KeyDir) -> tuple[Decoder, dict[str, Encoder]]:
    decoder = Decoder(keydir.ring, ReplayGuard())
    return decoder, {r: Encoder(keydir.signers[r]) for r in ("robot-a", "robot-b", "robot-c")}


def test_a_good_update_is_accepted_once_and_a_second_is_refused(
        intake: RoundIntake, keydir: KeyDir) -> None:
    decoder, enc = encoders(keydir)
    accepted = feed(intake, decoder, messages(enc["robot-a"], "robot-a", good_delta()))
    assert len(accepted) == 1
    again = good_delta(0.2)
    assert feed(intake, decoder, messages(enc["robot-a"], "robot-a", again)) == []
    assert intake.refused == {"second_update": 1}
    assert intake.epsilon == {"robot-a": 1.5}
    assert list((intake.spool).iterdir()) == []  # the part file is gone once read


@pytest.mark.parametrize(("build", "reason"), [
    (lambda e: messages(e, "robot-b", {**good_delta(), "head.bias": np.full(8, np.nan,
                                                                           np.float32)}),
     Refusal.NON_FINITE),
    (lambda e: messages(e, "robot-b", {k: v * 1000 for k, v in good_delta().items()}),
     Refusal.OVER_NORM),
    (lambda e: messages(e, "robot-b", good_delta(), base="cd" * 32), Refusal.WRONG_BASE),
    (lambda e: messages(e, "robot-b", good_delta(), number=2), Refusal.LATE),
    (lambda e: messages(e, "robot-b", good_delta(), data=b"not safetensors at all"),
     Refusal.MALFORMED),
    (lambda e: messages(e, "robot-b", good_delta(), precision="int8"), Refusal.MALFORMED),
    (lambda e: messages(e, "robot-b", {"head.weight": good_delta()["head.weight"]}),
     Refusal.MALFORMED),
])
def test_each_bad_update_is_refused_with_its_reason(
        intake: RoundIntake, keydir: KeyDir, build: object, reason: Refusal) -> None:
    decoder, enc = encoders(keydir)
    assert feed(intake, decoder, build(enc["robot-b"])) == []  # type: ignore[operator]
    assert intake.refused == {reason.value: 1}


def test_a_scaled_update_within_the_over_norm_factor_is_clipped(
        intake: RoundIntake, keydir: KeyDir) -> None:
    decoder, enc = encoders(keydir)
    delta = good_delta()
    size = float(np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in delta.values())))
    scaled = {k: v * (1.5 / size) for k, v in delta.items()}
    [accepted] = feed(intake, decoder, messages(enc["robot-c"], "robot-c", scaled))
    assert accepted.norm == pytest.approx(1.5, rel=1e-2)  # type: ignore[attr-defined]
    clipped = accepted.delta  # type: ignore[attr-defined]
    assert np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in clipped.values())) == \
        pytest.approx(1.0, rel=1e-3)


def test_a_replayed_envelope_and_a_replayed_file_are_refused(
        tmp_path: Path, keydir: KeyDir) -> None:
    decoder, enc = encoders(keydir)
    first = RoundIntake(announcement(3), SHAPES, tmp_path / "s3")
    batch = messages(enc["robot-a"], "robot-a", good_delta())
    assert len(feed(first, decoder, batch)) == 1
    assert feed(first, decoder, batch[:1]) == []  # the same signed manifest again
    assert first.refused == {"replayed": 1}
    # next round: the robot (or someone holding its key) sends last round's file again
    seen = first._seen
    second = RoundIntake(announcement(4), SHAPES, tmp_path / "s4", seen=seen)
    data = encode_delta(good_delta(), "fp16")
    assert feed(second, decoder, messages(enc["robot-a"], "robot-a", good_delta(),
                                          number=4, data=data)) == []
    assert second.refused == {"replayed": 1}


def test_an_update_signed_by_another_robot_is_unverified(
        intake: RoundIntake, keydir: KeyDir) -> None:
    decoder, _ = encoders(keydir)
    forged = Encoder(Signer.generate("robot", "robot-a"))  # right id, unknown key
    assert feed(intake, decoder, messages(forged, "robot-a", good_delta())) == []
    assert intake.refused["unverified"] >= 1


def test_a_bad_chunk_and_missing_chunks_are_counted(intake: RoundIntake,
                                                    keydir: KeyDir) -> None:
    decoder, enc = encoders(keydir)
    batch = messages(enc["robot-a"], "robot-a", good_delta())
    update = batch[0]
    tampered = Message(update.topic, enc["robot-a"].encode(UpdateChunk(
        robot_id="robot-a", round=3, index=0, data=memoryview(b"x" * 100))), 0)
    assert feed(intake, decoder, [update, tampered]) == []
    assert intake.refused == {"malformed": 1}
    partial = messages(enc["robot-b"], "robot-b", good_delta(seed=1))
    feed(intake, decoder, partial[:-1])
    intake.close()
    assert intake.refused == {"malformed": 1, "late": 1}
    assert feed(intake, decoder, messages(enc["robot-c"], "robot-c", good_delta(seed=2))) == []
    assert intake.refused["late"] == 2


def test_a_copy_of_another_robots_update_is_refused(intake: RoundIntake,
                                                     keydir: KeyDir) -> None:
    decoder, enc = encoders(keydir)
    assert len(feed(intake, decoder, messages(enc["robot-a"], "robot-a", good_delta()))) == 1
    assert feed(intake, decoder, messages(enc["robot-b"], "robot-b", good_delta())) == []
    assert intake.refused == {"replayed": 1}
