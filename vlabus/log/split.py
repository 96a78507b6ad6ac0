"""A recording split into parts, like ``ros2 bag record --max-bag-size/--max-bag-duration``.

``SplitRecorder("run.mcap", max_bytes=..., max_seconds=...)`` writes ``run-0001.mcap``,
``run-0002.mcap``, … and starts the next part once the current one holds ``max_bytes`` of
messages or has been open ``max_seconds``. Numbering continues after the highest part already
in the folder, so a restarted recorder (a container restarting) never replaces a part. Each
part is a complete MCAP file with its own summary; it has the interface of
:class:`~vlabus.log.record.Recorder` that :func:`~vlabus.log.record.record_from` uses.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlabus.log.record import Compression, Recorder


def part_path(base: Path, index: int) -> Path:
    """``base`` = ``dir/run.mcap`` → ``dir/run-0007.mcap``."""
    return base.with_name(f"{base.stem}-{index:04d}{base.suffix or '.mcap'}")


def next_index(base: Path) -> int:
    """One past the highest part number of ``base`` already on disk (1 when none)."""
    pattern = re.compile(re.escape(base.stem) + r"-(\d{4,})" + re.escape(base.suffix or ".mcap"))
    found = [int(m.group(1)) for p in base.parent.glob(f"{base.stem}-*")
             if (m := pattern.fullmatch(p.name))]
    return max(found, default=0) + 1


class SplitRecorder:
    """Rolls :class:`Recorder` parts by size and/or age; counters add up over all parts."""

    def __init__(self, base: str | Path, *, max_bytes: int | None = None,
                 max_seconds: float | None = None, flush_interval_s: float = 1.0,
                 chunk_size: int = 64 << 10, compression: Compression = "none",
                 metadata: Mapping[str, str] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if max_bytes is None and max_seconds is None:
            raise ValueError("a split recording needs max_bytes or max_seconds")
        self.base = Path(base)
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.flush_interval_s = flush_interval_s
        self._options: dict[str, Any] = {"flush_interval_s": flush_interval_s,
                                          "chunk_size": chunk_size, "compression": compression,
                                          "metadata": metadata, "monotonic": monotonic}
        self._monotonic = monotonic
        self._index = next_index(self.base)
        self.parts: list[Path] = []
        self._done: dict[str, int] = {}
        self._topics: dict[str, None] = {}
        self._current = self._open()

    def _open(self) -> Recorder:
        path = part_path(self.base, self._index)
        self._index += 1
        recorder = Recorder(path, **self._options)  # refuses an existing part
        self.parts.append(path)
        self._opened = self._monotonic()
        return recorder

    def _roll_due(self) -> bool:
        current = self._current
        if self.max_bytes is not None and current.bytes >= self.max_bytes:
            return True
        return (self.max_seconds is not None and current.messages > 0
                and self._monotonic() - self._opened >= self.max_seconds)

    def _roll(self) -> None:
        old = self._current
        old.close()
        for key, value in old.counters().items():
            self._done[key] = self._done.get(key, 0) + value
        self._topics.update(dict.fromkeys(old.topics))
        self._current = self._open()

    @property
    def path(self) -> Path:
        """The part being written."""
        return self._current.path

    @property
    def error(self) -> str | None:
        return self._current.error

    @property
    def failed(self) -> bool:
        return self._current.failed

    @property
    def messages(self) -> int:
        return self._done.get("messages", 0) + self._current.messages

    @property
    def bytes(self) -> int:
        return self._done.get("bytes", 0) + self._current.bytes

    @property
    def topics(self) -> list[str]:
        return list({**self._topics, **dict.fromkeys(self._current.topics)})

    def counters(self) -> dict[str, int]:
        now = self._current.counters()
        total = {key: self._done.get(key, 0) + value for key, value in now.items()}
        total["channels"] = len(self.topics)
        total["parts"] = len(self.parts)
        return total

    def write(self, topic: str, payload: builtins.bytes | bytearray | memoryview, received_ns: int,
              sent_ns: int | None = None) -> None:
        """Record one message, in a new part first when the current one is full or old."""
        if self._roll_due():
            self._roll()
        self._current.write(topic, payload, received_ns, sent_ns)

    def tick(self) -> None:
        """Flush on the interval; start the next part when the current one is too old."""
        if self._roll_due():
            self._roll()
        self._current.tick()

    def flush(self) -> None:
        self._current.flush()

    def close(self) -> None:
        self._current.close()

    def __enter__(self) -> SplitRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
