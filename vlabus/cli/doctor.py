"""``vlabus doctor``: versions, and a loud failure when ``schemas``/``security`` are shadowed.

Unrelated PyPI distributions install top-level ``schemas`` and ``security`` modules; if one of
them wins the import, every message would be decoded by foreign code.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

OWN_PACKAGES = ("schemas", "security", "vlabus", "edge_agent", "cloud_workers")
LIBRARIES = ("numpy", "msgspec", "msgpack", "lz4", "blake3", "cryptography", "paho-mqtt",
             "pyzmq", "mcap", "prometheus-client", "safetensors", "simplejpeg", "torch")


def register(sub: Any) -> None:
    parser = sub.add_parser("doctor", help="check the installation")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def shadowed_packages() -> list[str]:
    """Problems where one of our top-level packages resolves outside this installation.

    Locates each package with ``find_spec`` rather than importing it, so a foreign package's
    import-time code never runs here.
    """
    home = Path(__file__).resolve().parents[2]
    problems = []
    owners = md.packages_distributions()
    for name in OWN_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as exc:
            problems.append(f"`{name}` cannot be located: {exc!r}")
            continue
        if spec is None or spec.origin is None:
            problems.append(f"`{name}` is not installed (or is a namespace package)")
            continue
        origin = Path(spec.origin).resolve()
        where = origin.parent if origin.name == "__init__.py" else origin
        if where.parent != home or origin.name != "__init__.py":
            problems.append(f"`{name}` imports from {where}, not from vlabus at {home}")
        others = sorted(set(owners.get(name, [])) - {"vlabus"})
        if others:
            problems.append(f"`{name}` is also installed by {', '.join(others)}")
    return problems


def run(args: argparse.Namespace) -> int:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    try:
        versions["vlabus"] = md.version("vlabus")
    except md.PackageNotFoundError:
        versions["vlabus"] = None
    report: dict[str, Any] = {
        "versions": versions,
        "mosquitto": shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto"),
        "problems": shadowed_packages(),
    }
    try:
        import zmq

        report["libzmq"] = zmq.zmq_version()
        report["curve"] = bool(zmq.has("curve"))
    except ImportError:
        report["libzmq"] = None
    try:
        import torch

        report["cuda"] = torch.cuda.is_available()
    except ImportError:
        report["cuda"] = None
    missing = [lib for lib in LIBRARIES if versions[lib] is None]
    if missing:
        report["problems"].append(f"missing libraries: {', '.join(missing)}")
    if args.json:
        print(json.dumps(report))
    else:
        for name, version in versions.items():
            print(f"{name:18} {version or 'MISSING'}")
        print(f"{'libzmq':18} {report.get('libzmq')}  curve={report.get('curve')}")
        print(f"{'mosquitto':18} {report['mosquitto'] or 'not installed'}")
        print(f"{'cuda':18} {report['cuda']}")
        for problem in report["problems"]:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        if report["problems"]:
            print("Install vlabus into its own virtual environment or container.", file=sys.stderr)
    return 1 if report["problems"] else 0
