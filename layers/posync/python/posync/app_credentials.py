"""The app's own provider credentials, one Secrets Manager secret per provider.

``posync/{stage}/app/clover``: ``{"client_id", "client_secret", "webhook_auth_code"?}``
``posync/{stage}/app/poynt``: ``{"app_id", "private_key_pem", "webhook_secret"?}``

Poynt's ``client_id`` on the consent URL is the app id. The webhook values are optional
until webhooks are configured: Clover shows the ``X-Clover-Auth`` code in the app's
dashboard once the webhook URL is verified; Poynt returns a secret when a hook is created.
The ``posync app-credentials set`` CLI writes these secrets (merging, so setting one value
keeps the others). Reads are cached per container for ``ttl_s``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import check_provider
from posync.errors import InvalidInput, PosyncError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

CLOVER_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
POYNT_APP_ID = re.compile(r"urn:aid:[A-Za-z0-9._-]{1,80}")
MIN_RSA_BITS = 2048


class AppNotConfigured(PosyncError):
    """The provider's app credentials are missing or incomplete (run ``posync app-credentials set``)."""


def load_rsa_private_key(pem: str | bytes) -> RSAPrivateKey:
    """The RSA private key in ``pem``; ``InvalidInput`` (saying nothing of the content) otherwise."""
    # cryptography loads on first use: only Poynt connections need it (a Clover-only cold start skips it).
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("the private key is not an unencrypted PEM private key") from exc
    if not isinstance(key, RSAPrivateKey):
        raise InvalidInput("the private key is not an RSA key")
    if key.key_size < MIN_RSA_BITS:
        raise InvalidInput(f"the RSA key must have at least {MIN_RSA_BITS} bits")
    return key


@dataclass(frozen=True)
class CloverAppCredentials:
    """The Clover app's client id and secret, and its webhook auth code once verified."""

    client_id: str
    client_secret: str = field(repr=False)
    webhook_auth_code: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not CLOVER_CLIENT_ID.fullmatch(self.client_id):
            raise InvalidInput("the Clover client id must be 1-64 letters, digits, _ or -")
        if not self.client_secret:
            raise InvalidInput("the Clover client secret is empty")

    def to_dict(self) -> dict[str, str]:
        d = {"client_id": self.client_id, "client_secret": self.client_secret}
        if self.webhook_auth_code:
            d["webhook_auth_code"] = self.webhook_auth_code
        return d


@dataclass(frozen=True)
class PoyntAppCredentials:
    """The Poynt app's id and private key (PEM), and its webhook signing secret."""

    app_id: str
    private_key_pem: str = field(repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not POYNT_APP_ID.fullmatch(self.app_id):
            raise InvalidInput("the Poynt app id must look like urn:aid:<id>")
        _ = self.private_key  # validates the PEM once

    @property
    def client_id(self) -> str:
        return self.app_id

    @cached_property
    def private_key(self) -> RSAPrivateKey:
        return load_rsa_private_key(self.private_key_pem)

    def to_dict(self) -> dict[str, str]:
        d = {"app_id": self.app_id, "private_key_pem": self.private_key_pem}
        if self.webhook_secret:
            d["webhook_secret"] = self.webhook_secret
        return d


AppCredentials = CloverAppCredentials | PoyntAppCredentials


def parse_credentials(provider: str, data: dict[str, Any]) -> AppCredentials:
    """Typed credentials from a secret's JSON; ``AppNotConfigured`` when a field is missing."""
    check_provider(provider)
    try:
        if provider == "clover":
            return CloverAppCredentials(
                client_id=str(data["client_id"]),
                client_secret=str(data["client_secret"]),
                webhook_auth_code=data.get("webhook_auth_code") or None,
            )
        return PoyntAppCredentials(
            app_id=str(data["app_id"]),
            private_key_pem=str(data["private_key_pem"]),
            webhook_secret=data.get("webhook_secret") or None,
        )
    except (KeyError, InvalidInput) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise AppNotConfigured(f"{provider} app credentials are not configured ({detail})") from exc


class AppCredentialsStore:
    """Reads (cached for ``ttl_s``) and writes the app credential secrets."""

    def __init__(
        self, settings: Settings, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, AppCredentials]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _sm() -> Any:
        return client("secretsmanager")

    def _read_raw(self, provider: str) -> dict[str, Any]:
        try:
            raw = self._sm().get_secret_value(SecretId=self._settings.app_secret_name(provider))[
                "SecretString"
            ]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return {}
            raise
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, provider: str, max_age_s: float | None = None) -> AppCredentials:
        """The provider's credentials; re-read when the cached copy is older than ``max_age_s``."""
        check_provider(provider)
        limit = self._ttl_s if max_age_s is None else min(max_age_s, self._ttl_s)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(provider)
            if hit is not None and now - hit[0] < limit:
                return hit[1]
        creds = parse_credentials(provider, self._read_raw(provider))
        with self._lock:
            self._cache[provider] = (now, creds)
        return creds

    def age(self, provider: str) -> float | None:
        hit = self._cache.get(provider)
        return None if hit is None else self._clock() - hit[0]

    def clover(self) -> CloverAppCredentials:
        creds = self.get("clover")
        assert isinstance(creds, CloverAppCredentials)
        return creds

    def poynt(self) -> PoyntAppCredentials:
        creds = self.get("poynt")
        assert isinstance(creds, PoyntAppCredentials)
        return creds

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()

    def save(self, provider: str, values: dict[str, str]) -> AppCredentials:
        """Merge ``values`` into the provider's secret (created with the stage KMS key if absent).

        The merged result must parse as complete credentials; nothing is written otherwise.
        """
        check_provider(provider)
        merged = {**self._read_raw(provider), **{k: v for k, v in values.items() if v is not None}}
        creds = parse_credentials(provider, merged)
        name = self._settings.app_secret_name(provider)
        body = json.dumps(merged, separators=(",", ":"))
        sm = self._sm()
        try:
            sm.put_secret_value(SecretId=name, SecretString=body)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            sm.create_secret(
                Name=name,
                SecretString=body,
                KmsKeyId=self._settings.resources.kms_alias,
                Description=f"posync {provider} app credentials",
            )
        self.invalidate()
        return creds
