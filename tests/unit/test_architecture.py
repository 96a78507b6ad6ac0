"""The layering the design promises, read from the source with ``ast`` (nothing is imported).

Dependencies point one way: ``schemas`` ← ``security`` ← the ``vlabus`` core ← ``edge_agent``,
``cloud_workers`` ← ``vlabus/cli``. Checked here:

- no module of ``vlabus/`` outside ``vlabus/cli/`` imports ``edge_agent`` or ``cloud_workers``;
- ``schemas`` imports nothing of ours but ``schemas``; ``security`` nothing but ``schemas`` and
  itself;
- no import cycle between modules;
- module sizes: a median of at most 150 lines, none over 400 (``bench/`` and ``tests/`` aside).

How imports are counted. The layering rules count *every* import statement wherever it stands:
at module level, inside a function, or under ``if TYPE_CHECKING:`` — a lazy import of a layer
above is still a dependency on it. The cycle check counts only imports that run when the module
is first imported: module-level statements, including those nested in ``if``/``try`` blocks,
but not those under ``if TYPE_CHECKING:`` and not those inside a function or class body's
methods. A function-local import runs after every module involved has finished loading, so it
cannot take part in an import-time cycle; it is how the code defers heavy optional imports
(torch, paho). ``import a.b.c`` and ``from a.b import c`` count as an edge to the deepest
module that exists (``a.b.c``); the parent packages it implicitly initialises are not edges,
since a package ``__init__`` importing its own submodules is the ordinary Python pattern.
"""

from __future__ import annotations

import ast
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import ROOT

PACKAGES = ("schemas", "security", "vlabus", "edge_agent", "cloud_workers", "bench")
SIZED = ("schemas", "security", "vlabus", "edge_agent", "cloud_workers")
MEDIAN_LIMIT = 150
MODULE_LIMIT = 400


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    every_import: set[str] = field(default_factory=set)
    load_time_import: set[str] = field(default_factory=set)


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _modules() -> dict[str, Module]:
    found: dict[str, Module] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name, is_package = _module_name(path)
            found[name] = Module(name, path, is_package)
    return found


MODULES = _modules()


def _resolve(importer: Module, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules of ours that ``node`` names, as the deepest existing dotted names."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield from _deepest(alias.name)
        return
    if node.level:
        package = importer.name if importer.is_package else importer.name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if candidate in MODULES:
            yield candidate
        else:
            yield from _deepest(base)


def _deepest(dotted: str) -> Iterator[str]:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in MODULES:
            yield name
            return


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_load_time(nodes: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module body runs (see the module docstring)."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _walk_load_time(node.body)
            yield from _walk_load_time(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                yield from _walk_load_time(block)
        elif isinstance(node, ast.With | ast.For | ast.While):
            yield from _walk_load_time(node.body)
        elif isinstance(node, ast.ClassDef):
            yield from _walk_load_time(node.body)  # a class body runs at import time


def _read_imports() -> None:
    for module in MODULES.values():
        tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                module.every_import.update(_resolve(module, node))
        for node in _walk_load_time(tree.body):
            module.load_time_import.update(_resolve(module, node))
        module.every_import.discard(module.name)
        module.load_time_import.discard(module.name)


_read_imports()


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _violations(importers: str, allowed: set[str] | None = None,
                forbidden: set[str] | None = None, exempt: str | None = None) -> list[str]:
    found = []
    for module in MODULES.values():
        if _top(module.name) != importers and not module.name.startswith(f"{importers}."):
            continue
        if exempt is not None and (module.name == exempt or module.name.startswith(f"{exempt}.")):
            continue
        for target in sorted(module.every_import):
            top = _top(target)
            if (allowed is not None and top not in allowed) or (
                    forbidden is not None and top in forbidden):
                found.append(f"{module.name} imports {target}")
    return found


def test_the_scanner_sees_the_codebase() -> None:
    """Guards the rules below against passing vacuously on a scanner that reads nothing."""
    assert {"schemas.messages", "security.keys", "vlabus.wire", "vlabus.cli",
            "edge_agent.agent", "cloud_workers.worker"} <= MODULES.keys()
    assert any(_top(t) == "schemas" for m in MODULES.values()
               if m.name.startswith("security.") for t in m.every_import)
    assert any(_top(t) == "edge_agent" for m in MODULES.values()
               if m.name.startswith("edge_agent.") for t in m.load_time_import)


def test_the_core_never_imports_the_edge_or_the_cloud() -> None:
    assert _violations("vlabus", forbidden={"edge_agent", "cloud_workers"},
                       exempt="vlabus.cli") == []


def test_schemas_import_nothing_of_ours_above_them() -> None:
    assert _violations("schemas", allowed={"schemas"} | _foreign()) == []


def test_security_imports_only_schemas() -> None:
    assert _violations("security", allowed={"schemas", "security"} | _foreign()) == []


def _foreign() -> set[str]:
    """Top-level names that are not ours (the rules constrain only our own packages)."""
    return {_top(t) for m in MODULES.values() for t in m.every_import} - set(PACKAGES)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(MODULES[node].load_time_import):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in sorted(MODULES):
        if name not in index:
            visit(name)
    return components


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above could pass on a broken finder: give it a known cycle."""
    saved = {name: set(module.load_time_import) for name, module in MODULES.items()}
    try:
        MODULES["vlabus.wire"].load_time_import.add("vlabus.cli")
        MODULES["vlabus.cli"].load_time_import.add("vlabus.wire")
        assert any({"vlabus.wire", "vlabus.cli"} <= set(c) for c in _cycles())
    finally:
        for name, imports in saved.items():
            MODULES[name].load_time_import = imports


def _sizes() -> dict[str, int]:
    return {name: len(module.path.read_text(encoding="utf-8").splitlines())
            for name, module in MODULES.items() if _top(name) in SIZED}


def test_median_module_size() -> None:
    sizes = _sizes()
    assert statistics.median(sizes.values()) <= MEDIAN_LIMIT


def _oversize() -> dict[str, int]:
    return {name: lines for name, lines in sorted(_sizes().items()) if lines > MODULE_LIMIT}


def test_no_module_over_the_limit() -> None:
    assert _oversize() == {}
