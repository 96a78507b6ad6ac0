"""The robot's experience buffer: bounded on disk, oldest dropped, survives a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.fl.buffer import ExperienceBuffer, segments
from vlabus.policy import Observation


def pair(i: int) -> tuple[Observation, np.ndarray]:
    image = np.full((8, 8, 3), i % 256, np.uint8)
    obs = Observation(images={"front": image}, command=f"step {i}",
                      state=np.full(4, i, np.float32))
    return obs, np.full((2, 3), i, np.float32)


def test_pairs_come_back_as_written(tmp_path: Path) -> None:
    buffer = ExperienceBuffer(tmp_path, segment=4)
    for i in range(10):
        buffer.add(*pair(i))
    buffer.close()
    assert len(buffer) == 10  # two full segments and the partial one written by close()
    examples = buffer.sample(10, np.random.default_rng(0))
    assert sorted(int(ex.action[0, 0]) for ex in examples) == list(range(10))
    for ex in examples:
        i = int(ex.action[0, 0])
        assert ex.observation.command == f"step {i}"
        assert ex.observation.images["front"].shape == (8, 8, 3)
        assert (ex.observation.images["front"] == i).all()
        np.testing.assert_array_equal(ex.observation.state, np.full(4, i, np.float32))


def test_the_size_cap_drops_the_oldest_segments(tmp_path: Path) -> None:
    probe = ExperienceBuffer(tmp_path / "probe", segment=4)
    for i in range(4):
        probe.add(*pair(i))
    probe.close()
    one_segment = next((tmp_path / "probe").iterdir()).stat().st_size
    buffer = ExperienceBuffer(tmp_path / "capped", segment=4, max_bytes=int(3.5 * one_segment),
                              pending=16)
    for i in range(40):
        buffer.add(*pair(i))
    buffer.close()
    assert buffer.dropped == 0
    kept = segments(tmp_path / "capped")
    assert len(kept) == 3
    assert len(buffer) == 12
    actions = sorted(int(ex.action[0, 0]) for ex in buffer.sample(100,
                                                                  np.random.default_rng(1)))
    assert actions == list(range(28, 40))  # the newest pairs


def test_a_restarted_robot_keeps_its_pairs_and_continues_the_sequence(tmp_path: Path) -> None:
    first = ExperienceBuffer(tmp_path, segment=2)
    for i in range(4):
        first.add(*pair(i))
    first.close()
    (tmp_path / "seg-000000000099-2.tmp").write_bytes(b"half a segment")  # crash leftover
    second = ExperienceBuffer(tmp_path, segment=2)
    assert len(second) == 4
    assert not list(tmp_path.glob("*.tmp"))
    for i in range(4, 6):
        second.add(*pair(i))
    second.close()
    assert [seq for seq, _ in segments(tmp_path)] == [0, 1, 2]
    assert len(second) == 6


def test_a_damaged_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    buffer = ExperienceBuffer(tmp_path, segment=2)
    for i in range(4):
        buffer.add(*pair(i))
    buffer.close()
    seq, count = segments(tmp_path)[0]
    (tmp_path / f"seg-{seq:012d}-{count}.msgpack").write_bytes(b"\xc1 not msgpack")
    examples = buffer.sample(4, np.random.default_rng(0))
    assert len(examples) == 2
    assert buffer.corrupt == 1
