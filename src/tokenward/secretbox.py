"""Second-factor secrets encrypted at rest (AES-256-GCM).

A TOTP secret must be readable by the server (it computes the codes), so unlike passwords
and recovery codes it cannot be hashed: it is encrypted with a key that is *not* in the
database, so a copy of the database (a backup, an SQL injection) yields no usable secret.

Keys come from ``TOKENWARD_MFA_KEYS`` (comma-separated, each 32 random bytes in unpadded
base64url; the first encrypts, every one decrypts, so a key can be rotated in), or, when
unset, from ``mfa.key`` in the data directory, generated on first use with mode 0600 like
the signing keys.

A sealed value is ``0x01 || key id (4 bytes) || nonce (12) || ciphertext+tag``; the
associated data names the row (user id and factor id), so a sealed secret copied onto
another user's row does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokenward.errors import ConfigError
from tokenward.private_paths import private_dir

__all__ = ["KEY_FILE", "SecretBox", "SecretBoxError", "new_key_text"]

KEY_FILE = "mfa.key"
_VERSION = b"\x01"
_VARIABLE = "TOKENWARD_MFA_KEYS"


class SecretBoxError(Exception):
    """A sealed value does not open with any configured key (wrong key, tampered)."""


def new_key_text() -> str:
    """A fresh key as ``TOKENWARD_MFA_KEYS`` takes it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def _parse_key(text: str) -> bytes:
    text = text.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{_VARIABLE}: each key must be 32 bytes in base64url")
    return raw


def _kid(key: bytes) -> bytes:
    return hashlib.sha256(b"tokenward:mfa-key:" + key).digest()[:4]


class SecretBox:
    """Seals and opens small secrets with AES-256-GCM.

    Args:
        keys: raw 32-byte keys; the first seals, all open.
    """

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys or any(len(k) != 32 for k in keys):
            raise ConfigError(f"{_VARIABLE}: at least one 32-byte key is needed")
        self._sealer = (_kid(keys[0]), AESGCM(keys[0]))
        self._openers = {_kid(k): AESGCM(k) for k in reversed(keys)}

    @classmethod
    def from_config(cls, keys_text: str | None, data_dir: Path) -> SecretBox:
        """The configured keys, or the data directory's generated key file."""
        if keys_text:
            return cls([_parse_key(part) for part in keys_text.split(",") if part.strip()])
        return cls([_parse_key(_key_file(data_dir / KEY_FILE))])

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        """Encrypt ``plaintext``, bound to ``context`` (the row it is stored in)."""
        kid, aead = self._sealer
        nonce = secrets.token_bytes(12)
        return _VERSION + kid + nonce + aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, *, context: str) -> bytes:
        """Decrypt what :meth:`seal` made with the same ``context``.

        Raises:
            SecretBoxError: unknown key, wrong context or tampered value.
        """
        if len(sealed) < 1 + 4 + 12 + 16 or sealed[:1] != _VERSION:
            raise SecretBoxError("not a sealed value")
        aead = self._openers.get(sealed[1:5])
        if aead is None:
            raise SecretBoxError("sealed with a key that is not configured")
        try:
            return aead.decrypt(sealed[5:17], sealed[17:], context.encode())
        except InvalidTag:
            raise SecretBoxError("does not open (wrong key or context, or tampered)") from None


def _key_file(path: Path) -> str:
    """Read the generated key, making it (0600, exclusively) when it does not exist yet.

    Several workers may start at once: the first ``O_EXCL`` create wins and the others
    read what it wrote (written whole before the rename makes it visible).
    """
    private_dir(path.parent)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_key_text() + "\n")
        try:
            os.link(tmp, path)  # fails if another worker got there first: theirs is kept
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{_VARIABLE}: cannot read {path}: {exc.strerror}") from None
