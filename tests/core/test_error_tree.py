"""The exception diagram in tokenward.errors' docstring is the real class tree.

Readers (and the HTTP problem mapping's docs) trust that diagram; a subclass added without a
line there, or a line left after a class moved, fails here.
"""

from __future__ import annotations

import re

import tokenward.errors
import tokenward.stores.embedded_redis  # EmbeddedRedisError is on the tree
from tokenward.errors import TokenwardError

_ROW = re.compile(r"^(?P<indent>[│ ]*)(?:[├└]── )?(?P<name>[A-Za-z]+)(?: \((?P<status>\d{3})\))?")


def _diagram() -> dict[str, tuple[str | None, int | None]]:
    """Each class of the diagram -> (its parent, the status the diagram gives)."""
    doc = tokenward.errors.__doc__ or ""
    lines = [line[4:] for line in doc.splitlines() if line.startswith("    ") and line.strip()]
    tree: dict[str, tuple[str | None, int | None]] = {}
    stack: list[str] = []
    for line in lines:
        match = _ROW.match(line)
        assert match, line
        depth = len(match["indent"]) // 4 + (0 if line.startswith("TokenwardError") else 1)
        name = match["name"]
        del stack[depth:]
        tree[name] = (stack[-1] if stack else None, int(match["status"] or 0) or None)
        stack.append(name)
    return tree


def _real() -> dict[str, str | None]:
    found: dict[str, str | None] = {"TokenwardError": None}
    todo = [TokenwardError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("tokenward."):
                found[sub.__name__] = cls.__name__
                todo.append(sub)
    return found


def test_the_diagram_names_every_error_under_its_real_parent() -> None:
    drawn = _diagram()
    assert {name: parent for name, (parent, _) in drawn.items()} == _real()


def test_the_statuses_in_the_diagram_are_the_classes_statuses() -> None:
    for name, (_, status) in _diagram().items():
        if status is not None:
            assert getattr(tokenward.errors, name).status == status, name


def test_the_embedded_redis_error_is_a_503() -> None:
    from tokenward.stores.embedded_redis import EmbeddedRedisError

    err = EmbeddedRedisError("valkey-server exited during start-up")
    assert isinstance(err, tokenward.errors.Unavailable)
    assert err.status == 503
    assert str(err) == "valkey-server exited during start-up"
