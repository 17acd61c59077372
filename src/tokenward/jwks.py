"""A public JWK Set as verification keys: what services other than Tokenward verify with.

Tokenward publishes its public keys at ``/.well-known/jwks.json``. :class:`PublicKeySet`
reads such a document into keys that :class:`~tokenward.tokens.AccessTokenVerifier` accepts,
with the same algorithm pinning as the issuer: the key type decides the algorithm
(Ed25519 → ``EdDSA``, P-256 → ``ES256``), so a JWKS entry cannot widen what a token may use.
Only public members are read, whatever else an entry carries; entries that are not
signature keys of a supported type are skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt import PyJWTError
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from tokenward.keys import PublicKey, SigningAlg

__all__ = ["PublicKeySet", "VerifyingKey"]

# (kty, crv) -> the pinned algorithm and the members of the public key.
_SUPPORTED: dict[tuple[str, str], tuple[SigningAlg, tuple[str, ...]]] = {
    ("OKP", "Ed25519"): ("EdDSA", ("kty", "crv", "x")),
    ("EC", "P-256"): ("ES256", ("kty", "crv", "x", "y")),
}


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """A public key, its ``kid`` and the one algorithm it verifies."""

    kid: str
    alg: SigningAlg
    public_key: PublicKey


def _parse(entry: Any) -> VerifyingKey | None:
    if not isinstance(entry, Mapping):
        return None
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid or entry.get("use", "sig") != "sig":
        return None
    supported = _SUPPORTED.get((entry.get("kty"), entry.get("crv")))  # type: ignore[arg-type]
    if supported is None:
        return None
    alg, members = supported
    if entry.get("alg", alg) != alg:
        return None  # an entry claiming another algorithm for this key type is not ours
    public = {m: entry.get(m) for m in members}
    try:
        key = (OKPAlgorithm if alg == "EdDSA" else ECAlgorithm).from_jwk(public)
    except (ValueError, TypeError, KeyError, PyJWTError):
        return None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        return None  # only public members were passed in; anything else is not ours
    return VerifyingKey(kid=kid, alg=alg, public_key=key)


class PublicKeySet:
    """Public keys by ``kid``; satisfies :class:`~tokenward.tokens.VerificationKeys`."""

    def __init__(self, keys: Sequence[VerifyingKey]) -> None:
        self._by_kid = {k.kid: k for k in keys}

    def get(self, kid: str) -> VerifyingKey | None:
        """The key with this ``kid``, or ``None``."""
        return self._by_kid.get(kid)

    @property
    def kids(self) -> frozenset[str]:
        """The ids of every key in the set."""
        return frozenset(self._by_kid)

    def __len__(self) -> int:
        return len(self._by_kid)

    @classmethod
    def from_jwks(cls, document: Any) -> PublicKeySet:
        """Read a JWK Set (``{"keys": [...]}``), keeping the usable signature keys.

        Raises:
            ValueError: the document is not a JWK Set or holds no usable key (a
                ``ValueError``, not ``TypeError``: it is bad input from the network).
        """
        entries = document.get("keys") if isinstance(document, Mapping) else None
        if not isinstance(entries, list):
            raise ValueError('not a JWK Set: no "keys" list')  # noqa: TRY004
        keys = [k for k in (_parse(e) for e in entries) if k is not None]
        if not keys:
            raise ValueError("the JWK Set holds no Ed25519 or P-256 signature key")
        return cls(keys)
