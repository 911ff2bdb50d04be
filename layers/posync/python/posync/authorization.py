"""Merchant authorization: the connect redirect and the OAuth callback.

``ConnectService.begin(provider, query, cookie)`` -> the provider's consent page with a signed,
single-use state bound to the browser (``posync.oauth_state``), and the binding cookie to set.
A ``ref`` comes only from an operator-signed link (``posync connect-link``): an unsigned,
forged or expired one gets a clear page and no redirect.

``CallbackService.complete(provider, params, cookie=..., remaining_s=...)`` runs the callback
in this order, and stores nothing unless every step before the token write succeeded:

1. the provider adapter reads its parameters (Clover ``state``/``code``/``merchant_id``/``error``,
   Poynt ``context``/``code``/``status``);
2. the state is verified (forged / expired) before anything else is looked at;
3. the browser must present the binding cookie the state was issued to (login CSRF);
4. a denial ends here with a clear page;
5. the state's nonce is consumed (conditional put: replayed states end here);
6. the code is exchanged (provider 4xx: refused; 5xx or timeout: 502). Every provider call
   shares one deadline: the Lambda's remaining time (at most ``API_LIMIT_S``) less
   ``STORE_RESERVE_S`` kept for the writes; past it nothing is written (504);
7. the merchant id is checked against its strict pattern;
8. under the connection's refresh lease, tokens go to the connection's secret (KMS, naming
   their grant's ``connected_at``) and the connection record is upserted (cursor kept on
   reconnect; the ref only replaced by a signed one); then the first sync (backfill) is queued.

Failures come out as ``CallbackFailed`` carrying the page to show (status, title, message
and a fresh connect link that keeps the operator's signed ``ref`` when the state was genuine).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from aws_lambda_powertools.metrics import MetricUnit

from posync.config import Settings
from posync.domain import (
    Connection,
    ConnectionStatus,
    check_merchant_id,
    check_provider,
    check_ref,
    connection_id,
)
from posync.errors import InvalidInput, InvalidState, PosyncError, ProviderError
from posync.oauth_state import (
    ExpiredState,
    LinkSigner,
    StateNonces,
    StatePayload,
    StateSigner,
    binding_cookie,
    new_binding,
)
from posync.observability import logger, metrics
from posync.providers import ExchangeRefused, OAuthProvider, deadline
from posync.syncqueue import SyncKind, SyncRequest
from posync.times import iso_ms
from posync.tokens import LEASE_TTL_S, LeaseStore, TokenStore, refresh_lease_name

CALLBACK_LEASE_WAIT_S = 8.0  # within the callback's 30 s; a refresh holds the lease ~1 s

PROVIDER_NAMES = {"clover": "Clover", "poynt": "Poynt"}
API_LIMIT_S = 29.0  # API Gateway answers 503 itself after 30 s
STORE_RESERVE_S = 6.0  # kept after the provider calls for the secret, record and queue writes


def provider_title(provider: str) -> str:
    return PROVIDER_NAMES.get(provider, "the provider")


def connect_url(
    settings: Settings,
    provider: str,
    ref: str | None = None,
    link_expires_at: int | None = None,
    link_sig: str | None = None,
) -> str:
    """Our own public connect link (the only place the merchant is sent to start again); a
    ``ref`` travels only with its signature (``posync connect-link``)."""
    query = ""
    if ref and link_expires_at is not None and link_sig:
        query = "?" + urlencode({"ref": ref, "exp": str(int(link_expires_at)), "sig": link_sig})
    return f"{settings.public_base_url}/connect/{check_provider(provider)}{query}"


def signed_connect_link(
    settings: Settings, signer: LinkSigner, provider: str, ref: str, expires_at: int
) -> str:
    """The operator's link for one merchant: carries ``ref`` onto the connection until ``expires_at``."""
    ref = check_ref(ref) or ""
    if not ref:
        raise InvalidInput("a connect link needs a ref")
    return connect_url(settings, provider, ref, expires_at, signer.sign(provider, ref, expires_at))


def _retry_url(settings: Settings, provider: str, state: StatePayload | None) -> str:
    if state is None:
        return connect_url(settings, provider)
    return connect_url(settings, provider, state.ref, state.link_expires_at, state.link_sig)


class CallbackFailed(PosyncError):
    """The callback stored nothing; this is what the merchant sees. Texts are safe to show."""

    def __init__(self, status: int, title: str, message: str, retry_url: str | None, reason: str) -> None:
        super().__init__(f"{title}: {reason}")
        self.status = status
        self.title = title
        self.message = message
        self.retry_url = retry_url
        self.reason = reason  # short machine-readable cause: forged/expired/replayed/denied/refused/provider


@dataclass(frozen=True)
class Connected:
    provider: str
    merchant_id: str
    ref: str | None
    access_expires_at: int
    business_name: str | None = None

    @property
    def connection_id(self) -> str:
        return connection_id(self.provider, self.merchant_id)


class ConnectionWriter(Protocol):
    def save_connected(self, conn: Connection) -> Connection: ...


Enqueue = Callable[[SyncRequest, str], None]


@dataclass(frozen=True)
class ConsentRedirect:
    url: str  # the provider's consent page
    set_cookie: str  # the browser-binding cookie (``Set-Cookie`` value)


class ConnectService:
    def __init__(
        self,
        settings: Settings,
        signer: StateSigner,
        providers: Mapping[str, OAuthProvider],
        links: LinkSigner | None = None,
    ) -> None:
        self._settings = settings
        self._signer = signer
        self._providers = providers
        self._links = links

    def begin(self, provider: str, query: Mapping[str, str], cookie: str | None = None) -> ConsentRedirect:
        """The consent redirect for ``GET /connect/{provider}?[ref&exp&sig][&merchant_id]``.

        ``cookie``: the browser's binding cookie, if it has a valid one (reused, so two tabs can
        connect at once); otherwise a new one is made. ``InvalidLink`` for an unsigned,
        forged or expired ``ref``; ``merchant_id`` (Clover App Market entry) preselects the merchant.
        """
        provider = check_provider(provider)
        ref = check_ref(query.get("ref"))
        link_sig = query.get("sig") or None
        link_expires_at = None
        if ref or link_sig or query.get("exp"):
            if self._links is None:
                raise InvalidInput("this stage does not accept a ref")
            link_expires_at = self._links.verify(provider, ref or "", query.get("exp"), link_sig)
        hint = check_merchant_id(provider, query["merchant_id"]) if query.get("merchant_id") else None
        binding = cookie if cookie and StateSigner.binding_valid(cookie) else new_binding()
        state = self._signer.issue(
            provider,
            ref=ref,
            merchant_hint=hint,
            browser=binding,
            link_expires_at=link_expires_at,
            link_sig=link_sig if ref else None,
        )
        url = self._providers[provider].authorize_url(self._settings.redirect_uri(provider), state, hint)
        metrics.add_metric(name="ConnectStarted", unit=MetricUnit.Count, value=1)
        logger.info("consent redirect", extra={"provider": provider, "ref": ref, "merchant_hint": hint})
        secure = self._settings.public_base_url.startswith("https://")
        return ConsentRedirect(url, binding_cookie(binding, secure=secure, provider=provider))


_STATE_PAGES: dict[str, tuple[str, str]] = {
    "missing": (
        "This sign-in response is incomplete",
        "The answer from {p} did not carry the check value posync sent, so nothing was stored.",
    ),
    "forged": (
        "This sign-in link is not valid",
        "The answer from {p} could not be verified (it was altered or did not come from posync), "
        "so nothing was stored.",
    ),
    "expired": (
        "This sign-in link has expired",
        "The approval at {p} took longer than 10 minutes, so nothing was stored.",
    ),
    "replayed": (
        "This sign-in link was already used",
        "Each sign-in link works once and this one was used before, so nothing was stored.",
    ),
    "browser": (
        "Please finish connecting in the browser you started in",
        "This sign-in was started in another browser (or this browser did not keep posync's "
        "cookie), so nothing was stored. Start again here to connect from this browser.",
    ),
}


class CallbackService:
    def __init__(
        self,
        settings: Settings,
        *,
        signer: StateSigner,
        nonces: StateNonces,
        providers: Mapping[str, OAuthProvider],
        tokens: TokenStore,
        connections: ConnectionWriter,
        enqueue: Enqueue,
        clock: Callable[[], float] = time.time,
        leases: LeaseStore | None = None,
        sleep: Callable[[float], None] = time.sleep,
        lease_wait_s: float = CALLBACK_LEASE_WAIT_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._sleep = sleep
        self._lease_wait_s = lease_wait_s
        self._settings = settings
        self._signer = signer
        self._nonces = nonces
        self._providers = providers
        self._tokens = tokens
        self._connections = connections
        self._enqueue = enqueue
        self._clock = clock
        self._monotonic = monotonic

    def _fail(
        self, status: int, provider: str, page: tuple[str, str], reason: str, state: StatePayload | None
    ) -> CallbackFailed:
        title, message = page
        metrics.add_metric(name="ConnectFailures", unit=MetricUnit.Count, value=1)
        logger.warning("callback stored nothing", extra={"provider": provider, "reason": reason})
        return CallbackFailed(status, title, message, _retry_url(self._settings, provider, state), reason)

    def complete(
        self,
        provider: str,
        params: Mapping[str, str],
        *,
        cookie: str | None = None,
        remaining_s: float = API_LIMIT_S,
    ) -> Connected:
        """``cookie``: the browser's binding cookie; ``remaining_s``: the invocation's time left."""
        provider = check_provider(provider)
        oauth = self._providers[provider]
        name = provider_title(provider)
        callback = oauth.read_callback(params)

        try:
            state: StatePayload = self._signer.verify(provider, callback.state)
        except InvalidState as exc:
            title, message = _STATE_PAGES.get(exc.reason, _STATE_PAGES["forged"])
            genuine = exc.payload if isinstance(exc, ExpiredState) else None  # only a genuine state's ref
            raise self._fail(400, provider, (title, message.format(p=name)), exc.reason, genuine) from exc

        if not StateSigner.bound_to(state, cookie):
            raise self._fail(400, provider, _STATE_PAGES["browser"], "browser", state)

        if callback.denied:
            raise self._fail(
                200,
                provider,
                (
                    "Connection cancelled",
                    f"posync was not approved at {name}, so nothing was connected and nothing was stored. "
                    "You can start again whenever you like.",
                ),
                "denied",
                state,
            )

        if not self._nonces.consume(state.nonce, state.expires_at):
            title, message = _STATE_PAGES["replayed"]
            raise self._fail(400, provider, (title, message.format(p=name)), "replayed", state)

        redirect_uri = self._settings.redirect_uri(provider)
        ends_at = self._monotonic() + min(remaining_s, API_LIMIT_S) - STORE_RESERVE_S
        try:
            with deadline(ends_at, self._monotonic):
                grant = oauth.exchange_code(callback, redirect_uri)
            merchant_id = check_merchant_id(provider, grant.merchant_id)
            if self._monotonic() > ends_at:
                raise ProviderError(f"{name} answered after the callback's deadline")
        except ExchangeRefused as exc:
            logger.warning("code exchange refused", extra={"provider": provider, "detail": str(exc)})
            raise self._fail(
                400,
                provider,
                (
                    "The connection could not be completed",
                    f"{name} did not accept the sign-in (it may have expired or been used already), "
                    "so nothing was stored.",
                ),
                "refused",
                state,
            ) from exc
        except InvalidInput as exc:
            raise self._fail(
                400,
                provider,
                (
                    "The connection could not be completed",
                    f"{name} did not name a valid merchant, so nothing was stored.",
                ),
                "merchant",
                state,
            ) from exc
        except ProviderError as exc:
            logger.warning("code exchange failed", extra={"provider": provider, "detail": str(exc)})
            raise self._fail(
                502,
                provider,
                (
                    f"{name} is not responding",
                    f"{name} did not complete the sign-in (an error or a timeout on their side), "
                    "so nothing was stored. Please try again in a few minutes.",
                ),
                "provider",
                state,
            ) from exc

        now = self._clock()
        tokens = replace(grant.tokens, connected_at=_iso(now))  # the pair names its grant
        with self._refresh_lease(connection_id(provider, merchant_id)):
            self._tokens.store_new(provider, merchant_id, tokens)
            conn = self._connections.save_connected(
                Connection(
                    provider=provider,
                    merchant_id=merchant_id,
                    status=ConnectionStatus.ACTIVE,
                    region=self._settings.provider_region,
                    ref=state.ref,
                    connected_at=tokens.connected_at,
                    access_expires_at=tokens.access_expires_at,
                    refresh_expires_at=tokens.refresh_expires_at,
                )
            )
        since = _iso(now - timedelta(days=self._settings.backfill_days).total_seconds())
        request = SyncRequest(
            provider=provider,
            merchant_id=merchant_id,
            kind=SyncKind.BACKFILL,
            since=since,
            reason="first sync after connect",
        )
        self._enqueue(request, f"{conn.connection_id}#connect#{state.nonce}")
        metrics.add_metric(name="MerchantsConnected", unit=MetricUnit.Count, value=1)
        logger.info(
            "merchant connected",
            extra={
                "connection_id": conn.connection_id,
                "ref": conn.ref,
                "backfill_since": since,
                **tokens.expiry_log(),
            },
        )
        return Connected(provider, merchant_id, conn.ref, tokens.access_expires_at, grant.business_name)

    @contextmanager
    def _refresh_lease(self, conn_id: str) -> Iterator[None]:
        """Store the new grant under the connection's refresh lease (``posync.tokens``), so a
        worker saving a refresh of the old grant never interleaves with it. A holder that keeps
        it past ``lease_wait_s`` (its section is bounded well below that) is not waited for."""
        if self._leases is None:
            yield
            return
        name, owner = refresh_lease_name(conn_id), uuid.uuid4().hex
        deadline, delay = self._clock() + self._lease_wait_s, 0.05
        held = self._leases.acquire(name, owner, LEASE_TTL_S)
        while not held and self._clock() < deadline:
            self._sleep(delay)
            delay = min(delay * 2, 0.5)
            held = self._leases.acquire(name, owner, LEASE_TTL_S)
        if not held:
            logger.warning("stored a new grant without the refresh lease", extra={"connection_id": conn_id})
        try:
            yield
        finally:
            if held:
                self._leases.release(name, owner)


def success_location(settings: Settings, connected: Connected) -> str | None:
    """Where to send the merchant after success: the configured URL plus provider and merchant id."""
    if not settings.success_redirect_url:
        return None
    parts = urlsplit(settings.success_redirect_url)
    extra = urlencode({"provider": connected.provider, "merchant_id": connected.merchant_id})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


_iso = iso_ms  # posync.times


# ----------------------------------------------------------------------------------------
# Production wiring (handlers call these at cold start)
# ----------------------------------------------------------------------------------------


def sync_enqueuer(settings: Settings) -> Enqueue:
    from posync.syncqueue import queue_url, send_sync

    cached: list[str] = []

    def enqueue(request: SyncRequest, dedup_id: str) -> None:
        if not cached:
            cached.append(queue_url(settings.sync_queue_url, settings.resources.queue("sync").name))
        send_sync(cached[0], request, dedup_id)

    return enqueue


def build_connect_service(settings: Settings) -> ConnectService:
    from posync.app_credentials import AppCredentialsStore
    from posync.oauth_state import SecretsManagerStateKey
    from posync.providers import build_providers

    keys = SecretsManagerStateKey(settings)
    return ConnectService(
        settings,
        StateSigner(keys),
        build_providers(settings, AppCredentialsStore(settings)),
        LinkSigner(keys),
    )


def build_callback_service(settings: Settings) -> CallbackService:
    from posync.app_credentials import AppCredentialsStore
    from posync.connections import ConnectionRepository
    from posync.oauth_state import DynamoStateNonces, SecretsManagerStateKey
    from posync.providers import build_providers
    from posync.tokens import DynamoLeases, SecretsManagerTokenStore

    return CallbackService(
        settings,
        signer=StateSigner(SecretsManagerStateKey(settings)),
        nonces=DynamoStateNonces(settings),
        providers=build_providers(settings, AppCredentialsStore(settings)),
        tokens=SecretsManagerTokenStore(settings),
        connections=ConnectionRepository(settings),
        enqueue=sync_enqueuer(settings),
        leases=DynamoLeases(settings),
    )
