"""The app's shared limits on moto's DynamoDB: concurrency leases and the rate bucket's hand-back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from posync.ratelimit import BudgetExhausted, Deadline, DynamoAppRate, DynamoAppSlots
from tests.unit.test_ratelimit import FakeClock

TABLE = "posync-dev-control"
SLOTS_KEY = {"pk": {"S": "ratelimit#clover#slots"}}


@pytest.fixture
def ddb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield client


def leased(ddb: Any) -> dict[str, int]:
    item = ddb.get_item(TableName=TABLE, Key=SLOTS_KEY, ConsistentRead=True).get("Item", {})
    return {k: int(v["M"]["n"]["N"]) for k, v in item.get("leases", {}).get("M", {}).items()}


def test_leases_never_exceed_the_app_concurrency_and_a_release_frees_them(ddb: Any) -> None:
    # Given an app with 10 concurrent requests and three workers each wanting 5
    clock = FakeClock()
    workers = [DynamoAppSlots(ddb, TABLE, "clover", 10, clock=clock) for _ in range(3)]
    assert workers[0].lease(5, Deadline.after(300, clock)) == 5
    assert workers[1].lease(5, Deadline.after(300, clock)) == 5
    # Then the third waits and, with only 1 s left, gives up with BudgetExhausted
    with pytest.raises(BudgetExhausted):
        workers[2].lease(5, Deadline.after(1, clock))
    # And once one releases, it gets slots
    workers[0].release()
    assert sum(leased(ddb).values()) == 5
    assert workers[2].lease(5, Deadline.after(300, clock)) >= 1
    assert sum(leased(ddb).values()) <= 10


def test_a_release_bumps_the_version_so_a_racing_write_cannot_bring_the_lease_back(ddb: Any) -> None:
    # Given two holders, and a third worker that read the item before one of them released
    clock = FakeClock()
    a, b = (DynamoAppSlots(ddb, TABLE, "clover", 10, clock=clock) for _ in range(2))
    a.lease(3, Deadline.after(300, clock))
    b.lease(3, Deadline.after(300, clock))
    racer = DynamoAppSlots(ddb, TABLE, "clover", 10, clock=clock)
    version, leases, waiting = racer._read()
    assert len(leases) == 2
    # When b releases, and the racer then writes what it read (plus a lease of its own)
    b.release()
    wrote = racer._write(version, {**leases, "racer": (2, clock.time() + 30)}, waiting)
    # Then the write is refused: b's released slots are not resurrected
    assert wrote is False
    assert sorted(leased(ddb).values()) == [3]


def test_holders_shrink_to_a_fair_share_when_another_run_waits(ddb: Any) -> None:
    # Given two backfills holding all ten slots
    clock = FakeClock()
    a, b, c = (DynamoAppSlots(ddb, TABLE, "clover", 10, clock=clock) for _ in range(3))
    assert a.lease(5, Deadline.after(300, clock)) == 5
    assert b.lease(5, Deadline.after(300, clock)) == 5
    # When a third run waits (it registers as waiting), and the holders renew before requests
    with pytest.raises(BudgetExhausted):
        c.lease(1, Deadline.after(0.3, clock))
    clock.sleep(DynamoAppSlots.RENEW_S)
    assert a.keep(in_flight=0) == 3  # 10 // (2 holders + 1 waiter)
    assert b.keep(in_flight=4) == 3  # four still in flight: its lease shrinks once they finish
    assert leased(ddb) == {a.lease_id: 3, b.lease_id: 4}
    # Then the waiting run gets its share
    assert c.lease(1, Deadline.after(60, clock)) == 1
    assert sum(leased(ddb).values()) <= 10


def test_waiting_backs_off_instead_of_polling_every_quarter_second(ddb: Any) -> None:
    # Given all slots held
    clock = FakeClock()
    holder = DynamoAppSlots(ddb, TABLE, "clover", 2, clock=clock)
    holder.lease(2, Deadline.after(600, clock))
    waiter = DynamoAppSlots(ddb, TABLE, "clover", 2, clock=clock)
    # When a worker waits 20 s for a slot
    with pytest.raises(BudgetExhausted):
        waiter.lease(1, Deadline.after(20, clock))
    # Then it read the item a handful of times (a 0.25 s poll would have read it 80 times)
    assert waiter.calls <= 25
    assert max(clock.sleeps) <= DynamoAppSlots.WAIT_MAX_S


def test_a_crashed_workers_lease_expires_within_the_lease_term(ddb: Any) -> None:
    clock = FakeClock()
    crashed = DynamoAppSlots(ddb, TABLE, "clover", 4, clock=clock)
    crashed.lease(4, Deadline.after(600, clock))  # never renewed, never released
    other = DynamoAppSlots(ddb, TABLE, "clover", 4, clock=clock)
    clock.sleep(DynamoAppSlots.LEASE_S + 1)
    assert other.lease(3, Deadline.after(60, clock)) == 3


def test_a_poll_takes_one_token_and_a_run_hands_back_what_it_did_not_use(ddb: Any) -> None:
    # Given the app's shared bucket (50/s, batches of 5)
    clock = FakeClock()
    app = DynamoAppRate(ddb, TABLE, "clover", 50, batch=5, clock=clock)
    key = {"pk": {"S": "ratelimit#clover#app"}}

    def stored() -> float:
        return float(ddb.get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]["tokens"]["N"])

    # When a caught-up poll makes its one request
    app.acquire(Deadline.after(10, clock))
    # Then it took one token, not five
    assert stored() == 4
    app.settle()
    # When a longer run makes three requests (1, then a batch of 5) and ends
    for _ in range(3):
        app.acquire(Deadline.after(10, clock))
    left = stored()
    app.settle()
    # Then the three tokens it held unused went back to the bucket
    assert stored() == left + 3 and app.returned == 3
