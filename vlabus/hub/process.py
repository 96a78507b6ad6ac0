"""The hub in a child process (``vlabus hub``), for demos, benchmarks and fault tests.

``HubProcess().start()`` returns the hub's ``zmq://`` URL once it is bound; ``stop()`` sends
SIGTERM and returns the hub's JSON summary; ``kill()`` ends it abruptly, as a crash would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import deque
from typing import IO, Any

from schemas.errors import TransportError

_READY = "hub listening on "


class HubProcess:
    """``vlabus hub --bind BIND --json [ARGS...]`` as a child process."""

    def __init__(self, bind: str = "tcp://127.0.0.1:0", *args: str) -> None:
        self.bind = bind
        self.args = args
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self.log_tail: deque[str] = deque(maxlen=50)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start and wait until the hub is bound (its first stderr line); returns its URL."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "vlabus", "hub", "--bind", self.bind, "--json", *self.args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # EOF ("") if the process dies first
        if not line.startswith(_READY):
            proc.kill()
            _, err = proc.communicate()
            raise TransportError(f"vlabus hub did not start: {line}{err}".strip())
        self._proc = proc
        self.url = line[len(_READY):].split()[0]
        # Keep draining the hub's log, or a full pipe would block it; keep the tail for errors.
        threading.Thread(target=self._drain_log, args=(proc.stderr,), daemon=True).start()
        return self.url

    def _drain_log(self, stream: IO[str]) -> None:
        for line in stream:
            self.log_tail.append(line)

    def stop(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """SIGTERM, wait, and return the hub's final counters."""
        proc, self._proc = self._proc, None
        if proc is None:
            return {}
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise TransportError("vlabus hub did not stop on SIGTERM") from None
        if proc.returncode != 0:
            raise TransportError(f"vlabus hub exited with {proc.returncode}: "
                                 f"{''.join(self.log_tail).strip()}")
        summary: dict[str, Any] = json.loads(out)
        return summary

    def kill(self) -> None:
        """SIGKILL: no summary, no clean shutdown."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.communicate()

    def __enter__(self) -> HubProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self.kill()
