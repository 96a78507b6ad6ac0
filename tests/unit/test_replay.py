"""The replayer: recorded timing and order, rate, loop, topic filter, start offset, restamp."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from schemas.errors import IdentityMismatchError, Reason, ReplayError, SignatureError
from schemas.messages import Action, Frame
from security.replay import ReplayGuard
from tests.support.keys import KeyDir
from tests.support.logs import write_log
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import Message, TransportOptions, open_transport
from vlabus.cli import main
from vlabus.envelope import SENDER_ROLES
from vlabus.log.reader import iter_log
from vlabus.log.record import Recorder
from vlabus.log.replay import Replayer, ReplayStats, Restamper
from vlabus.wire import Decoder


async def play(path: Path, name: str,
               **options: object) -> tuple[ReplayStats, list[Message], float]:
    """Replay ``path`` on ``memory://name``; return stats, what a subscriber got, wall seconds."""
    reset_memory(name)
    bus = await open_transport(f"memory://{name}", TransportOptions(client_id="player"))
    sink = await open_transport(f"memory://{name}", TransportOptions(client_id="sink"))
    await sink.subscribe("#")
    replayer = Replayer(bus, path, **options)  # type: ignore[arg-type]
    started = time.monotonic()
    stats = await replayer.run()
    elapsed = time.monotonic() - started
    got = []
    while (message := sink.receive_nowait()) is not None:
        got.append(message)
    await bus.close()
    await sink.close()
    return stats, got, elapsed


def ordered(written: list[tuple[str, bytes, int]]) -> list[tuple[str, bytes, int]]:
    return sorted(written, key=lambda row: row[2])  # stable: ties keep file order


class VirtualClock:
    """A monotonic clock that moves only when the replayer sleeps or a publish stalls it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sent: list[tuple[str, bytes, float]] = []
        self.stalls: dict[int, float] = {}  # publish index -> seconds that publish takes

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds

    async def publish(self, topic: str, payload: bytes, **_options: object) -> None:
        self.sent.append((topic, bytes(payload), self.now))
        self.now += self.stalls.get(len(self.sent) - 1, 0.0)


def play_virtual(path: Path, clock: VirtualClock, **options: object) -> ReplayStats:
    replayer = Replayer(clock, path, monotonic=clock.monotonic,  # type: ignore[arg-type]
                        sleep=clock.sleep, **options)  # type: ignore[arg-type]
    return asyncio.run(replayer.run())


def test_each_message_is_due_at_its_recorded_offset(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=15, period_ns=20_000_000)
    clock = VirtualClock()
    stats = play_virtual(path, clock)

    expected = ordered(written)
    first = expected[0][2]
    assert [(t, w) for t, w, _ in clock.sent] == [(t, w) for t, w, _ in expected]
    assert [at for _t, _w, at in clock.sent] == pytest.approx(
        [(log_ns - first) / 1e9 for _t, _w, log_ns in expected], abs=1e-9)
    offsets = stats.as_dict()["offset_ms"]
    assert offsets["count"] == len(written) == stats.published
    assert offsets["max_ms"] == pytest.approx(0.0, abs=1e-6)


def test_a_stall_makes_messages_late_without_shifting_later_ones(
        keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=10, period_ns=20_000_000)
    expected = ordered(written)
    first = expected[0][2]
    due = [(log_ns - first) / 1e9 / 2.0 for _t, _w, log_ns in expected]  # rate 2
    clock = VirtualClock()
    clock.stalls[4] = 0.030  # the fifth publish blocks for 30 ms
    stats = play_virtual(path, clock, rate=2.0)

    sent = [at for _t, _w, at in clock.sent]
    stall_end = due[4] + 0.030
    for index, (at, when) in enumerate(zip(sent, due, strict=True)):
        if index > 4 and when < stall_end:
            assert at == pytest.approx(stall_end), index  # sent at once, in order
        else:
            assert at == pytest.approx(when), index  # on time: lateness did not accumulate
    late = [i for i in range(len(due)) if i > 4 and due[i] < stall_end]
    assert late  # the stall really delayed someone
    assert stats.offsets.max_ms == pytest.approx((stall_end - due[late[0]]) * 1000)


def test_rate_1_follows_recorded_timing_and_order(keydir: KeyDir, tmp_path: Path) -> None:
    """The same on the real clock and a real bus; bounds loose enough for a loaded CI machine
    (the exact schedule is checked on the virtual clock above)."""
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=15, period_ns=20_000_000)
    stats, got, elapsed = asyncio.run(play(path, "rp-rate1"))

    expected = ordered(written)
    assert [(m.topic, bytes(m.payload)) for m in got] == [(t, w) for t, w, _ in expected]
    span = (expected[-1][2] - expected[0][2]) / 1e9
    assert span * 0.95 <= elapsed <= span + 1.0
    first_recv, first_log = got[0].received_ns, expected[0][2]
    lateness_ms = sorted(((m.received_ns - first_recv) - (log_ns - first_log)) / 1e6
                         for m, (_t, _w, log_ns) in zip(got, expected, strict=True))
    # Received times carry delivery jitter both ways, the first message's included, so
    # "never early" is checked on the replayer's own clock: no publish before it was due.
    assert min(stats.offsets.samples) >= 0.0
    assert lateness_ms[len(lateness_ms) // 2] < 20.0  # the median on time; a stall is allowed
    offsets = stats.as_dict()["offset_ms"]
    assert offsets["count"] == len(written) == stats.published
    assert 0.0 <= offsets["p50_ms"] <= offsets["p99_ms"] <= offsets["max_ms"]
    assert offsets["p50_ms"] < 20.0


def test_rate_2_takes_half_the_time(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    write_log(path, keydir.signers, steps=16, period_ns=25_000_000, robots=("robot-a",))
    _, got1, slow = asyncio.run(play(path, "rp-r1"))
    _, got2, fast = asyncio.run(play(path, "rp-r2", rate=2.0))
    assert [bytes(m.payload) for m in got1] == [bytes(m.payload) for m in got2]
    assert 0.4 <= fast / slow <= 0.8  # exact halving is checked on the virtual clock


def test_loop_repeats_the_same_sequence(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=4, period_ns=10_000_000)

    async def scenario() -> tuple[int, list[bytes]]:
        reset_memory("rp-loop")
        bus = await open_transport("memory://rp-loop", TransportOptions(client_id="player"))
        sink = await open_transport("memory://rp-loop", TransportOptions(client_id="sink"))
        await sink.subscribe("#")
        replayer = Replayer(bus, path, rate=10.0, loop=True)
        task = asyncio.create_task(replayer.run())
        got = []
        for _ in range(len(written) * 3 + 2):
            got.append(bytes((await asyncio.wait_for(sink.receive(), 5)).payload))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await bus.close()
        await sink.close()
        return replayer.stats.passes, got

    passes, got = asyncio.run(scenario())
    one_pass = [w for _t, w, _l in ordered(written)]
    assert passes >= 3
    assert got[: 3 * len(one_pass)] == one_pass * 3
    assert got[3 * len(one_pass):] == one_pass[:2]


def test_topic_filter_and_start_offset(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=10, period_ns=50_000_000)
    stats, got, _ = asyncio.run(play(path, "rp-filter", rate=20.0,
                                     topics=["vla/v1/+/frame"], start_offset_s=0.2))
    first = min(row[2] for row in written)
    expected = [w for t, w, log_ns in ordered(written)
                if t.endswith("/frame") and log_ns >= first + 200_000_000]
    assert [bytes(m.payload) for m in got] == expected
    assert len(expected) == 12  # steps 4..9 of two robots
    assert set(stats.topics) == {"vla/v1/robot-a/frame", "vla/v1/robot-b/frame"}


def test_verbatim_replay_is_rejected_by_a_live_decoder(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    write_log(path, keydir.signers, steps=3)
    live = Decoder(keydir.ring, ReplayGuard())
    for record in iter_log(path):  # the live fleet saw the originals
        live.decode(record.data)
    _, got, _ = asyncio.run(play(path, "rp-verbatim", rate=50.0))
    reasons = []
    for message in got:
        with pytest.raises(ReplayError) as caught:
            live.decode(message.payload)
        reasons.append(caught.value.reason)
    assert set(reasons) == {Reason.DUPLICATE}
    # A receiver that never saw them (e.g. restarted) rejects them by sender time.
    old = tmp_path / "old.mcap"
    write_log(old, keydir.signers, steps=2, start_ns=time.time_ns() - 60_000_000_000)
    _, got, _ = asyncio.run(play(old, "rp-stale", rate=1000.0))
    fresh = Decoder(keydir.ring, ReplayGuard())
    for message in got:
        with pytest.raises(ReplayError, match="ago") as caught:
            fresh.decode(message.payload)
        assert caught.value.reason is Reason.STALE


def replay_mode_decoder(keydir: KeyDir) -> Decoder:
    roles = dict(SENDER_ROLES)
    roles["frame"] = roles["frame"] | {"replay"}
    roles["action"] = roles["action"] | {"replay"}
    return Decoder(keydir.ring, ReplayGuard(), sender_roles=roles)


@pytest.mark.parametrize("verify", [True, False])
def test_restamped_replay_is_accepted_in_replay_mode(keydir: KeyDir, tmp_path: Path,
                                                     verify: bool) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=3, start_ns=time.time_ns() - 60_000_000_000)
    restamper = Restamper(keydir.signers["replay"], keyring=keydir.ring if verify else None)
    before = time.time_ns()
    stats, got, _ = asyncio.run(play(path, f"rp-restamp-{verify}", rate=50.0,
                                     restamper=restamper))
    assert stats.published == len(written)
    accepting = replay_mode_decoder(keydir)
    strict = Decoder(keydir.ring, ReplayGuard())
    originals = {(r.topic, i): r for i, r in enumerate(iter_log(path))}
    for index, message in enumerate(got):
        received = accepting.decode(message.payload)
        assert received.role == "replay"
        assert received.header.sender == "replay"
        assert received.header.sent_ns >= before
        original = Decoder(keydir.ring).decode(originals[(message.topic, index)].data)
        assert received.header.corr == original.header.corr
        assert type(received.message) is type(original.message)
        assert received.message.step == original.message.step  # type: ignore[union-attr]
        if isinstance(received.message, Frame):
            budget = original.header.deadline_ns - original.header.sent_ns
            assert received.header.deadline_ns - received.header.sent_ns == budget
        else:
            assert isinstance(received.message, Action)
        with pytest.raises(IdentityMismatchError):  # a live worker does not serve them
            strict.decode(message.payload)


def test_restamp_with_keyring_skips_forged_messages(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "forged.mcap"
    good = write_log(tmp_path / "good.mcap", keydir.signers, steps=2, robots=("robot-a",))
    forged = bytearray(good[0][1])
    forged[-70] ^= 0xFF  # a body byte: the signature no longer matches
    with Recorder(path) as recorder:
        recorder.write(good[0][0], bytes(forged), good[0][2])
        recorder.write(good[1][0], good[1][1], good[1][2])
    restamper = Restamper(keydir.signers["replay"], keyring=keydir.ring)
    with pytest.raises(SignatureError):
        restamper.restamp(bytes(forged))
    stats, got, _ = asyncio.run(play(path, "rp-forged", rate=50.0, restamper=restamper))
    assert stats.published == 1
    assert len(got) == 1
    assert dict(stats.skipped) == {Reason.BAD_SIGNATURE.value: 1}


def test_restamp_refuses_a_non_replay_key(keydir: KeyDir) -> None:
    with pytest.raises(ValueError, match="replay-role"):
        Restamper(keydir.signers["robot-a"])


def test_replay_cli_summary_with_a_key_file(keydir: KeyDir, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=3)
    key_file = keydir.path / "replay" / "replay.key.pem"
    code = main(["replay", str(path), "--bus", "memory://rp-cli", "--rate", "50", "--restamp",
                 str(key_file), "--keys", str(keydir.path), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    assert summary["published"] == len(written)
    assert summary["restamped"] is True
    assert summary["passes"] == 1
    assert summary["skipped"] == {}
    code = main(["replay", str(tmp_path / "missing.mcap"), "--bus", "memory://rp-cli",
                 "--json"])
    assert code == 1
    assert "no such file" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("argv", [
    ["replay", "x.mcap", "--bus", "memory://x", "--topics", "vla/v1/#/frame"],
    ["record", "--bus", "memory://x", "-o", "x.mcap", "--topics", "vla/+x"],
    ["log", "cat", "x.mcap", "--topics", ""],
    ["log", "export", "x.mcap", "out", "--topics", "$share/g/vla/#"],
    ["log", "evaluate", "x.mcap", "--topics", "a\0b"],
])
def test_an_invalid_topics_pattern_is_a_usage_error(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught by argparse, before a file is opened or a bus reached, with the reason."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "invalid topic filter" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
