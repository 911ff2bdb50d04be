"""Provider webhooks: verify, then queue targeted syncs or revoke uninstalled connections.

Webhooks only speed syncs up; the schedule stays the source of truth (delivery is not
guaranteed), so an order event just queues a ``SyncKind.WEBHOOK`` sync for its merchant,
deduplicated per connection and minute (many events in a burst -> one sync).

**Clover** (``POST /webhooks/clover``)
- The URL verification handshake: Clover posts ``{"verificationCode": "..."}`` (no auth
  header) when the operator clicks "Send Verification Code", and the operator pastes the code
  into the app's webhook settings in the Clover dashboard. It is accepted **only while no
  ``webhook_auth_code`` is configured** (afterwards it is a 401 like any unauthenticated
  message), must look like a code (``VERIFICATION_CODE``), and at most
  ``VERIFICATION_MAX_PER_HOUR`` are kept per hour (then 429). Each code is kept with the time
  it came (the last ``VERIFICATION_KEEP``) in the control table item ``pk =
  webhook#clover#verification`` for 7 days; the operator reads them with ``posync
  app-credentials webhook-verification``. The code is logged as having arrived, never its value.
- Every other message must carry ``X-Clover-Auth`` equal to the app's auth code
  (``webhook_auth_code`` in the Clover app secret), compared in constant time.
- Body: ``{"appId", "merchants": {"<mId>": [{"objectId": "O:<orderId>", "type", "ts"}]}}``.
  ``O:`` objects are orders; ``A:<appId>`` with type ``DELETE`` is the app's uninstall. An
  ``O:`` ``DELETE`` also queues a ``SyncKind.DELETED`` run for those orders (deduplicated by
  the ids): it confirms each by id and writes its tombstone (``posync.reconcile``).

**Poynt** (``POST /webhooks/poynt``)
- ``Poynt-Webhook-Signature`` must be the base64 HMAC-SHA1 of the raw body keyed with the
  hook's secret (``webhook_secret`` in the Poynt app secret), compared in constant time.
- Parsing, signatures and the facts behind them: ``posync.providers.poynt.webhooks``.
  ``ORDER_*`` events queue a sync; a delivery already seen (Poynt retries after 2 s) is
  acknowledged without effect (``deliveries``); ``APPLICATION_SUBSCRIPTION_START`` connects an
  on-terminal business (``on_install``), ``_END`` revokes it.

Uninstall: an event older than the connection's ``connected_at`` (a replay, or a late delivery
from before a reconnect) or without a time is ignored and counted (``WebhookUninstallIgnored``);
an event id seen before (control item ``webhook-event#<provider>#<hash>``, 7 days) is ignored
once processed. Otherwise the connection becomes ``revoked`` (the dispatcher and worker skip it, so its
syncs stop), its token secret is scheduled for deletion with a 7-day recovery window, and
``ConnectionRevoked`` goes on the bus. Unknown or malformed merchants are ignored with a
200 (the answer does not reveal whether a merchant exists). A bad signature is a 401 with
no detail; a body over 256 KiB is a 413.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from posync.app_credentials import AppCredentials, AppNotConfigured
from posync.aws import client
from posync.config import Settings
from posync.domain import MERCHANT_ID_PATTERNS, Connection, ConnectionStatus, check_provider
from posync.errors import ConnectionNotFound, InvalidInput, PosyncError
from posync.observability import logger, metrics
from posync.syncqueue import MAX_ORDER_IDS, ORDER_ID, SyncKind, SyncRequest
from posync.tokens import TokenStore

MAX_BODY_BYTES = 256 * 1024
VERIFICATION_KEY = "webhook#clover#verification"
VERIFICATION_RETENTION_S = 7 * 86400
VERIFICATION_MAX_PER_HOUR = 5
VERIFICATION_KEEP = 10
VERIFICATION_CODE = re.compile(r"[A-Za-z0-9_-]{1,128}")
EVENT_RETENTION_S = 7 * 86400
CREDENTIAL_RELOAD_MIN_AGE_S = 30.0  # a failed check re-reads rotated secrets at most this often
REVOKED_EVENT = "ConnectionRevoked"


class PayloadTooLarge(PosyncError):
    pass


class WebhookUnauthorized(PosyncError):
    """The message is not from the provider (bad or missing signature). Never says more."""


class VerificationRateLimited(PosyncError):
    """More verification codes than ``VERIFICATION_MAX_PER_HOUR`` (answered 429)."""


@dataclass(frozen=True)
class Uninstall:
    """An uninstall event: when the provider says it happened (Unix seconds) and its id."""

    at: float | None
    event_id: str | None


@dataclass
class WebhookResult:
    verification: bool = False
    syncs_queued: int = 0
    revoked: int = 0
    ignored: int = 0
    installed: int = 0


class DeliveryLog(Protocol):
    def first(self, provider: str, delivery_id: str) -> bool:
        """True the first time this delivery is seen (then remembered for a while)."""
        ...

    def forget(self, provider: str, delivery_id: str) -> None:
        """The delivery was not acted on after all: its retry must count as new."""
        ...


class Credentials(Protocol):
    def get(self, provider: str, max_age_s: float | None = None) -> AppCredentials: ...

    def age(self, provider: str) -> float | None: ...


class ConnectionLookup(Protocol):
    def get(self, provider: str, merchant_id: str) -> Connection: ...

    def set_status(self, conn_id: str, status: ConnectionStatus | str, reason: str | None = None) -> None: ...


class VerificationStore(Protocol):
    def put_verification_code(self, provider: str, code: str) -> bool:
        """Keep the code with its time; False when the hourly limit is reached (nothing kept)."""
        ...


class EventLedger(Protocol):
    def first_time(self, provider: str, event_id: str) -> bool:
        """Record the event id; False when it was recorded before."""
        ...

    def forget(self, provider: str, event_id: str) -> None:
        """Undo ``first_time`` (its processing failed: the provider's retry must be processed)."""
        ...


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DynamoVerificationStore:
    """The Clover verification codes in the control table (readable by the operator): one item
    whose ``codes`` list holds ``{code, at}`` (Unix seconds), newest last; written with a
    condition on the ``version`` read, so two deliveries at once cannot pass the limit."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._table = settings.control_table
        self._clock = clock

    @staticmethod
    def _key(provider: str) -> dict[str, Any]:
        return {"pk": {"S": f"webhook#{check_provider(provider)}#verification"}}

    def _item(self, provider: str) -> dict[str, Any] | None:
        got = client("dynamodb").get_item(TableName=self._table, Key=self._key(provider), ConsistentRead=True)
        item: dict[str, Any] | None = got.get("Item")
        return item

    @staticmethod
    def _codes(item: dict[str, Any] | None) -> list[tuple[str, int]]:
        if not item:
            return []
        if "codes" not in item:  # the single-code shape written before
            at = item.get("received_at", {}).get("S", "")
            ts = datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() if at else 0
            return [(item["code"]["S"], int(ts))] if "code" in item else []
        return [(c["M"]["code"]["S"], int(c["M"]["at"]["N"])) for c in item["codes"]["L"]]

    def put_verification_code(self, provider: str, code: str) -> bool:
        now = int(self._clock())
        item = self._item(provider)
        codes = self._codes(item)
        if sum(1 for _, at in codes if at > now - 3600) >= VERIFICATION_MAX_PER_HOUR:
            return False
        codes = [*codes, (code, now)][-VERIFICATION_KEEP:]
        version = int(item["version"]["N"]) if item and "version" in item else 0
        condition = "attribute_not_exists(#v)" if version == 0 else "#v = :v"
        values = {} if version == 0 else {":v": {"N": str(version)}}
        try:
            client("dynamodb").put_item(
                TableName=self._table,
                Item={
                    **self._key(provider),
                    "codes": {"L": [{"M": {"code": {"S": c}, "at": {"N": str(at)}}} for c, at in codes]},
                    "code": {"S": code},
                    "received_at": {"S": _utc(now)},
                    "version": {"N": str(version + 1)},
                    "expires_at": {"N": str(now + VERIFICATION_RETENTION_S)},
                },
                ConditionExpression=condition,
                ExpressionAttributeNames={"#v": "version"},
                **({"ExpressionAttributeValues": values} if values else {}),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False  # another delivery wrote first: this one counts as over the limit
            raise
        return True

    def read_verification_codes(self, provider: str) -> list[tuple[str, str]]:
        """Every kept code with the time it came (``2026-12-08T01:02:03Z``), oldest first."""
        return [(c, _utc(at)) for c, at in self._codes(self._item(provider))]

    def read_verification_code(self, provider: str) -> tuple[str, str] | None:
        """The newest code and its time."""
        codes = self.read_verification_codes(provider)
        return codes[-1] if codes else None


class DynamoEventLedger:
    """Processed webhook event ids in the control table (hashed; a 7-day TTL)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._table = settings.control_table
        self._clock = clock

    @staticmethod
    def _key(provider: str, event_id: str) -> dict[str, Any]:
        digest = hashlib.sha256(event_id.encode()).hexdigest()[:32]
        return {"pk": {"S": f"webhook-event#{check_provider(provider)}#{digest}"}}

    def first_time(self, provider: str, event_id: str) -> bool:
        now = int(self._clock())
        try:
            client("dynamodb").put_item(
                TableName=self._table,
                Item={**self._key(provider, event_id), "expires_at": {"N": str(now + EVENT_RETENTION_S)}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def forget(self, provider: str, event_id: str) -> None:
        client("dynamodb").delete_item(TableName=self._table, Key=self._key(provider, event_id))


def check_body_size(body: bytes) -> None:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"webhook bodies are limited to {MAX_BODY_BYTES} bytes")


def poynt_signature(secret: str, body: bytes) -> str:
    from posync.providers.poynt.webhooks import signature

    return signature(secret, body)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise InvalidInput("the webhook body is not JSON") from exc


class WebhookService:
    def __init__(
        self,
        settings: Settings,
        *,
        credentials: Credentials,
        connections: ConnectionLookup,
        tokens: TokenStore,
        verification: VerificationStore,
        enqueue: Callable[[SyncRequest, str], None],
        events: Callable[[str, dict[str, Any]], object],
        ledger: EventLedger,
        clock: Callable[[], float] = time.time,
        deliveries: DeliveryLog | None = None,
        on_install: Callable[[str, str], object] | None = None,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._connections = connections
        self._tokens = tokens
        self._verification = verification
        self._ledger = ledger
        self._enqueue = enqueue
        self._events = events
        self._clock = clock
        self._deliveries = deliveries
        self._on_install = on_install

    def handle(self, provider: str, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        """``headers`` with lower-case names (API Gateway v2 delivers them so)."""
        provider = check_provider(provider)
        metrics.add_metric(name="WebhooksReceived", unit=MetricUnit.Count, value=1)
        check_body_size(body)
        if provider == "clover":
            return self._clover(headers, body)
        return self._poynt(headers, body)

    # -- authentication --------------------------------------------------------------------

    def _authentic(
        self, provider: str, secret_of: Callable[[AppCredentials], str | None], check: Callable[[str], bool]
    ) -> None:
        """Check with the cached secret; on failure re-read it once (rotation), rate-limited."""
        attempts: list[float | None] = [None]
        age = self._credentials.age(provider)
        if age is None or age >= CREDENTIAL_RELOAD_MIN_AGE_S:
            attempts.append(0.0)
        for max_age in attempts:
            try:
                secret = secret_of(self._credentials.get(provider, max_age_s=max_age))
            except AppNotConfigured:
                secret = None
            if secret and check(secret):
                return
            if not secret:
                logger.error("webhook secret not configured", extra={"provider": provider})
        metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
        raise WebhookUnauthorized("unauthorized")

    # -- Clover ------------------------------------------------------------------------------

    def _auth_code_configured(self) -> bool:
        """A Clover ``webhook_auth_code`` is set (read afresh at most every reload interval)."""
        age = self._credentials.age("clover")
        fresh = 0.0 if age is None or age >= CREDENTIAL_RELOAD_MIN_AGE_S else None
        try:
            return bool(getattr(self._credentials.get("clover", max_age_s=fresh), "webhook_auth_code", None))
        except AppNotConfigured:
            return False

    def _verification_code(self, data: dict[str, Any]) -> WebhookResult:
        if self._auth_code_configured():
            # The handshake is over: a verification body now is just an unauthenticated message.
            logger.warning(
                "clover verification code refused: an auth code is configured (remove it to verify again)"
            )
            metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
            raise WebhookUnauthorized("unauthorized")
        code = data["verificationCode"]
        if not isinstance(code, str) or not VERIFICATION_CODE.fullmatch(code):
            raise InvalidInput("the verification code is not a code")
        if not self._verification.put_verification_code("clover", code):
            metrics.add_metric(name="WebhookRejected", unit=MetricUnit.Count, value=1)
            raise VerificationRateLimited("too many verification codes this hour; try again later")
        logger.info("clover webhook verification code received and stored (read it with the CLI)")
        return WebhookResult(verification=True)

    def _clover(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        data = _parse_json(body)
        if isinstance(data, dict) and "verificationCode" in data and "merchants" not in data:
            return self._verification_code(data)

        presented = headers.get("x-clover-auth", "")
        self._authentic(
            "clover",
            lambda c: getattr(c, "webhook_auth_code", None),
            lambda secret: hmac.compare_digest(presented.encode(), secret.encode()),
        )
        if not isinstance(data, dict) or not isinstance(data.get("merchants"), dict):
            raise InvalidInput("the clover webhook body has no merchants")
        result = WebhookResult()
        for merchant_id, events in data["merchants"].items():
            items = events if isinstance(events, list) else []
            objects = [
                (str(e.get("objectId", "")), str(e.get("type", "")).upper())
                for e in items
                if isinstance(e, dict)
            ]
            # O: DELETEs go to a DELETED run (confirmed by id), not to a webhook sync as well
            orders = sum(1 for obj, kind in objects if obj.startswith("O:") and kind != "DELETE")
            deletes = [
                e for e in items if isinstance(e, dict) and _clover_uninstall(str(e.get("objectId", "")), e)
            ]
            uninstall = _latest_clover_uninstall(str(merchant_id), deletes)
            self._apply("clover", str(merchant_id), uninstall=uninstall, order_events=orders, result=result)
            if uninstall is None:
                self._clover_deletions(str(merchant_id), items, result)
        return result

    def _clover_deletions(self, merchant_id: str, items: list[Any], result: WebhookResult) -> None:
        """``type: DELETE`` of ``O:`` objects (CLV-DEL-4): a DELETED run confirms them by id."""
        deleted = deleted_orders(items)
        if not deleted or not MERCHANT_ID_PATTERNS["clover"].fullmatch(merchant_id):
            return
        try:
            conn = self._connections.get("clover", merchant_id)
        except ConnectionNotFound:
            return
        if conn.status is not ConnectionStatus.ACTIVE:
            return
        ids = sorted(deleted)
        at_ms = max(deleted.values())
        for i in range(0, len(ids), MAX_ORDER_IDS):
            chunk = tuple(ids[i : i + MAX_ORDER_IDS])
            request = SyncRequest(
                provider="clover",
                merchant_id=merchant_id,
                kind=SyncKind.DELETED,
                order_ids=chunk,
                at_ms=at_ms,
                reason=f"webhook: {len(chunk)} order(s) deleted",
            )
            digest = hashlib.sha256(",".join(chunk).encode()).hexdigest()[:16]
            self._enqueue(request, f"{conn.connection_id}#deleted#{digest}")
            result.syncs_queued += 1
        metrics.add_metric(name="WebhookDeletionsQueued", unit=MetricUnit.Count, value=len(ids))

    # -- Poynt -------------------------------------------------------------------------------

    def _poynt(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        presented = headers.get("poynt-webhook-signature", "")
        self._authentic(
            "poynt",
            lambda c: getattr(c, "webhook_secret", None),
            lambda secret: hmac.compare_digest(presented.encode(), poynt_signature(secret, body).encode()),
        )
        from posync.providers.poynt.webhooks import parse_events

        data = _parse_json(body)
        result = WebhookResult()
        for biz, ev in parse_events(data).items():
            fresh = [
                e for e in ev.event_ids if self._deliveries is None or self._deliveries.first("poynt", e)
            ]
            if not fresh:  # a retried delivery (Poynt retries after 2 s): already acted on
                result.ignored += 1
                continue
            try:
                if ev.installed and not ev.uninstalled and self._on_install is not None:
                    if MERCHANT_ID_PATTERNS["poynt"].fullmatch(biz):
                        self._on_install("poynt", biz)
                        result.installed += 1
                    else:
                        result.ignored += 1
                    continue
                uninstall = _poynt_uninstall_of(data, biz) if ev.uninstalled else None
                self._apply("poynt", biz, uninstall=uninstall, order_events=ev.order_events, result=result)
            except Exception:
                if self._deliveries is not None:  # not acted on: Poynt's retry must not be ignored
                    for e in fresh:
                        self._deliveries.forget("poynt", e)
                raise
        return result

    # -- effects -----------------------------------------------------------------------------

    def _apply(
        self,
        provider: str,
        merchant_id: str,
        *,
        uninstall: Uninstall | None,
        order_events: int,
        result: WebhookResult,
    ) -> None:
        if not MERCHANT_ID_PATTERNS[provider].fullmatch(merchant_id):
            result.ignored += 1
            return
        try:
            conn = self._connections.get(provider, merchant_id)
        except ConnectionNotFound:
            result.ignored += 1
            logger.info("webhook for an unknown merchant ignored", extra={"provider": provider})
            return
        if uninstall is not None:
            if self._uninstall_applies(conn, uninstall):
                self._revoke_once(conn, uninstall)
                result.revoked += 1
            else:
                result.ignored += 1
            return
        if order_events == 0 or conn.status is not ConnectionStatus.ACTIVE:
            result.ignored += 1
            return
        minute = int(self._clock() // 60)
        request = SyncRequest(
            provider=provider,
            merchant_id=merchant_id,
            kind=SyncKind.WEBHOOK,
            reason=f"webhook: {order_events} order event(s)",
        )
        self._enqueue(request, f"{conn.connection_id}#webhook#{minute}")
        result.syncs_queued += 1
        metrics.add_metric(name="WebhookSyncsQueued", unit=MetricUnit.Count, value=1)
        logger.info(
            "webhook sync queued", extra={"connection_id": conn.connection_id, "order_events": order_events}
        )

    def _uninstall_applies(self, conn: Connection, event: Uninstall) -> bool:
        """Only an uninstall that happened after the connection was (re)made revokes it."""
        connected = _parse_iso(conn.connected_at)
        why = None
        if event.at is None:
            why = "the event has no time"
        elif connected is not None and event.at < connected:
            why = "the event is older than the connection (replayed or late)"
        if why is None:
            return True
        metrics.add_metric(name="WebhookUninstallIgnored", unit=MetricUnit.Count, value=1)
        logger.warning("uninstall webhook ignored", extra={"connection_id": conn.connection_id, "why": why})
        return False

    def _revoke_once(self, conn: Connection, event: Uninstall) -> None:
        if event.event_id is not None and not self._ledger.first_time(conn.provider, event.event_id):
            logger.info("uninstall webhook already processed", extra={"connection_id": conn.connection_id})
            return
        try:
            self._revoke(conn)
        except Exception:
            if event.event_id is not None:
                self._ledger.forget(conn.provider, event.event_id)  # the provider's retry must count
            raise

    def _revoke(self, conn: Connection) -> None:
        cid = conn.connection_id
        if conn.status is not ConnectionStatus.REVOKED:
            try:
                self._connections.set_status(
                    cid, ConnectionStatus.REVOKED, "the app was uninstalled by the merchant"
                )
            except ConnectionNotFound:
                return
        if conn.auth != "app_installed":  # an on-terminal connection has no token secret
            self._tokens.schedule_deletion(conn.provider, conn.merchant_id)
        metrics.add_metric(name="ConnectionsRevoked", unit=MetricUnit.Count, value=1)
        logger.warning("connection revoked: app uninstalled", extra={"connection_id": cid})
        try:
            self._events(
                REVOKED_EVENT,
                {
                    "connection_id": cid,
                    "provider": conn.provider,
                    "merchant_id": conn.merchant_id,
                    "reason": "app uninstalled",
                    "at": datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
        except (ClientError, BotoCoreError, PosyncError) as exc:
            logger.error("could not emit ConnectionRevoked", extra={"connection_id": cid, "error": str(exc)})


def deleted_orders(items: Iterable[Any]) -> dict[str, int]:
    """Order id -> the event's ``ts`` (ms; 0 if absent) of each well-formed ``O:`` ``DELETE``."""
    out: dict[str, int] = {}
    for e in items:
        if not isinstance(e, dict) or str(e.get("type", "")).upper() != "DELETE":
            continue
        obj = str(e.get("objectId", ""))
        oid = obj[2:]
        if not obj.startswith("O:") or not ORDER_ID.fullmatch(oid):
            continue
        ts = e.get("ts")
        at = ts if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0 else 0
        out[oid] = max(out.get(oid, 0), at)
    return out


def _parse_iso(text: str | None) -> float | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _later(a: Uninstall | None, b: Uninstall) -> Uninstall:
    if a is None or (b.at is not None and (a.at is None or b.at > a.at)):
        return b
    return a


def _clover_uninstall(object_id: str, event: dict[str, Any]) -> bool:
    return object_id.startswith("A:") and str(event.get("type", "")).upper() == "DELETE"


def _latest_clover_uninstall(merchant_id: str, deletes: list[dict[str, Any]]) -> Uninstall | None:
    """Clover's app DELETE events carry ``ts`` (ms) and no id: the id is merchant, object and ts."""
    found: Uninstall | None = None
    for e in deletes:
        ts = e.get("ts")
        at = ts / 1000 if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0 else None
        event_id = f"{merchant_id}|{e.get('objectId')}|{ts}" if at is not None else None
        found = _later(found, Uninstall(at, event_id))
    return found


def _poynt_uninstall(event: dict[str, Any]) -> Uninstall:
    """Poynt's events carry ``id`` and ``createdAt`` (ISO 8601)."""
    event_id = event.get("id")
    created = event.get("createdAt")
    return Uninstall(
        _parse_iso(created) if isinstance(created, str) else None,
        str(event_id)[:128] if isinstance(event_id, str) and event_id else None,
    )


def _poynt_uninstall_of(data: Any, business_id: str) -> Uninstall:
    """The latest uninstall event of ``business_id`` in a delivery (its id and ``createdAt``)."""
    from posync.providers.poynt.webhooks import UNINSTALL_EVENTS

    found: Uninstall | None = None
    for ev in data if isinstance(data, list) else [data]:
        if (
            isinstance(ev, dict)
            and str(ev.get("businessId", "")) == business_id
            and str(ev.get("eventType", "")).upper() in UNINSTALL_EVENTS
        ):
            found = _later(found, _poynt_uninstall(ev))
    return found if found is not None else Uninstall(None, None)


def build_webhook_service(settings: Settings) -> WebhookService:
    from posync.app_credentials import AppCredentialsStore
    from posync.authorization import sync_enqueuer
    from posync.connections import ConnectionRepository
    from posync.events import put_event
    from posync.providers.poynt.installs import connect_installed
    from posync.providers.poynt.webhooks import DynamoDeliveryLog
    from posync.tokens import SecretsManagerTokenStore

    def emit(detail_type: str, detail: dict[str, Any]) -> object:
        return put_event(settings, detail_type, detail)

    return WebhookService(
        settings,
        credentials=AppCredentialsStore(settings),
        connections=ConnectionRepository(settings),
        tokens=SecretsManagerTokenStore(settings),
        verification=DynamoVerificationStore(settings),
        enqueue=sync_enqueuer(settings),
        events=emit,
        deliveries=DynamoDeliveryLog(settings),
        on_install=lambda provider, business_id: connect_installed(settings, business_id),
        ledger=DynamoEventLedger(settings),
    )
