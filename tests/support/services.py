"""Run a deployment's services here the way Docker or Kubernetes would start them.

No container engine runs on the test machines, so a service's command runs as a local process
of the *installed* vlabus (see ``tests/support/install.py``), with each container path mapped
to a folder standing for the volume mounted there. The same mapping serves docker-compose.yml
and the Kubernetes manifests, so both are exercised with the commands they really contain.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}``; ``$$`` is a literal ``$``."""
    marker = "\x00"
    text = text.replace("$$", marker)
    text = _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), text)
    return text.replace(marker, "$")


@dataclass
class Mounts:
    """Container path → local folder, longest container path first when mapping."""

    paths: dict[str, Path] = field(default_factory=dict)

    def add(self, container: str, local: Path) -> None:
        local.mkdir(parents=True, exist_ok=True)
        self.paths[container.rstrip("/")] = local

    def map(self, text: str) -> str:
        """``text`` with every container path (at a path boundary) replaced by its folder."""
        for container in sorted(self.paths, key=len, reverse=True):
            text = re.sub(re.escape(container) + r"(?=/|$|[\s\"';:])",
                          str(self.paths[container]).replace("\\", "\\\\"), text)
        return text


def compose_mounts(service: dict[str, object], root: Path, project: Path) -> Mounts:
    """A compose service's ``volumes`` (named volumes and bind mounts) as local folders:
    named volume NAME → ``root/volumes/NAME`` (shared between services like the real one),
    bind mount ``./X`` → ``project/X``."""
    mounts = Mounts()
    for spec in service.get("volumes", []):  # type: ignore[attr-defined]
        source, target = str(spec).split(":")[:2]
        if source.startswith((".", "/")):
            mounts.add(target, project / source)
        else:
            mounts.add(target, root / "volumes" / source)
    return mounts


def command_env(env: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` plus a service's environment, without anything pointing at the checkout."""
    out = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    out.update(extra or {})
    return out


def without_root_only(script: str) -> str:
    """A setup script minus ``chown``/``chmod`` lines, which need the container's root."""
    return re.sub(r"^\s*(chown|chmod) .*$", "", script, flags=re.M)


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def local_device(args: list[str]) -> list[str]:
    """``--device cuda`` → ``cpu`` on a machine without a GPU, so a GPU service still runs
    its command (everything but the device) here."""
    if "--device" in args and not cuda_available():
        args = list(args)
        args[args.index("--device") + 1] = "cpu"
    return args


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (a port or address that must differ here)."""
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def environ() -> dict[str, str]:
    return dict(os.environ)
