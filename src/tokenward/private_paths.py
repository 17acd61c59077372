"""Secrets at rest: the data directory is 0700, the files holding secrets are 0600.

The data directory holds the generated signing keys, the embedded Redis (sessions) and the
SQLite user database (password hashes). Creating it with ``mkdir(mode=0o700)`` is not
enough: a directory that already exists (made by an operator, a container image, an older
version) keeps whatever mode it has, and SQLite creates its file with the process umask
(usually 0644, world-readable). So both are checked at every start, and tightened when
looser, with a warning naming the path.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from tokenward.errors import ConfigError

__all__ = ["SQLITE_SIDE_FILES", "private_dir", "private_file"]

#: Files SQLite keeps beside a database; it creates them with the database's own mode.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")

_log = logging.getLogger("tokenward.files")


def _tighten(path: Path, mode: int, variable: str) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode & 0o777 == 0:
        return
    try:
        path.chmod(mode)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot make {path} private: {exc.strerror}") from None
    _log.warning("%s had mode %04o; set to %04o (it holds secrets)", path, current, mode)


def private_dir(path: Path, *, variable: str = "TOKENWARD_DATA_DIR") -> None:
    """Create ``path`` (and its parents) if missing; make it 0700 if it is looser.

    Raises:
        ConfigError: the directory cannot be created or its mode changed (not ours).
    """
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot create {path}: {exc.strerror}") from None
    _tighten(path, 0o700, variable)


def private_file(path: Path, *, side_files: tuple[str, ...] = (), variable: str) -> None:
    """Create ``path`` empty with mode 0600 if missing; make it (and existing
    ``path + suffix`` side files) 0600 if looser.

    Created here, before the program that writes it opens it, the file never exists with
    the umask's mode, not even for a moment.

    Raises:
        ConfigError: the file cannot be created or its mode changed.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot create {path}: {exc.strerror}") from None
    else:
        os.close(fd)
    for candidate in (path, *(path.with_name(path.name + s) for s in side_files)):
        if candidate.exists():
            _tighten(candidate, 0o600, variable)
