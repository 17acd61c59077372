"""Signing keys: an ordered set in which the newest key signs and every key verifies.

The key type decides the algorithm and pins it (Ed25519 → ``EdDSA``, P-256 → ``ES256``): a
token is only ever checked with the one algorithm of the key its ``kid`` names, so algorithm
confusion (``none``, HMAC with a public key) cannot happen. ``kid`` is the RFC 7638 JWK
thumbprint, so every instance that reads the same key file agrees on it.

Keys come from ``TOKENWARD_SIGNING_KEYS`` (a PEM file with one or more private keys, or a
JWKS file with private members; the last key signs) or are generated once into the data
directory (``signing-keys.jwks``, mode 0600).

Rotation (see :mod:`tokenward.keyring`): a JWKS entry may carry three extra members (RFC 7517
allows them; other readers ignore them): ``iat`` (when the key was created), ``nbf`` (when
it starts signing) and ``retired_at`` (when it stopped signing). :meth:`KeySet.at` turns the
keys of a file into the set in force at a given time: the last key that has started and not
retired signs, and a retired key keeps verifying for ``retain`` seconds, then is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from jwt.exceptions import InvalidKeyError

from tokenward.errors import ConfigError

__all__ = ["GENERATED_KEYS_FILE", "KeySet", "SigningAlg", "SigningKey", "generate_key"]

SigningAlg = Literal["EdDSA", "ES256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey

GENERATED_KEYS_FILE = "signing-keys.jwks"

_THUMBPRINT_MEMBERS = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y")}


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private key with its pinned algorithm and its ``kid``."""

    kid: str
    alg: SigningAlg
    private_key: PrivateKey
    #: when the key was created (``iat``), if the key file says
    created_at: int | None = None
    #: when the key starts signing (``nbf``); it verifies from the moment it is in the file
    not_before: int | None = None
    #: when the key stopped signing (``retired_at``); it verifies a while longer
    retired_at: int | None = None

    @property
    def public_key(self) -> PublicKey:
        """The public half, the only one that ever leaves the process."""
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK: ``kty``, ``crv``, ``x`` (``y``), ``kid``, ``alg``, ``use``."""
        jwk = _to_jwk(self.public_key)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        """The private JWK with the rotation members, for writing the key file only."""
        jwk = {**_to_jwk(self.private_key), "kid": self.kid, "alg": self.alg, "use": "sig"}
        for member, value in (
            ("iat", self.created_at),
            ("nbf", self.not_before),
            ("retired_at", self.retired_at),
        ):
            if value is not None:
                jwk[member] = value
        return jwk

    def signs_at(self, now: int) -> bool:
        """Whether the key may sign at ``now``: it has started and has not retired."""
        started = self.not_before is None or self.not_before <= now
        return started and (self.retired_at is None or self.retired_at > now)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"


def _to_jwk(key: PrivateKey | PublicKey) -> dict[str, Any]:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    return dict(ECAlgorithm.to_jwk(key, as_dict=True))


def _thumbprint(public_jwk: dict[str, Any]) -> str:
    members = _THUMBPRINT_MEMBERS[public_jwk["kty"]]
    canonical = json.dumps(
        {m: public_jwk[m] for m in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _signing_key(private_key: object, where: str) -> SigningKey:
    alg: SigningAlg
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        alg = "EdDSA"
    elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        private_key.curve, ec.SECP256R1
    ):
        alg = "ES256"
    else:
        raise ConfigError(
            f"TOKENWARD_SIGNING_KEYS: {where}: only Ed25519 and P-256 keys are supported"
        )
    kid = _thumbprint(_to_jwk(private_key.public_key()))
    return SigningKey(kid=kid, alg=alg, private_key=private_key)


def generate_key(alg: SigningAlg = "EdDSA") -> SigningKey:
    """Make a fresh key from the operating system's CSPRNG."""
    private: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if alg == "EdDSA"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return _signing_key(private, "generated")


class KeySet:
    """An ordered, non-empty list of keys: the last one signs, all of them verify.

    Args:
        keys: the keys, oldest first.
        signer: the key that signs; the last one when omitted (see :meth:`at`).
    """

    def __init__(self, keys: Sequence[SigningKey], *, signer: SigningKey | None = None) -> None:
        if not keys:
            raise ConfigError("TOKENWARD_SIGNING_KEYS: the key set is empty")
        self._keys = tuple(keys)
        self._by_kid = {k.kid: k for k in self._keys}
        if signer is not None and self._by_kid.get(signer.kid) is not signer:
            raise ValueError("the signer must be one of the keys")
        self._signer = signer or self._keys[-1]

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs: the newest one in force."""
        return self._signer

    def at(self, now: int, *, retain: int) -> KeySet:
        """The keys in force at ``now``.

        The signer is the last key that has started (``nbf``) and not retired; if there is
        none (a hand-edited file), the last key. A key retired more than ``retain`` seconds
        ago is dropped (unless it is that fallback signer): every token it signed has expired.
        Keys that have not started yet are kept, so verifiers learn them before first use.

        Args:
            now: the current time.
            retain: how long a retired key keeps verifying (the longest access token
                lifetime plus leeway).
        """
        eligible = [k for k in self._keys if k.signs_at(now)]
        signer = eligible[-1] if eligible else self._keys[-1]
        kept = [
            k
            for k in self._keys
            if k is signer or k.retired_at is None or now < k.retired_at + retain
        ]
        return KeySet(kept, signer=signer)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        """All keys, oldest first."""
        return self._keys

    def get(self, kid: str) -> SigningKey | None:
        """The key with this ``kid``, or ``None`` when it is not ours."""
        return self._by_kid.get(kid)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set served at ``/.well-known/jwks.json``."""
        return {"keys": [k.public_jwk() for k in self._keys]}

    @classmethod
    def from_file(cls, path: Path) -> KeySet:
        """Read a PEM file (one or more private keys) or a JWKS file with private members."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"TOKENWARD_SIGNING_KEYS: cannot read {path}: {exc.strerror}"
            ) from None
        if data.lstrip().startswith(b"{"):
            return cls(_keys_from_jwks(data, str(path)))
        return cls(_keys_from_pem(data, str(path)))

    @classmethod
    def load_or_generate(
        cls, data_dir: Path, alg: SigningAlg = "EdDSA", *, now: int | None = None
    ) -> KeySet:
        """Read ``data_dir/signing-keys.jwks``, creating it (mode 0600) on first use.

        Creation is exclusive (``O_EXCL``), so two processes starting at once end up with the
        same key: the loser of the race reads the winner's file.

        Args:
            data_dir: the data directory.
            alg: the algorithm of a generated key.
            now: recorded as the generated key's ``iat`` when given.
        """
        path = data_dir / GENERATED_KEYS_FILE
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = generate_key(alg)
            if now is not None:
                key = replace(key, created_at=now)
            body = json.dumps({"keys": [key.private_jwk()]}, indent=2).encode()
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return cls.from_file(path)


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def _keys_from_pem(data: bytes, where: str) -> list[SigningKey]:
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(data)]
    keys = []
    for i, block in enumerate(blocks):
        try:
            private = serialization.load_pem_private_key(block, password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"TOKENWARD_SIGNING_KEYS: {where}: PEM block {i + 1} "
                "is not an unencrypted private key"
            ) from None
        keys.append(_signing_key(private, where))
    if not keys:
        raise ConfigError(f"TOKENWARD_SIGNING_KEYS: {where}: no PEM private key found")
    return keys


def _time_member(entry: dict[str, Any], member: str) -> int | None:
    value = entry.get(member)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ValueError(f'"{member}" must be a non-negative integer (seconds since the epoch)')
    return value


def _keys_from_jwks(data: bytes, where: str) -> list[SigningKey]:
    try:
        entries = json.loads(data)["keys"]
        keys = []
        for entry in entries:
            private: object
            if entry.get("kty") == "OKP":
                private = OKPAlgorithm.from_jwk(entry)
            elif entry.get("kty") == "EC":
                private = ECAlgorithm.from_jwk(entry)
            else:
                raise ValueError("unsupported kty")
            key = replace(
                _signing_key(private, where),
                created_at=_time_member(entry, "iat"),
                not_before=_time_member(entry, "nbf"),
                retired_at=_time_member(entry, "retired_at"),
            )
            keys.append(key)
    except (ValueError, KeyError, TypeError, AttributeError, InvalidKeyError) as exc:
        raise ConfigError(
            f"TOKENWARD_SIGNING_KEYS: {where}: not a JWKS of private keys ({exc})"
        ) from None
    return keys
