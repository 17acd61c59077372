"""Session-wide test infrastructure: real Redis and PostgreSQL servers.

Fixtures:

* ``redis_url``    -- ``redis://127.0.0.1:PORT/0`` of a throw-away ``redis-server``
  (or ``$TOKENWARD_TEST_REDIS_URL`` when set). Tests isolate themselves with
  unique key prefixes or FLUSHDB.
* ``postgres_url`` -- ``postgresql+asyncpg://tokenward@127.0.0.1:PORT/tokenward_test``
  of a throw-away PostgreSQL cluster (or ``$TOKENWARD_TEST_POSTGRES_URL`` when set).

Every server is started lazily (only if a test asks for it), on a free port bound to
127.0.0.1, with a bounded readiness poll, and is stopped at session end. A small
watchdog process also stops it if pytest itself dies without running finalizers
(SIGKILL, OOM), so no server outlives the test run.

App fixtures shared by the http, sessions and abuse folders (each folder's conftest adds its
own ``client``; integrations and ops override what differs):

* ``make_tw(**settings)`` -- build and start an in-process Tokenward on ``redis_url`` with
  overrides (:class:`tw_factory.TokenwardFactory`: FrozenClock at the real time, cheap
  hashing, ``https://tokenward.test``); every one is stopped at teardown.
* ``tw`` -- one with the defaults; ``accounts`` -- :class:`tw_accounts.Accounts` on the
  folder's ``client``.
* ``redis`` -- a plain client (``decode_responses=True``) on ``redis_url``, to read keys,
  TTLs and memory.
pytest-asyncio runs every test and fixture on one session-scoped event loop
(``asyncio_default_*_loop_scope = "session"`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from ports import free_port
from reaper import spawn_reaper
from tokenward.runtime import Tokenward
from tw_accounts import ORIGIN, Accounts
from tw_factory import TokenwardFactory
from waiting import poll_until

STARTUP_TIMEOUT = 30.0  # seconds a server may take to answer
STOP_TIMEOUT = 15.0
PORT_ATTEMPTS = 3  # a free port can be taken between probing and binding: retry
REDIS_ARGS = ("--save", "", "--appendonly", "no", "--bind", "127.0.0.1")  # in-memory only
POSTGRES_DB = "tokenward_test"
POSTGRES_USER = "tokenward"


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _poll(check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Call ``check`` until it returns True, ``proc`` exits, or ``timeout`` seconds pass."""
    settled = poll_until(lambda: proc.poll() is not None or check(), within=timeout, step=0.05)
    return settled and proc.poll() is None


def _stop_reaper(reaper: subprocess.Popen[bytes]) -> None:
    reaper.kill()
    reaper.wait()


# ----------------------------------------------------------------------------- redis


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    pytest.fail(
        "redis-server not found (looked on PATH and at /usr/bin/redis-server). "
        "Install Debian's redis-server (`apt-get install -y redis-server`; scripts/test does "
        "this automatically when run as root) or set TOKENWARD_TEST_REDIS_URL to a server "
        "the tests may flush.",
        pytrace=False,
    )


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Redis server for this session (db 0, empty at start)."""
    external = os.environ.get("TOKENWARD_TEST_REDIS_URL")
    if external:
        yield external
        return

    binary = _redis_server_binary()
    workdir = tmp_path_factory.mktemp("redis")
    log = workdir / "redis.log"
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        argv = [binary, *REDIS_ARGS, "--port", str(port), "--dir", str(workdir)]
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C goes to pytest, which then stops us
            )
        if _poll(functools.partial(_redis_pings, port), proc, STARTUP_TIMEOUT):
            break
        proc.kill()
        proc.wait()
        if "already in use" not in _tail(log) or attempt == PORT_ATTEMPTS - 1:
            pytest.fail(
                f"redis-server did not answer PING within {STARTUP_TIMEOUT}s "
                f"({shlex.join(argv)}):\n{_tail(log)}",
                pytrace=False,
            )

    reaper = spawn_reaper(f"kill {proc.pid}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop_reaper(reaper)
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(autouse=True)
def _fresh_rate_limits(redis_url: str) -> None:
    """Forget every rate-limit counter and lock before each test.

    The whole run shares one Redis, and most clients (real servers, browsers) call from
    127.0.0.1: without this, one test's failed logins or registrations would throttle the
    next. Tests of the limits themselves start from zero, as they should.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="tw:{rl:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# -------------------------------------------------------------------------- postgres


def _postgres_bindir() -> Path:
    candidates = [Path(p).parent for p in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")]

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name)) or (0,)

    for bindir in sorted(candidates, key=version, reverse=True):
        if os.access(bindir / "initdb", os.X_OK):
            return bindir
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin "
        "or on PATH. Install Debian's postgresql (`apt-get install -y postgresql`; "
        "scripts/test does this automatically when run as root) or set "
        "TOKENWARD_TEST_POSTGRES_URL=postgresql+asyncpg://user@host:port/db.",
        pytrace=False,
    )


def _as_asyncpg_url(url: str) -> str:
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    return url


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (asyncpg driver) of an empty ``tokenward_test`` database."""
    external = os.environ.get("TOKENWARD_TEST_POSTGRES_URL")
    if external:
        yield _as_asyncpg_url(external)
        return

    bindir = _postgres_bindir()
    # PostgreSQL refuses to run as root: run it as the `postgres` OS user instead.
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root but there is no `postgres` OS user to run PostgreSQL as "
                "(Debian's postgresql package creates it)",
                pytrace=False,
            )
        run_as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    # /tmp rather than $TMPDIR: the postgres user must be able to reach the directory.
    # (mkdtemp creates it atomically with mode 0700, so a shared /tmp is safe.)
    parent = "/tmp" if owner else None  # noqa: S108
    workdir = Path(tempfile.mkdtemp(prefix="tokenward-pg-", dir=parent))
    if owner is not None:
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    data, log = workdir / "data", workdir / "postgres.log"
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]

    def check(argv: list[str], what: str) -> None:
        result = _run(argv, workdir, STARTUP_TIMEOUT * 2)
        if result.returncode != 0:
            pytest.fail(
                f"{what} failed ({result.returncode}): {shlex.join(argv)}\n"
                f"{result.stdout}{result.stderr}\nserver log:\n{_tail(log)}",
                pytrace=False,
            )

    started = False
    reaper: subprocess.Popen[bytes] | None = None
    try:
        initdb = [*run_as, str(bindir / "initdb"), "-D", str(data), "-U", POSTGRES_USER]
        check([*initdb, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], "initdb")
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={workdir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            wait = ["-w", "-t", str(int(STARTUP_TIMEOUT))]
            start = [*pg_ctl, "-l", str(log), *wait, "-o", options, "start"]
            if _run(start, workdir, STARTUP_TIMEOUT * 2).returncode == 0:
                started = True
                break
            # pg_ctl may give up while the postmaster still runs: make sure it is gone.
            _run([*pg_ctl, "-m", "immediate", "stop"], workdir, STOP_TIMEOUT * 2)
            if "already in use" not in _tail(log) or attempt == PORT_ATTEMPTS - 1:
                pytest.fail(
                    f"PostgreSQL did not start within {STARTUP_TIMEOUT}s "
                    f"({shlex.join(start)}):\n{_tail(log)}",
                    pytrace=False,
                )
        stop_now = shlex.join([*pg_ctl, "-m", "immediate", "stop"])
        reaper = spawn_reaper(f"{stop_now} >/dev/null 2>&1; rm -rf {shlex.quote(str(workdir))}")
        createdb = [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port)]
        check([*createdb, "-U", POSTGRES_USER, POSTGRES_DB], "createdb")
        yield f"postgresql+asyncpg://{POSTGRES_USER}@127.0.0.1:{port}/{POSTGRES_DB}"
    finally:
        if reaper is not None:
            _stop_reaper(reaper)
        if started:
            _run([*pg_ctl, "-m", "fast", "-w", "stop"], workdir, STOP_TIMEOUT * 2)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)


# ------------------------------------------------------------------------ app fixtures

MakeTw = Callable[..., Awaitable[Tokenward]]


@pytest.fixture
async def make_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeTw]:
    factory = TokenwardFactory(redis_url, tmp_path, issuer=ORIGIN)
    yield factory.make
    await factory.stop_all()


@pytest.fixture
async def tw(make_tw: MakeTw) -> Tokenward:
    return await make_tw()


@pytest.fixture
def accounts(client: httpx.AsyncClient) -> Accounts:
    return Accounts(client)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()
