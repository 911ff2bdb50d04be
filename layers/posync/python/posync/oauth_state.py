"""The signed OAuth ``state`` (Clover ``state``, Poynt ``context``).

Format: ``<payload>.<mac>``, both base64url without padding; the payload is compact JSON
``{"v": 1, "p": provider, "n": nonce, "iat": t, "exp": t + 600, "ref"?: ..., "m"?: ...}``
and the MAC is HMAC-SHA256 over the payload's base64 text with the stage's state key
(Secrets Manager ``settings.state_key_secret_name``, read once per container).

- **forged**: malformed, bad MAC, or issued for another provider;
- **expired**: older than ``STATE_TTL_S`` (10 minutes);
- **replayed**: the nonce was already used. Single use is recorded at callback time with a
  conditional put of ``state#<nonce>`` in the control table (``expires_at`` = the state's
  expiry plus a day, the table's TTL attribute).

The state names no secret; it only carries the provider, the operator's ``ref`` and the
merchant hint (ids that appear in the URLs anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import REF_PATTERN, check_provider
from posync.errors import InvalidState, PosyncError

STATE_TTL_S = 600
STATE_VERSION = 1
MAX_STATE_CHARS = 1024
MIN_KEY_BYTES = 16
STATE_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
USED_STATE_RETENTION_S = 86400


class StateKeyUnavailable(PosyncError):
    """The state key secret is missing or too short (deployment problem, not the merchant's)."""


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class StatePayload:
    provider: str
    nonce: str
    issued_at: int
    expires_at: int
    ref: str | None = None
    merchant_hint: str | None = None


class ExpiredState(InvalidState):
    """A genuine state that is too old; its payload (e.g. the ``ref``) may still be trusted."""

    def __init__(self, payload: StatePayload) -> None:
        super().__init__("expired")
        self.payload = payload


def key_from_secret(secret_string: str) -> bytes:
    """The HMAC key from the secret's text: base64 of random bytes (what provisioning writes);
    any other text (e.g. a CDK-generated password) is used as its UTF-8 bytes."""
    text = secret_string.strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise StateKeyUnavailable("the OAuth state key is shorter than 16 bytes")
    return key


class SecretsManagerStateKey:
    """Reads the state key secret once per container (thread-safe), on first use."""

    def __init__(self, settings: Settings) -> None:
        self._name = settings.state_key_secret_name
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            if self._key is None:
                try:
                    raw = client("secretsmanager").get_secret_value(SecretId=self._name)["SecretString"]
                except ClientError as exc:
                    raise StateKeyUnavailable("the OAuth state key secret cannot be read") from exc
                self._key = key_from_secret(raw)
            return self._key


class StateSigner:
    def __init__(
        self,
        key: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
        ttl_s: int = STATE_TTL_S,
    ) -> None:
        self._key = key
        self._clock = clock
        self._ttl_s = ttl_s

    def _mac(self, payload_b64: str) -> str:
        return _b64e(hmac.new(self._key(), payload_b64.encode("ascii"), hashlib.sha256).digest())

    def issue(self, provider: str, ref: str | None = None, merchant_hint: str | None = None) -> str:
        now = int(self._clock())
        body: dict[str, Any] = {
            "v": STATE_VERSION,
            "p": check_provider(provider),
            "n": _b64e(secrets.token_bytes(16)),
            "iat": now,
            "exp": now + self._ttl_s,
        }
        if ref:
            body["ref"] = ref
        if merchant_hint:
            body["m"] = merchant_hint
        payload = _b64e(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, provider: str, state: str | None) -> StatePayload:
        """The state's payload, or ``InvalidState`` with reason missing/forged/expired."""
        if not state:
            raise InvalidState("missing")
        if len(state) > MAX_STATE_CHARS or not STATE_PATTERN.fullmatch(state):
            raise InvalidState("forged")
        payload_b64, mac = state.split(".")
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(payload_b64).encode("ascii")):
            raise InvalidState("forged")
        try:
            body = json.loads(_b64d(payload_b64))
            parsed = StatePayload(
                provider=str(body["p"]),
                nonce=str(body["n"]),
                issued_at=int(body["iat"]),
                expires_at=int(body["exp"]),
                ref=body.get("ref"),
                merchant_hint=body.get("m"),
            )
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidState("forged") from exc
        if (
            body.get("v") != STATE_VERSION
            or parsed.provider != provider
            or not NONCE_PATTERN.fullmatch(parsed.nonce)
        ):
            raise InvalidState("forged")
        if parsed.ref is not None and not REF_PATTERN.fullmatch(str(parsed.ref)):
            raise InvalidState("forged")
        if self._clock() >= parsed.expires_at:
            raise ExpiredState(parsed)
        return parsed


class StateNonces(Protocol):
    def consume(self, nonce: str, expires_at: int) -> bool:
        """Record the nonce as used; False when it was used before."""
        ...


class DynamoStateNonces:
    """Used nonces in the control table: ``pk = state#<nonce>`` with a TTL."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._table = settings.control_table
        self._clock = clock

    def consume(self, nonce: str, expires_at: int) -> bool:
        if not NONCE_PATTERN.fullmatch(nonce):
            return False
        try:
            client("dynamodb").put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": f"state#{nonce}"},
                    "used_at": {"N": str(int(self._clock()))},
                    "expires_at": {"N": str(int(expires_at) + USED_STATE_RETENTION_S)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True
