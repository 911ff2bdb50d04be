"""Ports: the small interfaces domain services take in their constructors.

AWS and provider adapters implement them; the unit tests share in-memory fakes.
"""

from __future__ import annotations

from typing import Protocol

from posync.domain import Connection


class AccessTokens(Protocol):
    """Valid access tokens for a connection (refreshing single-flight when due)."""

    def access_token(self, conn: Connection) -> str:
        """A token valid for at least the refresh leeway. Raises AuthorizationRevoked."""
        ...

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        """The provider answered 401 to ``rejected``: refresh (once, single-flight) and return a new token."""
        ...
