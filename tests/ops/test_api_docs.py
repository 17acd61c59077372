"""docs/api.md, the API reference, is generated from the code and agrees with /openapi.json.

The page is written by scripts/gen_api_docs.py; this checks the committed page is what the
script writes now, and that it lists exactly the endpoints, problem types and cookie names
of the OpenAPI document a running Tokenward serves (the ops deployment has a metrics scrape
token, so ``GET /metrics`` is served too).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from ops_support import MakeOpsTw, ops_client

import tokenward.errors

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "api.md"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_api_docs", ROOT / "scripts" / "gen_api_docs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_page_is_up_to_date() -> None:
    """The committed page equals what the generator writes now (run the script if not)."""
    assert PAGE.read_text(encoding="utf-8") == _generator().render(), (
        "run: python scripts/gen_api_docs.py"
    )


def test_api_page_is_linked_from_the_index() -> None:
    assert "(api.md)" in (ROOT / "docs" / "index.md").read_text(encoding="utf-8")


async def test_api_page_matches_the_served_openapi(make_ops_tw: MakeOpsTw) -> None:
    """Every (method, path) served is on the page and nothing else is; every problem type
    the document names has a row; the cookie names are the served security schemes'."""
    page = PAGE.read_text(encoding="utf-8")
    tw = await make_ops_tw()
    async with ops_client(tw) as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    served = r.json()

    endpoints = {(method.upper(), path) for path, ops in served["paths"].items() for method in ops}
    listed = set(re.findall(r"^\| (GET|POST|PUT|PATCH|DELETE) \| `([^`]+)` \|", page, re.M))
    assert listed == endpoints
    assert ("GET", "/metrics") in listed

    named = {
        t
        for ops in served["paths"].values()
        for op in ops.values()
        for answer in op["responses"].values()
        for t in re.findall(r"urn:tokenward:problem:([a-z-]+)", answer["description"])
    }
    rows = set(re.findall(r"^\| `urn:tokenward:problem:([a-z-]+)` \|", page, re.M))
    assert named <= rows, named - rows
    assert {"token-expired", "unauthenticated", "rate-limited"} <= named

    schemes = served["components"]["securitySchemes"]
    for scheme in ("cookie", "refreshCookie"):
        assert f"| `{schemes[scheme]['name']}` |" in page, scheme


def test_every_error_class_has_a_row() -> None:
    """A new TokenwardError subclass appears on the page (through the generator)."""
    page = PAGE.read_text(encoding="utf-8")
    classes = [
        obj
        for obj in vars(tokenward.errors).values()
        if isinstance(obj, type) and issubclass(obj, tokenward.errors.TokenwardError)
    ]
    for cls in classes:
        if cls is not tokenward.errors.TokenwardError:
            assert f"| `{cls.__name__}` |" in page, cls.__name__
