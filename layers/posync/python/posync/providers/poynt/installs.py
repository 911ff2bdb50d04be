"""On-terminal apps: businesses connected because the operator's Poynt app is installed on
their terminal (the second seed: "you can use its appId to make cloud API calls without
additional authorization from the merchant as long as the app is installed").

- Such a connection has ``auth = "app_installed"`` and no token secret: its syncs use the app's
  own token (:class:`AppTokens`, the JWT-bearer grant of ``posync.providers.poynt.oauth``)
  on ``/businesses/{businessId}/...`` (PNT-INSTALL-TOKEN).
- Connected by hand (``posync connections add poynt BUSINESS_ID --app-installed``), by the
  ``APPLICATION_SUBSCRIPTION_START`` webhook, or by :func:`sweep` of the billing list
  ``GET {POSYNC_POYNT_BILLING_BASE}/apps/{appId}/subscriptions`` (``{list: [{businessId,
  status, phase, ...}], start, count, total}``; paged by ``start``/``count``: PNT-INSTALL-LIST).
- ``APPLICATION_SUBSCRIPTION_END``, or a business no longer ACTIVE in the list, marks its
  app-installed connection revoked (``posync.webhooks``; :func:`sweep`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from posync.domain import MERCHANT_ID_PATTERNS, Connection, ConnectionStatus, check_merchant_id
from posync.errors import AuthorizationRevoked, ConnectionNotFound, ProviderError
from posync.syncqueue import SyncKind, SyncRequest
from posync.times import iso_ms

if TYPE_CHECKING:
    from posync.config import Settings
    from posync.providers.poynt.oauth import PoyntOAuth

APP_INSTALLED = "app_installed"
SUBSCRIPTIONS_PAGE = 100
ACTIVE = "ACTIVE"


class AppTokens:
    """``AccessTokens`` for app-installed connections: the app's token, fetched anew on a 401."""

    def __init__(self, oauth: PoyntOAuth) -> None:
        self._oauth = oauth
        self._lock = threading.Lock()

    def access_token(self, conn: Connection) -> str:
        try:
            return self._oauth.app_access_token()
        except ProviderError as exc:
            if exc.status in (400, 401, 403):
                raise AuthorizationRevoked("poynt refused the app's own credentials") from exc
            raise

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        with self._lock:
            self._oauth.forget_app_token(rejected)
        return self.access_token(conn)


class InstallStore(Protocol):
    def get(self, provider: str, merchant_id: str) -> Connection: ...

    def save_connected(self, conn: Connection) -> Connection: ...

    def set_status(self, conn_id: str, status: ConnectionStatus | str, reason: str | None = None) -> None: ...

    def list_by_status(
        self, status: ConnectionStatus | str, page_size: int = 100, start_key: dict[str, Any] | None = None
    ) -> tuple[list[Connection], dict[str, Any] | None]: ...


_iso = iso_ms  # posync.times


def connect(
    business_id: str,
    *,
    connections: InstallStore,
    enqueue: Callable[[SyncRequest, str], None],
    region: str,
    backfill_days: int,
    clock: Callable[[], float] = time.time,
    ref: str | None = None,
) -> Connection:
    """Connect an app-installed business (idempotent): active, ``auth = app_installed``, and a
    first backfill queued unless it was already active so. An OAuth connection stays OAuth."""
    check_merchant_id("poynt", business_id)
    try:
        existing: Connection | None = connections.get("poynt", business_id)
    except ConnectionNotFound:
        existing = None
    if existing is not None and existing.status is ConnectionStatus.ACTIVE:
        return existing  # already syncing (by consent or by install): nothing to change
    now = clock()
    conn = connections.save_connected(
        Connection(
            provider="poynt",
            merchant_id=business_id,
            status=ConnectionStatus.ACTIVE,
            region=region,
            ref=ref,
            connected_at=_iso(now),
            auth=APP_INSTALLED,
        )
    )
    since = _iso(now - timedelta(days=backfill_days).total_seconds())
    request = SyncRequest(
        provider="poynt",
        merchant_id=business_id,
        kind=SyncKind.BACKFILL,
        since=since,
        reason="first sync after the app was installed",
    )
    enqueue(request, f"{conn.connection_id}#installed#{int(now // 60)}")
    return conn


def subscribed_businesses(oauth: PoyntOAuth, billing_base: str, session: Any) -> dict[str, str]:
    """Business id -> subscription status, from the billing list (every page)."""
    app_id = oauth.app_id()
    out: dict[str, str] = {}
    start = 0
    while True:
        resp = session.get(
            f"{billing_base}/apps/{app_id}/subscriptions",
            params={"start": str(start), "count": str(SUBSCRIPTIONS_PAGE)},
            headers={"Authorization": f"Bearer {oauth.app_access_token()}", "api-version": "1.2"},
            timeout=(5.0, 15.0),
            allow_redirects=False,
        )
        if resp.status_code != 200:
            raise ProviderError(
                f"poynt billing subscriptions answered {resp.status_code}", status=resp.status_code
            )
        try:
            body = resp.json()
        except ValueError as exc:
            raise ProviderError("poynt billing subscriptions answered without JSON") from exc
        rows = body.get("list") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ProviderError("poynt billing subscriptions: no list in the reply")
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("businessId"), str):
                status = str(row.get("status") or "").upper()
                if out.get(row["businessId"]) != ACTIVE:  # one ACTIVE subscription is enough
                    out[row["businessId"]] = status
        total = body.get("total")
        start += len(rows)
        if not rows or (isinstance(total, int) and start >= total) or len(rows) < SUBSCRIPTIONS_PAGE:
            return out


def sweep(
    subscriptions: dict[str, str],
    *,
    connections: InstallStore,
    enqueue: Callable[[SyncRequest, str], None],
    region: str,
    backfill_days: int,
    clock: Callable[[], float] = time.time,
) -> tuple[int, int]:
    """Connect every ACTIVE business not yet connected; revoke app-installed connections whose
    business is no longer ACTIVE. Returns (connected, revoked)."""
    connected = revoked = 0
    for biz, status in subscriptions.items():
        if status != ACTIVE:
            continue
        if not MERCHANT_ID_PATTERNS["poynt"].fullmatch(biz):
            continue  # a malformed id in the list is skipped, never a crash
        try:
            was = connections.get("poynt", biz).status is ConnectionStatus.ACTIVE
        except ConnectionNotFound:
            was = False
        connect(
            biz,
            connections=connections,
            enqueue=enqueue,
            region=region,
            backfill_days=backfill_days,
            clock=clock,
        )
        connected += 0 if was else 1
    start_key: dict[str, Any] | None = None
    while True:
        page, start_key = connections.list_by_status(ConnectionStatus.ACTIVE, start_key=start_key)
        for conn in page:
            if (
                conn.provider == "poynt"
                and conn.auth == APP_INSTALLED
                and subscriptions.get(conn.merchant_id) != ACTIVE
            ):
                connections.set_status(
                    conn.connection_id, ConnectionStatus.REVOKED, "the app is no longer installed"
                )
                revoked += 1
        if start_key is None:
            return connected, revoked


def connect_installed(settings: Settings, business_id: str) -> Connection:
    """The production wiring of :func:`connect` (the webhook handler's ``on_install``)."""
    from posync.authorization import sync_enqueuer
    from posync.connections import ConnectionRepository

    return connect(
        business_id,
        connections=ConnectionRepository(settings),
        enqueue=sync_enqueuer(settings),
        region=settings.provider_region,
        backfill_days=settings.backfill_days,
    )


def app_oauth(settings: Settings) -> PoyntOAuth:
    from posync.app_credentials import AppCredentialsStore
    from posync.providers.poynt.oauth import PoyntOAuth

    return PoyntOAuth(settings.poynt, AppCredentialsStore(settings).poynt, None)
