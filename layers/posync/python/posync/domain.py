"""Core records shared by every service: connections and their identities."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from posync.errors import InvalidInput, UnknownProvider

# Clover merchant ids are 13 upper-case alphanumerics; Poynt business ids are UUIDs.
MERCHANT_ID_PATTERNS: dict[str, re.Pattern[str]] = {
    "clover": re.compile(r"^[A-Z0-9]{13}$"),
    "poynt": re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
}
REF_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,64}$")


def check_provider(provider: str) -> str:
    if provider not in MERCHANT_ID_PATTERNS:
        raise UnknownProvider(f"unknown provider: {provider[:32]!r}")
    return provider


def check_merchant_id(provider: str, merchant_id: str) -> str:
    check_provider(provider)
    if not isinstance(merchant_id, str) or not MERCHANT_ID_PATTERNS[provider].fullmatch(merchant_id):
        raise InvalidInput(f"not a valid {provider} merchant id")
    return merchant_id


def check_ref(ref: str | None) -> str | None:
    if ref is None or ref == "":
        return None
    if not REF_PATTERN.fullmatch(ref):
        raise InvalidInput("ref must be 1-64 characters of letters, digits and ._:@-")
    return ref


def connection_id(provider: str, merchant_id: str) -> str:
    return f"{check_provider(provider)}#{check_merchant_id(provider, merchant_id)}"


class ConnectionStatus(StrEnum):
    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"
    REVOKED = "revoked"


@dataclass
class Connection:
    """One merchant's connection to one provider: status, sync cursor and last run."""

    provider: str
    merchant_id: str
    status: ConnectionStatus = ConnectionStatus.ACTIVE
    region: str = "sandbox"
    ref: str | None = None
    connected_at: str | None = None  # RFC 3339 UTC
    access_expires_at: int | None = None  # Unix seconds
    refresh_expires_at: int | None = None
    cursor: dict[str, Any] = field(default_factory=dict)  # provider-specific sync position
    last_run: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None
    queued_at: str | None = None  # RFC 3339 UTC: when the dispatcher last queued a sync (posync.schedule)
    # How posync is authorized: "oauth" (the merchant's consent, tokens in the connection's
    # secret) or "app_installed" (a Poynt on-terminal app: the app's own token, no secret).
    auth: str = "oauth"

    @property
    def connection_id(self) -> str:
        return connection_id(self.provider, self.merchant_id)
