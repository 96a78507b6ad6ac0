"""What ``vlabus doctor`` asks of the Mosquitto on this machine: its version, and whether it
loads the dynamic-security plugin the fleet configuration needs (known trap 2).

The plugin check starts the real broker for a moment on a free loopback port with an empty
dynamic-security configuration, and watches its log until it listens (loaded) or exits.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from vlabus.broker.render import DYNSEC_PLUGIN


def find_mosquitto() -> str | None:
    """The mosquitto executable on PATH or in /usr/sbin, or None."""
    return shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")


def mosquitto_version(executable: str) -> str | None:
    """``2.0.11`` for the broker at ``executable``; None when it does not answer ``-h``."""
    try:
        done = subprocess.run([executable, "-h"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"mosquitto version (\S+)", done.stdout + done.stderr)
    return found.group(1) if found else None


def dynsec_problem(executable: str, plugin: str = DYNSEC_PLUGIN,
                   timeout_s: float = 10.0) -> str | None:
    """None when ``executable`` starts with ``plugin`` loaded, else what went wrong (the
    broker's own error line)."""
    from vlabus.cli.procs import free_port

    if not Path(plugin).is_file():
        return f"the dynamic-security plugin is not at {plugin} (install mosquitto 2.x)"
    with tempfile.TemporaryDirectory(prefix="vlabus-doctor-") as tmp:
        folder = Path(tmp)
        data = {"defaultACLAccess": {"publishClientSend": False}, "clients": [], "groups": [],
                "roles": []}
        (folder / "dynamic-security.json").write_text(json.dumps(data))
        (folder / "mosquitto.conf").write_text(
            "per_listener_settings false\nallow_anonymous false\n"
            f"plugin {plugin}\nplugin_opt_config_file {folder}/dynamic-security.json\n"
            f"listener {free_port()} 127.0.0.1\nlog_dest stderr\npersistence false\n")
        # mosquitto started as root drops to its own user, which must read these files
        for path in (folder, *folder.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        process = subprocess.Popen([executable, "-c", str(folder / "mosquitto.conf")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        lines: list[str] = []
        # a broker that hangs silently is killed, which ends the read loop below
        watchdog = threading.Timer(timeout_s, process.kill)
        watchdog.start()
        try:
            for line in process.stderr:  # ends when the broker exits
                lines.append(line.strip())
                if "listen socket" in line:
                    return None
        finally:
            watchdog.cancel()
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            if process.poll() is None:
                process.kill()
                process.wait()
        errors = [line for line in lines if "rror" in line] or lines[-2:] or ["no output"]
        return f"mosquitto did not start with {plugin}: {' '.join(errors)}"
