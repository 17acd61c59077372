"""Notes: a small API in which every user reads and changes only their own notes.

FastAPI + Tokenward's FastAPI integration; notes in SQLite through the standard library.
The one rule that matters ("a user sees only their own notes") lives in one place: every
query of :class:`NoteStore` takes the owner and filters on it, so another user's note is
indistinguishable from a note that does not exist (404, never 403).

No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at run
time, and ``CurrentUser`` is local to :func:`create_app`.

Run it (plain HTTP on localhost; use bearer tokens, or a browser on http://localhost)::

    TOKENWARD_ISSUER=http://127.0.0.1:8000 uvicorn --factory notes_app:create_app \\
        --app-dir examples/notes --port 8000
"""

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from tokenward import NotFound, Tokenward, UserRef, load_settings
from tokenward.integrations.fastapi import TokenwardFastAPI

SCHEMA = """
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS notes_owner ON notes (owner, id);
"""

#: A note id in a path: SQLite row ids are positive 64-bit integers, so anything else is a
#: 422 rather than an ``OverflowError`` (500) in the query.
NoteId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]


class NoteIn(BaseModel):
    """What a client sends to create or replace a note."""

    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=20_000)


class Note(NoteIn):
    """A stored note, as the owner sees it."""

    id: int
    created_at: int
    updated_at: int


@dataclass(frozen=True)
class NoteStore:
    """Notes in SQLite. Every method takes the owner; no query runs without it."""

    path: Path

    def __post_init__(self) -> None:
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One short connection per operation: sqlite3 connections are not shared across
        # the threads FastAPI runs plain ``def`` endpoints on.
        with closing(sqlite3.connect(self.path)) as db, db:
            db.row_factory = sqlite3.Row
            yield db

    def all_of(self, owner: str) -> list[Note]:
        with self._db() as db:
            rows = db.execute(
                "SELECT * FROM notes WHERE owner = ? ORDER BY id", (owner,)
            ).fetchall()
        return [_note(row) for row in rows]

    def get(self, owner: str, note_id: int) -> Note:
        with self._db() as db:
            row = db.execute(
                "SELECT * FROM notes WHERE owner = ? AND id = ?", (owner, note_id)
            ).fetchone()
        if row is None:
            raise NotFound("no such note")
        return _note(row)

    def add(self, owner: str, note: NoteIn) -> Note:
        now = int(time.time())
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO notes (owner, title, body, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (owner, note.title, note.body, now, now),
            )
            note_id = cursor.lastrowid
        if note_id is None:  # sqlite3 always sets it after an INSERT
            raise RuntimeError("no row id")
        return Note(id=note_id, title=note.title, body=note.body, created_at=now, updated_at=now)

    def replace(self, owner: str, note_id: int, note: NoteIn) -> Note:
        with self._db() as db:
            changed = db.execute(
                "UPDATE notes SET title = ?, body = ?, updated_at = ? WHERE owner = ? AND id = ?",
                (note.title, note.body, int(time.time()), owner, note_id),
            ).rowcount
        if not changed:
            raise NotFound("no such note")
        return self.get(owner, note_id)

    def delete(self, owner: str, note_id: int) -> None:
        with self._db() as db:
            deleted = db.execute(
                "DELETE FROM notes WHERE owner = ? AND id = ?", (owner, note_id)
            ).rowcount
        if not deleted:
            raise NotFound("no such note")


def _note(row: sqlite3.Row) -> Note:
    return Note(
        id=row["id"],
        title=row["title"],
        body=row["body"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def create_app(
    tw: Tokenward | None = None,
    *,
    database: Path | None = None,
    manage_lifespan: bool = True,
) -> FastAPI:
    """The notes app.

    Args:
        tw: the Tokenward service; built from ``TOKENWARD_*`` variables when omitted.
        database: the SQLite file; ``notes.db`` in Tokenward's data directory by default.
        manage_lifespan: start and stop ``tw`` with the app (tests start it themselves).
    """
    tw = tw or Tokenward(load_settings())
    data_dir = tw.settings.data_dir
    if database is None:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = NoteStore(database or data_dir / "notes.db")
    auth = TokenwardFastAPI(tw)
    CurrentUser = Annotated[UserRef, Depends(auth.current_user)]  # noqa: N806 - a type alias

    app = FastAPI(title="Notes")
    auth.install(app, manage_lifespan=manage_lifespan)

    @app.get("/notes")
    def list_notes(user: CurrentUser) -> list[Note]:
        return store.all_of(user.id)

    @app.post("/notes", status_code=201)
    def add_note(user: CurrentUser, note: NoteIn) -> Note:
        return store.add(user.id, note)

    @app.get("/notes/{note_id}")
    def get_note(user: CurrentUser, note_id: NoteId) -> Note:
        return store.get(user.id, note_id)

    @app.put("/notes/{note_id}")
    def replace_note(user: CurrentUser, note_id: NoteId, note: NoteIn) -> Note:
        return store.replace(user.id, note_id, note)

    @app.delete("/notes/{note_id}", status_code=204)
    def delete_note(user: CurrentUser, note_id: NoteId) -> None:
        store.delete(user.id, note_id)

    return app
