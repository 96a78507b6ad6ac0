"""A bounded on-disk buffer of (observation, cloud action chunk) pairs; never sent anywhere.

The agent adds a pair for every step the cloud answered on time (:meth:`ExperienceBuffer.add`,
called on the control loop: it copies the arrays and returns). Pairs are grouped into segments
of ``segment`` records; a full segment is written by a background thread as one MessagePack
file (``seg-SEQUENCE-COUNT.msgpack``, written to a temporary name and renamed, so a crash leaves
whole segments only) and the oldest segments are deleted while the directory is over
``max_bytes``. A restarted robot finds its segments again. The partial segment is written by
:meth:`close`. Only the local trainer reads the files.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from vlabus.policy import Observation

log = logging.getLogger(__name__)
_SEGMENT = re.compile(r"^seg-(\d{12})-(\d{1,6})\.msgpack$")
Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Example:
    observation: Observation
    action: npt.NDArray[np.float32]  # the cloud's HxD chunk


def _record(observation: Observation, chunk: npt.NDArray[np.float32]) -> Record:
    return {
        "images": {name: {"shape": list(img.shape), "data": np.ascontiguousarray(
            img, np.uint8).tobytes()} for name, img in observation.images.items()},
        "command": observation.command,
        "state": np.ascontiguousarray(observation.state, np.float32).tobytes(),
        "action": np.ascontiguousarray(chunk, np.float32).tobytes(),
        "action_shape": list(chunk.shape),
    }


def _example(record: Record) -> Example:
    images = {str(name): np.frombuffer(img["data"], np.uint8).reshape(img["shape"])
              for name, img in record["images"].items()}
    state = np.frombuffer(record["state"], np.float32)
    action = np.frombuffer(record["action"], np.float32).reshape(record["action_shape"])
    return Example(Observation(images=images, command=str(record["command"]), state=state),
                   action)


def _path(directory: Path, seq: int, count: int) -> Path:
    return directory / f"seg-{seq:012d}-{count}.msgpack"


def segments(directory: Path) -> list[tuple[int, int]]:
    """(sequence, pair count) of every whole segment in ``directory``, oldest first."""
    found = []
    for path in directory.iterdir():
        match = _SEGMENT.match(path.name)
        if match:
            found.append((int(match[1]), int(match[2])))
    return sorted(found)


def sample(directory: Path, count: int, rng: np.random.Generator) -> tuple[list[Example], int]:
    """``count`` distinct pairs drawn uniformly from the segments in ``directory`` (fewer when
    it holds fewer), and how many segment files could not be read. Reads only the segments
    that hold a drawn pair; safe while a writer adds segments."""
    found = segments(directory)
    total = sum(n for _, n in found)
    picks: list[int] = sorted(int(i) for i in rng.choice(total, size=min(count, total),
                                                          replace=False)) if total else []
    out: list[Example] = []
    corrupt = 0
    start, index = 0, 0
    for seq, n in found:
        wanted = []
        while index < len(picks) and picks[index] < start + n:
            wanted.append(picks[index] - start)
            index += 1
        if wanted:
            try:
                records = msgpack.unpackb(_path(directory, seq, n).read_bytes(), raw=False)
                out.extend(_example(records[i]) for i in wanted)
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                corrupt += 1  # a file deleted by the size cap meanwhile, or damaged
                log.warning("experience segment %d unreadable: %r", seq, exc)
        start += n
    return out, corrupt


class ExperienceBuffer:
    """See the module docstring. ``add`` is for the control loop; the rest for the trainer."""

    def __init__(self, directory: str | Path, *, max_bytes: int = 256 << 20,
                 segment: int = 64, pending: int = 4) -> None:
        if max_bytes <= 0 or segment < 1:
            raise ValueError("max_bytes and segment must be positive")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment = segment
        self.dropped = 0  # segments not written because the writer fell behind
        self.corrupt = 0  # segment files that could not be read
        self._current: list[Record] = []
        self._lock = threading.Lock()
        for stale in self.directory.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self._seq = max((s for s, _ in self._segments()), default=-1) + 1
        self._queue: queue.Queue[list[Record] | None] = queue.Queue(pending)
        self._writer = threading.Thread(target=self._write_loop, name="fl-buffer", daemon=True)
        self._writer.start()

    def _segments(self) -> list[tuple[int, int]]:
        return segments(self.directory)

    def _path(self, seq: int, count: int) -> Path:
        return _path(self.directory, seq, count)

    def add(self, observation: Observation, chunk: npt.NDArray[np.float32]) -> None:
        """Keep one pair (copied); a full segment goes to the writer thread."""
        record = _record(observation, chunk)
        with self._lock:
            self._current.append(record)
            if len(self._current) < self.segment:
                return
            full, self._current = self._current, []
        try:
            self._queue.put_nowait(full)
        except queue.Full:
            self.dropped += 1

    def __len__(self) -> int:
        """Pairs on disk (the partial segment in memory is not counted)."""
        return sum(count for _, count in self._segments())

    def sample(self, count: int, rng: np.random.Generator) -> list[Example]:
        """``count`` distinct pairs drawn uniformly from the segments on disk."""
        examples, corrupt = sample(self.directory, count, rng)
        self.corrupt += corrupt
        return examples

    def _write_loop(self) -> None:
        while True:
            records = self._queue.get()
            if records is None:
                return
            try:
                self._write(records)
            except OSError as exc:  # a full disk stops learning, never the robot
                log.error("experience segment not written: %r", exc)  # noqa: TRY400

    def _write(self, records: list[Record]) -> None:
        seq = self._seq
        self._seq += 1
        path = self._path(seq, len(records))
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.write(msgpack.packb(records, use_bin_type=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        segments = self._segments()
        sizes = {s: self._path(s, n).stat().st_size for s, n in segments}
        total = sum(sizes.values())
        for s, n in segments:  # oldest first
            if total <= self.max_bytes:
                break
            self._path(s, n).unlink(missing_ok=True)
            total -= sizes[s]

    def close(self) -> None:
        """Write the partial segment and stop the writer (blocking)."""
        with self._lock:
            rest, self._current = self._current, []
        if rest:
            self._queue.put(rest)
        self._queue.put(None)
        self._writer.join()
