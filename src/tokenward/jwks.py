"""A public JWK Set as verification keys: what services other than Tokenward verify with.

Tokenward publishes its public keys at ``/.well-known/jwks.json``. :class:`PublicKeySet`
reads such a document into keys that :class:`~tokenward.tokens.AccessTokenVerifier` accepts,
with the same algorithm pinning as the issuer: the key type decides the algorithm
(Ed25519 → ``EdDSA``, P-256 → ``ES256``), so a JWKS entry cannot widen what a token may use.
Only public members are read, whatever else an entry carries; entries that are not
signature keys of a supported type are skipped.

:func:`fetch_jwks` is the one way a verifier gets the document, and it fetches as if the
network were hostile: whoever answers for the issuer decides which tokens a service trusts.

* **Plain HTTP** only to a loopback host (a development issuer on this machine), unless the
  caller passes ``allow_insecure_http=True`` (:func:`check_jwks_url`, at construction).
* **Redirects** are followed by hand, at most :data:`MAX_REDIRECTS`, and only within the
  JWKS URL's origin (scheme, host and port): a redirect to another origin is a failed
  fetch, since it would let that origin choose the keys.
* **Size**: the body is streamed and the fetch fails as soon as it passes ``max_bytes``
  (a declared ``Content-Length`` above it fails before anything is read), so a huge or
  endless body costs at most that much memory.
* **Time**: ``seconds`` bounds the whole fetch, redirects and a slowly dripping body
  included, not only each network operation.
* **TLS** verification is httpx's default and cannot be switched off with a flag: a private
  CA is given as an :class:`ssl.SSLContext` (:func:`tls_context`), never as ``False``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt import PyJWTError
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from tokenward.errors import ConfigError
from tokenward.keys import PublicKey, SigningAlg

__all__ = [
    "DEFAULT_MAX_JWKS_BYTES",
    "MAX_REDIRECTS",
    "JwksFetchError",
    "PublicKeySet",
    "VerifyingKey",
    "check_jwks_url",
    "fetch_jwks",
    "tls_context",
]

#: A JWKS larger than this is not Tokenward's (a set of a few keys is well under 4 KiB).
DEFAULT_MAX_JWKS_BYTES = 64 * 1024
#: Same-origin redirects followed before a fetch fails.
MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

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


class JwksFetchError(Exception):
    """A JWKS fetch failed (network, status, size, redirect, time, or not a JWK Set)."""


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_jwks_url(url: str, *, allow_insecure_http: bool = False) -> str:
    """``url`` if a verifier may fetch keys from it.

    ``https://`` anywhere; ``http://`` only to ``localhost``, ``127.0.0.0/8`` or ``::1``
    (an issuer on this machine, in development) or with ``allow_insecure_http``: over plain
    HTTP anyone on the path can replace the keys and mint any token.

    Raises:
        ConfigError: another scheme, no host, or plain HTTP to another host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"jwks_url: must be an https:// URL (got {url!r})")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"jwks_url: plain http:// to {parts.hostname} lets anyone on the network replace "
            "the keys; use https://, or pass allow_insecure_http=True (development only)"
        )
    return url


def tls_context(cafile: str) -> ssl.SSLContext:
    """A verifying TLS context that trusts the CA bundle ``cafile`` (a private CA)."""
    return ssl.create_default_context(cafile=cafile)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


async def fetch_jwks(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, seconds: float
) -> PublicKeySet:
    """Fetch and read the JWK Set at ``url`` (see the module docstring for the rules).

    ``client`` must not follow redirects itself (``follow_redirects=False``).

    Raises:
        JwksFetchError: the fetch failed; the message says why (never a key).
    """
    try:
        async with asyncio.timeout(seconds):
            body = await _fetch_body(client, httpx.URL(url), max_bytes)
    except TimeoutError:
        raise JwksFetchError(f"no complete answer within {seconds} s") from None
    except httpx.HTTPError as exc:
        raise JwksFetchError(f"{type(exc).__name__}: {exc}") from None
    try:
        return PublicKeySet.from_jwks(orjson.loads(body))
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise JwksFetchError(str(exc)) from None


async def _fetch_body(client: httpx.AsyncClient, url: httpx.URL, max_bytes: int) -> bytes:
    start = url
    for _ in range(MAX_REDIRECTS + 1):
        request = client.build_request("GET", url, headers={"Accept": "application/json"})
        response = await client.send(request, stream=True)
        try:
            if response.status_code in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise JwksFetchError(f"HTTP {response.status_code} without a Location")
                target = httpx.URL(urljoin(str(url), location))
                if _origin(target) != _origin(start):
                    raise JwksFetchError(
                        f"HTTP {response.status_code} to another origin "
                        f"({target.scheme}://{target.host}) refused"
                    )
                url = target
                continue
            if response.status_code != 200:
                raise JwksFetchError(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise JwksFetchError(f"Content-Length {declared} is over {max_bytes} bytes")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise JwksFetchError(f"body over {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()
    raise JwksFetchError(f"more than {MAX_REDIRECTS} redirects")
