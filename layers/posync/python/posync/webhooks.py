"""Provider webhooks: verify, then queue targeted syncs or revoke uninstalled connections.

Webhooks only speed syncs up; the schedule stays the source of truth (delivery is not
guaranteed), so an order event just queues a ``SyncKind.WEBHOOK`` sync for its merchant,
deduplicated per connection and minute (many events in a burst -> one sync).

**Clover** (``POST /webhooks/clover``)
- The URL verification handshake: Clover posts ``{"verificationCode": "..."}`` once, and the
  operator pastes the code into the app's webhook settings in the Clover dashboard. posync
  stores it in the control table item ``pk = webhook#clover#verification`` (attribute
  ``code``, kept for 7 days) and answers 200. The operator reads it with
  ``posync app-credentials webhook-verification`` or ``aws dynamodb get-item --table-name
  posync-<stage>-control --key '{"pk":{"S":"webhook#clover#verification"}}'``.
  The code is logged as having arrived, never its value.
- Every other message must carry ``X-Clover-Auth`` equal to the app's auth code
  (``webhook_auth_code`` in the Clover app secret), compared in constant time.
- Body: ``{"appId", "merchants": {"<mId>": [{"objectId": "O:<orderId>", "type", "ts"}]}}``.
  ``O:`` objects are orders; ``A:<appId>`` with type ``DELETE`` is the app's uninstall. An
  ``O:`` ``DELETE`` also queues a ``SyncKind.DELETED`` run for those orders (deduplicated by
  the ids): it confirms each by id and writes its tombstone (``posync.reconcile``).

**Poynt** (``POST /webhooks/poynt``)
- ``Poynt-Webhook-Signature`` must be the base64 HMAC-SHA1 of the raw body keyed with the
  hook's secret (``webhook_secret`` in the Poynt app secret), compared in constant time.
- Body: one event (or a list) ``{"eventType", "businessId", "resource", "resourceId", ...}``.
  ``ORDER_*`` events (or ``resource`` ``/orders``) queue a sync; ``UNINSTALL_EVENTS`` revoke.

Uninstall: the connection becomes ``revoked`` (the dispatcher and worker skip it, so its
syncs stop), its token secret is scheduled for deletion with a 7-day recovery window, and
``ConnectionRevoked`` goes on the bus. Unknown or malformed merchants are ignored with a
200 (the answer does not reveal whether a merchant exists). A bad signature is a 401 with
no detail; a body over 256 KiB is a 413.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
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
CREDENTIAL_RELOAD_MIN_AGE_S = 30.0  # a failed check re-reads rotated secrets at most this often
# APPLICATION_SUBSCRIPTION_END is Poynt's documented "subscription cancellation/end" event (its
# billing-webhooks guide and the Java SDK's hook-registration sample subscribe to it with
# APPLICATION_SUBSCRIPTION_START); the two others are accepted in case a portal sends them.
POYNT_UNINSTALL_EVENTS = frozenset(
    {"APPLICATION_SUBSCRIPTION_END", "APPLICATION_UNINSTALLED", "BUSINESS_APPLICATION_UNINSTALLED"}
)
REVOKED_EVENT = "ConnectionRevoked"


class PayloadTooLarge(PosyncError):
    pass


class WebhookUnauthorized(PosyncError):
    """The message is not from the provider (bad or missing signature). Never says more."""


@dataclass
class WebhookResult:
    verification: bool = False
    syncs_queued: int = 0
    revoked: int = 0
    ignored: int = 0


class Credentials(Protocol):
    def get(self, provider: str, max_age_s: float | None = None) -> AppCredentials: ...

    def age(self, provider: str) -> float | None: ...


class ConnectionLookup(Protocol):
    def get(self, provider: str, merchant_id: str) -> Connection: ...

    def set_status(self, conn_id: str, status: ConnectionStatus | str, reason: str | None = None) -> None: ...


class VerificationStore(Protocol):
    def put_verification_code(self, provider: str, code: str) -> None: ...


class DynamoVerificationStore:
    """The Clover verification code in the control table (readable by the operator)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._table = settings.control_table
        self._clock = clock

    def put_verification_code(self, provider: str, code: str) -> None:
        now = int(self._clock())
        client("dynamodb").put_item(
            TableName=self._table,
            Item={
                "pk": {"S": f"webhook#{check_provider(provider)}#verification"},
                "code": {"S": code},
                "received_at": {"S": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
                "expires_at": {"N": str(now + VERIFICATION_RETENTION_S)},
            },
        )

    def read_verification_code(self, provider: str) -> tuple[str, str] | None:
        item = (
            client("dynamodb")
            .get_item(
                TableName=self._table,
                Key={"pk": {"S": f"webhook#{check_provider(provider)}#verification"}},
                ConsistentRead=True,
            )
            .get("Item")
        )
        if not item:
            return None
        return item["code"]["S"], item.get("received_at", {}).get("S", "")


def check_body_size(body: bytes) -> None:
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"webhook bodies are limited to {MAX_BODY_BYTES} bytes")


def poynt_signature(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha1).digest()).decode("ascii")


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._credentials = credentials
        self._connections = connections
        self._tokens = tokens
        self._verification = verification
        self._enqueue = enqueue
        self._events = events
        self._clock = clock

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

    def _clover(self, headers: Mapping[str, str], body: bytes) -> WebhookResult:
        data = _parse_json(body)
        if isinstance(data, dict) and "verificationCode" in data and "merchants" not in data:
            code = str(data["verificationCode"])[:256]
            self._verification.put_verification_code("clover", code)
            logger.info("clover webhook verification code received and stored (read it with the CLI)")
            return WebhookResult(verification=True)

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
            uninstall = any(obj.startswith("A:") and kind == "DELETE" for obj, kind in objects)
            # O: DELETEs go to a DELETED run (confirmed by id), not to a webhook sync as well
            orders = sum(1 for obj, kind in objects if obj.startswith("O:") and kind != "DELETE")
            self._apply("clover", str(merchant_id), uninstall=uninstall, order_events=orders, result=result)
            if not uninstall:
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
        data = _parse_json(body)
        events: Iterable[Any] = data if isinstance(data, list) else [data]
        per_merchant: dict[str, tuple[bool, int]] = {}
        for ev in events:
            if not isinstance(ev, dict):
                continue
            biz = str(ev.get("businessId", ""))
            event_type = str(ev.get("eventType", "")).upper()
            uninstall, orders = per_merchant.get(biz, (False, 0))
            if event_type in POYNT_UNINSTALL_EVENTS:
                uninstall = True
            elif event_type.startswith("ORDER_") or str(ev.get("resource", "")).rstrip("/") == "/orders":
                orders += 1
            per_merchant[biz] = (uninstall, orders)
        result = WebhookResult()
        for biz, (uninstall, orders) in per_merchant.items():
            self._apply("poynt", biz, uninstall=uninstall, order_events=orders, result=result)
        return result

    # -- effects -----------------------------------------------------------------------------

    def _apply(
        self, provider: str, merchant_id: str, *, uninstall: bool, order_events: int, result: WebhookResult
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
        if uninstall:
            self._revoke(conn)
            result.revoked += 1
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

    def _revoke(self, conn: Connection) -> None:
        cid = conn.connection_id
        if conn.status is not ConnectionStatus.REVOKED:
            try:
                self._connections.set_status(
                    cid, ConnectionStatus.REVOKED, "the app was uninstalled by the merchant"
                )
            except ConnectionNotFound:
                return
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


def build_webhook_service(settings: Settings) -> WebhookService:
    from posync.app_credentials import AppCredentialsStore
    from posync.authorization import sync_enqueuer
    from posync.connections import ConnectionRepository
    from posync.events import put_event
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
    )
