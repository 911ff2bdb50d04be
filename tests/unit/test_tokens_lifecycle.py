"""TokenService under the races of issue 18 (token lifecycle, items 1, 2 and 4), in-memory fakes.

- a lease whose holder is slow: heartbeat, fenced save, a refusal that waits for the slow holder;
- a refresh token spent but never saved: Clover's recovery before any flag;
- a stale worker: its status and token writes are conditional on the grant it read.
"""

from __future__ import annotations

import pytest

from posync.domain import Connection, ConnectionStatus
from posync.errors import AuthorizationRevoked, ProviderError, RateLimited
from posync.observability import metrics
from posync.tokens import (
    RECOVERY_WINDOW_S,
    AppAuthFailed,
    AppCircuitOpen,
    MemoryAppBreaker,
    RefreshRefused,
    TokenSet,
    refresh_lease_name,
)
from tests.unit.test_tokens_service import MERCHANT, World

KEY = ("clover", MERCHANT)


@pytest.fixture(autouse=True)
def _clear_metrics() -> None:
    metrics.clear_metrics()


def refused() -> RefreshRefused:
    return RefreshRefused("clover refused the refresh token (401: Invalid refresh token)")


# -- item 1: the lease can expire while its holder works ------------------------------------------


def test_a_refusal_waits_for_the_previous_holders_save_before_flagging() -> None:
    # Given a caller whose refresh is refused because a slower holder (whose lease expired) already
    # spent the refresh token and is about to save the new pair
    w = World(expires_in=10)
    w.leases.items[refresh_lease_name(w.conn.connection_id)] = ("slow-holder", int(w.clock()) - 1)  # expired
    w.refresher.raises = [refused()]
    w.refresher.recover_refuses = {"refresh-0"}
    svc = w.service()
    real_sleep = w.fake_clock.sleep
    slept: list[float] = []

    def slow_holder_saves(seconds: float) -> None:
        real_sleep(seconds)
        slept.append(seconds)
        if len(slept) == 2:  # the slow holder's PutSecretValue lands while we wait
            now = int(w.clock())
            w.store.secrets[KEY] = TokenSet("access-slow", now + 1800, "refresh-slow", None, now)

    svc._sleep = slow_holder_saves
    # When a token is asked for
    token = svc.access_token(w.conn)
    # Then the caller re-read the secret, found the slow holder's pair and used it: nobody is flagged
    assert token == "access-slow"
    assert w.conn.status is ConnectionStatus.ACTIVE
    assert w.events.events == []
    # And it waited only briefly
    assert sum(slept) < 10


def test_a_refusal_after_a_released_lease_is_not_waited_on() -> None:
    # Given a refused refresh, the lease having been free (nobody was mid-refresh)
    w = World(expires_in=10)
    w.refresher.raises = [refused()]
    w.refresher.recover_refuses = {"refresh-0"}
    start = w.clock()
    # When a token is asked for
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then the refusal was believed (after recovery) without waiting
    assert w.clock() - start < 1


def test_a_holder_that_lost_its_lease_does_not_overwrite_the_newer_pair() -> None:
    # Given a holder that stalls inside the provider call past the lease, while another worker takes
    # the lease over, refreshes and saves a newer pair (a provider where the old token still works)
    w = World(expires_in=10)
    name = refresh_lease_name(w.conn.connection_id)

    def stall_while_another_takes_over(_t: TokenSet) -> None:
        w.fake_clock.sleep(120)
        now = int(w.clock())
        w.leases.items[name] = ("other-worker", now + 30)
        w.store.secrets[KEY] = TokenSet("access-other", now + 1800, "refresh-other", None, now)

    w.refresher.on_call = stall_while_another_takes_over
    # When the stalled holder's provider call returns
    token = w.service().access_token(w.conn)
    # Then it did not save over the newer pair (its save presents the lease it no longer holds)
    assert w.store.secrets[KEY].access_token == "access-other"
    assert token == "access-other"
    # And it did not release the other worker's lease
    assert w.leases.items[name][0] == "other-worker"


def test_the_holder_extends_its_lease_before_the_provider_call() -> None:
    # Given a slow Secrets Manager read (15 s) and a slow provider (20 s): 35 s under a 30 s lease
    w = World(expires_in=10)
    name = refresh_lease_name(w.conn.connection_id)
    real_read = w.store.read

    def slow_read(provider: str, merchant_id: str) -> TokenSet:
        w.fake_clock.sleep(15)
        return real_read(provider, merchant_id)

    w.store.read = slow_read  # type: ignore[method-assign]
    taken_over: list[bool] = []

    def slow_provider(_t: TokenSet) -> None:
        w.fake_clock.sleep(20)
        taken_over.append(w.leases.acquire(name, "second-worker", 30))

    w.refresher.on_call = slow_provider
    # When the holder refreshes
    token = w.service().access_token(w.conn)
    # Then a second worker could not take the lease while the holder was still working
    assert taken_over == [False]
    assert token == "access-1"
    assert w.refresher.calls == 1


# -- item 2: a refresh token consumed by Clover but never saved ---------------------------------


def test_a_spent_refresh_token_is_recovered_before_anything_is_flagged() -> None:
    # Given a stored refresh token Clover already consumed (its reply was lost), inside two weeks
    w = World(expires_in=10)
    w.refresher.raises = [refused()]
    # When a token is asked for
    token = w.service().access_token(w.conn)
    # Then posync recovered with the spent token (Clover's /oauth/v2/recovery) and saved the new pair
    assert w.refresher.recovered_with == ["refresh-0"]
    assert token == "access-recovered-1"
    saved = w.store.secrets[KEY]
    assert (saved.access_token, saved.refresh_token) == ("access-recovered-1", "refresh-recovered-1")
    assert w.conn.status is ConnectionStatus.ACTIVE
    assert w.events.events == []
    assert metrics.metric_set["TokensRecovered"]["Value"] == [1.0]


def test_the_previous_refresh_token_is_kept_and_tried_when_the_current_one_is_refused() -> None:
    # Given a pair whose refresh token was itself issued by a refresh (its predecessor is kept)
    w = World(expires_in=10)
    now = int(w.clock())
    w.store.secrets[KEY] = TokenSet(
        "access-0",
        now + 10,
        "refresh-0",
        now + 86400,
        now,
        previous_refresh_token="refresh-prev",
        previous_refresh_until=now + RECOVERY_WINDOW_S,
    )
    w.refresher.raises = [refused()]
    w.refresher.recover_refuses = {"refresh-0"}
    # When a token is asked for
    token = w.service().access_token(w.conn)
    # Then the spent token and then its kept predecessor were offered for recovery
    assert w.refresher.recovered_with == ["refresh-0", "refresh-prev"]
    assert token == "access-recovered-2"
    assert w.conn.status is ConnectionStatus.ACTIVE


def test_a_refresh_keeps_the_token_it_spent_as_the_next_recovery_token() -> None:
    w = World(expires_in=10)
    assert w.service().access_token(w.conn) == "access-1"
    saved = w.store.secrets[KEY]
    assert saved.previous_refresh_token == "refresh-0"
    assert saved.previous_refresh_until == int(w.clock()) + RECOVERY_WINDOW_S
    assert "refresh-0" not in repr(saved)


def test_a_refusal_that_recovery_cannot_mend_still_flags_the_connection() -> None:
    # Given a revoked grant: refresh and recovery both refused
    w = World(expires_in=10)
    w.refresher.raises = [refused()]
    w.refresher.recover_refuses = {"refresh-0"}
    # When a token is asked for
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then the connection needs the merchant
    assert w.conn.status is ConnectionStatus.NEEDS_REAUTH
    assert w.refresher.recovered_with == ["refresh-0"]


def test_the_previous_token_is_not_offered_after_its_two_week_window() -> None:
    # Given a kept previous refresh token whose two-week recovery window has closed
    w = World(expires_in=10)
    now = int(w.clock())
    w.store.secrets[KEY] = TokenSet(
        "access-0",
        now + 10,
        "refresh-0",
        now + 86400,
        now - RECOVERY_WINDOW_S - 1,
        previous_refresh_token="refresh-prev",
        previous_refresh_until=now - 1,
    )
    w.refresher.raises = [refused()]
    w.refresher.recover_refuses = {"refresh-0"}
    # When a token is asked for
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then only the spent token was offered: Clover no longer recovers with the old one
    assert w.refresher.recovered_with == ["refresh-0"]
    assert w.conn.status is ConnectionStatus.NEEDS_REAUTH


# -- item 4: status and token writes are conditional on the grant read --------------------------


def reconnect(w: World) -> None:
    """The merchant reconnects: the callback stores a new grant and marks the connection active."""
    now = int(w.clock())
    w.store.secrets[KEY] = TokenSet("access-new-grant", now + 1800, "refresh-new-grant", None, now)
    w.conn.status = ConnectionStatus.ACTIVE
    w.conn.connected_at = "2027-01-15T08:00:00.000Z"


def test_a_stale_workers_refusal_does_not_undo_a_reconnect() -> None:
    # Given a worker refreshing the old grant while the merchant reconnects
    w = World(expires_in=10)
    w.conn.connected_at = "2027-01-15T07:00:00.000Z"
    w.refresher.recover_refuses = {"refresh-0"}

    def reconnect_then_refuse(_t: TokenSet) -> None:
        reconnect(w)
        raise refused()

    w.refresher.on_call = reconnect_then_refuse
    # When the old grant's refresh is refused
    token = w.service().access_token(w.conn)
    # Then the connection stays active, nobody is told to reconnect, and the new grant serves
    assert w.conn.status is ConnectionStatus.ACTIVE
    assert w.events.events == []
    assert token == "access-new-grant"


def test_a_refusal_does_not_turn_an_operators_revoked_into_needs_reauth() -> None:
    # Given an operator who disconnects the merchant while a worker's refresh is in flight
    w = World(expires_in=10)
    w.refresher.recover_refuses = {"refresh-0"}

    def operator_revokes_then_refuse(_t: TokenSet) -> None:
        w.conn.status = ConnectionStatus.REVOKED
        raise refused()

    w.refresher.on_call = operator_revokes_then_refuse
    # When the refresh is refused
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    # Then the operator's revoked stands and no reauth event is sent
    assert w.conn.status is ConnectionStatus.REVOKED
    assert w.events.events == []


def test_a_stale_workers_refreshed_pair_does_not_overwrite_a_reconnects_tokens() -> None:
    # Given a worker refreshing the old grant while the merchant reconnects
    w = World(expires_in=10)
    w.conn.connected_at = "2027-01-15T07:00:00.000Z"
    w.refresher.on_call = lambda _t: reconnect(w)
    # When the old grant's refresh succeeds
    token = w.service().access_token(w.conn)
    # Then the new grant's tokens stay, and are the ones served
    assert w.store.secrets[KEY].access_token == "access-new-grant"
    assert token == "access-new-grant"


# -- item 3: app-level failures are not any merchant's refusal ----------------------------------

OTHER = "ZYXWVUTSRQ987"


def two_merchants(w: World) -> Connection:
    """A second connection of the same app, expiring too."""
    other = w.connections.add(Connection("clover", OTHER))
    now = int(w.clock())
    w.store.secrets[("clover", OTHER)] = TokenSet("o-access-0", now + 10, "o-refresh-0", now + 86400, now)
    return other


def test_an_app_level_failure_opens_the_breaker_once_and_flags_no_merchant() -> None:
    # Given the app's client id is wrong: the provider refuses the app, not the grant
    w = World(expires_in=10)
    other = two_merchants(w)
    w.refresher.raises = [AppAuthFailed("credentials", "clover does not know this client_id")]
    breaker = MemoryAppBreaker(w.clock, cooldown_s=300)
    svc = w.service(breaker=breaker)
    # When two merchants' tokens are due (still valid for a few seconds)
    tokens = [svc.access_token(w.conn), svc.access_token(other)]
    # Then both keep their current tokens, nobody is flagged, and the provider was asked once
    assert tokens == ["access-0", "o-access-0"]
    assert {c.status for c in w.connections.conns.values()} == {ConnectionStatus.ACTIVE}
    assert w.refresher.calls == 1
    # And one app-level event went out, and the failure was counted (the alarm's metric)
    assert [t for t, _ in w.events.events] == ["AppAuthFailed"]
    detail = w.events.events[0][1]
    assert (detail["provider"], detail["kind"]) == ("clover", "credentials")
    assert metrics.metric_set["AppAuthFailures"]["Value"] == [1.0]
    # When the tokens expire while the breaker is open: the sync pauses, still nobody is flagged
    w.fake_clock.sleep(60)
    with pytest.raises(AppCircuitOpen):
        svc.access_token(other)
    assert w.refresher.calls == 1
    assert {c.status for c in w.connections.conns.values()} == {ConnectionStatus.ACTIVE}
    # When the cool-down has passed and the credentials are fixed, one probe closes the breaker
    w.fake_clock.sleep(300)
    assert svc.access_token(other) == "access-2"
    assert svc.access_token(w.conn) == "access-3"
    assert len(w.events.events) == 1


def test_a_storm_of_token_endpoint_errors_opens_the_breaker_without_flagging() -> None:
    # Given a token endpoint answering 503 to every refresh, for five merchants
    w = World(expires_in=10)
    conns = [w.conn]
    for i in range(4):
        mid = f"STORM{i:08d}"
        conns.append(w.connections.add(Connection("clover", mid)))
        now = int(w.clock())
        w.store.secrets[("clover", mid)] = TokenSet(f"a{i}", now + 10, f"r{i}", now + 86400, now)
    w.refresher.raises = [ProviderError("clover refresh endpoint answered 503", status=503) for _ in range(5)]
    svc = w.service(breaker=MemoryAppBreaker(w.clock, storm_threshold=5))
    # When each merchant's refresh fails
    for c in conns:
        svc.access_token(c)
    # Then the fifth opened the breaker: one event, no merchant flagged, no sixth call
    assert [t for t, _ in w.events.events] == ["AppAuthFailed"]
    assert w.events.events[0][1]["kind"] == "outage"
    assert {c.status for c in conns} == {ConnectionStatus.ACTIVE}
    w.fake_clock.sleep(60)
    with pytest.raises(AppCircuitOpen):
        svc.access_token(w.conn)
    assert w.refresher.calls == 5


def test_an_app_level_refusal_of_the_recovery_call_flags_nobody() -> None:
    # Given a refused refresh whose recovery is refused for the app's client secret
    w = World(expires_in=10)
    w.refresher.raises = [refused()]
    w.refresher.recover_raises = [AppAuthFailed("credentials", "clover refused the client secret")]
    svc = w.service()
    # When a token is asked for
    assert svc.access_token(w.conn) == "access-0"
    # Then the connection is not flagged; the app is
    assert w.conn.status is ConnectionStatus.ACTIVE
    assert [t for t, _ in w.events.events] == ["AppAuthFailed"]


def test_a_half_open_probe_answered_with_a_merchant_refusal_closes_the_breaker() -> None:
    # Given an open breaker whose cool-down has passed
    w = World(expires_in=10)
    other = two_merchants(w)
    breaker = MemoryAppBreaker(w.clock, cooldown_s=300)
    breaker.app_failed("clover", "credentials", "clover refused the app's client id")
    w.fake_clock.sleep(301)
    # When the probe's refresh is refused for that merchant's grant (the app itself was accepted)
    w.refresher.raises = [refused()]
    w.refresher.recover_refuses = {"refresh-0"}
    svc = w.service(breaker=breaker)
    with pytest.raises(AuthorizationRevoked):
        svc.access_token(w.conn)
    # Then the breaker is closed: the other merchant refreshes at once
    assert svc.access_token(other) == "access-2"


def test_rate_limited_refreshes_do_not_count_as_an_outage() -> None:
    # Given a token endpoint answering 429 (with its own Retry-After) five times in a row
    w = World(expires_in=10)
    w.refresher.raises = [RateLimited("clover refresh endpoint answered 429", status=429) for _ in range(5)]
    breaker = MemoryAppBreaker(w.clock, storm_threshold=2)
    # When five workers' refreshes fail (each still-valid token serves)
    for _ in range(5):
        assert w.service(breaker=breaker).access_token(w.conn) == "access-0"
    # Then the provider was asked five times, the breaker stayed closed, nothing app-level was raised
    assert w.refresher.calls == 5
    assert breaker.admit("clover")
    assert w.events.events == []
