"""Every security event kind is documented: the table of docs/abuse.md and the OpenAPI
schema of ``GET /auth/events`` list exactly the values of :class:`EventKind`."""

from __future__ import annotations

import re
from pathlib import Path

from tokenward.events import EventKind
from tokenward.http.openapi import openapi_document

ABUSE_MD = Path(__file__).resolve().parents[2] / "docs" / "abuse.md"


def _documented_kinds() -> set[str]:
    """The first-column values of the table under ``## Security events``."""
    text = ABUSE_MD.read_text(encoding="utf-8")
    section = text.split("## Security events", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE))


def test_every_event_kind_is_in_the_abuse_docs_table() -> None:
    """A kind added to the code without a row (as ``refresh.grace-replay`` was) fails."""
    assert _documented_kinds() == {kind.value for kind in EventKind}


def test_the_openapi_schema_lists_every_event_kind() -> None:
    """Clients validating ``GET /auth/events`` against the schema accept every kind."""
    schema = openapi_document()
    events = schema["paths"]["/auth/events"]["get"]["responses"]["200"]
    ref = events["content"]["application/json"]["schema"]["items"]["$ref"]
    row = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(row["properties"]["kind"]["enum"]) == {kind.value for kind in EventKind}
