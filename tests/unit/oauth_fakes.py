"""In-memory fakes of the authorization ports, shared by the auth unit tests.

Failures are the real ones: stores raise botocore ``ClientError`` codes, refreshers raise
the exceptions the provider adapters raise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from posync.config import Settings
from posync.domain import Connection, ConnectionStatus
from posync.errors import ConnectionNotFound, StaleWrite
from posync.tokens import RefreshRefused, TokenSet, TokensMissing


def client_error(code: str, op: str = "Op") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, op)


def unit_settings(**env: str) -> Settings:
    return Settings.from_env(
        {
            "POSYNC_STAGE": "unit",
            "POSYNC_PUBLIC_BASE_URL": "https://api.example.test",
            "POSYNC_CLOVER_OAUTH_BASE": "http://clover.test",
            "POSYNC_CLOVER_API_BASE": "http://clover.test",
            "POSYNC_POYNT_OAUTH_BASE": "http://poynt-web.test",
            "POSYNC_POYNT_API_BASE": "http://poynt.test",
            "POSYNC_SYNC_QUEUE_URL": "http://sqs.test/000000000000/posync-unit-sync.fifo",
            **env,
        }
    )


class FakeClock:
    """A clock that only moves when told to (``sleep`` advances it)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class FakeTokenStore:
    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], TokenSet] = {}
        self.reads = 0
        self.saves: list[TokenSet] = []
        self.deleted: list[tuple[str, str]] = []
        self.fail_saves = 0
        self.lock = threading.Lock()

    def read(self, provider: str, merchant_id: str) -> TokenSet:
        with self.lock:
            self.reads += 1
            try:
                return self.secrets[(provider, merchant_id)]
            except KeyError:
                raise TokensMissing("no secret") from None

    def save(self, provider: str, merchant_id: str, tokens: TokenSet) -> None:
        with self.lock:
            if self.fail_saves:
                self.fail_saves -= 1
                raise client_error("InternalServiceError", "PutSecretValue")
            self.saves.append(tokens)
            self.secrets[(provider, merchant_id)] = tokens

    def store_new(self, provider: str, merchant_id: str, tokens: TokenSet) -> None:
        with self.lock:
            self.secrets[(provider, merchant_id)] = tokens

    def schedule_deletion(self, provider: str, merchant_id: str) -> None:
        with self.lock:
            self.deleted.append((provider, merchant_id))
            self.secrets.pop((provider, merchant_id), None)


class FakeLeases:
    """Leases with the control table's semantics (``expires_at < now`` means free)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.items: dict[str, tuple[str, int]] = {}
        self.acquired = 0
        self.extended = 0
        self.taken_over: set[str] = set()
        self.lock = threading.Lock()

    def acquire(self, name: str, owner: str, ttl_s: int) -> bool:
        with self.lock:
            now = self.clock()
            held = self.items.get(name)
            if held is not None and not held[1] < int(now):
                return False
            if held is not None:
                self.taken_over.add(owner)
            self.items[name] = (owner, int(now) + ttl_s)
            self.acquired += 1
            return True

    def took_over(self, name: str, owner: str) -> bool:
        return owner in self.taken_over

    def extend(self, name: str, owner: str, ttl_s: int) -> bool:
        with self.lock:
            if self.items.get(name, ("", 0))[0] != owner:
                return False
            self.items[name] = (owner, int(self.clock()) + ttl_s)
            self.extended += 1
            return True

    def release(self, name: str, owner: str) -> None:
        with self.lock:
            if self.items.get(name, ("", 0))[0] == owner:
                del self.items[name]


@dataclass
class FakeConnections:
    conns: dict[str, Connection] = field(default_factory=dict)
    reasons: dict[str, str | None] = field(default_factory=dict)
    expiries: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    saved: list[Connection] = field(default_factory=list)
    cursors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, conn: Connection) -> Connection:
        self.conns[conn.connection_id] = conn
        return conn

    def get(self, provider: str, merchant_id: str) -> Connection:
        return self.get_by_id(f"{provider}#{merchant_id}")

    def get_by_id(self, conn_id: str) -> Connection:
        try:
            return self.conns[conn_id]
        except KeyError:
            raise ConnectionNotFound(conn_id) from None

    def _check(self, conn: Connection, status: ConnectionStatus | None, connected_at: str | None) -> None:
        if status is not None and conn.status is not status:
            raise StaleWrite(f"{conn.connection_id} is {conn.status.value}")
        if connected_at is not None and conn.connected_at != connected_at:
            raise StaleWrite(f"{conn.connection_id} was reconnected")

    def set_status(
        self,
        conn_id: str,
        status: ConnectionStatus | str,
        reason: str | None = None,
        *,
        expected_status: ConnectionStatus | None = None,
        expected_connected_at: str | None = None,
    ) -> None:
        conn = self.get_by_id(conn_id)
        self._check(conn, expected_status, expected_connected_at)
        conn.status = ConnectionStatus(status)
        self.reasons[conn_id] = reason

    def record_token_expiry(
        self,
        conn_id: str,
        access_expires_at: int | None,
        refresh_expires_at: int | None,
        *,
        expected_connected_at: str | None = None,
    ) -> None:
        self._check(self.get_by_id(conn_id), None, expected_connected_at)
        self.expiries[conn_id] = (access_expires_at, refresh_expires_at)

    def save_connected(self, conn: Connection) -> Connection:
        existing = self.conns.get(conn.connection_id)
        if existing is not None:
            conn.cursor = existing.cursor
            if conn.ref is None:
                conn.ref = existing.ref
        conn.status = ConnectionStatus.ACTIVE
        self.conns[conn.connection_id] = conn
        self.saved.append(conn)
        return conn


class ScriptedRefresher:
    """A provider refresh that returns a new pair, or raises what it is told to."""

    def __init__(self, clock: Callable[[], float], ttl_s: int = 1800) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self.calls = 0
        self.raises: list[Exception] = []
        self.omit_refresh_token = False
        self.on_call: Callable[[TokenSet], None] | None = None
        self.lock = threading.Lock()
        self.recovered_with: list[str] = []  # recovery tokens offered, in order
        self.recover_refuses: set[str] = set()  # recovery tokens the provider refuses
        self.recover_raises: list[Exception] = []

    def refresh(self, tokens: TokenSet) -> TokenSet:
        with self.lock:
            self.calls += 1
            n = self.calls
            if self.on_call is not None:
                self.on_call(tokens)
            if self.raises:
                raise self.raises.pop(0)
        now = self.clock()
        return tokens.renewed(
            f"access-{n}",
            int(now) + self.ttl_s,
            None if self.omit_refresh_token else f"refresh-{n}",
            int(now) + 86400 * 365,
            now,
        )

    def recover(self, tokens: TokenSet, recovery_token: str) -> TokenSet:
        """Clover's recovery: a new pair for a spent refresh token, unless told to refuse it."""
        with self.lock:
            self.recovered_with.append(recovery_token)
            n = len(self.recovered_with)
            if self.recover_raises:
                raise self.recover_raises.pop(0)
            if recovery_token in self.recover_refuses:
                raise RefreshRefused("clover refused the recovery token (401: Invalid recovery token)")
        now = self.clock()
        return tokens.renewed(
            f"access-recovered-{n}", int(now) + self.ttl_s, f"refresh-recovered-{n}", int(now) + 86400, now
        )


@dataclass
class EventLog:
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __call__(self, detail_type: str, detail: dict[str, Any]) -> object:
        self.events.append((detail_type, detail))
        return "event-id"
