"""The core stays framework-free: no web framework, Redis, SQL or HTTP client, no clock, no env.

This keeps the core pure and its adapters thin (HTTP, Redis and SQL live in http/, stores/
and integrations/) as the code grows: expiry and grace logic is tested to the second with a
frozen clock only because the core never reads the time or the environment itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tokenward

PACKAGE = Path(tokenward.__file__).resolve().parent

CORE_MODULES = [
    "tokens",
    "keys",
    "refresh",
    "sessions",
    "revocation",
    "csrf",
    "cookies",
    "clientinfo",
    "passwords",
    "password_policy",
    "users",
    "errors",
    "clock",
    "events",
    "ratelimit",
    "throttle",
    "mail",
    "email_flows",
    "authn",
    "mfa",
    "background",
]

FORBIDDEN_PACKAGES = {
    "starlette", "fastapi", "litestar", "redis", "sqlalchemy", "httpx", "prometheus_client",
}  # fmt: skip
#: (module, attribute) reads that would make a core module depend on the outside world.
FORBIDDEN_READS = {
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "monotonic"),
    ("os", "environ"),
    ("os", "getenv"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
}
#: clock.py is where the real clocks live: SystemClock reads time.time, monotonic()
#: time.monotonic; every other module takes them as arguments.
ALLOWED = {("clock", ("time", "time")), ("clock", ("time", "monotonic"))}


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")


def _imported_packages(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _attribute_reads(tree: ast.Module) -> set[tuple[str, str]]:
    reads: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            reads.add((node.value.id, node.attr))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            reads.add((node.value.attr, node.attr))  # datetime.datetime.now
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "os", "datetime"):
            reads.update((node.module, alias.name) for alias in node.names)
    return reads


def test_every_core_module_exists() -> None:
    """The list below names real modules (a rename must update this test, not skip it)."""
    missing = [m for m in CORE_MODULES if not (PACKAGE / f"{m}.py").is_file()]
    assert not missing


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_framework_or_backend(module: str) -> None:
    """Core modules import no web framework, Redis, SQLAlchemy or HTTP client."""
    tree = _tree(module)
    bad = _imported_packages(tree) & FORBIDDEN_PACKAGES
    assert not bad, f"tokenward.{module} imports {sorted(bad)}"


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_reads_no_clock_or_environment(module: str) -> None:
    """Core modules take ``now``/a Clock and their settings as arguments."""
    reads = {r for r in _attribute_reads(_tree(module)) if (module, r) not in ALLOWED}
    bad = reads & FORBIDDEN_READS
    assert not bad, f"tokenward.{module} reads {sorted(bad)}"


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_only_core_siblings(module: str) -> None:
    """A core module may import other core modules, never an adapter (stores, http, runtime).

    Imports under ``if TYPE_CHECKING:`` are annotations only and do not count.
    """
    tree = _tree(module)
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenward"):
            parts = node.module.split(".")
            sibling = parts[1] if len(parts) > 1 else None
            assert sibling in CORE_MODULES or sibling is None, (
                f"tokenward.{module} imports {node.module}"
            )


def test_scanner_catches_a_forbidden_import() -> None:
    """The scanner itself works: it sees imports and clock reads in sample code."""
    sample = ast.parse(
        "import redis.asyncio\nfrom starlette.requests import Request\n"
        "import time\nx = time.time()\nfrom os import environ\n"
    )
    assert {"redis", "starlette"} <= _imported_packages(sample)
    assert {("time", "time"), ("os", "environ")} <= _attribute_reads(sample)
