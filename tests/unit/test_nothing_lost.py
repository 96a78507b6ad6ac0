"""Nothing is lost silently: an existing recording is never replaced, split recordings roll into
numbered parts, usage errors stop before anything connects, and `log info` speaks human time."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.cli import main
from vlabus.cli.record import record_command, register
from vlabus.log.reader import iter_log
from vlabus.log.record import Recorder, RecordError
from vlabus.log.split import SplitRecorder, next_index, part_path
from vlabus.wire import Encoder

#: a bus nothing listens on: a command that tried to connect would fail differently
NOWHERE = "zmq://127.0.0.1:9"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def write_recording(path: Path, keydir: KeyDir, count: int = 5, spacing_ns: int = 10**9) -> None:
    encoder = Encoder(keydir.signers["robot-a"])
    with Recorder(path) as recorder:
        for step in range(count):
            recorder.write("vla/v1/robot-a/frame", encoder.encode(make_frame("robot-a", step)),
                           1_700_000_000_000_000_000 + step * spacing_ns)


def test_record_refuses_an_existing_output_and_leaves_it_byte_identical(
        keydir: KeyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    existing = tmp_path / "fleet.mcap"
    write_recording(existing, keydir)
    before = hashlib.sha256(existing.read_bytes()).hexdigest()
    code, _, err = run_cli(capsys, "record", "-o", str(existing), "--bus", NOWHERE,
                       "--duration", "1")
    assert code != 0
    assert "exists" in err, err
    assert "--overwrite" in err
    assert "cannot reach" not in err  # refused before connecting
    assert hashlib.sha256(existing.read_bytes()).hexdigest() == before


def test_overwrite_replaces_on_request(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "again.mcap"
    write_recording(path, keydir, count=3)
    with pytest.raises(RecordError, match="exists"):
        Recorder(path)
    with Recorder(path, overwrite=True) as recorder:
        recorder.write("vla/v1/robot-a/frame", b"plain", 1)
    assert [r.data for r in iter_log(path)] == [b"plain"]


def test_split_by_size_rolls_numbered_parts_and_keeps_every_message(
        keydir: KeyDir, tmp_path: Path) -> None:
    base = tmp_path / "run.mcap"
    encoder = Encoder(keydir.signers["robot-a"])
    payloads = [encoder.encode(make_frame("robot-a", step)) for step in range(12)]
    with SplitRecorder(base, max_bytes=len(payloads[0]) * 4 + 1) as recorder:
        for step, payload in enumerate(payloads):
            recorder.write("vla/v1/robot-a/frame", payload, 1000 + step)
        parts = list(recorder.parts)
        assert recorder.counters()["messages"] == 12
    assert [p.name for p in parts] == ["run-0001.mcap", "run-0002.mcap", "run-0003.mcap"]
    assert not base.exists()
    read = [bytes(r.data) for part in parts for r in iter_log(part)]
    assert read == payloads


def test_split_by_duration_on_a_virtual_clock(tmp_path: Path) -> None:
    now = [0.0]
    base = tmp_path / "timed.mcap"
    with SplitRecorder(base, max_seconds=10, monotonic=lambda: now[0]) as recorder:
        for second in range(25):
            now[0] = float(second)
            recorder.write("t/x", b"m", second)
        assert [p.name for p in recorder.parts] == [
            "timed-0001.mcap", "timed-0002.mcap", "timed-0003.mcap"]
    assert [len(list(iter_log(p))) for p in recorder.parts] == [10, 10, 5]


def test_a_restarted_split_recorder_continues_numbering(tmp_path: Path) -> None:
    base = tmp_path / "fleet.mcap"
    for _ in range(2):
        with SplitRecorder(base, max_seconds=60) as recorder:
            recorder.write("t/x", b"m", 1)
    assert next_index(base) == 3
    assert part_path(base, 3).name == "fleet-0003.mcap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet-0001.mcap", "fleet-0002.mcap"]


def test_record_cli_splits_live_traffic(keydir: KeyDir, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    reset_memory("split-cli")
    base = tmp_path / "live.mcap"
    encoder = Encoder(keydir.signers["robot-a"])

    async def scenario() -> int:
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers())
        args = parser.parse_args(["record", "-o", str(base), "--bus", "memory://split-cli",
                                  "--split-size", "2K", "--quiet", "--json"])
        task = asyncio.create_task(record_command(args))
        publisher = await open_transport("memory://split-cli",
                                         TransportOptions(client_id="pub"))
        while not base.with_name("live-0001.mcap").exists():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the recorder subscribes right after creating the part
        for step in range(20):
            await publisher.publish("vla/v1/robot-a/frame",
                                    encoder.encode(make_frame("robot-a", step)))
        while not task.done() and len(list(tmp_path.glob("live-*.mcap"))) < 2:
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        summary = await asyncio.wait_for(task, 10)
        await publisher.close()
        assert summary["exit_code"] == 0, summary
        return len(summary["parts"])

    assert asyncio.run(scenario()) >= 2
    total = sum(len(list(iter_log(p))) for p in sorted(tmp_path.glob("live-*.mcap")))
    assert total == 20


@pytest.mark.parametrize(("argv", "flag"), [
    (["replay", "x.mcap", "--rate", "0"], "--rate"),
    (["worker", "--keys", "k", "--id", "w", "--max-batch", "0"], "--max-batch"),
    (["worker", "--keys", "k", "--id", "w", "--queue-size", "-3"], "--queue-size"),
    (["record", "-o", "x.mcap", "--split-size", "0"], "--split-size"),
    (["record", "-o", "x.mcap", "--split-duration", "nan"], "--split-duration"),
    (["replay", "x.mcap", "--start-offset", "-1"], "--start-offset"),
])
def test_usage_errors_exit_2_with_one_line_before_connecting(
        argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *argv, "--bus", NOWHERE)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert flag in last, err
    assert "Traceback" not in err
    assert out == ""


def test_replay_start_offset_past_the_end_is_an_error(
        keydir: KeyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "short.mcap"
    write_recording(path, keydir, count=5)  # 4 s long
    code, out, _ = run_cli(capsys, "replay", str(path), "--bus", NOWHERE, "--start-offset", "9",
                       "--json")
    assert code == 2
    summary = json.loads(out)
    assert "past the end" in summary["error"]
    assert "4.000 s" in summary["error"]


def test_log_info_shows_human_times(keydir: KeyDir, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "info.mcap"
    write_recording(path, keydir, count=5, spacing_ns=30 * 10**9)  # two minutes
    code, out, _ = run_cli(capsys, "log", "info", str(path))
    assert code == 0
    assert "start      2023-11-14 22:13:20.000 UTC" in out
    assert "end        2023-11-14 22:15:20.000 UTC" in out
    assert "duration   2 min 00.0 s" in out
    code, out, _ = run_cli(capsys, "log", "info", str(path), "--json")
    doc = json.loads(out)
    assert doc["start"] == "2023-11-14 22:13:20.000 UTC"
    assert doc["start_ns"] == 1_700_000_000_000_000_000
