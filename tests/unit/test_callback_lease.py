"""The callback stores a new grant under the connection's refresh lease (issue 18, item 4).

A worker refreshing the old grant holds that lease while it saves; the callback waits for it,
so the two token writes never interleave, and the new pair carries its grant's ``connected_at``.
"""

from __future__ import annotations

from posync.authorization import CallbackService
from posync.tokens import TokenSet, refresh_lease_name
from tests.unit.oauth_fakes import FakeLeases
from tests.unit.test_oauth_callback import MERCHANT, World

NAME = refresh_lease_name(f"clover#{MERCHANT}")


def with_leases(w: World, leases: FakeLeases) -> CallbackService:
    return CallbackService(
        w.settings,
        signer=w.signer,
        nonces=w.nonces,
        providers={"clover": w.oauth},
        tokens=w.tokens,
        connections=w.connections,
        enqueue=lambda req, dedup: w.queued.append((req, dedup)),
        clock=w.clock,
        monotonic=w.monotonic,
        leases=leases,
        sleep=w.clock.sleep,
    )


def test_the_callback_stores_the_new_grant_under_the_refresh_lease() -> None:
    # Given a merchant who approved at Clover
    w = World()
    leases = FakeLeases(w.clock)
    held_while_storing: list[bool] = []
    real_store = w.tokens.store_new

    def store_new(provider: str, merchant_id: str, tokens: TokenSet) -> None:
        held_while_storing.append(NAME in leases.items)
        real_store(provider, merchant_id, tokens)

    w.tokens.store_new = store_new  # type: ignore[method-assign]
    # When the callback runs
    with_leases(w, leases).complete("clover", w.approve(), cookie=w.cookie)
    # Then the secret was written while the callback held the lease, which it then released
    assert held_while_storing == [True]
    assert leases.acquired == 1 and leases.items == {}
    # And the new pair names its grant: the connection's connected_at
    conn = w.connections.conns[f"clover#{MERCHANT}"]
    assert w.tokens.secrets[("clover", MERCHANT)].connected_at == conn.connected_at is not None


def test_the_callback_waits_for_a_refresh_in_flight_before_storing() -> None:
    # Given a worker refreshing the old grant, holding the lease for a moment
    w = World()
    leases = FakeLeases(w.clock)
    leases.items[NAME] = ("refresher", int(w.clock()) + 30)
    order: list[str] = []
    real_sleep = w.clock.sleep
    sleeps = 0

    def sleep(seconds: float) -> None:
        nonlocal sleeps
        real_sleep(seconds)
        sleeps += 1
        if sleeps == 3:
            order.append("refresher saved and released")
            leases.release(NAME, "refresher")

    real_store = w.tokens.store_new

    def store_new(provider: str, merchant_id: str, tokens: TokenSet) -> None:
        order.append("callback stored")
        real_store(provider, merchant_id, tokens)

    w.tokens.store_new = store_new  # type: ignore[method-assign]
    svc = with_leases(w, leases)
    svc._sleep = sleep
    # When the callback runs
    params = w.approve()
    svc.complete("clover", params, cookie=w.cookie)
    # Then it stored the new grant only after the refresh released the lease
    assert order == ["refresher saved and released", "callback stored"]
