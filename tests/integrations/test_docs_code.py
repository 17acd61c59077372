"""The docs' code runs as written.

The FastAPI block of docs/integrations.md is executed as a module would be (with the
environment a deployment gives it), then used over HTTP: register and log in through the
``/auth/*`` routes it installs, read the notes, and be refused then allowed the admin route.
Every other Python block in docs/ and the README is compiled, so none is a syntax sketch.
"""

import ast
import os
import re
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
ORIGIN = "https://notes.example.com"
PASSWORD = "violet tractor 42 umbrella"


def _blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def _fastapi_block() -> str:
    text = (ROOT / "docs" / "integrations.md").read_text()
    section = text[text.index("\n## FastAPI\n") :]
    found = BLOCK.search(section)
    assert found, "no python block under ## FastAPI"
    return found.group(1)


@pytest.mark.parametrize(
    ("path", "index"),
    [(p, i) for p in DOCS for i in range(len(_blocks(p)))],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_every_python_block_compiles(path: Path, index: int) -> None:
    # Top-level await: snippets show the body of an async function.
    compile(_blocks(path)[index], f"{path.name}[{index}]", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def test_the_fastapi_example_runs_as_written(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in os.environ if k.startswith("TOKENWARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TOKENWARD_ISSUER", ORIGIN)
    monkeypatch.setenv("TOKENWARD_REDIS_URL", redis_url)
    monkeypatch.setenv("TOKENWARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # load_settings() reads ./.env: none here
    module: dict[str, object] = {"__name__": "notes_app"}
    exec(compile(_fastapi_block(), "docs/integrations.md#fastapi", "exec"), module)  # noqa: S102
    tw, app = module["tw"], module["app"]
    notes, admins, note = module["NOTES"], module["ADMIN_IDS"], module["Note"]
    await tw.start()  # type: ignore[attr-defined]
    try:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as client:
            r = await client.post(
                "/auth/register", json={"email": "doc@example.com", "password": PASSWORD}
            )
            assert r.status_code == 201, r.text
            uid = r.json()["id"]
            r = await client.post(
                "/auth/login",
                json={"email": "doc@example.com", "password": PASSWORD},
                headers={"X-Auth-Transport": "bearer"},
            )
            assert r.status_code == 200, r.text
            auth = {"Authorization": f"Bearer {r.json()['access_token']}"}

            assert (await client.get("/notes")).status_code == 401
            notes.append(note(1, uid, "mine"))  # type: ignore[attr-defined, operator]
            notes.append(note(2, "someone-else", "theirs"))  # type: ignore[attr-defined, operator]
            r = await client.get("/notes", headers=auth)
            assert r.status_code == 200, r.text
            assert r.json() == [{"id": 1, "owner": uid, "text": "mine"}]

            r = await client.delete("/admin/notes/2", headers=auth)
            assert r.status_code == 403
            assert r.json()["type"] == "urn:tokenward:problem:forbidden"
            admins.add(uid)  # type: ignore[attr-defined]
            assert (await client.delete("/admin/notes/2", headers=auth)).status_code == 204
            assert [n.id for n in notes] == [1]  # type: ignore[attr-defined]
    finally:
        await tw.stop()  # type: ignore[attr-defined]
