"""A local Mosquitto running a rendered configuration on a loopback port.

``LocalMosquitto(out).start()`` runs that configuration on a free loopback port and returns its
URL; ``stop()``, ``restart()`` (same port), ``reload()`` and ``kill()`` serve fault tests,
demos and development fleets.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from vlabus.broker.render import (
    BrokerError,
    client_options,
    is_tls,
    listener_of,
    with_port,
)
from vlabus.bus.transport import TransportOptions


class LocalMosquitto:
    """A Mosquitto process running a rendered configuration on a loopback port.

    ``port=0`` picks a free port at the first start; ``restart()`` keeps it, so clients can
    reconnect. Use as a context manager or call ``stop()``. Logs go to ``DIR/mosquitto.log``.
    """

    def __init__(self, config_dir: str | Path, port: int = 0, *, executable: str = "mosquitto",
                 start_timeout_s: float = 10.0) -> None:
        self.config_dir = Path(config_dir).resolve()
        self.port = port
        self.host = "127.0.0.1"
        self.executable = executable
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "mqtts" if is_tls(self.config_dir) else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def options(self, identity: str, client_id: str | None = None,
                **options: Any) -> TransportOptions:
        """Transport options for ``identity`` on this broker (see :func:`client_options`)."""
        return client_options(self.config_dir, identity, client_id, **options)

    def start(self) -> str:
        """Start the broker and wait until it accepts connections; returns its URL."""
        if self.running:
            return self.url
        choose = self.port == 0
        for _ in range(5 if choose else 1):
            if choose:
                self.port = free_port()
            try:
                self._launch()
                return self.url
            except BrokerError:
                if not choose or "in use" not in self.log_tail():
                    raise
        raise BrokerError(f"no free port for mosquitto after 5 tries:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: the broker saves its persistence file first)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> str:
        """Stop and start again on the same port."""
        self.stop()
        return self.start()

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its configuration and password file again (a dev broker
        then admits identities added by a new ``render``). The dynamic-security plugin does
        not re-read its file: a fleet broker takes changes through :func:`sync_access`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGHUP)

    def wait(self) -> int:
        """Block until the broker exits; its exit status."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log and its stderr."""
        text = ""
        for name in ("mosquitto.stderr", "mosquitto.log"):
            path = self.config_dir / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def __enter__(self) -> LocalMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self) -> None:
        conf = self.config_dir / "mosquitto.conf"
        if not conf.exists():
            raise BrokerError(f"{conf} not found (run `vlabus broker render`)")
        text = with_port(conf.read_text(), self.port)
        _, self.host = listener_of(text)
        if os.geteuid() == 0:
            # Mosquitto drops root to user "mosquitto", which cannot read our 0600 key files.
            text += f"\nuser {pwd.getpwuid(os.getuid()).pw_name}\n"
        run_conf = self.config_dir / "mosquitto.run.conf"
        run_conf.write_text(text)
        errors = self.config_dir / "mosquitto.stderr"
        try:
            with errors.open("wb") as err_file:
                self._proc = subprocess.Popen(
                    [self.executable, "-c", str(run_conf)],
                    stdin=subprocess.DEVNULL, stdout=err_file, stderr=err_file)
        except OSError as exc:
            raise BrokerError(f"cannot run {self.executable!r}: {exc}") from exc
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise BrokerError(f"mosquitto exited at start: {errors.read_text(errors='replace')}"
                                  f"\n{self.log_tail()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)  # polling a port that is not open yet; not synchronisation
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.port} in {self.start_timeout_s} s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


