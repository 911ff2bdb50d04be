"""Connect and callback services with in-memory fakes: what is stored, queued and shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest

from posync.authorization import CallbackFailed, CallbackService, Connected, ConnectService, success_location
from posync.domain import Connection
from posync.errors import InvalidInput, ProviderError, UnknownProvider
from posync.oauth_state import StateSigner
from posync.providers import CallbackParams, ExchangeRefused, Grant, OAuthProvider
from posync.syncqueue import SyncKind, SyncRequest
from posync.tokens import TokenSet
from tests.unit.oauth_fakes import FakeClock, FakeConnections, FakeTokenStore, unit_settings

MERCHANT = "ABCDEFGHJK123"


@dataclass
class FakeOAuth:
    """A provider adapter speaking Clover's parameter names; the exchange is scripted."""

    name: str = "clover"
    exchange_raises: Exception | None = None
    merchant_id: str = MERCHANT
    exchanged: list[str] = field(default_factory=list)

    def authorize_url(self, redirect_uri: str, state: str, merchant_hint: str | None = None) -> str:
        hint = f"&merchant_id={merchant_hint}" if merchant_hint else ""
        return f"http://clover.test/oauth/v2/authorize?redirect_uri={redirect_uri}&state={state}{hint}"

    def read_callback(self, params: Mapping[str, str]) -> CallbackParams:
        return CallbackParams(
            state=params.get("state"),
            code=params.get("code"),
            denied="error" in params,
            merchant_id=params.get("merchant_id"),
        )

    def exchange_code(self, callback: CallbackParams, redirect_uri: str) -> Grant:
        assert redirect_uri == "https://api.example.test/oauth/clover/callback"
        self.exchanged.append(callback.code or "")
        if self.exchange_raises is not None:
            raise self.exchange_raises
        return Grant(self.merchant_id, TokenSet("acc", 1_800_001_800, "ref", 1_831_536_000, 1_800_000_000))

    def refresh(self, tokens: TokenSet) -> TokenSet:  # pragma: no cover - not used here
        raise NotImplementedError


class MemoryNonces:
    def __init__(self) -> None:
        self.used: set[str] = set()

    def consume(self, nonce: str, expires_at: int) -> bool:
        if nonce in self.used:
            return False
        self.used.add(nonce)
        return True


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.settings = unit_settings(POSYNC_BACKFILL_DAYS="30", POSYNC_PROVIDER_REGION="sandbox")
        self.signer = StateSigner(lambda: b"s" * 32, clock=self.clock)
        self.oauth = FakeOAuth()
        providers: dict[str, OAuthProvider] = {"clover": self.oauth}
        self.nonces = MemoryNonces()
        self.tokens = FakeTokenStore()
        self.connections = FakeConnections()
        self.queued: list[tuple[SyncRequest, str]] = []
        self.connect = ConnectService(self.settings, self.signer, providers)
        self.callback = CallbackService(
            self.settings,
            signer=self.signer,
            nonces=self.nonces,
            providers=providers,
            tokens=self.tokens,
            connections=self.connections,
            enqueue=lambda req, dedup: self.queued.append((req, dedup)),
            clock=self.clock,
        )

    def state_from(self, url: str) -> str:
        return parse_qs(urlsplit(url).query)["state"][0]

    def approve(self, ref: str | None = None) -> dict[str, str]:
        state = self.state_from(self.connect.authorize_url("clover", ref=ref))
        return {"merchant_id": MERCHANT, "client_id": "X", "code": "c0de", "state": state}

    def nothing_stored(self) -> bool:
        return not self.tokens.secrets and not self.connections.conns and not self.queued


def test_connect_redirects_with_a_state_carrying_the_ref_and_merchant_hint() -> None:
    w = World()
    url = w.connect.authorize_url("clover", ref="shop-7", merchant_id=MERCHANT)
    payload = w.signer.verify("clover", w.state_from(url))
    assert (payload.ref, payload.merchant_hint) == ("shop-7", MERCHANT)
    assert f"merchant_id={MERCHANT}" in url
    assert "redirect_uri=https://api.example.test/oauth/clover/callback" in url


@pytest.mark.parametrize(
    ("provider", "ref", "merchant", "error"),
    [
        ("square", None, None, UnknownProvider),
        ("clover", "bad ref with spaces", None, InvalidInput),
        ("clover", None, "lowercase-id", InvalidInput),
    ],
)
def test_connect_refuses_bad_input(
    provider: str, ref: str | None, merchant: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        World().connect.authorize_url(provider, ref=ref, merchant_id=merchant)


def test_an_approved_callback_stores_tokens_saves_the_connection_and_queues_the_backfill() -> None:
    # Given a merchant who approved at Clover
    w = World()
    params = w.approve(ref="shop-7")
    # When the callback runs
    connected = w.callback.complete("clover", params)
    # Then the tokens are stored for the merchant
    assert connected == Connected("clover", MERCHANT, "shop-7", 1_800_001_800)
    assert w.tokens.secrets[("clover", MERCHANT)].access_token == "acc"
    # And the connection is active with its ref, region and token expiries
    conn = w.connections.conns[f"clover#{MERCHANT}"]
    assert (conn.status.value, conn.ref, conn.region) == ("active", "shop-7", "sandbox")
    assert (conn.access_expires_at, conn.refresh_expires_at) == (1_800_001_800, 1_831_536_000)
    assert conn.connected_at == "2027-01-15T08:00:00.000Z"
    # And a backfill of the configured 30 days is queued once
    [(req, dedup)] = w.queued
    assert (req.kind, req.provider, req.merchant_id) == (SyncKind.BACKFILL, "clover", MERCHANT)
    assert req.since == "2026-12-16T08:00:00.000Z"
    assert dedup.startswith(f"clover#{MERCHANT}#connect#")


def test_reconnecting_keeps_the_cursor() -> None:
    w = World()
    w.connections.add(Connection("clover", MERCHANT, cursor={"modified_ms": 5}))
    w.callback.complete("clover", w.approve())
    assert w.connections.conns[f"clover#{MERCHANT}"].cursor == {"modified_ms": 5}


def failure(w: World, params: dict[str, str]) -> CallbackFailed:
    with pytest.raises(CallbackFailed) as info:
        w.callback.complete("clover", params)
    return info.value


def test_a_forged_state_stores_nothing_and_links_a_fresh_connect() -> None:
    w = World()
    params = w.approve()
    forged = StateSigner(lambda: b"x" * 32, clock=w.clock).issue("clover")
    err = failure(w, {**params, "state": forged})
    assert (err.status, err.reason) == (400, "forged")
    assert "not valid" in err.title
    assert err.retry_url == "https://api.example.test/connect/clover"
    assert w.nothing_stored() and w.oauth.exchanged == []


def test_an_expired_state_stores_nothing_and_keeps_the_ref_in_the_fresh_link() -> None:
    w = World()
    params = w.approve(ref="shop-9")
    w.clock.sleep(601)
    err = failure(w, params)
    assert (err.status, err.reason) == (400, "expired")
    assert err.retry_url == "https://api.example.test/connect/clover?ref=shop-9"
    assert w.nothing_stored() and w.oauth.exchanged == []


def test_a_replayed_state_stores_nothing_the_second_time() -> None:
    w = World()
    params = w.approve()
    w.callback.complete("clover", params)
    before = (dict(w.tokens.secrets), len(w.queued), list(w.oauth.exchanged))
    err = failure(w, params)
    assert (err.status, err.reason) == (400, "replayed")
    assert "already used" in err.title
    assert (dict(w.tokens.secrets), len(w.queued), list(w.oauth.exchanged)) == before


def test_a_missing_state_is_refused() -> None:
    w = World()
    params = w.approve()
    del params["state"]
    assert failure(w, params).reason == "missing"
    assert w.nothing_stored()


def test_a_denied_consent_shows_a_clear_page_and_stores_nothing() -> None:
    w = World()
    params = w.approve()
    err = failure(w, {"error": "access_denied", "state": params["state"]})
    assert (err.status, err.reason) == (200, "denied")
    assert "cancelled" in err.title.lower()
    assert w.nothing_stored() and w.oauth.exchanged == []


@pytest.mark.parametrize(
    ("exc", "status", "reason"),
    [
        (ProviderError("clover token endpoint answered 500", status=500), 502, "provider"),
        (ProviderError("clover token endpoint timed out"), 502, "provider"),
        (ExchangeRefused("clover refused the authorization code (401: bad code)"), 400, "refused"),
    ],
)
def test_a_failed_exchange_stores_nothing(exc: Exception, status: int, reason: str) -> None:
    w = World()
    w.oauth.exchange_raises = exc
    err = failure(w, w.approve())
    assert (err.status, err.reason) == (status, reason)
    assert w.nothing_stored()
    assert "bad code" not in err.message


def test_a_merchant_id_outside_the_pattern_stores_nothing() -> None:
    w = World()
    w.oauth.merchant_id = "../../etc/passwd"
    err = failure(w, w.approve())
    assert (err.status, err.reason) == (400, "merchant")
    assert w.nothing_stored()


def test_success_location_appends_provider_and_merchant() -> None:
    done = Connected("poynt", "0b9f1c2e-1111-4222-8333-444455556666", None, 0)
    assert success_location(unit_settings(), done) is None
    with_query = unit_settings(POSYNC_SUCCESS_REDIRECT_URL="https://shop.example/done?x=1")
    assert success_location(with_query, done) == (
        "https://shop.example/done?x=1&provider=poynt&merchant_id=0b9f1c2e-1111-4222-8333-444455556666"
    )
