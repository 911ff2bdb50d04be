"""Ports: the small interfaces domain services take in their constructors.

AWS and provider adapters implement them; the unit tests share in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from posync.domain import Connection, ConnectionStatus

if TYPE_CHECKING:
    from posync.ratelimit import Deadline
    from posync.sources import Page, Plan
    from posync.transport import TransportStats


class AccessTokens(Protocol):
    """Valid access tokens for a connection (refreshing single-flight when due)."""

    def access_token(self, conn: Connection) -> str:
        """A token valid for at least the refresh leeway. Raises AuthorizationRevoked."""
        ...

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        """The provider answered 401 to ``rejected``: refresh (once, single-flight) and return a new token."""
        ...


# --- the sync engine's ports (posync.sync); adapters: ConnectionRepository, OrderRepository,
# --- ExportWriter, posync.sources.* (in-memory fakes in tests/unit/test_sync_*.py).


class ConnectionStore(Protocol):
    """Where connections and their sync cursors live (``posync.connections.ConnectionRepository``)."""

    def get(self, provider: str, merchant_id: str) -> Connection:
        """Raises ConnectionNotFound."""
        ...

    def list_by_status(
        self, status: ConnectionStatus | str, page_size: int = 100, start_key: dict[str, Any] | None = None
    ) -> tuple[list[Connection], dict[str, Any] | None]: ...

    def commit_cursor(self, conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        """Store the sync position; called only after the checkpoint it describes is durable."""
        ...

    def record_error(self, conn: Connection, message: str) -> None: ...


class ExportLedger(Protocol):
    """The export side's exactly-once bookkeeping, as the order repository sees it."""

    @property
    def write_ref(self) -> str: ...

    def exported(self, ref: str) -> bool: ...


class OrderSink(Protocol):
    """Newest-wins order storage (``posync.store.OrderRepository``)."""

    def write(
        self,
        conn_id: str,
        run_id: str,
        orders: Sequence[Mapping[str, Any]],
        *,
        ledger: ExportLedger | None = None,
    ) -> list[Mapping[str, Any]]:
        """Upsert a page of canonical orders; return the versions to export."""
        ...


class ExportSink(Protocol):
    """One run's exports (``posync.exports.ExportWriter``)."""

    @property
    def run_id(self) -> str: ...

    @property
    def write_ref(self) -> str: ...

    @property
    def should_checkpoint(self) -> bool: ...

    def exported(self, ref: str) -> bool: ...

    def add(self, order: Mapping[str, Any]) -> None: ...

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None: ...

    def checkpoint(self) -> Sequence[Any]:
        """Make everything added so far durable; after it returns the cursor may be committed."""
        ...

    def finish(
        self, cursor_from: Any = None, cursor_to: Any = None, counts: Mapping[str, int] | None = None
    ) -> str:
        """Write the run's manifest (then its OrdersExported event); returns the manifest key."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where a sync run puts its pages: storage + exports in production, a counter in benchmarks."""

    @property
    def run_id(self) -> str: ...

    @property
    def wants_checkpoint(self) -> bool: ...

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        """Store a page of canonical orders; returns how many went to the exports."""
        ...

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None: ...

    def checkpoint(self) -> None: ...

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None: ...

    def close(self) -> None: ...


class OrderSource(Protocol):
    """One connection's orders, paged by keyset (``posync.sources.KeysetSource``)."""

    provider: str

    def settled(self, cursor: dict[str, Any]) -> int | None:
        """The settled cursor's position (epoch ms), or None for a connection that never synced."""
        ...

    def settled_cursor(self, end_ms: int, newest_ms: int | None) -> dict[str, Any]: ...

    def plan(self, start_ms: int, end_ms: int) -> Plan: ...

    def resume(self, progress: dict[str, Any]) -> Plan: ...

    def plan_progress(self, plan: Plan) -> dict[str, Any] | None: ...

    def decode_time(self, value: Any) -> int: ...

    def pages(
        self, plan: Plan, deadline: Deadline, prepare: Callable[[dict[str, Any]], Any] | None = None
    ) -> Generator[Page, None, None]:
        """Pages of new orders, each with the progress that is valid once it is durable.

        ``prepare`` runs on each order in the fetch threads; the page holds its results.
        """
        ...

    @property
    def stats(self) -> TransportStats: ...

    def close(self) -> None: ...
