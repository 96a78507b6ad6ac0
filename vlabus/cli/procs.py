"""Child processes of ``vlabus demo`` and the compose smoke test: start, watch, stop, scrape.

Each child is a ``vlabus`` subcommand run by the current interpreter, its stdout (the JSON
summary) and stderr captured in files so a chatty child can never block on a full pipe.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

#: labels :class:`~vlabus.metrics.MetricsServer` adds to every series of a process
IDENTITY_LABELS = frozenset({"robot", "worker", "recorder"})


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """One ``vlabus`` child process."""

    name: str
    args: list[str]
    workdir: Path
    metrics_port: int | None = None
    #: how to run ``vlabus``: this interpreter's module by default, or an installed script
    program: list[str] = field(default_factory=lambda: [sys.executable, "-m", "vlabus"])
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _out: Any = field(default=None, repr=False)
    _err: Any = field(default=None, repr=False)

    def start(self) -> Child:
        self._out = open(self.workdir / f"{self.name}.{self.restarts}.out", "wb")  # noqa: SIM115
        self._err = open(self.workdir / f"{self.name}.{self.restarts}.err", "wb")  # noqa: SIM115
        env = dict(self.env if self.env is not None else os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [*self.program, *self.args],
            stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL, env=env,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, the broker or hub publishes the will."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait for a graceful exit; SIGKILL after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._close_files()
        return self.process.returncode

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        self._close_files()
        return code

    def restart(self) -> None:
        self.kill()
        self._close_files()
        self.restarts += 1
        self.start()

    def _close_files(self) -> None:
        for handle in (self._out, self._err):
            if handle is not None and not handle.closed:
                handle.close()

    def stdout_json(self) -> dict[str, Any] | None:
        """The last JSON object the latest run printed on stdout, if any."""
        path = self.workdir / f"{self.name}.{self.restarts}.out"
        for raw in reversed(path.read_text(errors="replace").splitlines()):
            line = raw.strip()
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    return value
        return None

    def stderr_tail(self, lines: int = 20) -> str:
        path = self.workdir / f"{self.name}.{self.restarts}.err"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def scrape(self, timeout: float = 0.5) -> dict[str, float]:
        """Current metric samples as ``{"name{label=value,...}": value}``; empty if down.
        The identity label every series of a process carries (``robot``, ``worker``,
        ``recorder``) is left out of the keys: one child is one identity."""
        if self.metrics_port is None or not self.running:
            return {}
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                text = reply.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                                  if k not in IDENTITY_LABELS)
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


def workdir(prefix: str = "vlabus-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
