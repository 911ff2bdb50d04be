"""A worker killed mid-run: before and after each of its writes, its memory lost with it.

The kill is a :class:`~tests.chaos.conftest.Kill` (a BaseException no ``except Exception``
stops) raised from a botocore hook: ``before`` a call is sent (that write never happened)
or ``after`` it succeeded (that write is durable, nothing after it happened). The local
event source sees the invocation fail and the message comes back; the next delivery runs
in a cold container (a new handler module: token cache, limiters and writer state gone).
"""

from __future__ import annotations

import pytest

from posync.domain import ConnectionStatus
from tests.chaos.conftest import Chaos, Fault

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

TWI = "TransactWriteItems"  # the checkpoint record
PUT = "PutItem"  # an order's conditional put (in parallel threads: a kill lets the running ones end)

# (kind, provider, fault): where the worker dies.
KILL_POINTS = [
    # 55 of the 70 orders' puts went through, the rest of the page was never stored
    ("killed_mid_page_write", "clover", Fault("", "dynamodb", PUT, target="-orders", skip=55)),
    # every order is stored in DynamoDB, the last page's export part was never written
    ("killed_after_page_write", "poynt", Fault("", "dynamodb", PUT, when="after", target="-orders", skip=69)),
    # an export part is in S3, its checkpoint record is not
    (
        "killed_after_part_upload",
        "clover",
        Fault("", "s3", "PutObject", when="after", target="/exports/orders/"),
    ),
    # the checkpoint record is written (the epoch counts as exported), the cursor does not say so yet
    ("killed_after_checkpoint", "poynt", Fault("", "dynamodb", TWI, when="after", target="-control")),
    # the cursor moved; the run goes on (or continues) after it
    (
        "killed_after_cursor_commit",
        "clover",
        Fault("", "dynamodb", "UpdateItem", when="after", target="-connections", skip=1),
    ),
    # the manifest is in S3; the run header, the event and the settled cursor are not
    (
        "killed_after_manifest",
        "poynt",
        Fault("", "s3", "PutObject", when="after", target="/exports/manifests/"),
    ),
]


@pytest.mark.parametrize(("kind", "provider", "fault"), KILL_POINTS, ids=[k for k, _, _ in KILL_POINTS])
def test_a_worker_killed_mid_run_loses_and_doubles_nothing(
    chaos: Chaos, kind: str, provider: str, fault: Fault
) -> None:
    # Given a connected merchant and a worker that will die at this point of its run
    m = chaos.merchant(provider, orders=70)
    fault.kind = kind
    chaos.faults.add(fault)
    # When the backfill runs (the killed delivery comes back to a cold container)
    report = chaos.drain()
    # Then the worker died once, the message was redelivered, and a new container finished the run
    assert chaos.containers.kills[kind] == 1
    assert chaos.containers.cold_starts >= 2
    assert report.failures >= 1
    assert report.idle and report.dead_lettered == 0
    assert chaos.assert_cursor_covers(provider, m) == 70
    assert "run" not in chaos.connection(provider, m).cursor
    # and after the schedule runs again, every order is there once, at its latest version
    chaos.settle()
    chaos.verify()


def test_a_worker_killed_after_clover_consumed_the_refresh_token_recovers_and_stays_active(
    chaos: Chaos,
) -> None:
    # Given a connection whose access token has expired at Clover, and a worker that dies after
    # Clover granted the refresh (the stored refresh token is spent) but before the new pair
    # reached Secrets Manager
    m = chaos.merchant("clover", orders=40)
    sb = chaos.sandbox("clover")
    sb.expire_access_tokens(m)
    chaos.faults.add(Fault("killed_before_token_save", "secretsmanager", "PutSecretValue"))
    # When the backfill runs
    report = chaos.drain()
    # Then the next container's refresh with the spent token is refused, posync recovers with it
    # (Clover's /oauth/v2/recovery), and the connection never leaves active
    assert chaos.containers.kills["killed_before_token_save"] == 1
    assert report.dead_lettered == 0
    assert sb.stats.snapshot()["recoveries"].get(m) == 1
    assert chaos.connection("clover", m).status is ConnectionStatus.ACTIVE
    assert chaos.assert_cursor_covers("clover", m) == 40
    # And after the schedule runs again, every order is there once, without a reconnect
    chaos.settle()
    chaos.verify()


def test_a_worker_killed_between_a_poynt_refresh_and_saving_it_ends_in_needs_reauth(chaos: Chaos) -> None:
    # Given the same kill on Poynt, which documents no recovery (and a used refresh token that dies)
    m = chaos.merchant("poynt", orders=40)
    chaos.sandbox("poynt").expire_access_tokens(m)
    chaos.faults.add(Fault("killed_before_token_save", "secretsmanager", "PutSecretValue"))
    # When the backfill runs
    report = chaos.drain()
    # Then the next container refreshes with the spent refresh token, is refused, and marks the
    # connection needs_reauth instead of retrying forever; nothing is dead-lettered
    assert chaos.containers.kills["killed_before_token_save"] == 1
    assert report.dead_lettered == 0
    assert chaos.connection("poynt", m).status is ConnectionStatus.NEEDS_REAUTH
    chaos.assert_cursor_covers("poynt", m)
    # When the merchant reconnects and the schedule runs: nothing is lost or doubled
    chaos.connect("poynt", m)
    chaos.settle()
    chaos.verify()


def test_a_worker_killed_between_a_poynt_refresh_and_saving_it_stays_active_where_used_tokens_survive(
    chaos: Chaos,
) -> None:
    # Given the other reading of PNT-TOKEN-01 (a used refresh token keeps working), and the same kill
    m = chaos.merchant("poynt", orders=40)
    sb = chaos.sandbox("poynt")
    sb.knobs.refresh_reuse = "survives"
    try:
        sb.expire_access_tokens(m)
        chaos.faults.add(Fault("killed_before_token_save", "secretsmanager", "PutSecretValue"))
        # When the backfill runs
        report = chaos.drain()
    finally:
        sb.knobs.refresh_reuse = "dies"
    # Then the next container's refresh with the stored token works, and nothing is flagged
    assert chaos.containers.kills["killed_before_token_save"] == 1
    assert report.dead_lettered == 0
    assert chaos.connection("poynt", m).status is ConnectionStatus.ACTIVE
    assert chaos.assert_cursor_covers("poynt", m) == 40
    chaos.settle()
    chaos.verify()
