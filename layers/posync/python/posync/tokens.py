"""Merchant tokens: the model, their store (Secrets Manager) and the single-flight refresh.

``TokenService`` implements ``posync.ports.AccessTokens`` for the sync engine:

- ``access_token(conn)`` answers from the instance's cache (one Secrets Manager read per
  connection per service instance, i.e. per sync run, in the normal case). A token that
  expires within ``settings.refresh_leeway_s`` is refreshed first.
- A refresh is **single-flight across every Lambda**: the caller that wins a short lease
  in the control table (``pk = lease#refresh#<connection_id>``) re-reads the secret, calls
  the provider and saves the new pair **before** using it. Everyone else polls the secret
  until the token changes, or takes the lease over when its holder died.
- **The lease is fenced and kept alive.** Its holder extends it (``LeaseStore.extend``,
  conditional on still being the owner) before the provider call and before every save
  attempt, so each step starts with a full TTL ahead and each step is bounded well below it
  (token calls ``(5, 15)`` s, Secrets Manager calls by botocore's timeouts). A holder whose
  extend fails was taken over: it saves its pair only if the stored refresh token is still
  the one it spent (nobody saved a newer pair), else it drops its pair and serves the stored one.
- **A refusal is not believed at once.** Another holder may have spent the refresh token
  and be about to save (its lease expired under it): the refused caller re-reads the secret
  for ``refusal_grace_s``; then, for providers that recover (Clover's ``/oauth/v2/recovery``,
  CLV-TOKEN-03), it offers the spent token and the kept previous one
  (``TokenSet.previous_refresh_token``, inside its two-week window); only then is the
  connection marked ``needs_reauth`` (event ``ConnectionNeedsReauth``, metric
  ``RefreshFailures``) and ``AuthorizationRevoked`` raised.
- **Writes are conditional on the grant read** (issue 18, item 4). The service reads the
  connection's ``connected_at`` (its grant generation) under the lease; the status write is
  conditional on that generation and on ``status = active``, the token save and the expiry
  copy re-check it, so a worker with a stale grant cannot undo a reconnect or turn an
  operator's ``revoked`` into ``needs_reauth``. The callback stores a new grant under the
  same lease.
- **App-level failures are the app's, not a merchant's.** An adapter that recognizes one
  (wrong client id or secret, a rotated key pair, a wrong ``aud``, clock skew beyond 300 s)
  raises ``AppAuthFailed``; a run of transient token-endpoint failures counts too. Either
  opens the provider's ``AppBreaker`` (shared through the control table: every container
  stops refreshing for that app until a cool-down passes and one half-open probe succeeds),
  counts ``AppAuthFailures`` and puts one ``AppAuthFailed`` event; no merchant is flagged.

Provider quirks (who refuses early refreshes, what a refusal looks like, recovery) live in
the ``TokenRefresher`` adapters in ``posync.providers``, not here.

Nothing in this module logs, raises or returns a token in a message: ``TokenSet``'s repr
hides every token, and logs carry expiry times only.
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
from typing import Any, Protocol, runtime_checkable

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import Connection, ConnectionStatus, check_merchant_id
from posync.errors import (
    AuthorizationRevoked,
    ConnectionNotFound,
    PosyncError,
    ProviderError,
    RateLimited,
    StaleWrite,
)
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
APP_AUTH_FAILED_EVENT = "AppAuthFailed"
# Clover keeps a refresh token usable for recovery for two weeks after its successor was issued.
RECOVERY_WINDOW_S = 14 * 86_400
# How long a refused caller re-reads the secret before believing the refusal (a slower holder may
# have spent the token and be saving it): a few Secrets Manager round trips and one save.
REFUSAL_GRACE_S = 6.0
BREAKER_COOLDOWN_S = 300
BREAKER_MAX_COOLDOWN_S = 3600
STORM_THRESHOLD = 5  # consecutive transient token-endpoint failures (any merchant) that open the breaker
STORM_WINDOW_S = 300


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

    # The grant this pair belongs to: the connection's ``connected_at`` when the callback stored it.
    connected_at: str | None = None
    # The refresh token that was spent to obtain this pair (Clover's recovery token) and the end
    # of the window in which Clover still recovers with it.
    previous_refresh_token: str | None = field(default=None, repr=False)
    previous_refresh_until: int | None = None

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
        """The pair after a refresh. A reply that omits the refresh token keeps the old one; a new
        refresh token keeps the spent one as ``previous_refresh_token`` (the recovery token)."""
        previous, previous_until = self.previous_refresh_token, self.previous_refresh_until
        if not refresh_token:
            refresh_token, refresh_expires_at = self.refresh_token, self.refresh_expires_at
        elif self.refresh_token and refresh_token != self.refresh_token:
            previous, previous_until = self.refresh_token, int(now) + RECOVERY_WINDOW_S
        return replace(
            self,
            access_token=access_token,
            access_expires_at=int(access_expires_at),
            refresh_token=refresh_token,
            refresh_expires_at=None if refresh_expires_at is None else int(refresh_expires_at),
            obtained_at=int(now),
            previous_refresh_token=previous,
            previous_refresh_until=previous_until,
        )

    def recovery_tokens(self, now: float) -> list[str]:
        """What Clover's recovery may accept, best first: the stored refresh token (spent by a
        refresh whose reply was lost) and the kept previous one while its window lasts."""
        out = [self.refresh_token] if self.refresh_token else []
        if (
            self.previous_refresh_token
            and self.previous_refresh_token not in out
            and (self.previous_refresh_until or 0) > now
        ):
            out.append(self.previous_refresh_token)
        return out

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
                "connected_at": self.connected_at,
                "previous_refresh_token": self.previous_refresh_token,
                "previous_refresh_until": self.previous_refresh_until,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_secret(cls, secret_string: str) -> TokenSet:
        try:
            data = json.loads(secret_string)
            refresh_exp = data.get("refresh_expires_at")
            prev_until = data.get("previous_refresh_until")
            return cls(
                access_token=str(data["access_token"]),
                access_expires_at=int(data["access_expires_at"]),
                refresh_token=data.get("refresh_token") or None,
                refresh_expires_at=None if refresh_exp is None else int(refresh_exp),
                obtained_at=int(data.get("obtained_at") or 0),
                token_type=str(data.get("token_type") or "Bearer"),
                kind=str(data.get("kind") or "oauth"),
                connected_at=data.get("connected_at") or None,
                previous_refresh_token=data.get("previous_refresh_token") or None,
                previous_refresh_until=None if prev_until is None else int(prev_until),
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


class AppAuthFailed(PosyncError):
    """The provider refused the *app* (not the merchant's grant): wrong client id or secret, a
    key pair the provider no longer knows, a wrong ``aud``, our clock off by more than 300 s.

    ``kind`` is one of ``credentials``, ``key``, ``audience``, ``clock``, ``outage``; ``reason``
    is short and secret-free.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class AppCircuitOpen(ProviderError):
    """Refreshes for this provider's app are paused (its breaker is open): transient for the sync."""


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------


class TokenRefresher(Protocol):
    """A provider's refresh call (``posync.providers``)."""

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """A new pair. Raises RefreshRefused, RefreshNotDue, AppAuthFailed or ProviderError (transient)."""
        ...


@runtime_checkable
class TokenRecoverer(Protocol):
    """A provider that can mend a refresh token spent without its reply (Clover's recovery)."""

    def recover(self, tokens: TokenSet, recovery_token: str) -> TokenSet:
        """A new pair for ``recovery_token``. Raises RefreshRefused, AppAuthFailed or ProviderError."""
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

    def extend(self, name: str, owner: str, ttl_s: int) -> bool:
        """Push the lease's end to now + ``ttl_s`` if ``owner`` still holds it (the fence check)."""
        ...

    def took_over(self, name: str, owner: str) -> bool:
        """True when ``owner``'s acquisition replaced an expired, unreleased lease: its previous
        holder may still be working (and about to save a pair it got for the stored token)."""
        ...

    def release(self, name: str, owner: str) -> None: ...


class AppBreaker(Protocol):
    """One circuit breaker per provider app, shared by every container (see ``DynamoAppBreaker``)."""

    def admit(self, provider: str) -> bool:
        """May a refresh be attempted? False while open; one caller at a time once half-open."""
        ...

    def succeeded(self, provider: str) -> None: ...

    def app_failed(self, provider: str, kind: str, reason: str) -> bool:
        """Open (or re-open) the breaker; True when this call opened a closed one."""
        ...

    def transient_failed(self, provider: str) -> bool:
        """Count a transient token-endpoint failure; True when this one opened the breaker."""
        ...


class ConnectionStatusStore(Protocol):
    """What the token service needs of ``posync.connections.ConnectionRepository``."""

    def get_by_id(self, conn_id: str) -> Connection: ...

    def set_status(
        self,
        conn_id: str,
        status: ConnectionStatus | str,
        reason: str | None = None,
        *,
        expected_status: ConnectionStatus | None = None,
        expected_connected_at: str | None = None,
    ) -> None:
        """Raises StaleWrite when an expectation no longer holds, ConnectionNotFound when gone."""
        ...

    def record_token_expiry(
        self,
        conn_id: str,
        access_expires_at: int | None,
        refresh_expires_at: int | None,
        *,
        expected_connected_at: str | None = None,
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
        self._taken_over: set[str] = set()  # owners whose acquisition replaced an expired lease
        self._lock = threading.Lock()

    @staticmethod
    def _ddb() -> Any:
        return client("dynamodb")

    def acquire(self, name: str, owner: str, ttl_s: int) -> bool:
        now = self._clock()
        ddb = self._ddb()
        try:
            reply = ddb.put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": name},
                    "owner": {"S": owner},
                    "expires_at": {"N": str(int(now) + ttl_s)},
                    "acquired_at_ms": {"N": str(int(now * 1000))},
                },
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
                ReturnValues="ALL_OLD",
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        with self._lock:
            if reply.get("Attributes"):  # an expired lease its holder never released
                self._taken_over.add(owner)
        if self._confirm_after_s > 0:
            self._sleep(self._confirm_after_s)
        item = ddb.get_item(TableName=self._table, Key={"pk": {"S": name}}, ConsistentRead=True).get("Item")
        return bool(item) and item.get("owner", {}).get("S") == owner

    def took_over(self, name: str, owner: str) -> bool:
        with self._lock:
            return owner in self._taken_over

    def extend(self, name: str, owner: str, ttl_s: int) -> bool:
        try:
            self._ddb().update_item(
                TableName=self._table,
                Key={"pk": {"S": name}},
                UpdateExpression="SET expires_at = :e",
                ConditionExpression="#o = :o",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={
                    ":o": {"S": owner},
                    ":e": {"N": str(int(self._clock()) + ttl_s)},
                },
            )
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":  # taken over (or released)
                return False
            raise
        return True

    def release(self, name: str, owner: str) -> None:
        with self._lock:
            self._taken_over.discard(owner)
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


PROBE_TTL_S = 60  # a half-open probe that has not reported within this long is retried by another caller


def breaker_key(provider: str) -> str:
    return f"breaker#app#{provider}"


@dataclass
class _Breaker:
    state: str = "closed"  # closed | open | half_open
    open_until: float = 0.0
    probe_until: float = 0.0
    cooldown_s: float = BREAKER_COOLDOWN_S
    failures: int = 0
    window_start: float = 0.0


class MemoryAppBreaker:
    """The breaker's state machine in one process (tests, the CLI); ``DynamoAppBreaker`` shares it.

    closed -> open (an app-level failure, or ``storm_threshold`` transient failures within
    ``storm_window_s``); open -> half_open once ``open_until`` passes, admitting one probe;
    the probe's success closes it, its failure re-opens it with the cool-down doubled (capped).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        cooldown_s: float = BREAKER_COOLDOWN_S,
        storm_threshold: int = STORM_THRESHOLD,
        storm_window_s: float = STORM_WINDOW_S,
    ) -> None:
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._storm_threshold = storm_threshold
        self._storm_window_s = storm_window_s
        self._states: dict[str, _Breaker] = {}
        self._lock = threading.Lock()

    def _get(self, provider: str) -> _Breaker:
        return self._states.setdefault(provider, _Breaker(cooldown_s=self._cooldown_s))

    def admit(self, provider: str) -> bool:
        with self._lock:
            b, now = self._get(provider), self._clock()
            if b.state == "closed":
                return True
            if (b.state == "open" and now < b.open_until) or (b.state == "half_open" and now < b.probe_until):
                return False
            b.state, b.probe_until = "half_open", now + PROBE_TTL_S
            return True

    def succeeded(self, provider: str) -> None:
        with self._lock:
            self._states[provider] = _Breaker(cooldown_s=self._cooldown_s)

    def _open(self, b: _Breaker) -> bool:
        was_closed = b.state == "closed"
        if b.state == "open":
            return False  # already open: a concurrent failure does not extend the cool-down
        b.cooldown_s = self._cooldown_s if was_closed else min(b.cooldown_s * 2, BREAKER_MAX_COOLDOWN_S)
        b.state, b.open_until, b.failures = "open", self._clock() + b.cooldown_s, 0
        return was_closed

    def app_failed(self, provider: str, kind: str, reason: str) -> bool:
        with self._lock:
            return self._open(self._get(provider))

    def transient_failed(self, provider: str) -> bool:
        with self._lock:
            b, now = self._get(provider), self._clock()
            if b.state == "half_open":
                return self._open(b)
            if b.state == "open":
                return False
            if now - b.window_start > self._storm_window_s:
                b.window_start, b.failures = now, 0
            b.failures += 1
            return b.failures >= self._storm_threshold and self._open(b)


class DynamoAppBreaker:
    """The app breaker on the control table (``pk = breaker#app#<provider>``), so that every
    container sees one state: ``state``, ``open_until``/``probe_until`` (Unix seconds),
    ``cooldown_s``, ``failures`` and ``window_start`` (the transient-failure count), ``kind``,
    ``reason``. Transitions are conditional updates, so one container opens the breaker (and
    sends the one event) and one container probes it when half-open.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        cooldown_s: float = BREAKER_COOLDOWN_S,
        storm_threshold: int = STORM_THRESHOLD,
        storm_window_s: float = STORM_WINDOW_S,
    ) -> None:
        self._table = settings.control_table
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._storm_threshold = storm_threshold
        self._storm_window_s = storm_window_s

    @staticmethod
    def _ddb() -> Any:
        return client("dynamodb")

    def _item(self, provider: str) -> dict[str, Any]:
        reply = self._ddb().get_item(
            TableName=self._table, Key={"pk": {"S": breaker_key(provider)}}, ConsistentRead=True
        )
        return dict(reply.get("Item") or {})

    def _update(self, provider: str, expr: str, values: dict[str, Any], condition: str | None) -> bool:
        params: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": breaker_key(provider)}},
            "UpdateExpression": expr,
            "ExpressionAttributeNames": {"#st": "state"},
            "ExpressionAttributeValues": values,
        }
        if condition:
            params["ConditionExpression"] = condition
        try:
            self._ddb().update_item(**params)
        except ClientError as exc:
            if _error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise
        return True

    @staticmethod
    def _num(item: dict[str, Any], attr: str, default: float = 0.0) -> float:
        raw = item.get(attr, {}).get("N")
        return float(raw) if raw is not None else default

    def admit(self, provider: str) -> bool:
        item, now = self._item(provider), self._clock()
        state = item.get("state", {}).get("S", "closed")
        if state == "closed":
            return True
        deadline_attr = "open_until" if state == "open" else "probe_until"
        if now < self._num(item, deadline_attr):
            return False
        return self._update(
            provider,
            "SET #st = :half, probe_until = :p",
            {
                ":half": {"S": "half_open"},
                ":p": {"N": str(int(now) + PROBE_TTL_S)},
                ":was": {"S": state},
                ":now": {"N": str(int(now))},
            },
            f"#st = :was AND {deadline_attr} <= :now",
        )

    def succeeded(self, provider: str) -> None:
        self._update(
            provider,
            "SET #st = :closed, failures = :zero, cooldown_s = :c",
            {":closed": {"S": "closed"}, ":zero": {"N": "0"}, ":c": {"N": str(int(self._cooldown_s))}},
            "attribute_exists(pk) AND (#st <> :closed OR failures > :zero)",
        )

    def _open(self, provider: str, item: dict[str, Any], kind: str, reason: str) -> bool:
        now = self._clock()
        state = item.get("state", {}).get("S", "closed")
        if state == "open":
            return False
        cooldown = (
            self._cooldown_s
            if state == "closed"
            else min(self._num(item, "cooldown_s", self._cooldown_s) * 2, BREAKER_MAX_COOLDOWN_S)
        )
        opened = self._update(
            provider,
            "SET #st = :open, open_until = :u, cooldown_s = :c, failures = :zero, kind = :k, reason = :r",
            {
                ":open": {"S": "open"},
                ":u": {"N": str(int(now + cooldown))},
                ":c": {"N": str(int(cooldown))},
                ":zero": {"N": "0"},
                ":k": {"S": kind},
                ":r": {"S": reason[:300]},
                ":was": {"S": state},
            },
            "attribute_not_exists(#st) OR #st = :was" if state == "closed" else "#st = :was",
        )
        return opened and state == "closed"

    def app_failed(self, provider: str, kind: str, reason: str) -> bool:
        return self._open(provider, self._item(provider), kind, reason)

    def transient_failed(self, provider: str) -> bool:
        now = self._clock()
        item = self._item(provider)
        state = item.get("state", {}).get("S", "closed")
        if state == "half_open":
            self._open(provider, item, "outage", "the token endpoint kept failing")
            return False
        if state == "open":
            return False
        fresh = now - self._num(item, "window_start") > self._storm_window_s
        reply = self._ddb().update_item(
            TableName=self._table,
            Key={"pk": {"S": breaker_key(provider)}},
            UpdateExpression=(
                "SET window_start = :now, failures = :one"
                if fresh
                else "SET window_start = if_not_exists(window_start, :now) ADD failures :one"
            ),
            ExpressionAttributeValues={":now": {"N": str(int(now))}, ":one": {"N": "1"}},
            ReturnValues="ALL_NEW",
        )
        failures = self._num(reply.get("Attributes", {}), "failures")
        if failures < self._storm_threshold:
            return False
        return self._open(
            provider, {**item, "state": {"S": "closed"}}, "outage", "the token endpoint kept failing"
        )


# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------


def refresh_lease_name(conn_id: str) -> str:
    return f"lease#refresh#{conn_id}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _LeaseLost(Exception):
    """The lease was taken over before the provider call: go back to waiting."""


@dataclass
class _Held:
    """The lease a caller holds and the grant it read under it."""

    name: str
    owner: str
    generation: str | None  # the connection's connected_at, read under the lease


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
        breaker: AppBreaker | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        lease_ttl_s: int = LEASE_TTL_S,
        wait_timeout_s: float = LEASE_TTL_S + 15,
        retry_after_failure_s: float = 30.0,
        refusal_grace_s: float = REFUSAL_GRACE_S,
    ) -> None:
        self._leeway = settings.refresh_leeway_s
        self._refreshers = dict(refreshers)
        self._store = store
        self._leases = leases
        self._connections = connections
        self._events = events
        self._clock = clock
        self._sleep = sleep
        self._breaker: AppBreaker = breaker if breaker is not None else MemoryAppBreaker(clock)
        self._lease_ttl_s = lease_ttl_s
        self._wait_timeout_s = wait_timeout_s
        self._retry_after_failure_s = retry_after_failure_s
        self._refusal_grace_s = refusal_grace_s
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
                self._mark_needs_reauth(conn, fresh.connected_at, REVOKED_MERCHANT_TOKEN_REASON)
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
            self._mark_needs_reauth(
                conn, None, "no stored tokens for this connection; the merchant must reconnect"
            )
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
        deadline = now + self._wait_timeout_s
        delay = 0.05
        while True:
            owner = uuid.uuid4().hex  # one fencing token per acquisition
            if self._leases.acquire(name, owner, self._lease_ttl_s):
                try:
                    return self._refresh_under_lease(conn, stale, forced=forced, name=name, owner=owner)
                except _LeaseLost:
                    logger.warning(
                        "refresh lease taken over before the provider call", extra={"connection_id": cid}
                    )
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

    def _refresh_under_lease(
        self, conn: Connection, stale: TokenSet, *, forced: bool, name: str, owner: str
    ) -> TokenSet:
        cid = conn.connection_id
        current = self._read(conn)  # the lease may have been won after someone else's refresh
        if self._replaced(current, stale):
            return current
        try:
            record = self._connections.get_by_id(cid)
        except ConnectionNotFound:
            raise AuthorizationRevoked(f"{cid} no longer exists") from None
        if record.status is not ConnectionStatus.ACTIVE:
            raise AuthorizationRevoked(f"{cid} is {record.status.value}; the merchant must reconnect")
        held = _Held(name, owner, record.connected_at)
        refresher = self._refreshers.get(conn.provider)
        if refresher is None:
            raise ProviderError(f"no token refresher for {conn.provider}")
        now = self._clock()
        if not self._breaker.admit(conn.provider):
            return self._keep_or_pause(conn, current, forced)
        if not self._leases.extend(name, owner, self._lease_ttl_s):  # a full TTL for the provider call
            raise _LeaseLost
        try:
            new = refresher.refresh(current)
        except RefreshNotDue as exc:
            self._breaker.succeeded(conn.provider)
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
        except AppAuthFailed as exc:
            self._app_failed(conn, exc)
            return self._keep_or_pause(conn, current, forced)
        except RefreshRefused as exc:
            self._breaker.succeeded(conn.provider)  # the provider accepted the app; it refused the grant
            return self._after_refusal(conn, current, held, exc, forced=forced)
        except ProviderError as exc:
            self._no_refresh_before[cid] = now + self._retry_after_failure_s
            metrics.add_metric(name="RefreshErrors", unit=MetricUnit.Count, value=1)
            # A 429 carries its own Retry-After: only errors and timeouts count towards a storm.
            if not isinstance(exc, RateLimited) and self._breaker.transient_failed(conn.provider):
                self._app_failed(
                    conn,
                    AppAuthFailed("outage", f"{conn.provider} token endpoint keeps failing"),
                    counted=True,
                )
            if not forced and not current.is_expired(now):
                logger.warning(
                    "token refresh failed; the current token is still valid",
                    extra={"connection_id": cid, "error": str(exc), **current.expiry_log()},
                )
                return current
            raise
        self._breaker.succeeded(conn.provider)
        return self._commit(conn, current, new, held)

    def _keep_or_pause(self, conn: Connection, current: TokenSet, forced: bool) -> TokenSet:
        """The app's breaker is open: a still-valid token serves; otherwise the sync waits (transient)."""
        if not forced and not current.is_expired(self._clock()):
            return current
        raise AppCircuitOpen(f"{conn.provider} app authentication is failing; token refreshes are paused")

    def _after_refusal(
        self, conn: Connection, spent: TokenSet, held: _Held, refusal: RefreshRefused, *, forced: bool
    ) -> TokenSet:
        """A refusal: wait for a slower holder's save, then recover, then (only then) flag."""
        cid = conn.connection_id
        # Only a lease taken over from a holder that never released it can hide a pending save.
        grace = self._refusal_grace_s if self._leases.took_over(held.name, held.owner) else 0.0
        waited, delay = 0.0, 0.25
        while True:
            fresh = self._read(conn)
            if fresh.refresh_token != spent.refresh_token or self._replaced(fresh, spent):
                logger.info(
                    "a refused refresh was answered by another caller's save", extra={"connection_id": cid}
                )
                return fresh
            if waited >= grace:
                break
            self._sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)
        recoverer = self._refreshers.get(conn.provider)
        if isinstance(recoverer, TokenRecoverer):
            for token in spent.recovery_tokens(self._clock()):
                if not self._leases.extend(held.name, held.owner, self._lease_ttl_s):
                    raise _LeaseLost  # taken over during the grace: its new holder carries on
                try:
                    recovered = recoverer.recover(spent, token)
                except RefreshRefused:
                    continue
                except AppAuthFailed as exc:
                    self._app_failed(conn, exc)
                    return self._keep_or_pause(conn, spent, forced)
                except ProviderError as exc:  # unsure: never flag on a transient failure
                    if not forced and not spent.is_expired(self._clock()):
                        return spent
                    raise ProviderError(f"{conn.provider} recovery failed: {exc}") from exc
                metrics.add_metric(name="TokensRecovered", unit=MetricUnit.Count, value=1)
                logger.warning("a spent refresh token was recovered", extra={"connection_id": cid})
                return self._commit(conn, spent, recovered, held)
        self._mark_needs_reauth(conn, held.generation, refusal.reason)
        raise AuthorizationRevoked(
            f"{conn.provider} refused the refresh of {cid}: {refusal.reason}"
        ) from refusal

    def _stale_grant(self, cid: str, held: _Held) -> bool:
        try:
            record = self._connections.get_by_id(cid)
        except ConnectionNotFound:
            return True
        return held.generation is not None and record.connected_at != held.generation

    def _commit(self, conn: Connection, spent: TokenSet, new: TokenSet, held: _Held) -> TokenSet:
        """Persist before use, presenting the lease (the fence) at every attempt."""
        cid = conn.connection_id
        new = replace(new, connected_at=new.connected_at or held.generation)
        last: Exception | None = None
        for attempt in range(4):
            if not self._leases.extend(held.name, held.owner, self._lease_ttl_s):
                stored = self._store.read(conn.provider, conn.merchant_id)
                if stored.refresh_token != spent.refresh_token:
                    logger.warning(
                        "refresh lease lost and a newer pair is stored; dropping ours",
                        extra={"connection_id": cid},
                    )
                    self._cache[cid] = stored
                    return stored
                # Nobody saved since we spent the token: ours is the only live pair; keep it.
                logger.warning("refresh lease lost; saving the only live pair", extra={"connection_id": cid})
            if self._stale_grant(cid, held):
                stored = self._store.read(conn.provider, conn.merchant_id)
                logger.warning(
                    "the merchant reconnected during the refresh; its new grant stands",
                    extra={"connection_id": cid},
                )
                self._cache[cid] = stored
                return stored
            try:
                self._store.save(conn.provider, conn.merchant_id, new)
                break
            except (ClientError, BotoCoreError) as exc:
                last = exc
                self._sleep(0.2 * 2**attempt)
        else:
            reason = "refreshed tokens could not be saved; the merchant must reconnect"
            self._mark_needs_reauth(conn, held.generation, reason)
            raise AuthorizationRevoked(f"{cid}: {reason}") from last
        self.refreshes += 1
        self._cache[cid] = new
        self._no_refresh_before.pop(cid, None)
        logger.info("token refreshed", extra={"connection_id": cid, **new.expiry_log()})
        try:
            self._connections.record_token_expiry(
                cid, new.access_expires_at, new.refresh_expires_at, expected_connected_at=held.generation
            )
        except (ClientError, BotoCoreError, ConnectionNotFound, StaleWrite) as exc:  # informational only
            logger.warning("could not record token expiry", extra={"connection_id": cid, "error": str(exc)})
        return new

    def _app_failed(self, conn: Connection, exc: AppAuthFailed, *, counted: bool = False) -> None:
        """One app-level failure: counted, the breaker opened, one event when it opens. No flag."""
        metrics.add_metric(name="AppAuthFailures", unit=MetricUnit.Count, value=1)
        opened = counted or self._breaker.app_failed(conn.provider, exc.kind, exc.reason)
        logger.error(
            "app-level authentication failure; no merchant is flagged",
            extra={"provider": conn.provider, "kind": exc.kind, "reason": exc.reason, "opened": opened},
        )
        if not opened:
            return
        try:
            self._events(
                APP_AUTH_FAILED_EVENT,
                {
                    "provider": conn.provider,
                    "kind": exc.kind,
                    "reason": exc.reason,
                    "at": _iso(self._clock()),
                },
            )
        except (ClientError, BotoCoreError, PosyncError) as err:
            logger.error("could not emit AppAuthFailed", extra={"provider": conn.provider, "error": str(err)})

    def _mark_needs_reauth(self, conn: Connection, generation: str | None, reason: str) -> None:
        """Flag the connection, conditional on it still being active on the grant we read."""
        cid = conn.connection_id
        self._cache.pop(cid, None)
        try:
            self._connections.set_status(
                cid,
                ConnectionStatus.NEEDS_REAUTH,
                reason,
                expected_status=ConnectionStatus.ACTIVE,
                expected_connected_at=generation,
            )
        except (ConnectionNotFound, StaleWrite) as exc:
            logger.info(
                "not flagged: the connection changed meanwhile", extra={"connection_id": cid, "why": str(exc)}
            )
            return  # deleted, reconnected or revoked meanwhile: nothing to flag
        except (ClientError, BotoCoreError) as exc:
            logger.error("could not mark needs_reauth", extra={"connection_id": cid, "error": str(exc)})
        metrics.add_metric(name="RefreshFailures", unit=MetricUnit.Count, value=1)
        logger.warning("connection needs reauthorization", extra={"connection_id": cid, "reason": reason})
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
    """The production wiring: Secrets Manager, DynamoDB leases, breaker and status, EventBridge, providers."""
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
        breaker=DynamoAppBreaker(settings),
    )
