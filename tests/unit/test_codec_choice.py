"""Codec choice per camera and step: the uplink estimator and the chooser on a fake clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.cameras import CameraEncoder
from edge_agent.codec import CodecChooser, CodecSpec, Rung, parse_codec
from edge_agent.scene import TabletopScene
from edge_agent.uplink import UplinkEstimate, UplinkEstimator
from schemas.images import decode_image
from tests.support.clock import MS, FakeClock

S = 1_000_000_000


def images() -> dict[str, np.ndarray]:
    return {"front": TabletopScene(224, 224, seed=0).render(3),
            "wrist": TabletopScene(224, 224, seed=1).render(3)}


def link(mbit: float, worker_ms: float = 5.0) -> UplinkEstimate:
    return UplinkEstimate(8e3 / mbit, int(worker_ms * MS), 10)  # ns per byte at mbit Mbit/s


@pytest.mark.parametrize(("text", "name"), [
    ("auto", "auto"), ("raw", "raw"), ("lz4", "lz4"), ("jpeg", "jpeg85"), ("JPEG:40", "jpeg40")])
def test_codec_flag_parses(text: str, name: str) -> None:
    assert parse_codec(text).name == name


@pytest.mark.parametrize("text", ["jpeg:0", "jpeg:101", "jpeg:x", "png", "raw:3", "auto:1", ""])
def test_bad_codec_flag_says_why(text: str) -> None:
    with pytest.raises(ValueError, match=r"codec|quality"):
        parse_codec(text)


def test_estimator_reads_per_byte_cost_and_worker_time() -> None:
    clock = FakeClock(0)
    est = UplinkEstimator(clock)
    assert est.estimate() is None
    for step in range(8):  # 10 and 20 kB in 8 and 16 ms: 10 Mbit/s
        nbytes = 10_000 * (1 + step % 2)
        est.reply(nbytes, nbytes * 800, 4 * MS)
    got = est.estimate()
    assert got is not None
    assert got.bits_per_second == pytest.approx(10e6)
    assert got.worker_ns == 4 * MS
    assert got.transfer_ns(40_000) == 32 * MS


def test_fixed_latency_is_told_apart_from_the_rate() -> None:
    """20 ms of broker hops and a 10 Mbit/s uplink: small frames are not a slow link."""
    clock = FakeClock(0)
    est = UplinkEstimator(clock)
    for step in range(24):
        nbytes = (2_000, 6_000, 12_000)[step % 3]
        est.reply(nbytes, 20 * MS + nbytes * 800, 2 * MS)
    got = est.estimate()
    assert got is not None
    assert got.bits_per_second == pytest.approx(10e6, rel=0.05)
    assert got.base_ns == pytest.approx(20 * MS, rel=0.05)
    assert got.queue_ns == 0
    chooser = CodecChooser(clock)
    # room for (80 ms x 0.8 - 20 ms) at 10 Mbit/s, not 64 ms at 1.1 Mbit/s
    assert chooser.allowed_bytes(got, budget_ns=100 * MS, interval_ns=66 * MS) > 40_000


def test_a_step_without_reply_is_counted_for_a_while() -> None:
    clock = FakeClock(0)
    est = UplinkEstimator(clock, miss_window_ns=300 * MS)
    for _ in range(8):
        est.reply(10_000, 8 * MS, 2 * MS)
    est.missed(10_000, 100 * MS)  # a saturated uplink: no reply comes back at all
    after = est.estimate()
    assert after is not None
    assert after.misses == 1
    clock.now += 301 * MS
    later = est.estimate()
    assert later is not None
    assert later.misses == 0


def test_old_samples_are_forgotten() -> None:
    clock = FakeClock(0)
    est = UplinkEstimator(clock, horizon_ns=10 * S)
    est.reply(10_000, 80 * MS, 0)
    clock.now = 11 * S
    assert est.estimate() is None
    est.reply(10_000, 1 * MS, 0)
    got = est.estimate()
    assert got is not None
    assert got.samples == 1
    assert got.transfer_ns(10_000) == pytest.approx(1 * MS, rel=0.01)


def calibrated(clock: FakeClock, **kwargs: int) -> CodecChooser:
    chooser = CodecChooser(clock, **kwargs)  # type: ignore[arg-type]
    table = chooser.calibrate(images())
    assert table["front"]["jpeg30/4"] < table["front"]["jpeg85"] < table["front"]["jpeg95"]
    return chooser


def fitting(chooser: CodecChooser, mbit: float) -> float:
    return chooser.allowed_bytes(link(mbit), budget_ns=100 * MS, interval_ns=66 * MS)


def settle(chooser: CodecChooser, clock: FakeClock, estimate: UplinkEstimate,
           seconds: float) -> list[dict[str, str]]:
    """Ask for a choice every 66 ms for ``seconds``; the choices made."""
    seen = []
    for _ in range(int(seconds * 15)):
        clock.now += 66 * MS
        rungs = chooser.choose(estimate, budget_ns=100 * MS, interval_ns=66 * MS)
        seen.append({name: rung.name for name, rung in rungs.items()})
    return seen


def test_a_slow_uplink_gets_small_images_at_once() -> None:
    clock = FakeClock(0)
    chooser = calibrated(clock)
    chooser.choose(link(1.0), budget_ns=100 * MS, interval_ns=66 * MS)
    assert chooser.frame_bytes() <= fitting(chooser, 1.0)
    assert all(rung.codec == "jpeg" and rung.quality <= 70 for rung in chooser.rungs().values())


def test_a_fast_uplink_is_climbed_one_rung_per_hold() -> None:
    clock = FakeClock(0)
    chooser = calibrated(clock, hold_ns=S, fast_hold_ns=S)
    seen = settle(chooser, clock, link(1000.0), 0.5)
    assert seen[-1] == seen[0]  # nothing changes before the hold has passed
    seen = settle(chooser, clock, link(1000.0), 30)
    assert seen[-1] == {"front": "raw", "wrist": "raw"}  # lz4 does not pay on these photos
    changes = sum(a != b for a, b in itertools.pairwise(seen))
    assert changes <= 30 / 1.0 + 1


def test_auto_fits_the_frame_to_the_deadline_and_the_rate() -> None:
    clock = FakeClock(0)
    chooser = calibrated(clock)
    for mbit in (2.5, 25.0):
        settle(chooser, clock, link(mbit), 20)
        assert chooser.frame_bytes() <= fitting(chooser, mbit)
        # and it is not needlessly small: the next rung up would not fit with headroom
        assert chooser.frame_bytes() > 0.25 * fitting(chooser, mbit)


def test_a_shared_uplink_does_not_flap() -> None:
    """The link carries jpeg95 but not raw: after raw fails, it is not tried again soon."""
    clock = FakeClock(0)
    chooser = calibrated(clock, hold_ns=S, cooldown_ns=2 * S)
    raw_fits = link(1000.0)
    congested = link(10.0)  # what a robot sees once every robot sends raw
    seen: list[dict[str, str]] = []
    for _ in range(6):
        seen += settle(chooser, clock, raw_fits, 10)
        seen += settle(chooser, clock, congested, 1)
    changes = sum(a != b for a, b in itertools.pairwise(seen))
    assert changes < len(seen) / 10
    # the cool-down grew: raw is barred longer after each failure
    front = chooser.cameras["front"]
    assert max(front.cooldown.values()) >= 8 * S


def test_fixed_codec_sends_what_was_asked_and_the_worker_decodes_it() -> None:
    pixels = images()
    for spec in ("raw", "lz4", "jpeg:60"):
        encoder = CameraEncoder(spec, interval_ns=66 * MS)
        encoded = encoder.encode(pixels, budget_ns=100 * MS)
        assert set(encoded.choice.values()) == {parse_codec(spec).name}
        for name, image in encoded.cameras.items():
            assert decode_image(image).shape == pixels[name].shape


def test_auto_encoder_learns_from_replies_and_reports_it() -> None:
    clock = FakeClock(0)
    encoder = CameraEncoder(CodecSpec("auto"), interval_ns=66 * MS, clock=clock,
                            chooser=CodecChooser(clock), estimator=UplinkEstimator(clock))
    pixels = images()
    first = encoder.encode(pixels, budget_ns=100 * MS)
    assert first.choice == {"front": "jpeg70", "wrist": "jpeg70"}  # the start, unmeasured
    for step in range(40):
        clock.now += 66 * MS
        encoded = encoder.encode(pixels, budget_ns=100 * MS)
        wire = sum(len(image.data) for image in encoded.cameras.values()) + 400
        encoder.sent(f"c{step}", encoded, wire, 100 * MS)
        encoder.reply(f"c{step}", int(wire * 8e3 / 2.0), 3 * MS)  # a 2 Mbit/s uplink
    summary = encoder.summary()
    assert summary["mode"] == "auto"
    assert summary["uplink_mbit_s"] == pytest.approx(2.0, rel=0.01)
    assert sum(summary["frames_by_rung"].values()) == 80
    assert encoder.chooser.frame_bytes() <= encoder.chooser.allowed_bytes(
        UplinkEstimate(4000.0, 3 * MS, 1), budget_ns=100 * MS, interval_ns=66 * MS)
    encoder.missed("unknown")  # a corr it never sent is ignored


def test_rungs_a_camera_cannot_take_are_left_out() -> None:
    chooser = CodecChooser(FakeClock())
    table = chooser.calibrate({"odd": np.zeros((30, 30, 3), np.uint8)})  # 30 is not /4
    assert "jpeg60/4" not in table["odd"]
    assert "jpeg70/2" in table["odd"]
    assert Rung("jpeg", 70, 2).name == "jpeg70/2"


def test_estimator_sees_a_queue_building() -> None:
    clock = FakeClock(0)
    est = UplinkEstimator(clock)
    for _ in range(8):  # idle link: 20 kB in 2 ms
        est.reply(20_000, 2 * MS, 1 * MS)
    idle = est.estimate()
    assert idle is not None
    assert idle.queue_ns == 0
    for extra in (25, 30, 35, 40):  # each frame waits behind the last: the queue grows
        est.reply(20_000, (2 + extra) * MS, 1 * MS)
    building = est.estimate()
    assert building is not None
    assert building.queue_ns >= 20 * MS


def test_a_queue_on_a_shared_link_steps_down_before_any_miss() -> None:
    clock = FakeClock(0)
    chooser = calibrated(clock, hold_ns=S, drain_ns=300 * MS)
    settle(chooser, clock, link(100.0), 20)
    high = chooser.frame_bytes()
    queued = UplinkEstimate(8e3 / 100.0, 5 * MS, 10, queue_ns=40 * MS)
    seen = settle(chooser, clock, queued, 1)
    assert chooser.frame_bytes() < high
    # one rung per drain period, not one per step
    changes = sum(a != b for a, b in itertools.pairwise(seen))
    assert 1 <= changes <= 4


def test_a_missed_step_steps_down_one_rung() -> None:
    clock = FakeClock(0)
    chooser = calibrated(clock, drain_ns=300 * MS)
    settle(chooser, clock, link(100.0), 20)
    high = chooser.frame_bytes()
    clock.now += 400 * MS
    missed = UplinkEstimate(8e3 / 100.0, 5 * MS, 10, misses=1)
    chooser.choose(missed, budget_ns=100 * MS, interval_ns=66 * MS)
    assert chooser.frame_bytes() < high
    # a miss with a frame the link moves in a moment is not the uplink's: no step down
    small = chooser.frame_bytes()
    clock.now += 400 * MS
    fast = UplinkEstimate(8e3 / 1000.0, 5 * MS, 10, misses=1)
    chooser.choose(fast, budget_ns=100 * MS, interval_ns=66 * MS)
    assert chooser.frame_bytes() >= small


def test_far_from_the_limit_it_climbs_faster() -> None:
    clock = FakeClock(0)
    chooser = calibrated(clock, hold_ns=S, fast_hold_ns=250 * MS)
    seen = settle(chooser, clock, link(1000.0), 3)
    changes = sum(a != b for a, b in itertools.pairwise(seen))
    assert changes >= 8  # one rung a quarter second, not one a second
