"""``vlabus log``: info, cat, recover, export, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import msgspec
import pytest
from mcap.reader import make_reader

from security.seal import Opener, PoolSecret
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.logs import write_log
from vlabus.cli import main
from vlabus.envelope import SENDER_ROLES
from vlabus.log.formats import DECISION
from vlabus.log.reader import LogError, iter_log, recover
from vlabus.log.record import Recorder
from vlabus.log.replay import Restamper
from vlabus.log.view import cat, kind_schema
from vlabus.wire import Decoder, Encoder


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_info_counts_topics_senders_and_time(keydir: KeyDir, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=5, period_ns=10_000_000, start_ns=10**18)
    code, out = run_cli(capsys, "log", "info", str(path), "--json")
    info = json.loads(out)
    assert code == 0
    assert info["messages"] == len(written) == 20
    assert info["payload_bytes"] == sum(len(w) for _t, w, _l in written)
    assert info["start_ns"] == 10**18
    assert info["end_ns"] == 10**18 + 4 * 10_000_000 + 1000 + 5_000_000
    assert info["senders"] == {"robot-a": 5, "robot-b": 5, "worker-1": 10}
    assert info["topics"]["vla/v1/robot-a/action"]["kinds"] == {"action": 5}
    assert info["not_envelope"] == 0


def test_cat_summarises_arrays_and_reports_verification(keydir: KeyDir, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=2, robots=("robot-a",))
    forged = bytearray(written[0][1])
    forged[-70] ^= 1
    with Recorder(tmp_path / "mixed.mcap") as recorder:
        for topic, wire, log_ns in written:
            recorder.write(topic, wire, log_ns)
        recorder.write(written[0][0], bytes(forged), written[-1][2] + 1)
    code, out = run_cli(capsys, "log", "cat", str(tmp_path / "mixed.mcap"),
                        "--keys", str(keydir.path))
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [d["verified"] for d in docs] == [True] * len(written) + [False]
    assert docs[-1]["error"]["reason"] == "bad_signature"
    frame = docs[0]
    assert frame["kind"] == "frame"
    assert frame["header"]["sender"] == "robot-a"
    assert frame["message"]["state"] == {"dtype": "float32", "shape": [7], "min": 0.0,
                                         "max": 6.0}
    assert frame["message"]["cameras"]["front"]["data"] == 16 * 16 * 3  # length, not pixels
    action = docs[1]
    assert action["message"]["actions"]["shape"] == [4, 7]
    # Without keys: parsed, not verified, and the forged body still parses.
    code, out = run_cli(capsys, "log", "cat", str(tmp_path / "mixed.mcap"), "--topics",
                        "vla/v1/+/frame")
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["verified"] for d in docs] == [None, None, None]
    assert {d["kind"] for d in docs} == {"frame"}


def test_recover_of_a_complete_file_keeps_everything(keydir: KeyDir, tmp_path: Path) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=5)
    result = recover(path, tmp_path / "copy.mcap")
    assert result.complete
    assert result.messages == len(written)
    assert [r.data for r in iter_log(path)] == [r.data for r in iter_log(tmp_path / "copy.mcap")]


def test_recover_of_a_truncated_file_keeps_whole_chunks(keydir: KeyDir, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=40)
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(LogError, match="recover"):
        list(iter_log(cut))
    code, out = run_cli(capsys, "log", "recover", str(cut), str(tmp_path / "fixed.mcap"),
                        "--json")
    result = json.loads(out)
    assert code == 0
    assert not result["complete"]
    assert 0 < result["messages"] < len(written)
    recovered = [r.data for r in iter_log(tmp_path / "fixed.mcap")]
    assert len(recovered) == result["messages"]
    assert set(recovered) <= {w for _t, w, _l in written}


def test_export_is_json_mcap_valid_against_its_schemas(keydir: KeyDir, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=3)
    out_path = tmp_path / "foxglove.mcap"
    code, out = run_cli(capsys, "log", "export", str(path), str(out_path), "--json")
    assert code == 0
    assert json.loads(out) == {"messages": len(written), "skipped": 0}
    with open(out_path, "rb") as stream:
        rows = list(make_reader(stream).iter_messages())
    assert len(rows) == len(written)
    for schema, channel, message in rows:
        assert channel.message_encoding == "json"
        assert schema is not None
        assert schema.encoding == "jsonschema"
        doc = json.loads(message.data)
        jsonschema.validate(doc, json.loads(schema.data))
    action = next(json.loads(m.data) for _s, c, m in rows if c.topic.endswith("/action"))
    assert len(action["message"]["actions"]["values"]) == 28  # small arrays carry values


def test_kind_schema_rejects_a_wrong_document() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"header": {}, "message": {}}, kind_schema("frame"))


@pytest.mark.parametrize(("offset", "mae"), [(0.0, 0.0), (0.5, 0.5)])
def test_evaluate_compares_policy_with_recorded_actions(
        keydir: KeyDir, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        offset: float, mae: float) -> None:
    path = tmp_path / "log.mcap"
    write_log(path, keydir.signers, steps=6, action_offset=offset)
    code, out = run_cli(capsys, "log", "evaluate", str(path), "--policy",
                        "tests.support.policies:step_policy", "--keys", str(keydir.path), "--json")
    result = json.loads(out)
    assert code == 0
    assert result["frames"] == 12
    assert result["actions"] == 12
    assert result["unmatched_frames"] == 0
    overall = result["overall"]
    assert overall["count"] == 12
    assert overall["elements"] == 12 * 28
    assert overall["mean_abs_error"] == pytest.approx(mae)
    assert overall["rmse"] == pytest.approx(mae)
    assert overall["max_abs_error"] == pytest.approx(mae)
    assert set(result["robots"]) == {"robot-a", "robot-b"}
    assert result["robots"]["robot-a"]["count"] == 6


def test_evaluate_counts_frames_without_an_answer(keydir: KeyDir, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log.mcap"
    written = write_log(path, keydir.signers, steps=3, robots=("robot-a",))
    frames_only = tmp_path / "frames.mcap"
    with Recorder(frames_only) as recorder:
        for topic, wire, log_ns in written:
            if topic.endswith("/frame"):
                recorder.write(topic, wire, log_ns)
    code, out = run_cli(capsys, "log", "evaluate", str(frames_only), "--policy",
                        "tests.support.policies:step_policy", "--json")
    result = json.loads(out)
    assert code == 0
    assert result["unmatched_frames"] == 3
    assert result["overall"]["count"] == 0


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "info", str(tmp_path / "nope.mcap")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_decision_records_show_in_cat_and_export(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edge.mcap"
    decision = msgspec.msgpack.encode({"step": 3, "source": "fallback", "action": [0.5, 1.5]})
    with Recorder(path) as recorder:
        recorder.write("vla/v1/robot-a/decision", decision, 10, channel=DECISION)
        recorder.write("vla/v1/robot-a/decision", b"\xc1 not msgpack", 11, channel=DECISION)
    code, out = run_cli(capsys, "log", "cat", str(path))
    first, second = (json.loads(line) for line in out.splitlines())
    assert code == 0
    assert first["kind"] == "decision"
    assert first["message"] == {"step": 3, "source": "fallback", "action": [0.5, 1.5]}
    assert second["error"]["reason"] == "malformed"
    code, out = run_cli(capsys, "log", "export", str(path), str(tmp_path / "x.mcap"), "--json")
    assert json.loads(out) == {"messages": 1, "skipped": 1}
    with open(tmp_path / "x.mcap", "rb") as stream:
        (schema, _channel, message), = make_reader(stream).iter_messages()
    assert schema is not None
    jsonschema.validate(json.loads(message.data), json.loads(schema.data))


def test_sealed_frames_need_the_pool_secret(keydir: KeyDir, tmp_path: Path) -> None:
    secret = PoolSecret.generate("pool-a")
    encoder = Encoder(keydir.signers["robot-a"], seal_to=secret.public)
    path = tmp_path / "sealed.mcap"
    with Recorder(path) as recorder:
        recorder.write("vla/v1/robot-a/frame", encoder.encode(make_frame("robot-a", 1)), 1)
    (closed,) = cat(path, keyring=keydir.ring)
    assert closed["error"]["reason"] == "unsupported"
    (opened,) = cat(path, keyring=keydir.ring, opener=Opener([secret]))
    assert opened["verified"] is True
    assert opened["message"]["step"] == 1
    restamped = Restamper(keydir.signers["replay"], keyring=keydir.ring,
                          opener=Opener([secret])).restamp(next(iter_log(path)).data)
    roles = dict(SENDER_ROLES)
    roles["frame"] = roles["frame"] | {"replay"}
    received = Decoder(keydir.ring, sender_roles=roles).decode(restamped)
    assert received.message.step == 1  # type: ignore[union-attr]
