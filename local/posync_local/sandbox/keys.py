"""RSA keys and JWTs for the Poynt sandbox (and for tests that play a Poynt app)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def generate_rsa_keypair(bits: int = 2048) -> tuple[bytes, bytes]:
    """A fresh RSA key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def public_key_pem(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def app_assertion(
    app_id: str,
    private_key_pem: bytes,
    audience: str,
    *,
    ttl_s: int = 300,
    iat: int | None = None,
    jti: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A Poynt app's self-signed RS256 JWT (``iss = sub = app_id``), as the app would make it."""
    now = int(time.time()) if iat is None else iat
    claims: dict[str, Any] = {
        "iss": app_id,
        "sub": app_id,
        "aud": audience,
        "iat": now,
        "exp": now + ttl_s,
        "jti": jti or str(uuid.uuid4()),
    }
    claims.update(extra or {})
    return jwt.encode(claims, private_key_pem, algorithm="RS256")
