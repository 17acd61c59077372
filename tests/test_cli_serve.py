"""``tokenward serve`` as a user runs it: a real process, real ports, real signals.

Every server here is started by the test on a free 127.0.0.1 port, polled with a deadline,
and stopped with SIGTERM by its pid. The environment is built from scratch (no inherited
``TOKENWARD_*`` variable), so what is tested is exactly the configuration named.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ports import free_port
from processes import alive, children
from waiting import wait_until

TOKENWARD = Path(sys.executable).with_name("tokenward")
PASSWORD = "violet tractor 42 umbrella"
START_DEADLINE = 60.0
STOP_DEADLINE = 20.0


def _env(**variables: str) -> dict[str, str]:
    """A clean environment: the basics a process needs, plus the given variables."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(variables)
    return env


# ---------------------------------------------------------------------- bad configuration

BAD_CONFIGS = [
    ("TOKENWARD_ACESS_TTL", "60"),  # unknown variable (a typo)
    ("TOKENWARD_REDIS_URL", "http://cache.internal:6379"),  # malformed URL
    ("TOKENWARD_ACCESS_TTL", "0"),  # TTL <= 0
    ("TOKENWARD_COOKIE_SECURE", "maybe"),  # bad boolean
    ("TOKENWARD_TRUSTED_PROXIES", "10.0.0.300"),  # bad proxies
]


@pytest.fixture(scope="module")
def bad_config_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[int, str, str, Path]]:
    """``tokenward serve`` under each bad configuration, all run at once (start-up is slow)."""
    cases: dict[str, tuple[list[str], dict[str, str], Path]] = {}
    for name, value in BAD_CONFIGS:
        cwd = tmp_path_factory.mktemp("bad")
        port = ["--port", str(free_port())]
        cases[name] = (port, _env(**{name: value}), cwd)
    dotenv_cwd = tmp_path_factory.mktemp("dotenv")
    (dotenv_cwd / ".env").write_text("TOKENWARD_LEEWAY=5\nTOKENWARD_LEWAY=5\n")
    cases["dotenv"] = (["--port", str(free_port())], _env(), dotenv_cwd)
    cases["port"] = (["--port", "70000"], _env(), tmp_path_factory.mktemp("port"))
    procs = {}
    for key, (args, env, cwd) in cases.items():
        proc = subprocess.Popen(
            [str(TOKENWARD), "serve", *args],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs[key] = (proc, cwd)
    results = {}
    for key, (proc, cwd) in procs.items():
        out, err = proc.communicate(timeout=120)
        results[key] = (proc.returncode, out, err, cwd)
    return results


@pytest.mark.parametrize(("name", "value"), BAD_CONFIGS)
def test_bad_configuration_exits_with_one_line(
    bad_config_runs: dict[str, tuple[int, str, str, Path]], name: str, value: str
) -> None:
    """Bad config: non-zero exit, one stderr line naming the variable, no traceback."""
    returncode, out, err, cwd = bad_config_runs[name]
    assert returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert name in lines[0]
    assert "configuration error" in lines[0]
    assert "Traceback" not in err + out
    assert not (cwd / ".tokenward").exists(), "nothing is started or written"


def test_bad_configuration_in_dotenv_exits_with_one_line(
    bad_config_runs: dict[str, tuple[int, str, str, Path]],
) -> None:
    """A typo in ./.env is caught like one in the environment."""
    returncode, out, err, _ = bad_config_runs["dotenv"]
    assert returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "TOKENWARD_LEWAY" in lines[0]
    assert "Traceback" not in err + out


def test_bad_port_exits_with_one_line(
    bad_config_runs: dict[str, tuple[int, str, str, Path]],
) -> None:
    """An impossible --port is refused before anything starts."""
    returncode, out, err, _ = bad_config_runs["port"]
    assert returncode != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--port" in lines[0]
    assert "Traceback" not in err + out


# ------------------------------------------------------------------- embedded defaults


class Server:
    """One ``tokenward serve`` process in ``cwd`` on ``port``; output kept in files."""

    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd, self.port = cwd, port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def output(self) -> str:
        return "".join(
            (self.cwd / f"serve-{i}.log").read_text(errors="replace") for i in range(self.runs)
        )

    def start(self) -> None:
        log = (self.cwd / f"serve-{self.runs}.log").open("wb")
        self.runs += 1
        self.proc = subprocess.Popen(
            [str(TOKENWARD), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        proc = self.proc

        def healthy() -> bool:
            assert proc.poll() is None, f"serve exited early:\n{self.output}"
            try:
                return httpx.get(f"{self.base}/healthz", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, within=START_DEADLINE, what="/healthz answers", step=0.05)

    def stop(self) -> int:
        """SIGTERM by pid; wait for the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, free_port())
    try:
        yield srv
    finally:
        srv.kill_if_running()


def test_serve_with_no_configuration_runs_and_keeps_sessions(server: Server) -> None:
    """No config: serve starts, users log in, and a restart keeps users, keys and sessions."""
    server.start()
    with httpx.Client(base_url=server.base, timeout=10) as c:
        assert (
            c.post("/auth/register", json={"email": "a@x.test", "password": PASSWORD}).status_code
            == 201
        )
        r = c.post(
            "/auth/login",
            json={"email": "a@x.test", "password": PASSWORD},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert r.status_code == 200, r.text
        tokens = r.json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert c.get("/auth/me", headers=auth).status_code == 200
        assert c.get("/readyz").status_code == 200

    data = server.cwd / ".tokenward"
    assert (data / "tokenward.db").is_file(), "SQLite lives in ./.tokenward"
    key_files = list(data.glob("*.jwks"))
    assert key_files
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in key_files)
    assert stat.S_IMODE(data.stat().st_mode) & 0o077 == 0
    valkey_pid = int((data / "redis" / "valkey.pid").read_text())
    assert alive(valkey_pid)

    assert server.stop() == 0
    wait_until(
        lambda: not alive(valkey_pid),
        within=STOP_DEADLINE,
        what="the embedded Redis exits with serve",
        step=0.05,
    )
    assert any(p.name.startswith("appendonly") for p in (data / "redis").iterdir())

    server.start()
    with httpx.Client(base_url=server.base, timeout=10) as c:
        me = c.get("/auth/me", headers=auth)
        assert me.status_code == 200, me.text
        assert me.json()["email"] == "a@x.test"
        r = c.post(
            "/auth/refresh",
            json={"refresh_token": tokens["refresh_token"]},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert r.status_code == 200, "the session survived the restart (AOF)"
        again = c.post("/auth/login", json={"email": "a@x.test", "password": PASSWORD})
        assert again.status_code == 200, "the user survived the restart (SQLite)"
    assert server.stop() == 0

    log = server.output
    for secret in (tokens["access_token"], tokens["refresh_token"], PASSWORD):
        assert secret not in log, "no token or password in the server's output"
    assert "Traceback" not in log


# ------------------------------------------------------------------------- port in use


def test_a_port_in_use_is_one_line_and_exit_code_4(tmp_path: Path) -> None:
    """The public port, then the metrics port, held by another socket: one line naming the
    address, exit code 4 (EXIT_CANNOT_LISTEN; 3 is "back end unavailable"), nothing started.

    Before: a stream of JSON log lines (embedded Redis started, migrations run) and exit 3.
    """
    from tokenward.cli import EXIT_CANNOT_LISTEN

    assert EXIT_CANNOT_LISTEN == 4
    with socket.socket() as public, socket.socket() as metrics:
        for held in (public, metrics):
            held.bind(("127.0.0.1", 0))
            held.listen()
        busy, busy_metrics = public.getsockname()[1], metrics.getsockname()[1]
        runs = {
            f"127.0.0.1:{busy}": ["--port", str(busy)],
            f"127.0.0.1:{busy_metrics}": [
                "--port", str(free_port()), "--metrics-port", str(busy_metrics)
            ],
        }  # fmt: skip
        procs = {}
        for where, args in runs.items():
            cwd = tmp_path / args[1]
            cwd.mkdir()
            procs[where] = (
                subprocess.Popen(
                    [str(TOKENWARD), "serve", *args],
                    cwd=cwd,
                    env=_env(),
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
                cwd,
            )
        for where, (proc, cwd) in procs.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 4, err
            assert err == f"tokenward: cannot listen on {where}: address already in use\n"
            assert out == ""
            assert not (cwd / ".tokenward").exists(), "nothing is started or written"


# ------------------------------------------------------------------------------- granian


def _granian(
    redis_url: str, tmp: Path, args: list[str], log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """``tokenward serve --server granian ARGS`` on a shared Redis; PYTHONPATH is kept so
    that the code under test is the one served."""
    env = _env(TOKENWARD_REDIS_URL=redis_url, TOKENWARD_DATA_DIR=str(tmp / "data"), **settings)
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    argv = [sys.executable, "-m", "tokenward.cli", "serve", "--server", "granian", *args]
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _healthz_count(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tokenward_http_requests_total" and s.labels.get("route") == "/healthz":
                return s.value
    return 0.0


def test_granian_serves_counts_closes_slow_heads_and_dies_with_serve(
    redis_url: str, tmp_path: Path
) -> None:
    """``serve --server granian --workers 2``: the API as with uvicorn (sessions, security
    headers, request ids), metrics of both workers on the metrics port, a connection that
    never finishes its head closed by the header timeout, SIGTERM exits 0, and after a
    SIGKILL of ``serve`` both workers exit and free the ports (the lifeline)."""
    port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    args = ["--port", str(port), "--workers", "2", "--metrics-port", str(metrics_port)]
    procs: list[subprocess.Popen[bytes]] = []
    workers: list[int] = []

    def start(log: Path) -> subprocess.Popen[bytes]:
        proc = _granian(redis_url, tmp_path, args, log, TOKENWARD_HEADER_TIMEOUT="1")
        procs.append(proc)

        def both_workers_up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            return log.read_text(errors="replace").count("metrics listener on") >= 2

        def serving() -> bool:
            # granian opens the HTTP port once a worker's start-up is over, a moment
            # after that worker's metrics line (a connection, not a request: the test
            # counts the requests each worker saw)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            except OSError:
                return False
            return True

        wait_until(both_workers_up, within=START_DEADLINE, what="two workers", step=0.1)
        wait_until(serving, within=START_DEADLINE, what="/healthz answers", step=0.05)
        return proc

    try:
        first = start(logs[0])
        workers = [p for p in children(first.pid) if alive(p)]
        with httpx.Client(base_url=base, timeout=10) as c:
            email = f"granian-{free_port()}@x.test"
            creds = {"email": email, "password": PASSWORD}
            assert c.post("/auth/register", json=creds).status_code == 201
            bearer = {"X-Auth-Transport": "bearer"}
            login = c.post("/auth/login", json=creds, headers=bearer)
            assert login.status_code == 200, login.text
            auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
            me = c.get("/auth/me", headers=auth)
            assert me.status_code == 200
            assert me.json()["email"] == email
            assert me.headers["x-frame-options"] == "DENY"
            assert me.headers["x-request-id"]
        for _ in range(20):  # a new connection each: the kernel spreads them over workers
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        counts = {
            _healthz_count(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text)
            for _ in range(6)
        }
        assert counts == {20.0}, "any worker's scrape counts both workers' requests"

        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
            assert slow.recv(1024) == b"", "closed by the header timeout"

        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(STOP_DEADLINE) == 0

        second = start(logs[1])
        workers = [p for p in children(second.pid) if alive(p)]
        assert len(workers) >= 2
        os.kill(second.pid, signal.SIGKILL)
        second.wait(10)
        wait_until(
            lambda: not any(alive(pid) for pid in workers),
            within=STOP_DEADLINE,
            what=f"the workers {workers} exit with serve",
            step=0.05,
        )
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # free again
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    log = "".join(p.read_text(errors="replace") for p in logs if p.exists())
    assert "Traceback" not in log
    assert login.json()["access_token"] not in log


def test_granian_port_in_use_is_exit_code_4(redis_url: str, tmp_path: Path) -> None:
    """With granian too, a port in use is one line and exit code 4, nothing started."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        log = tmp_path / "serve.log"
        proc = _granian(redis_url, tmp_path, ["--port", str(busy)], log)
        assert proc.wait(120) == 4
    assert (
        log.read_text() == f"tokenward: cannot listen on 127.0.0.1:{busy}: address already in use\n"
    )
    assert not (tmp_path / "data").exists(), "nothing is started or written"
