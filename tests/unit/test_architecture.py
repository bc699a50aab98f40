"""The layering the README promises, read from the source: no import cycle inside timer_redis, and the modules
that must not talk to Redis (or to the store) do not import it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "timer_redis"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, TYPE_CHECKING-only imports included (a cycle in types is still a
    cycle in the design)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            found.add(target)
            # `from . import api` imports the module api, not just the package
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycle_from(start: str) -> list[str] | None:
    """A path start -> ... -> start through the import graph, ignoring edges into a package's own __init__ from its
    submodules (importing a sibling through the package is how Python resolves it, not a design cycle)."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if node.startswith(nxt + "."):  # a submodule naming its own package
                continue
            if nxt == start:
                return [*path, nxt]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_cycle(module: str) -> None:
    assert _cycle_from(module) is None, " -> ".join(_cycle_from(module) or [])


@pytest.mark.parametrize(
    "module",
    ["timer_redis.api", "timer_redis.delivery", "timer_redis.process", "timer_redis.dumps", "timer_redis.escalation",
     "timer_redis.groups"],
)  # fmt: skip
def test_modules_that_never_talk_to_redis_do_not_import_it(module: str) -> None:
    assert not {m for m in _imports(MODULES[module]) if m == "redis" or m.startswith("redis.")}


def test_the_wire_sits_below_the_store() -> None:
    assert not {m for m in _imports(MODULES["timer_redis.wire"]) if m.startswith("timer_redis.store")}


def test_the_test_sees_every_module() -> None:
    assert {"timer_redis.wire", "timer_redis.store", "timer_redis.store.base", "timer_redis.connection"} <= set(MODULES)
