"""TokenService: cached reads, single-flight refresh, refusals and 401 handling (in-memory fakes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from botocore.exceptions import EndpointConnectionError

from posync.domain import Connection, ConnectionStatus
from posync.errors import AuthorizationRevoked, ProviderError
from posync.observability import metrics
from posync.ports import AccessTokens
from posync.tokens import (
    AppBreaker,
    RefreshNotDue,
    RefreshRefused,
    TokenService,
    TokenSet,
    refresh_lease_name,
)
from tests.unit.oauth_fakes import (
    EventLog,
    FakeClock,
    FakeConnections,
    FakeLeases,
    FakeTokenStore,
    ScriptedRefresher,
    client_error,
    unit_settings,
)

MERCHANT = "ABCDEFGHJK123"


class World:
    """One connection, its stored tokens and every fake the service talks to."""

    def __init__(self, clock: Callable[[], float] | None = None, expires_in: int = 3600) -> None:
        self.fake_clock = FakeClock()
        self.clock: Callable[[], float] = clock or self.fake_clock
        self.settings = unit_settings(POSYNC_REFRESH_LEEWAY_SECONDS="300")
        self.store = FakeTokenStore()
        self.leases = FakeLeases(self.clock)
        self.connections = FakeConnections()
        self.refresher = ScriptedRefresher(self.clock)
        self.events = EventLog()
        self.conn = self.connections.add(Connection("clover", MERCHANT))
        now = int(self.clock())
        self.original = TokenSet("access-0", now + expires_in, "refresh-0", now + 86400, now)
        self.store.secrets[("clover", MERCHANT)] = self.original

    def service(self, *, real_time: bool = False, breaker: AppBreaker | None = None) -> TokenService:
        return TokenService(
            self.settings,
            refreshers={"clover": self.refresher},
            store=self.store,
            leases=self.leases,
            connections=self.connections,
            events=self.events,
            breaker=breaker,
            clock=time.time if real_time else self.clock,
            sleep=time.sleep if real_time else self.fake_clock.sleep,
        )


@pytest.fixture(autouse=True)
def _clear_metrics() -> None:
    metrics.clear_metrics()


def test_the_service_is_the_sync_engines_access_tokens_port() -> None:
    # (checked by mypy: TokenService satisfies posync.ports.AccessTokens)
    port: AccessTokens = World().service()
    assert callable(port.access_token) and callable(port.after_unauthorized)


def test_a_valid_token_is_read_once_and_then_served_from_the_cache() -> None:
    # Given a connection whose token is valid for an hour
    w = World()
    svc = w.service()
    # When the sync engine asks for a token on every page
    tokens = [svc.access_token(w.conn) for _ in range(25)]
    # Then it gets the stored token, with one Secrets Manager read and no refresh
    assert set(tokens) == {"access-0"}
    assert w.store.reads == 1
    assert w.refresher.calls == 0


def test_a_token_inside_the_leeway_is_refreshed_and_saved_before_it_is_returned() -> None:
    # Given a token that expires in 2 minutes (leeway 5 minutes)
    w = World(expires_in=120)
    svc = w.service()
    seen_in_store_during_refresh: list[str] = []
    w.refresher.on_call = lambda t: seen_in_store_during_refresh.append(
        w.store.secrets[("clover", MERCHANT)].access_token
    )
    # When a token is asked for
    token = svc.access_token(w.conn)
    # Then the provider was called once with the stored pair, and the new pair was saved before use
    assert token == "access-1"
    assert seen_in_store_during_refresh == ["access-0"]
    assert [t.access_token for t in w.store.saves] == ["access-1"]
    assert w.store.secrets[("clover", MERCHANT)].refresh_token == "refresh-1"
    # And the expiry is mirrored on the record, and the lease is released
    assert w.connections.expiries[w.conn.connection_id] == (
        w.store.saves[0].access_expires_at,
        w.store.saves[0].refresh_expires_at,
    )
    assert w.leases.items == {}
    # And the next call needs neither a read nor a refresh
    assert svc.access_token(w.conn) == "access-1"
    assert (w.store.reads, w.refresher.calls) == (2, 1)  # first read + re-read under the lease


def test_a_refresh_reply_without_a_refresh_token_keeps_the_old_one() -> None:
    # Given a provider that answers a refresh with an access token only
    w = World(expires_in=10)
    w.refresher.omit_refresh_token = True
    # When the token is refreshed
    assert w.service().access_token(w.conn) == "access-1"
    # Then the stored pair keeps the previous refresh token and its expiry
    saved = w.store.secrets[("clover", MERCHANT)]
    assert saved.refresh_token == "refresh-0"
    assert saved.refresh_expires_at == w.original.refresh_expires_at


def test_twenty_threads_with_their_own_services_refresh_exactly_once() -> None:
    # Given 20 workers (each its own TokenService) on one expiring connection, real time
    w = World(clock=time.time, expires_in=30)
    w.refresher.on_call = lambda _t: time.sleep(0.05)  # the provider takes a moment
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def call() -> None:
        svc = w.service(real_time=True)
        barrier.wait()
        try:
            results.append(svc.access_token(w.conn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    # When they all ask for a token at once
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Then the provider saw one refresh and everyone got the new token
    assert errors == []
    assert w.refresher.calls == 1
    assert results == ["access-1"] * 20


def test_threads_sharing_one_service_refresh_once() -> None:
    # Given one service shared by the threads of one worker
    w = World(clock=time.time, expires_in=30)
    svc = w.service(real_time=True)
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(svc.access_token(w.conn))) for _ in range(10)]
    # When they race
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Then one refresh, one lease, one new token for all
    assert w.refresher.calls == 1
    assert w.leases.acquired == 1
    assert out == ["access-1"] * 10


def test_a_waiter_takes_over_a_lease_whose_holder_died() -> None:
    # Given a lease held by a caller that crashed 1 s ago (lease TTL 30 s)
    w = World(expires_in=100)
    name = refresh_lease_name(w.conn.connection_id)
    w.leases.items[name] = ("dead-owner", int(w.clock()) + 29)
    start = w.clock()
    # When a caller needs a refresh
    token = w.service().access_token(w.conn)
    # Then it waited for the lease to expire, then refreshed itself
    assert token == "access-1"
    assert w.clock() - start >= 29
    assert w.refresher.calls == 1


def test_a_waiter_returns_the_token_another_lambda_saved() -> None:
    # Given a lease held by another Lambda which saves a new pair while we wait
    w = World(expires_in=100)
    name = refresh_lease_name(w.conn.connection_id)
    w.leases.items[name] = ("other", int(w.clock()) + 30)
    svc = w.service()
    real_sleep = w.fake_clock.sleep

    def sleep_then_other_saves(seconds: float) -> None:
        real_sleep(seconds)
        now = int(w.clock())
        w.store.secrets[("clover", MERCHANT)] = TokenSet("from-other", now + 1800, "r-other", None, now)

    svc._sleep = sleep_then_other_saves
    # When we ask for a token
    token = svc.access_token(w.conn)
    # Then we got theirs without calling the provider
    assert token == "from-other"
    assert w.refresher.calls == 0


def test_a_refused_refresh_marks_needs_reauth_emits_an_event_and_raises() -> None:
    # Given a provider that refuses the refresh token
    w = World(expires_in=10)
    w.refresher.raises = [RefreshRefused("clover refused the refresh token (401: Invalid refresh token)")]
    w.refresher.recover_refuses = {"refresh-0"}  # revoked: recovery is refused too
    svc = w.service()
    # When the sync asks for a token
    with pytest.raises(AuthorizationRevoked):
        svc.access_token(w.conn)
    # Then the connection needs reauthorization, with the reason
    assert w.conn.status is ConnectionStatus.NEEDS_REAUTH
    assert "Invalid refresh token" in (w.connections.reasons[w.conn.connection_id] or "")
    # And the event went out, without any token in it
    [(detail_type, detail)] = w.events.events
    assert detail_type == "ConnectionNeedsReauth"
    assert detail["connection_id"] == w.conn.connection_id
    assert "refresh-0" not in str(detail) and "access-0" not in str(detail)
    # And the failure was counted
    assert metrics.metric_set["RefreshFailures"]["Value"] == [1.0]
    # And the next caller (another run) does not hammer the provider again
    other = w.service()
    with pytest.raises(AuthorizationRevoked):
        other.access_token(w.conn)
    assert w.refresher.calls == 1


def test_an_early_refresh_refusal_keeps_the_current_token_until_refresh_is_allowed() -> None:
    # Given Clover refusing refreshes while the access token is valid ("access_token not expired")
    w = World(expires_in=200)
    w.refresher.raises = [RefreshNotDue("clover: access_token not expired")]
    svc = w.service()
    # When a token is asked for twice
    first = svc.access_token(w.conn)
    second = svc.access_token(w.conn)
    # Then the current token serves, and the provider is not asked again right away
    assert (first, second) == ("access-0", "access-0")
    assert w.refresher.calls == 1
    assert w.conn.status is ConnectionStatus.ACTIVE
    # When the token nears its end (inside the last minute)
    w.fake_clock.sleep(150)
    # Then the refresh is tried again and succeeds
    assert svc.access_token(w.conn) == "access-2"


def test_a_provider_outage_keeps_a_still_valid_token_but_fails_an_expired_one() -> None:
    # Given a provider that is down
    w = World(expires_in=100)
    w.refresher.raises = [ProviderError("clover refresh endpoint answered 503", status=503)]
    svc = w.service()
    # When the token is inside the leeway but still valid: it is served
    assert svc.access_token(w.conn) == "access-0"
    assert w.conn.status is ConnectionStatus.ACTIVE
    # When the token has expired and the provider is still down: the error surfaces
    w.fake_clock.sleep(200)
    w.refresher.raises = [ProviderError("clover refresh endpoint answered 503", status=503)]
    with pytest.raises(ProviderError):
        svc.access_token(w.conn)
    assert w.conn.status is ConnectionStatus.ACTIVE


def test_after_unauthorized_returns_a_token_someone_else_already_refreshed() -> None:
    # Given a worker holding access-0 and another Lambda that already replaced it
    w = World()
    svc = w.service()
    assert svc.access_token(w.conn) == "access-0"
    now = int(w.clock())
    w.store.secrets[("clover", MERCHANT)] = TokenSet("access-new", now + 1800, "refresh-new", None, now)
    # When the API answers 401 to access-0
    token = svc.after_unauthorized(w.conn, "access-0")
    # Then the new stored token is returned without a refresh
    assert token == "access-new"
    assert w.refresher.calls == 0


def test_after_unauthorized_refreshes_once_when_nobody_else_did() -> None:
    # Given a valid-looking token the API rejects (e.g. Clover expired it early)
    w = World()
    svc = w.service()
    rejected = svc.access_token(w.conn)
    # When the sync reports the 401
    token = svc.after_unauthorized(w.conn, rejected)
    # Then one forced refresh happened and the new token is cached
    assert token == "access-1"
    assert w.refresher.calls == 1
    assert svc.access_token(w.conn) == "access-1"


def test_missing_tokens_mean_the_merchant_must_reconnect() -> None:
    # Given a connection whose secret is gone
    w = World()
    w.store.secrets.clear()
    # When a token is asked for
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then the connection is flagged with a clear reason
    assert w.conn.status is ConnectionStatus.NEEDS_REAUTH
    assert "reconnect" in (w.connections.reasons[w.conn.connection_id] or "")


def test_a_refreshed_pair_that_cannot_be_saved_is_not_used() -> None:
    # Given Secrets Manager failing every PutSecretValue after the provider accepted the refresh
    w = World(expires_in=10)
    w.store.fail_saves = 10
    # When the token is refreshed
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then the connection is flagged rather than running on a pair that is lost on the next cold start
    assert w.conn.status is ConnectionStatus.NEEDS_REAUTH
    assert "could not be saved" in (w.connections.reasons[w.conn.connection_id] or "")


def test_a_revoked_connection_is_not_refreshed() -> None:
    # Given a connection already revoked (app uninstalled) with an expiring token
    w = World(expires_in=10)
    w.conn.status = ConnectionStatus.REVOKED
    # When the token is asked for
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then the provider was not called
    assert w.refresher.calls == 0


def test_a_lease_that_cannot_be_released_does_not_lose_the_new_token() -> None:
    # Given DynamoDB failing the lease release (the lease then simply expires)
    w = World(expires_in=10)

    def broken_release(name: str, owner: str) -> None:
        raise client_error("InternalServerError", "DeleteItem")

    w.leases.release = broken_release  # type: ignore[method-assign]
    # When the token is refreshed, the caller still gets the saved new token
    assert w.service().access_token(w.conn) == "access-1"
    assert w.store.secrets[("clover", MERCHANT)].access_token == "access-1"


def test_an_event_bus_outage_does_not_hide_the_revocation() -> None:
    # Given EventBridge unreachable and a refused refresh
    w = World(expires_in=10)
    w.refresher.raises = [RefreshRefused("clover refused the refresh token (401: Invalid refresh token)")]
    w.refresher.recover_refuses = {"refresh-0"}  # revoked: recovery is refused too

    def unreachable(detail_type: str, detail: dict[str, object]) -> object:
        raise EndpointConnectionError(endpoint_url="http://events.test")

    svc = TokenService(
        w.settings,
        refreshers={"clover": w.refresher},
        store=w.store,
        leases=w.leases,
        connections=w.connections,
        events=unreachable,
        clock=w.clock,
        sleep=w.fake_clock.sleep,
    )
    # Then the sync still gets AuthorizationRevoked and the status is recorded
    with pytest.raises(AuthorizationRevoked):
        svc.access_token(w.conn)
    assert w.conn.status is ConnectionStatus.NEEDS_REAUTH
