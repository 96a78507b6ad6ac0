"""``vlabus fl serve`` as a user runs it: flags, errors with exit codes, the JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.keys import KeyDir
from vlabus.bus.memory import broker_for
from vlabus.cli import main

pytest.importorskip("opacus")


def serve(keydir: KeyDir, *extra: str) -> list[str]:
    return ["fl", "serve", "--bus", "memory://fl-cli", "--keys", str(keydir.path), "--model",
            "edge", *extra, "--json"]


def test_a_round_nobody_answers_is_reported_and_the_base_is_released(
        keydir: KeyDir, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(serve(keydir, "--rounds", "1", "--min-clients", "1", "--round-timeout", "0.2"))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    [report] = [line["round"] for line in lines if "round" in line]
    assert report["participants"] == []
    assert "fewer than --min-clients 1" in report["detail"]
    summary = lines[-1]
    assert summary["exit_code"] == 0
    assert summary["version"] == 1  # the base went out as release v1; nothing after it
    assert 0 < summary["noise_multiplier"] < 100  # calibrated for ε 8 at δ 1e-5 over 1 round
    retained = broker_for("fl-cli").retained
    assert {"vla/v1/models/edge/manifest", "vla/v1/models/edge/fl-round",
            "vla/v1/models/edge/fl-result"} <= set(retained)


@pytest.mark.parametrize(("flags", "message"), [
    (["--rounds", "0", "--min-clients", "1", "--round-timeout", "1"], "must be positive"),
    (["--rounds", "1", "--min-clients", "1", "--round-timeout", "1", "--dp-delta", "2"],
     "--dp-delta"),
    (["--rounds", "1", "--min-clients", "1", "--round-timeout", "1", "--eval", "/nonexistent"],
     "no such recording"),
    (["--rounds", "1", "--min-clients", "1", "--round-timeout", "1", "--trainable", "nothing."],
     "no tensor"),
])
def test_bad_flags_exit_1_with_the_reason(keydir: KeyDir, capsys: pytest.CaptureFixture[str],
                                          flags: list[str], message: str) -> None:
    assert main(serve(keydir, *flags)) == 1
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert message in summary["error"]


def test_an_unusable_held_out_recording_exits_1(keydir: KeyDir, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.mcap"
    from vlabus.log.record import Recorder

    Recorder(empty).close()
    code = main(serve(keydir, "--rounds", "1", "--min-clients", "1", "--round-timeout", "1",
                      "--eval", str(empty)))
    assert code == 1
    assert "no frame with a recorded action" in json.loads(
        capsys.readouterr().out.splitlines()[-1])["error"]
