"""``vlabus doctor``: versions, and a loud failure when ``schemas``/``security`` are shadowed.

Unrelated PyPI distributions install top-level ``schemas`` and ``security`` modules; if one of
them wins the import, every message would be decoded by foreign code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
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
    """Problems where one of our top-level packages resolves outside this installation."""
    home = Path(importlib.import_module("vlabus").__file__ or "").resolve().parent.parent
    problems = []
    owners = md.packages_distributions()
    for name in OWN_PACKAGES:
        module = importlib.import_module(name)
        where = Path(module.__file__ or "").resolve().parent
        if where.parent != home:
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
