"""The key file of a deployment: rotation, and re-reading it while servers run.

The key file is the JWKS generated in the data directory (``signing-keys.jwks``) or the file
named by ``TOKENWARD_SIGNING_KEYS``. Every instance of a deployment reads the same file and
derives the same key set from it (:meth:`~tokenward.keys.KeySet.at`), so they agree on the
signer without talking to each other.

Rotation without downtime (``tokenward keys rotate``, :func:`rotate`):

1. A new key is appended with ``iat`` = now and ``nbf`` = now + ``activate_in``. Every key
   still signing gets ``retired_at`` = that same moment. Until then the old key signs and
   the new one is already published in the JWKS and known to every instance (each re-reads
   the file within ``TOKENWARD_KEY_RELOAD_INTERVAL`` seconds), so no verifier ever meets a
   token signed by a key it has not seen. The default delay also covers the JWKS
   ``Cache-Control: max-age`` given to outside verifiers (:data:`JWKS_MAX_AGE`).
2. At ``nbf`` the new key signs; the old one keeps verifying for :func:`retain_seconds`
   (the access token lifetime plus leeway plus one reload interval), then leaves the JWKS.
3. The next rotation prunes keys retired longer ago than that from the file.

A PEM file carries no such metadata: operators rotate it by editing it (append the new key,
which signs at once being last; remove the old one once its tokens have expired).
:class:`KeyRing` re-reads either kind when its modification time changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tokenward.errors import ConfigError
from tokenward.keys import GENERATED_KEYS_FILE, KeySet, SigningAlg, SigningKey, generate_key
from tokenward.private_paths import private_dir
from tokenward.settings import Settings

__all__ = [
    "JWKS_MAX_AGE",
    "KeyRing",
    "KeyState",
    "KeyStatus",
    "Rotation",
    "default_activation_delay",
    "describe",
    "key_file_path",
    "retain_seconds",
    "rotate",
]

log = logging.getLogger("tokenward.keys")

#: Seconds outside verifiers may cache ``/.well-known/jwks.json`` (its ``Cache-Control``).
JWKS_MAX_AGE = 300

KeyState = Literal["pending", "signing", "verifying", "expired"]


def key_file_path(settings: Settings) -> Path:
    """The deployment's key file: ``TOKENWARD_SIGNING_KEYS`` or the generated JWKS."""
    if settings.signing_keys is not None:
        return settings.signing_keys
    return settings.data_dir / GENERATED_KEYS_FILE


def retain_seconds(settings: Settings) -> int:
    """How long a retired key keeps verifying: every token it signed has expired by then.

    The access token lifetime plus the leeway, plus one reload interval for an instance
    that was still signing with the key when the rotation took effect.
    """
    return settings.access_ttl + settings.leeway + settings.key_reload_interval


def default_activation_delay(settings: Settings) -> int:
    """Seconds between ``keys rotate`` and the new key's first signature (see module doc)."""
    return JWKS_MAX_AGE + settings.key_reload_interval


def _is_jwks(data: bytes) -> bool:
    return data.lstrip().startswith(b"{")


class KeyRing:
    """The key set of a running instance, following its key file.

    Args:
        path: the key file.
        retain: see :func:`retain_seconds`.
        generate_alg: when set, a missing file is generated with a key of this algorithm
            (the data-directory JWKS); when ``None`` a missing file is an error.
    """

    def __init__(self, path: Path, *, retain: int, generate_alg: SigningAlg | None) -> None:
        self.path = path
        self.retain = retain
        self.generate_alg = generate_alg
        self._stamp: tuple[int, int, int] | None = None
        self._file: KeySet | None = None
        self._current: KeySet | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        """The key ring of a deployment."""
        generated = settings.signing_keys is None
        return cls(
            key_file_path(settings),
            retain=retain_seconds(settings),
            generate_alg=settings.signing_alg if generated else None,
        )

    def load(self, now: int) -> KeySet:
        """Read (or first generate) the key file; the keys in force at ``now``.

        Raises:
            ConfigError: the file is missing, unreadable or holds no usable key.
        """
        if self.generate_alg is not None:
            # Generated keys live in the data directory: private even if it existed loose.
            private_dir(self.path.parent)
            if not self.path.exists():
                KeySet.load_or_generate(self.path.parent, self.generate_alg, now=now)
        stamp = self._stat()
        self._file = KeySet.from_file(self.path)
        self._stamp = stamp
        self._current = self._file.at(now, retain=self.retain)
        return self._current

    def refresh(self, now: int) -> KeySet | None:
        """The new key set when the file or the time changed what is in force, else ``None``.

        Cheap enough to call every few seconds: one ``stat`` and, only when the file
        changed, one read. A file that cannot be read or parsed (an operator half-way
        through editing it) is logged and the keys in use are kept.
        """
        if self._current is None or self._file is None:
            return self.load(now)
        try:
            stamp = self._stat()
            if stamp != self._stamp:
                self._file = KeySet.from_file(self.path)
                self._stamp = stamp
        except ConfigError as exc:
            log.warning("key file not reloaded, keeping the keys in use: %s", exc.detail)
        fresh = self._file.at(now, retain=self.retain)
        if _same(fresh, self._current):
            return None
        log.info(
            "signing keys changed: signer %s, %d key(s) verify",
            fresh.signing_key.kid,
            len(fresh.keys),
        )
        self._current = fresh
        return fresh

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise ConfigError(
                f"TOKENWARD_SIGNING_KEYS: cannot read {self.path}: {exc.strerror}"
            ) from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)


def _same(a: KeySet, b: KeySet) -> bool:
    return a.signing_key.kid == b.signing_key.kid and [k.kid for k in a.keys] == [
        k.kid for k in b.keys
    ]


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """One key of the file as ``tokenward keys list`` shows it."""

    kid: str
    alg: SigningAlg
    created_at: int | None
    not_before: int | None
    retired_at: int | None
    state: KeyState
    signing: bool


def describe(keys: KeySet, *, now: int, retain: int) -> list[KeyStatus]:
    """The state of every key of a file at ``now``, oldest first.

    ``pending`` (published, not signing yet), ``signing``, ``verifying`` (retired, its
    tokens may still be live) or ``expired`` (dropped; pruned by the next rotation).
    """
    in_force = keys.at(now, retain=retain)
    out = []
    for key in keys.keys:
        state: KeyState
        if key is in_force.signing_key:
            state = "signing"
        elif in_force.get(key.kid) is None:
            state = "expired"
        elif key.not_before is not None and key.not_before > now:
            state = "pending"
        else:
            state = "verifying"
        out.append(
            KeyStatus(
                kid=key.kid,
                alg=key.alg,
                created_at=key.created_at,
                not_before=key.not_before,
                retired_at=key.retired_at,
                state=state,
                signing=state == "signing",
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Rotation:
    """What :func:`rotate` did."""

    new: SigningKey
    #: when the new key signs (and the retired ones stop)
    activates_at: int
    retired: tuple[str, ...]
    pruned: tuple[str, ...]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise rotations of one file (two operators, or a script run twice)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"TOKENWARD_SIGNING_KEYS: cannot lock {lock_path}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, keys: list[SigningKey], *, exclusive: bool) -> None:
    """Write the file atomically (mode 0600): readers see the old file or the new one.

    ``exclusive`` creates it only if absent (``link``), as a first start does, so a server
    generating its first key at the same moment cannot be overwritten.
    """
    body = json.dumps({"keys": [k.private_jwk() for k in keys]}, indent=2).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ConfigError(f"TOKENWARD_SIGNING_KEYS: cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def rotate(path: Path, *, alg: SigningAlg, now: int, activate_in: int, retain: int) -> Rotation:
    """Append a new key to a JWKS key file and retire the current signer (see module doc).

    Args:
        path: the key file (created when missing; the new key then signs at once).
        alg: the new key's algorithm.
        now: the current time.
        activate_in: seconds until the new key signs; 0 for at once (with several
            instances, tokens of the new key are refused for up to one reload interval by
            the instances that have not re-read the file yet).
        retain: see :func:`retain_seconds`; older retired keys are pruned.

    Raises:
        ConfigError: the file is a PEM file, cannot be parsed, or cannot be written.
    """
    if activate_in < 0:
        raise ValueError("activate_in must not be negative")
    with _locked(path):
        if not path.exists():
            key = replace(generate_key(alg), created_at=now, not_before=now)
            try:
                _write(path, [key], exclusive=True)
            except FileExistsError:
                pass  # a server generated the first key meanwhile: rotate that one
            else:
                return Rotation(new=key, activates_at=now, retired=(), pruned=())
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"TOKENWARD_SIGNING_KEYS: cannot read {path}: {exc.strerror}"
            ) from None
        if not _is_jwks(data):
            raise ConfigError(
                f"TOKENWARD_SIGNING_KEYS: {path} is a PEM file, which cannot record when a key "
                "was retired; rotate by editing it: append the new private key (the last one "
                f"signs) and remove the old one after {retain} seconds, or use a JWKS file"
            )
        keys = list(KeySet.from_file(path).keys)
        pruned = tuple(
            k.kid for k in keys if k.retired_at is not None and now >= k.retired_at + retain
        )
        keys = [k for k in keys if k.kid not in pruned]
        activates_at = now + activate_in if any(k.signs_at(now) for k in keys) else now
        retired = []
        for i, key in enumerate(keys):
            if key.retired_at is None or key.retired_at > activates_at:
                keys[i] = replace(key, retired_at=activates_at)
                retired.append(key.kid)
        new = replace(generate_key(alg), created_at=now, not_before=activates_at)
        _write(path, [*keys, new], exclusive=False)
    return Rotation(new=new, activates_at=activates_at, retired=tuple(retired), pruned=pruned)
