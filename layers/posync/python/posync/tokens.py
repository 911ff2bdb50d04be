"""Merchant tokens: the model, their store (Secrets Manager) and the single-flight refresh.

``TokenService`` implements ``posync.ports.AccessTokens`` for the sync engine:

- ``access_token(conn)`` answers from the instance's cache (one Secrets Manager read per
  connection per service instance, i.e. per sync run, in the normal case). A token that
  expires within ``settings.refresh_leeway_s`` is refreshed first.
- A refresh is **single-flight across every Lambda**: the caller that wins a short lease
  in the control table (``pk = lease#refresh#<connection_id>``, conditional put
  ``attribute_not_exists(pk) OR expires_at < :now``) re-reads the secret (someone may have
  refreshed meanwhile), calls the provider, saves the new pair with ``PutSecretValue``
  **before** using it, and releases the lease. Everyone else polls the secret with a fresh
  ``GetSecretValue`` and backoff until the token changes, or takes the lease over when its
  holder died (the lease expires after ``lease_ttl_s``). Inside one process a lock per
  connection keeps threads from racing each other for the lease.
- A refresh the provider refuses (revoked, invalid or already used refresh token,
  ``invalid_grant``) marks the connection ``needs_reauth``, puts ``ConnectionNeedsReauth``
  on the event bus, counts ``RefreshFailures`` and raises ``AuthorizationRevoked`` so the
  sync stops instead of retrying forever.

Provider quirks (who refuses early refreshes, what a refusal looks like) live in the
``TokenRefresher`` adapters in ``posync.providers``, not here.

**Lost refresh replies (Clover).** A Clover refresh token works once. If Clover accepted a
refresh but its reply never reached us (timeout, connection reset), the stored refresh
token is already dead and the new pair is unknown. Clover's ``/oauth/v2/recovery`` could
recover it within two weeks, but it is not available in the sandbox and needs the app
secret flow we do not implement yet, so posync does this: the timed-out call raises
``ProviderError`` (transient), the lease is released, and the current access token keeps
serving while it is valid. The next refresh with the dead token is refused with 401 and
moves the connection to ``needs_reauth`` with a reason that names this possibility; the
merchant reconnects (the sync cursor is kept). The same holds if saving a refreshed pair
to Secrets Manager fails after the provider accepted the refresh (after retries).

Nothing in this module logs, raises or returns a token in a message: ``TokenSet``'s repr
hides both tokens, and logs carry expiry times only.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import Connection, ConnectionStatus, check_merchant_id
from posync.errors import AuthorizationRevoked, ConnectionNotFound, PosyncError, ProviderError
from posync.observability import logger, metrics

SECRET_VERSION = 1
SECRET_RECOVERY_DAYS = 7
LEASE_TTL_S = 30
NEEDS_REAUTH_EVENT = "ConnectionNeedsReauth"
MERCHANT_API_TOKEN = "merchant_api_token"  # noqa: S105 (a kind of token, not a secret)
REVOKED_MERCHANT_TOKEN_REASON = (
    "Clover refused the merchant API token (401): it was revoked or deleted in the sandbox "  # noqa: S105
    "dashboard; connect again with a new token (posync connections add clover MERCHANT_ID --token-stdin)"
)


# --------------------------------------------------------------------------------------
# The token model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSet:
    """One connection's token pair with absolute expiry times (Unix seconds).

    The tokens are excluded from ``repr`` so a stray log line or traceback cannot carry them.
    """

    access_token: str = field(repr=False)
    access_expires_at: int
    refresh_token: str | None = field(default=None, repr=False)
    refresh_expires_at: int | None = None
    obtained_at: int = 0
    token_type: str = "Bearer"  # noqa: S105 (a token type, not a secret)
    # "oauth", or MERCHANT_API_TOKEN: a Clover sandbox merchant API token (no expiry, no refresh
    # token; CLV-TOKEN-1): never refreshed, and a 401 means it was revoked.
    kind: str = "oauth"

    @property
    def merchant_api_token(self) -> bool:
        return self.kind == MERCHANT_API_TOKEN

    def expires_within(self, seconds: float, now: float) -> bool:
        """True when the access token is expired or expires within ``seconds`` (a merchant API
        token never expires)."""
        if self.merchant_api_token:
            return False
        return self.access_expires_at - now <= seconds

    def is_expired(self, now: float, leeway: float = 0) -> bool:
        return self.expires_within(leeway, now)

    def renewed(
        self,
        access_token: str,
        access_expires_at: int,
        refresh_token: str | None,
        refresh_expires_at: int | None,
        now: float,
    ) -> TokenSet:
        """The pair after a refresh. A reply that omits the refresh token keeps the old one."""
        if not refresh_token:
            refresh_token, refresh_expires_at = self.refresh_token, self.refresh_expires_at
        return replace(
            self,
            access_token=access_token,
            access_expires_at=int(access_expires_at),
            refresh_token=refresh_token,
            refresh_expires_at=None if refresh_expires_at is None else int(refresh_expires_at),
            obtained_at=int(now),
        )

    def to_secret(self, provider: str, merchant_id: str) -> str:
        extra = {"kind": self.kind} if self.kind != "oauth" else {}
        return json.dumps(
            {
                **extra,
                "version": SECRET_VERSION,
                "provider": provider,
                "merchant_id": merchant_id,
                "token_type": self.token_type,
                "access_token": self.access_token,
                "access_expires_at": self.access_expires_at,
                "refresh_token": self.refresh_token,
                "refresh_expires_at": self.refresh_expires_at,
                "obtained_at": self.obtained_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_secret(cls, secret_string: str) -> TokenSet:
        try:
            data = json.loads(secret_string)
            refresh_exp = data.get("refresh_expires_at")
            return cls(
                access_token=str(data["access_token"]),
                access_expires_at=int(data["access_expires_at"]),
                refresh_token=data.get("refresh_token") or None,
                refresh_expires_at=None if refresh_exp is None else int(refresh_exp),
                obtained_at=int(data.get("obtained_at") or 0),
                token_type=str(data.get("token_type") or "Bearer"),
                kind=str(data.get("kind") or "oauth"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TokensMissing("the stored token secret is not readable") from exc

    def expiry_log(self) -> dict[str, Any]:
        """What may be logged about a token pair: its expiry times, never the tokens."""
        return {
            "access_expires_at": self.access_expires_at,
            "refresh_expires_at": self.refresh_expires_at,
        }


# --------------------------------------------------------------------------------------
# Errors raised by refresher adapters and stores
# --------------------------------------------------------------------------------------


class RefreshRefused(PosyncError):
    """The provider refused the refresh for good (revoked, invalid/used token, invalid_grant).

    ``reason`` is a short secret-free text stored on the connection.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RefreshNotDue(PosyncError):
    """The provider refused to refresh because the access token has not expired yet (Clover)."""


class TokensMissing(PosyncError):
    """The connection has no (readable) token secret."""


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------


class TokenRefresher(Protocol):
    """A provider's refresh call (``posync.providers``)."""

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """A new pair. Raises RefreshRefused, RefreshNotDue or ProviderError (transient)."""
        ...


class TokenStore(Protocol):
    def read(self, provider: str, merchant_id: str) -> TokenSet:
        """A fresh read (never a cached copy). Raises TokensMissing."""
        ...

    def save(self, provider: str, merchant_id: str, tokens: TokenSet) -> None:
        """Replace the stored pair of an existing connection (after a refresh)."""
        ...

    def store_new(self, provider: str, merchant_id: str, tokens: TokenSet) -> None:
        """Create or replace the secret of a connection that just consented."""
        ...

    def schedule_deletion(self, provider: str, merchant_id: str) -> None:
        """Delete the secret with a recovery window (app uninstalled)."""
        ...


class LeaseStore(Protocol):
    def acquire(self, name: str, owner: str, ttl_s: int) -> bool: ...

    def release(self, name: str, owner: str) -> None: ...


class ConnectionStatusStore(Protocol):
    """What the token service needs of ``posync.connections.ConnectionRepository``."""

    def get_by_id(self, conn_id: str) -> Connection: ...

    def set_status(self, conn_id: str, status: ConnectionStatus | str, reason: str | None = None) -> None: ...

    def record_token_expiry(
        self, conn_id: str, access_expires_at: int | None, refresh_expires_at: int | None
    ) -> None: ...


EventSink = Callable[[str, dict[str, Any]], object]


# --------------------------------------------------------------------------------------
# AWS adapters
# --------------------------------------------------------------------------------------


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class SecretsManagerTokenStore:
    """One secret per connection: ``settings.connection_secret_name(provider, merchant_id)``.

    New secrets are encrypted with the stage's KMS customer key (``KmsKeyId`` = the alias).
    Reconnecting a merchant whose secret is scheduled for deletion restores it first.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @staticmethod
    def _sm() -> Any:
        return client("secretsmanager")

    def _name(self, provider: str, merchant_id: str) -> str:
        return self._settings.connection_secret_name(provider, check_merchant_id(provider, merchant_id))

    def read(self, provider: str, merchant_id: str) -> TokenSet:
        try:
            reply = self._sm().get_secret_value(SecretId=self._name(provider, merchant_id))
        except ClientError as exc:
            if _error_code(exc) in ("ResourceNotFoundException", "InvalidRequestException"):
                raise TokensMissing(f"no token secret for {provider} merchant {merchant_id}") from exc
            raise
        return TokenSet.from_secret(reply["SecretString"])

    def save(self, provider: str, merchant_id: str, tokens: TokenSet) -> None:
        self._sm().put_secret_value(
            SecretId=self._name(provider, merchant_id), SecretString=tokens.to_secret(provider, merchant_id)
        )

    def store_new(self, provider: str, merchant_id: str, tokens: TokenSet) -> None:
        name = self._name(provider, merchant_id)
        value = tokens.to_secret(provider, merchant_id)
        sm = self._sm()
        try:
            sm.create_secret(
                Name=name,
                SecretString=value,
                KmsKeyId=self._settings.resources.kms_alias,
                Description=f"posync {provider} merchant {merchant_id}: OAuth tokens",
                Tags=[
                    {"Key": "posync:stage", "Value": self._settings.stage},
                    {"Key": "posync:provider", "Value": provider},
                ],
            )
            return
        except ClientError as exc:
            # Exists already (a reconnect), or scheduled for deletion (real AWS then refuses
            # to create the name with InvalidRequestException).
            if _error_code(exc) not in ("ResourceExistsException", "InvalidRequestException"):
                raise
        if sm.describe_secret(SecretId=name).get("DeletedDate"):
            sm.restore_secret(SecretId=name)  # the app was uninstalled, then installed again
        sm.put_secret_value(SecretId=name, SecretString=value)

    def schedule_deletion(self, provider: str, merchant_id: str) -> None:
        try:
            self._sm().delete_secret(
                SecretId=self._name(provider, merchant_id), RecoveryWindowInDays=SECRET_RECOVERY_DAYS
            )
        except ClientError as exc:
            # Already gone, or already scheduled for deletion: nothing left to do.
            if _error_code(exc) not in ("ResourceNotFoundException", "InvalidRequestException"):
                raise


class DynamoLeases:
    """Short leases in the control table (``pk = <name>``, ``expires_at`` in Unix seconds, the TTL).

    Acquire is a conditional put (``attribute_not_exists(pk) OR expires_at < :now``) followed,
    after ``confirm_after_s``, by a consistent read that the item still names this owner.
    Real DynamoDB evaluates the condition atomically, which alone suffices; the read-back
    defends against stores whose conditional writes are not atomic under concurrency (moto's
    server evaluates the condition and writes without a lock) at the cost of a few
    milliseconds on a path that runs once per token lifetime.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        confirm_after_s: float = 0.05,
    ) -> None:
        self._table = settings.control_table
        self._clock = clock
        self._sleep = sleep
        self._confirm_after_s = confirm_after_s

    @staticmethod
    def _ddb() -> Any:
        return client("dynamodb")

    def acquire(self, name: str, owner: str, ttl_s: int) -> bool:
        now = self._clock()
        ddb = self._ddb()
        try:
            ddb.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": name},
                    "owner": {"S": owner},
                    "expires_at": {"N": str(int(now) + ttl_s)},
                    "acquired_at_ms": {"N": str(int(now * 1000))},
                },
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        if self._confirm_after_s > 0:
            self._sleep(self._confirm_after_s)
        item = ddb.get_item(TableName=self._table, Key={"pk": {"S": name}}, ConsistentRead=True).get("Item")
        return bool(item) and item.get("owner", {}).get("S") == owner

    def release(self, name: str, owner: str) -> None:
        try:
            self._ddb().delete_item(
                TableName=self._table,
                Key={"pk": {"S": name}},
                ConditionExpression="#o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":o": {"S": owner}},
            )
        except ClientError as exc:
            if _error_code(exc) != "ConditionalCheckFailedException":  # expired and taken over
                raise


# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------


def refresh_lease_name(conn_id: str) -> str:
    return f"lease#refresh#{conn_id}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenService:
    """Valid access tokens for connections; see the module docstring for the protocol."""

    def __init__(
        self,
        settings: Settings,
        *,
        refreshers: Mapping[str, TokenRefresher],
        store: TokenStore,
        leases: LeaseStore,
        connections: ConnectionStatusStore,
        events: EventSink,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        lease_ttl_s: int = LEASE_TTL_S,
        wait_timeout_s: float = LEASE_TTL_S + 15,
        retry_after_failure_s: float = 30.0,
    ) -> None:
        self._leeway = settings.refresh_leeway_s
        self._refreshers = dict(refreshers)
        self._store = store
        self._leases = leases
        self._connections = connections
        self._events = events
        self._clock = clock
        self._sleep = sleep
        self._lease_ttl_s = lease_ttl_s
        self._wait_timeout_s = wait_timeout_s
        self._retry_after_failure_s = retry_after_failure_s
        self._cache: dict[str, TokenSet] = {}
        self._no_refresh_before: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.refreshes = 0  # successful provider refreshes made by this instance

    # -- AccessTokens ----------------------------------------------------------------------

    def access_token(self, conn: Connection) -> str:
        cid = conn.connection_id
        with self._lock(cid):
            tokens = self._cache.get(cid)
            if tokens is None:
                tokens = self._read(conn)
            if not tokens.expires_within(self._leeway, self._clock()):
                return tokens.access_token
            return self._refresh(conn, tokens, forced=False).access_token

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        cid = conn.connection_id
        with self._lock(cid):
            now = self._clock()
            cached = self._cache.get(cid)
            if cached is not None and cached.access_token != rejected and not cached.is_expired(now):
                return cached.access_token  # another thread here already replaced it
            fresh = self._read(conn)
            if fresh.access_token != rejected and not fresh.is_expired(now):
                return fresh.access_token  # another Lambda already replaced it
            if fresh.merchant_api_token:  # nothing to refresh: the operator must give a new token
                self._mark_needs_reauth(conn, REVOKED_MERCHANT_TOKEN_REASON)
                raise AuthorizationRevoked(f"{conn.connection_id}: the merchant API token was refused")
            return self._refresh(conn, fresh, forced=True).access_token

    # -- extras ----------------------------------------------------------------------------

    def forget(self, conn: Connection) -> None:
        """Drop the cached pair (the next call reads the secret again)."""
        self._cache.pop(conn.connection_id, None)

    # -- internals -------------------------------------------------------------------------

    def _lock(self, cid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(cid, threading.Lock())

    def _read(self, conn: Connection) -> TokenSet:
        try:
            tokens = self._store.read(conn.provider, conn.merchant_id)
        except TokensMissing as exc:
            self._mark_needs_reauth(conn, "no stored tokens for this connection; the merchant must reconnect")
            raise AuthorizationRevoked(f"{conn.connection_id} has no stored tokens") from exc
        self._cache[conn.connection_id] = tokens
        return tokens

    def _replaced(self, fresh: TokenSet, stale: TokenSet) -> bool:
        return fresh.access_token != stale.access_token and not fresh.is_expired(self._clock())

    def _refresh(self, conn: Connection, stale: TokenSet, *, forced: bool) -> TokenSet:
        cid = conn.connection_id
        now = self._clock()
        if not forced and now < self._no_refresh_before.get(cid, 0.0) and not stale.is_expired(now):
            return stale  # a recent attempt failed or was refused as early: keep the valid token
        name = refresh_lease_name(cid)
        owner = uuid.uuid4().hex
        deadline = now + self._wait_timeout_s
        delay = 0.05
        while True:
            if self._leases.acquire(name, owner, self._lease_ttl_s):
                try:
                    return self._refresh_under_lease(conn, stale, forced=forced)
                finally:
                    self._release(name, owner, cid)
            # Someone else holds the lease: wait, then look at the secret again (fresh read).
            self._sleep(delay * (0.5 + random.random()))  # noqa: S311 (jitter, not crypto)
            delay = min(delay * 2, 1.0)
            fresh = self._read(conn)
            if self._replaced(fresh, stale):
                logger.info(
                    "token refreshed by another caller", extra={"connection_id": cid, **fresh.expiry_log()}
                )
                return fresh
            if self._clock() > deadline:
                if not forced and not fresh.is_expired(self._clock()):
                    return fresh  # still valid: let the caller go on; the next call retries
                raise ProviderError(f"timed out waiting for another caller's token refresh of {cid}")

    def _release(self, name: str, owner: str, cid: str) -> None:
        try:
            self._leases.release(name, owner)
        except (ClientError, BotoCoreError) as exc:  # it expires by itself within the lease TTL
            logger.warning(
                "could not release the refresh lease", extra={"connection_id": cid, "error": str(exc)}
            )

    def _refresh_under_lease(self, conn: Connection, stale: TokenSet, *, forced: bool) -> TokenSet:
        cid = conn.connection_id
        current = self._read(conn)  # the lease may have been won after someone else's refresh
        if self._replaced(current, stale):
            return current
        try:
            status = self._connections.get_by_id(cid).status
        except ConnectionNotFound:
            status = ConnectionStatus.REVOKED
        if status is not ConnectionStatus.ACTIVE:
            raise AuthorizationRevoked(f"{cid} is {status.value}; the merchant must reconnect")
        refresher = self._refreshers.get(conn.provider)
        if refresher is None:
            raise ProviderError(f"no token refresher for {conn.provider}")
        now = self._clock()
        try:
            new = refresher.refresh(current)
        except RefreshNotDue as exc:
            if not current.is_expired(now) and not forced:
                # Clover: "access_token not expired". Use the current token and try again once
                # the provider will accept it (one minute before expiry).
                self._no_refresh_before[cid] = max(now + 5, current.access_expires_at - 60)
                logger.info(
                    "refresh refused as early; keeping the current token",
                    extra={"connection_id": cid, **current.expiry_log()},
                )
                return current
            raise ProviderError(f"{conn.provider} refused to refresh a token it rejects", status=401) from exc
        except RefreshRefused as exc:
            self._mark_needs_reauth(conn, exc.reason)
            raise AuthorizationRevoked(f"{conn.provider} refused the refresh of {cid}: {exc.reason}") from exc
        except ProviderError as exc:
            self._no_refresh_before[cid] = now + self._retry_after_failure_s
            metrics.add_metric(name="RefreshErrors", unit=MetricUnit.Count, value=1)
            if not forced and not current.is_expired(now):
                logger.warning(
                    "token refresh failed; the current token is still valid",
                    extra={"connection_id": cid, "error": str(exc), **current.expiry_log()},
                )
                return current
            raise
        self._save(conn, new)
        self.refreshes += 1
        self._cache[cid] = new
        self._no_refresh_before.pop(cid, None)
        logger.info("token refreshed", extra={"connection_id": cid, **new.expiry_log()})
        try:
            self._connections.record_token_expiry(cid, new.access_expires_at, new.refresh_expires_at)
        except (ClientError, BotoCoreError, ConnectionNotFound) as exc:  # informational copy only
            logger.warning("could not record token expiry", extra={"connection_id": cid, "error": str(exc)})
        return new

    def _save(self, conn: Connection, new: TokenSet) -> None:
        """Persist before use; the old refresh token may already be dead, so retry hard."""
        last: Exception | None = None
        for attempt in range(4):
            try:
                self._store.save(conn.provider, conn.merchant_id, new)
                return
            except (ClientError, BotoCoreError) as exc:
                last = exc
                self._sleep(0.2 * 2**attempt)
        reason = "refreshed tokens could not be saved; the merchant must reconnect"
        self._mark_needs_reauth(conn, reason)
        raise AuthorizationRevoked(f"{conn.connection_id}: {reason}") from last

    def _mark_needs_reauth(self, conn: Connection, reason: str) -> None:
        cid = conn.connection_id
        self._cache.pop(cid, None)
        metrics.add_metric(name="RefreshFailures", unit=MetricUnit.Count, value=1)
        logger.warning("connection needs reauthorization", extra={"connection_id": cid, "reason": reason})
        try:
            self._connections.set_status(cid, ConnectionStatus.NEEDS_REAUTH, reason)
        except ConnectionNotFound:
            return  # deleted meanwhile: nothing to flag
        except (ClientError, BotoCoreError) as exc:
            logger.error("could not mark needs_reauth", extra={"connection_id": cid, "error": str(exc)})
        try:
            self._events(
                NEEDS_REAUTH_EVENT,
                {
                    "connection_id": cid,
                    "provider": conn.provider,
                    "merchant_id": conn.merchant_id,
                    "reason": reason,
                    "at": _iso(self._clock()),
                },
            )
        except (ClientError, BotoCoreError, PosyncError) as exc:
            logger.error(
                "could not emit ConnectionNeedsReauth", extra={"connection_id": cid, "error": str(exc)}
            )


def build_token_service(settings: Settings) -> TokenService:
    """The production wiring: Secrets Manager, DynamoDB leases and status, EventBridge, providers."""
    from posync.app_credentials import AppCredentialsStore
    from posync.connections import ConnectionRepository
    from posync.events import put_event
    from posync.providers import build_providers

    providers = build_providers(settings, AppCredentialsStore(settings))

    def emit(detail_type: str, detail: dict[str, Any]) -> object:
        return put_event(settings, detail_type, detail)

    return TokenService(
        settings,
        refreshers=providers,
        store=SecretsManagerTokenStore(settings),
        leases=DynamoLeases(settings),
        connections=ConnectionRepository(settings),
        events=emit,
    )
