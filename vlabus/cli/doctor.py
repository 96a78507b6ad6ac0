"""``vlabus doctor``: versions, the broker side, and a loud failure when something a command
needs is missing or shadowed; the last line is a one-line verdict.

Fails (exit 1) when: ``schemas``/``security`` resolve to foreign code (unrelated PyPI
distributions install top-level modules of those names, and every message would be decoded
by them), a library is missing, the broker templates are not in the installation, or an
installed Mosquitto cannot load the dynamic-security plugin. A machine without Mosquitto (a
worker or robot image that talks to a remote broker) is reported, not failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Any

OWN_PACKAGES = ("schemas", "security", "vlabus", "edge_agent", "cloud_workers")
LIBRARIES = ("numpy", "msgspec", "msgpack", "lz4", "blake3", "cryptography", "paho-mqtt",
             "pyzmq", "mcap", "prometheus-client", "safetensors", "simplejpeg", "torch")


def register(sub: Any) -> None:
    parser = sub.add_parser("doctor", help="check the installation")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mosquitto", default=None, metavar="PATH",
                        help="the broker to check (default: mosquitto on PATH or /usr/sbin)")
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
    report: dict[str, Any] = {"versions": versions, "problems": shadowed_packages()}
    report.update(broker_checks(args.mosquitto, report["problems"]))
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
    report["verdict"] = verdict(report)
    if args.json:
        print(json.dumps(report))
    else:
        for name, version in versions.items():
            print(f"{name:18} {version or 'MISSING'}")
        print(f"{'libzmq':18} {report.get('libzmq')}  curve={report.get('curve')}")
        mosquitto = report["mosquitto"]
        print(f"{'mosquitto':18} " + (f"{mosquitto['version']} at {mosquitto['path']}, "
                                      f"dynamic security {mosquitto['dynsec']}"
                                      if mosquitto else "not installed"))
        print(f"{'broker templates':18} {report['templates'] or 'MISSING'}")
        print(f"{'cuda':18} {report['cuda']}")
        for problem in report["problems"]:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        if any("imports from" in p or "also installed" in p for p in report["problems"]):
            print("Install vlabus into its own virtual environment or container.", file=sys.stderr)
        print(report["verdict"])
    return 1 if report["problems"] else 0


def broker_checks(executable: str | None, problems: list[str]) -> dict[str, Any]:
    """The broker side: templates in the installation, Mosquitto's version and whether it
    loads the dynamic-security plugin; appends what fails to ``problems``."""
    found: dict[str, Any] = {"templates": None, "mosquitto": None}
    try:
        from vlabus.broker.probe import dynsec_problem, find_mosquitto, mosquitto_version
        from vlabus.broker.render import DYNSEC_PLUGIN, BrokerError, templates_dir
    except ImportError as exc:  # a shadowed `schemas`/`security`: reported above
        problems.append(f"the broker tools cannot be imported: {exc!r}")
        return found
    try:
        found["templates"] = str(templates_dir())
    except BrokerError as exc:
        problems.append(str(exc))
    path = executable or find_mosquitto()
    if path is None:
        return found
    version = mosquitto_version(path)
    if version is None:
        problems.append(f"{path} does not answer `-h` like Mosquitto")
        return found
    problem = dynsec_problem(path)
    if problem is not None:
        problems.append(problem)
    found["mosquitto"] = {"path": path, "version": version, "plugin": DYNSEC_PLUGIN,
                          "dynsec": "loads" if problem is None else "FAILS"}
    return found


def verdict(report: dict[str, Any]) -> str:
    """The one-line answer: ready, or how many problems (listed above it)."""
    problems = report["problems"]
    if problems:
        return (f"vlabus doctor: NOT READY, {len(problems)} problem"
                f"{'s' if len(problems) > 1 else ''} (see PROBLEM lines)")
    mosquitto = report["mosquitto"]
    broker = (f"mosquitto {mosquitto['version']} with dynamic security" if mosquitto else
              "no local mosquitto (needed only to run a broker here)")
    return f"vlabus doctor: OK, vlabus {report['versions']['vlabus']} ready; {broker}"
