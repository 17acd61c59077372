"""A WebAuthn authenticator in software, for the passkey tests: real P-256 keys, real
signatures, a real ``none`` attestation (CBOR) and real ``clientDataJSON``, built here from
the specification (WebAuthn Level 2, sections 6.1 and 6.5), not by the code under test.

:meth:`SoftAuthenticator.create` answers ``PublicKeyCredentialCreationOptions`` as
``navigator.credentials.create()`` would, :meth:`SoftAuthenticator.get` answers request
options as ``navigator.credentials.get()`` would, both in the JSON form of
``PublicKeyCredential.toJSON()``. Knobs make it misbehave the ways a test needs: another
origin or rp id, no user verification, a counter that goes backwards.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, BE, BS, AT = 0x01, 0x04, 0x08, 0x10, 0x40


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Credential:
    """One key pair the authenticator holds (discoverable: it knows its user handle)."""

    id: bytes
    key: ec.EllipticCurvePrivateKey
    rp_id: str
    user_handle: bytes
    counter: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.key.public_key().public_numbers()
        return cbor2.dumps(
            {
                1: 2,  # kty: EC2
                3: -7,  # alg: ES256
                -1: 1,  # crv: P-256
                -2: numbers.x.to_bytes(32, "big"),
                -3: numbers.y.to_bytes(32, "big"),
            }
        )


@dataclass
class SoftAuthenticator:
    """Holds credentials; ``origin`` is what the "browser" puts in ``clientDataJSON``."""

    origin: str
    #: flags: a synced passkey sets BE (and BS)
    synced: bool = False
    #: counts signatures (some authenticators always report 0)
    counting: bool = True
    credentials: list[Credential] = field(default_factory=list)

    def _flags(self, *, uv: bool, attested: bool = False) -> int:
        flags = UP | (UV if uv else 0) | (AT if attested else 0)
        if self.synced:
            flags |= BE | BS
        return flags

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps(
            {
                "type": kind,
                "challenge": challenge,
                "origin": origin or self.origin,
                "crossOrigin": False,
            },
            separators=(",", ":"),
        ).encode()

    def create(
        self,
        options: dict[str, Any],
        *,
        uv: bool = True,
        origin: str | None = None,
        rp_id: str | None = None,
    ) -> dict[str, Any]:
        """A new credential for ``options`` (creation options JSON)."""
        rp = rp_id or options["rp"]["id"]
        cred = Credential(
            id=secrets.token_bytes(32),
            key=ec.generate_private_key(ec.SECP256R1()),
            rp_id=rp,
            user_handle=unb64url(options["user"]["id"]),
        )
        attested = (
            bytes(16)  # AAGUID: none
            + struct.pack(">H", len(cred.id))
            + cred.id
            + cred.cose_public_key()
        )
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([self._flags(uv=uv, attested=True)])
            + struct.pack(">I", cred.counter)
            + attested
        )
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data("webauthn.create", options["challenge"], origin)
        self.credentials.append(cred)
        return {
            "id": b64url(cred.id),
            "rawId": b64url(cred.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "attestationObject": b64url(attestation),
                "transports": ["internal"],
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }

    def get(
        self,
        options: dict[str, Any],
        *,
        cred: Credential | None = None,
        uv: bool = True,
        origin: str | None = None,
        rp_id: str | None = None,
        counter: int | None = None,
    ) -> dict[str, Any]:
        """An assertion for ``options`` (request options JSON) with ``cred`` (default: the
        first credential allowed, or the newest discoverable one for the rp id)."""
        if cred is None:
            allowed = {c["id"] for c in options.get("allowCredentials") or []}
            usable = [
                c
                for c in self.credentials
                if c.rp_id == options["rpId"] and (not allowed or b64url(c.id) in allowed)
            ]
            cred = usable[-1]
        if counter is not None:
            cred.counter = counter
        elif self.counting:
            cred.counter += 1
        rp = rp_id or cred.rp_id
        auth_data = (
            hashlib.sha256(rp.encode()).digest()
            + bytes([self._flags(uv=uv)])
            + struct.pack(">I", cred.counter)
        )
        client_data = self._client_data("webauthn.get", options["challenge"], origin)
        signed = auth_data + hashlib.sha256(client_data).digest()
        signature = cred.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return {
            "id": b64url(cred.id),
            "rawId": b64url(cred.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data),
                "authenticatorData": b64url(auth_data),
                "signature": b64url(signature),
                "userHandle": b64url(cred.user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }
