"""A PostgreSQL server owned by one test, so the test can stop it and start it again.

The session-wide server (``postgres_url`` in the root conftest) is never stopped by a test;
database outages run on one of these. The same recipe as the root conftest (``initdb`` with
trust auth, 127.0.0.1 only, run as the ``postgres`` OS user when the tests run as root);
every start waits with ``pg_ctl -w`` (bounded), every stop is ``pg_ctl stop`` of this
cluster only, and a watchdog stops it should pytest die without cleaning up.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ports import free_port
from reaper import spawn_reaper

__all__ = ["OutagePostgres", "outage_postgres"]

#: Bound on initdb, a start or a stop (a loaded 2-core machine may take a while).
TIMEOUT = 60
USER, DB = "tokenward", "tokenward_outage"


def _bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    assert on_path, "PostgreSQL server binaries not found (apt-get install postgresql)"
    return Path(on_path).parent


class OutagePostgres:
    """A throw-away PostgreSQL cluster on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.run_as: list[str] = []
        owner = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            owner = pwd.getpwnam("postgres")
            self.run_as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
        self.workdir = Path(tempfile.mkdtemp(prefix="tokenward-pg-outage-", dir="/tmp"))
        if owner is not None:
            os.chown(self.workdir, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        self.data = self.workdir / "data"
        self.running = False
        self.reaper: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its SQLAlchemy URL (asyncpg)."""
        return f"postgresql+asyncpg://{USER}@127.0.0.1:{self.port}/{DB}"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            list(argv), cwd=self.workdir, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
        log = self.workdir / "postgres.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}\n{tail}"

    def _pg_ctl(self, *args: str) -> None:
        self._run(*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args)

    def create(self) -> None:
        """initdb, start, createdb."""
        initdb = [*self.run_as, str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER]
        self._run(*initdb, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync")
        self.start()
        createdb = [str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port)]
        self._run(*createdb, "-U", USER, DB)
        pg_ctl = [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data)]
        cleanup = f"{shlex.join([*pg_ctl, '-m', 'immediate', 'stop'])} >/dev/null 2>&1; "
        cleanup += f"rm -rf {shlex.quote(str(self.workdir))}"
        self.reaper = spawn_reaper(cleanup)

    def start(self) -> None:
        """Start it (again, same port and data) and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.workdir} -c fsync=off"
        )
        log = str(self.workdir / "postgres.log")
        self._pg_ctl("-l", log, "-w", "-t", str(TIMEOUT), "-o", options, "start")
        self.running = True

    def stop(self) -> None:
        """Stop it (fast shutdown: every connection is cut) and wait until it is gone."""
        if self.running:
            self._pg_ctl("-m", "fast", "-w", "-t", str(TIMEOUT), "stop")
            self.running = False

    def remove(self) -> None:
        """Stop it if running and delete its files."""
        try:
            self.stop()
        finally:
            if self.reaper is not None:
                self.reaper.kill()
                self.reaper.wait()
            with contextlib.suppress(OSError):
                shutil.rmtree(self.workdir)


@contextlib.contextmanager
def outage_postgres() -> Iterator[OutagePostgres]:
    """A created and started :class:`OutagePostgres`, removed on exit whatever happened."""
    server = OutagePostgres()
    try:
        server.create()
        yield server
    finally:
        server.remove()
