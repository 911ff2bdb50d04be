"""Connect and callback services with in-memory fakes: what is stored, queued and shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest

from posync.authorization import (
    STORE_RESERVE_S,
    CallbackFailed,
    CallbackService,
    Connected,
    ConnectService,
    signed_connect_link,
    success_location,
)
from posync.domain import Connection
from posync.errors import InvalidInput, ProviderError, UnknownProvider
from posync.oauth_state import BINDING_COOKIE, InvalidLink, LinkSigner, StateSigner, cookie_value
from posync.providers import CallbackParams, ExchangeRefused, Grant, OAuthProvider, time_left
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
    takes_s: float = 0.0  # how long the exchange takes (advances ``monotonic``)
    monotonic: FakeClock | None = None
    time_left_seen: list[float | None] = field(default_factory=list)

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
        self.time_left_seen.append(time_left())
        if self.monotonic is not None:
            self.monotonic.sleep(self.takes_s)
        if self.exchange_raises is not None:
            raise self.exchange_raises
        tokens = TokenSet("acc", 1_800_001_800, "ref", 1_831_536_000, 1_800_000_000)
        return Grant(self.merchant_id, tokens, business_name="Corner Bakery")

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
        self.links = LinkSigner(lambda: b"s" * 32, clock=self.clock)
        self.monotonic = FakeClock(1000.0)
        self.oauth = FakeOAuth(monotonic=self.monotonic)
        providers: dict[str, OAuthProvider] = {"clover": self.oauth}
        self.nonces = MemoryNonces()
        self.tokens = FakeTokenStore()
        self.connections = FakeConnections()
        self.queued: list[tuple[SyncRequest, str]] = []
        self.connect = ConnectService(self.settings, self.signer, providers, self.links)
        self.callback = CallbackService(
            self.settings,
            signer=self.signer,
            nonces=self.nonces,
            providers=providers,
            tokens=self.tokens,
            connections=self.connections,
            enqueue=lambda req, dedup: self.queued.append((req, dedup)),
            clock=self.clock,
            monotonic=self.monotonic,
        )
        self.cookie: str | None = None  # the merchant's browser's binding cookie

    def state_from(self, url: str) -> str:
        return parse_qs(urlsplit(url).query)["state"][0]

    def link_query(self, ref: str, days: int = 7) -> dict[str, str]:
        """The query of the operator's signed connect link for ``ref``."""
        exp = int(self.clock()) + days * 86400
        link = signed_connect_link(self.settings, self.links, "clover", ref, exp)
        return {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}

    def start(self, query: dict[str, str] | None = None) -> str:
        """The merchant's browser opens /connect: keeps the cookie, returns the consent URL."""
        consent = self.connect.begin("clover", query or {}, self.cookie)
        self.cookie = cookie_value([consent.set_cookie.split(";")[0]])
        return consent.url

    def approve(self, ref: str | None = None) -> dict[str, str]:
        state = self.state_from(self.start(self.link_query(ref) if ref else None))
        return {"merchant_id": MERCHANT, "client_id": "X", "code": "c0de", "state": state}

    def complete(self, params: dict[str, str], remaining_s: float = 29.0) -> Connected:
        return self.callback.complete("clover", params, cookie=self.cookie, remaining_s=remaining_s)

    def nothing_stored(self) -> bool:
        return not self.tokens.secrets and not self.connections.conns and not self.queued


def test_connect_redirects_with_a_state_carrying_the_signed_ref_and_merchant_hint() -> None:
    w = World()
    url = w.start({**w.link_query("shop-7"), "merchant_id": MERCHANT})
    payload = w.signer.verify("clover", w.state_from(url))
    assert (payload.ref, payload.merchant_hint) == ("shop-7", MERCHANT)
    assert f"merchant_id={MERCHANT}" in url
    assert "redirect_uri=https://api.example.test/oauth/clover/callback" in url


def test_connect_sets_a_binding_cookie_and_reuses_a_valid_one() -> None:
    # Given a browser opening the connect link
    w = World()
    consent = w.connect.begin("clover", {}, None)
    # Then it gets an HttpOnly, SameSite=Lax, Secure (https stage) cookie for the callback path
    assert consent.set_cookie.startswith(f"{BINDING_COOKIE}=")
    assert "Path=/oauth/clover/callback" in consent.set_cookie
    assert all(a in consent.set_cookie for a in ("HttpOnly", "SameSite=Lax", "Secure"))
    # And a second tab in the same browser keeps the cookie (both flows can finish)
    value = cookie_value([consent.set_cookie.split(";")[0]])
    again = w.connect.begin("clover", {}, value)
    assert again.set_cookie.split(";")[0] == consent.set_cookie.split(";")[0]
    # But a cookie value this code could not have made is replaced
    assert w.connect.begin("clover", {}, "x;y").set_cookie.split(";")[0] != f"{BINDING_COOKIE}=x;y"


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"ref": "shop-7"}, "unsigned"),
        ({"ref": "shop-7", "exp": "1800604800", "sig": "AAAAAAAA." + "A" * 43}, "forged"),
        ({"ref": "shop-7", "exp": "99", "sig": "bad"}, "forged"),
    ],
)
def test_an_unsigned_or_forged_ref_starts_nothing(query: dict[str, str], reason: str) -> None:
    w = World()
    with pytest.raises(InvalidLink) as info:
        w.connect.begin("clover", query, None)
    assert info.value.reason == reason


def test_an_expired_connect_link_starts_nothing() -> None:
    w = World()
    query = w.link_query("shop-7", days=1)
    w.clock.sleep(86400)
    with pytest.raises(InvalidLink) as info:
        w.connect.begin("clover", query, None)
    assert info.value.reason == "expired"


def test_a_callback_in_another_browser_stores_nothing() -> None:
    # Given an attacker who walked the flow with their own merchant and stopped at the redirect back
    attacker = World()
    params = attacker.approve()
    # When a victim's browser (no cookie, or its own cookie) opens that callback URL
    for victim_cookie in (None, "v" * 43):
        attacker.cookie = victim_cookie
        err = failure(attacker, params)
        # Then nothing is connected, exchanged or consumed, and the page says why
        assert (err.status, err.reason) == (400, "browser")
        assert "browser you started in" in err.title
        assert attacker.nothing_stored() and attacker.oauth.exchanged == []
        assert attacker.nonces.used == set()


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
    w = World()
    query = {**(w.link_query(ref) if ref and " " not in ref else {"ref": ref} if ref else {})}
    if merchant:
        query["merchant_id"] = merchant
    with pytest.raises(error):
        w.connect.begin(provider, query, None)


def test_an_approved_callback_stores_tokens_saves_the_connection_and_queues_the_backfill() -> None:
    # Given a merchant who approved at Clover
    w = World()
    params = w.approve(ref="shop-7")
    # When the callback runs
    connected = w.complete(params)
    # Then the tokens are stored for the merchant (whose business name the page shows)
    assert connected == Connected("clover", MERCHANT, "shop-7", 1_800_001_800, "Corner Bakery")
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
    w.complete(w.approve())
    assert w.connections.conns[f"clover#{MERCHANT}"].cursor == {"modified_ms": 5}


def test_an_unsigned_reconnect_keeps_the_stored_ref() -> None:
    w = World()
    w.connections.add(Connection("clover", MERCHANT, ref="shop-7"))
    assert w.complete(w.approve()).ref == "shop-7"


def failure(w: World, params: dict[str, str]) -> CallbackFailed:
    with pytest.raises(CallbackFailed) as info:
        w.complete(params)
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
    signed = w.link_query("shop-9")
    w.clock.sleep(601)
    err = failure(w, params)
    assert (err.status, err.reason) == (400, "expired")
    # And the fresh link is the signed one the flow started from (an unsigned ref would be refused)
    assert err.retry_url is not None
    retry = {k: v[0] for k, v in parse_qs(urlsplit(err.retry_url).query).items()}
    assert retry == signed
    assert w.links.verify("clover", retry["ref"], retry["exp"], retry["sig"])
    assert w.nothing_stored() and w.oauth.exchanged == []


def test_a_replayed_state_stores_nothing_the_second_time() -> None:
    w = World()
    params = w.approve()
    w.complete(params)
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


def test_the_provider_calls_share_a_deadline_from_the_remaining_time() -> None:
    # Given a callback invocation with 20 s left
    w = World()
    w.complete(w.approve(), remaining_s=20.0)
    # Then the provider calls saw the remaining time less the reserve kept for the writes
    assert w.oauth.time_left_seen == [pytest.approx(20.0 - STORE_RESERVE_S)]
    # And a Lambda with more than API Gateway's 30 s still keeps within them
    w2 = World()
    w2.complete(w2.approve(), remaining_s=900.0)
    assert w2.oauth.time_left_seen == [pytest.approx(29.0 - STORE_RESERVE_S)]


def test_a_provider_answer_after_the_deadline_stores_nothing() -> None:
    # Given an exchange that answers only after the shared deadline
    w = World()
    w.oauth.takes_s = 15.0
    err = failure_with_time(w, w.approve(), remaining_s=20.0)
    # Then nothing is half-stored: no secret, no connection, no queued sync
    assert (err.status, err.reason) == (502, "provider")
    assert w.nothing_stored()


def failure_with_time(w: World, params: dict[str, str], remaining_s: float) -> CallbackFailed:
    with pytest.raises(CallbackFailed) as info:
        w.complete(params, remaining_s=remaining_s)
    return info.value


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
