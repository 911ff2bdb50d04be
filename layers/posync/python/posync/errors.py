"""Domain exceptions. Handlers turn them into answers in one place; none carries a secret."""

from __future__ import annotations


class PosyncError(Exception):
    """Base of every posync domain error. Messages are safe to show and to log."""


class UnknownProvider(PosyncError):
    pass


class InvalidInput(PosyncError):
    """A request parameter failed its strict pattern (merchant id, provider, date...)."""


class InvalidState(PosyncError):
    """An OAuth state that is forged, expired or already used. ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"OAuth state {reason}")
        self.reason = reason  # "forged" | "expired" | "replayed" | "missing"


class ProviderError(PosyncError):
    """The provider answered with an error we may retry (5xx, timeout, 429)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class RateLimited(ProviderError):
    """HTTP 429: wait at least ``retry_after_s`` before the next call on this token."""


class AuthorizationRevoked(PosyncError):
    """The provider refused our grant (invalid_grant, revoked, uninstalled): the merchant must reconnect."""


class ConnectionNotFound(PosyncError):
    pass


class StaleWrite(PosyncError):
    """A conditional write found the connection changed since it was read (reconnected, revoked)."""


class ConnectionInactive(PosyncError):
    """The connection is ``needs_reauth`` or ``revoked``: its syncs stop until it reconnects."""


class MalformedOrder(PosyncError):
    """A provider order that cannot be normalized. It is quarantined with ``reason``; the run goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
