"""The sync engine end to end: sandboxes -> worker -> DynamoDB + S3 exports, through the local runtime.

A merchant connects through the real consent flow (our /connect and callback handlers,
the sandbox's consent page on auto-approve), which queues the backfill; ``tick()`` fires
the dispatcher and drains the queue into the real worker handler. The ground truth is the
sandbox's own ``orders(merchant_id)``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from click.testing import CliRunner

from posync.connections import ConnectionRepository
from posync.domain import Connection, connection_id
from posync.exports import read_manifested
from posync.sources import iso_to_ms, ms_to_iso
from posync.store import OrderRepository
from posync.syncqueue import SyncKind, SyncRequest, send_sync
from posync.tokens import SecretsManagerTokenStore
from posync_local.cli_run import sync_command
from posync_local.local_tick import sqs_record
from posync_local.runtime import LocalRuntime

pytestmark = pytest.mark.integration

ENV = {
    "POSYNC_SYNC_STOP_MARGIN_SECONDS": "1",
    "POSYNC_SYNC_PAGE_LIMIT": "100",  # more pages from small merchants
    "POSYNC_BACKFILL_DAYS": "200",
}
_ticks = iter(range(1, 10_000))


@pytest.fixture(scope="module")
def rt(local_runtime: LocalRuntime) -> Iterator[LocalRuntime]:
    if local_runtime.clover is None:
        pytest.skip("the provider sandboxes are not available")
    if local_runtime.external_aws:
        pytest.skip("needs the embedded AWS")
    runtime = local_runtime.derive("syncit", env=ENV)
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()
        local_runtime.apply_env()


def later() -> datetime:
    """A schedule time in a slot of its own (ticks in one slot are deduplicated, as on AWS)."""
    return datetime.now(UTC) + timedelta(hours=next(_ticks))


def sandbox(rt: LocalRuntime, provider: str) -> Any:
    sb = rt.clover if provider == "clover" else rt.poynt
    assert sb is not None
    return sb


def connect(rt: LocalRuntime, provider: str, merchant_id: str) -> None:
    """The browser round trip: /connect -> consent (auto-approved for this merchant) -> callback."""
    sb = sandbox(rt, provider)
    sb.knobs.auto_approve = True
    params = {"merchant_id": merchant_id} if provider == "clover" else {}
    browser = requests.Session()  # keeps posync's binding cookie from /connect to the callback
    r = browser.get(f"{rt.api_url}/connect/{provider}", params=params, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    consent = r.headers["Location"]
    if provider == "poynt":
        consent += f"&business_id={merchant_id}"
    r = browser.get(consent, allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    callback = r.headers["Location"]
    assert callback.startswith(rt.api_url)
    r = browser.get(callback, allow_redirects=False, timeout=10)
    assert r.status_code in (200, 302), r.text
    sb.knobs.auto_approve = False


def sync_now(rt: LocalRuntime, provider: str, merchant_id: str) -> Any:
    """Queue a scheduled sync of one connection only (a tick would sync every connection) and drain."""
    rt.apply_env()
    req = SyncRequest(provider, merchant_id, SyncKind.SCHEDULED, reason="test")
    send_sync(str(rt.settings.sync_queue_url), req, f"{req.connection_id}-{next(_ticks)}")
    return rt.drain()


def modified_at(provider: str, raw: dict[str, Any]) -> str:
    if provider == "clover":
        return ms_to_iso(int(raw["modifiedTime"]))
    return ms_to_iso(iso_to_ms(raw["updatedAt"]))


def truth(rt: LocalRuntime, provider: str, merchant_id: str) -> dict[str, str]:
    """order id -> modified_at of the sandbox's current versions."""
    return {str(o["id"]): modified_at(provider, o) for o in sandbox(rt, provider).orders(merchant_id)}


def stored(rt: LocalRuntime, provider: str, merchant_id: str) -> dict[str, str]:
    rt.apply_env()
    repo = OrderRepository(rt.settings)
    return {o["order_id"]: o["modified_at"] for o in repo.iter_orders(connection_id(provider, merchant_id))}


def exported(rt: LocalRuntime, provider: str, merchant_id: str) -> list[tuple[str, str]]:
    rt.apply_env()
    return [
        (o["order_id"], o["modified_at"])
        for o in read_manifested(rt.settings, provider=provider, merchant_id=merchant_id)
    ]


def conn(rt: LocalRuntime, provider: str, merchant_id: str) -> Connection:
    rt.apply_env()
    return ConnectionRepository(rt.settings).get(provider, merchant_id)


def assert_in_sync(rt: LocalRuntime, provider: str, merchant_id: str) -> dict[str, str]:
    want = truth(rt, provider, merchant_id)
    have = stored(rt, provider, merchant_id)
    assert have == want
    versions = exported(rt, provider, merchant_id)
    # Exports are a change log: every version at most once, the latest of each order present.
    dupes = [v for v, n in Counter(versions).items() if n > 1]
    assert dupes == []
    latest: dict[str, str] = {}
    for oid, m in versions:
        latest[oid] = max(latest.get(oid, ""), m)
    assert latest == want
    return want


# --------------------------------------------------------------------------- the happy paths


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_connected_merchant_is_synced_by_tick_and_changes_follow(rt: LocalRuntime, provider: str) -> None:
    # Given a merchant with 300 orders over 60 days who connects (the callback queues the backfill)
    sb = sandbox(rt, provider)
    merchant = sb.add_merchant(orders=150, days=60)
    connect(rt, provider, merchant)
    # When the schedule fires (dispatcher + worker)
    report = rt.tick(at=later())
    # Then every order is stored once at its latest version and exported exactly once
    assert report.idle and report.failures == 0
    assert len(assert_in_sync(rt, provider, merchant)) == 150
    c = conn(rt, provider, merchant)
    assert "run" not in c.cursor
    assert c.last_run["status"] == "completed"
    assert c.last_run["counts"]["quarantined"] == 0
    # When orders change and new ones arrive, and the schedule fires again
    changed = sb.modify_orders(merchant, 15)
    created = sb.create_orders(merchant, 5)
    report = rt.tick(at=later())
    # Then the changes are there, and the second run exported only the changes (plus the lookback's repeats)
    assert report.failures == 0
    want = assert_in_sync(rt, provider, merchant)
    assert set(changed) | set(created) <= set(want)
    c2 = conn(rt, provider, merchant)
    assert c2.last_run["run_id"] != c.last_run["run_id"]
    assert c2.last_run["counts"]["exported"] == 20
    assert c2.last_run["counts"]["fetched"] < 60


def test_orders_that_move_during_paging_429s_and_5xx_lose_nothing(rt: LocalRuntime) -> None:
    # Given a provider that modifies orders while they are paged, limits the token to 2 req/s
    # (posync assumes 16: it will be refused and must honour Retry-After) and fails 10% of calls
    sb = sandbox(rt, "clover")
    merchant = sb.add_merchant(orders=300, days=40)
    connect(rt, "clover", merchant)
    before = sb.stats.snapshot()
    sb.knobs.modify_during_paging = 2
    sb.knobs.per_token_rps = 2
    sb.knobs.retry_after_ms = 200
    sb.knobs.error_rate = 0.1
    sb.knobs.fail_next(2, status=503, path_prefix=f"/v3/merchants/{merchant}/orders")  # at least these
    # When the backfill runs
    report = rt.drain()
    after = sb.stats.snapshot()
    # Then the faults really happened
    assert after["rate_limited"] > before["rate_limited"]
    assert after["server_errors"] > before["server_errors"]
    moved = set(after["paging_modified"]) - set(before["paging_modified"])
    assert moved
    assert report.dead_lettered == 0
    # and every order that stayed put is stored; one modified during paging is either stored or,
    # if it moved past the run's end before it was read, left to the next run (never lost)
    first = stored(rt, "clover", merchant)
    assert set(truth(rt, "clover", merchant)) - moved <= set(first)
    # When the faults stop and the schedule fires again
    sb.knobs.modify_during_paging = 0
    sb.knobs.error_rate = 0.0
    sb.knobs.per_token_rps = 16
    report = sync_now(rt, "clover", merchant)
    assert report.failures == 0
    # Then everything is at its latest version, exported exactly once per version
    assert_in_sync(rt, "clover", merchant)


def test_a_backfill_over_90_days_uses_windows_and_continuations(rt: LocalRuntime) -> None:
    # Given 180 days of orders (Clover silently cuts any filter wider than 90 days)
    sb = sandbox(rt, "clover")
    merchant = sb.add_merchant(orders=500, days=180)
    connect(rt, "clover", merchant)
    # 200 ms a call: a 90-day window of ~250 orders is 3 pages, each read three times (Clover's
    # expansion rules), one after the other (too few to split): at least 1.8 s, more than one
    # invocation's 1 s of work, while one page (0.6 s) fits in it
    sb.knobs.latency_ms = 200
    # When the backfill (200 days) runs in invocations of 2 s (1 s of it kept as margin)
    report = rt.drain(worker_timeout_s=2.0)
    # Then it took several invocations of the same run, and nothing was lost, even the oldest orders
    assert report.failures == 0
    assert report.messages >= 2
    want = assert_in_sync(rt, "clover", merchant)
    oldest = min(iso_to_ms(m) for m in want.values())
    assert oldest < iso_to_ms(ms_to_iso(int(datetime.now(UTC).timestamp() * 1000))) - 120 * 86_400_000
    c = conn(rt, "clover", merchant)
    assert c.last_run["invocations"] == report.messages
    assert c.last_run["kind"] == "backfill"
    # one manifest for the whole run
    rt.apply_env()
    s3 = boto3.client("s3")
    key = c.last_run["manifest"]
    manifest = json.loads(s3.get_object(Bucket=rt.settings.bucket, Key=key)["Body"].read())
    assert manifest["record_count"] == len(want)


def test_posync_sync_queues_a_manual_sync(rt: LocalRuntime, tmp_path: Path) -> None:
    # Given a synced merchant whose older orders were later changed behind our back
    sb = sandbox(rt, "poynt")
    merchant = sb.add_merchant(orders=60, days=30)
    connect(rt, "poynt", merchant)
    rt.drain()
    # When the operator queues a manual sync since a date
    rt.apply_env()
    since = (datetime.now(UTC) - timedelta(days=10)).strftime("%Y-%m-%d")
    result = CliRunner().invoke(
        sync_command,
        ["poynt", merchant, "--since", since, "--json"],
        env={"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")},
    )
    assert result.exit_code == 0, result.output
    queued = json.loads(result.output)["queued"]
    assert queued["kind"] == "manual"
    assert queued["since"].startswith(since)
    report = rt.drain()
    # Then the worker ran it as a manual run over that period
    assert report.succeeded == 1
    c = conn(rt, "poynt", merchant)
    assert c.last_run["kind"] == "manual"
    assert c.last_run["counts"]["fetched"] > 0
    assert_in_sync(rt, "poynt", merchant)


# --------------------------------------------------------------------------- the worker's batch contract


def sqs_event(rt: LocalRuntime, bodies: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": body,
                "attributes": {"MessageGroupId": f"g{i}", "ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:posync-syncit-sync.fifo",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def test_one_bad_message_does_not_fail_the_batch(rt: LocalRuntime) -> None:
    # Given a batch with a malformed message, an unknown merchant and a real connection
    merchant = sandbox(rt, "clover").add_merchant(orders=20, days=5)
    connect(rt, "clover", merchant)
    rt.drain()
    good = json.dumps({"provider": "clover", "merchant_id": merchant, "kind": "scheduled"})
    unknown = json.dumps({"provider": "clover", "merchant_id": "NOSUCHMERCH01", "kind": "scheduled"})
    rt.apply_env()
    # When the worker handles it
    result = rt.invoke("worker", sqs_event(rt, ["{not json", unknown, good]))
    # Then only the malformed one is reported failed (SQS redelivers it, then dead-letters it)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m0"}]}


def test_the_dispatcher_queues_one_sync_per_active_connection(rt: LocalRuntime) -> None:
    rt.apply_env()
    conns, _ = ConnectionRepository(rt.settings).list_by_status("active", 1000)
    out = rt.invoke("dispatcher", {"source": "aws.events", "time": later().isoformat()})
    assert out["connections"] == len(conns) > 0
    assert out["sent"] == len(conns)
    assert out["failed"] == 0
    report = rt.drain()
    assert report.failures == 0


def test_tokens_never_reach_the_logs(rt: LocalRuntime, captured_logs: Any) -> None:
    rt.apply_env()
    store = SecretsManagerTokenStore(rt.settings)
    conns, _ = ConnectionRepository(rt.settings).list_by_status("active", 1000)
    assert conns
    secrets = set()
    for c in conns:
        tokens = store.read(c.provider, c.merchant_id)
        secrets |= {tokens.access_token, tokens.refresh_token or ""}
    assert "sync completed" in captured_logs.text
    assert captured_logs.find(secrets) == []


def test_the_app_limits_live_in_the_control_table_and_leases_are_released(rt: LocalRuntime) -> None:
    # Given syncs that ran through the worker (the shared per-app bucket and concurrency leases)
    merchant = sandbox(rt, "clover").add_merchant(orders=30, days=5)
    connect(rt, "clover", merchant)
    rt.drain()
    rt.apply_env()
    ddb = boto3.client("dynamodb")
    table = rt.settings.control_table
    # Then the bucket was used, and no worker holds a concurrency lease any more
    bucket = ddb.get_item(TableName=table, Key={"pk": {"S": "ratelimit#clover#app"}}, ConsistentRead=True)
    assert "ts" in bucket["Item"]
    assert "expires_at" in bucket["Item"]
    slots = ddb.get_item(TableName=table, Key={"pk": {"S": "ratelimit#clover#slots"}}, ConsistentRead=True)
    assert int(slots["Item"]["version"]["N"]) >= 1
    assert slots["Item"]["leases"]["M"] == {}


def test_a_backfill_redelivered_after_its_run_completed_reads_nothing_again(rt: LocalRuntime) -> None:
    # Given a merchant's first backfill message, taken from the real queue (moto over HTTP)
    rt.apply_env()
    merchant = sandbox(rt, "clover").add_merchant(orders=40, days=5)
    req = SyncRequest("clover", merchant, SyncKind.BACKFILL, since="2000-01-01T00:00:00Z", reason="test")
    connect(rt, "clover", merchant)
    rt.drain()  # the callback's own backfill
    url = str(rt.settings.sync_queue_url)
    send_sync(url, req, f"{req.connection_id}-redelivery-{next(_ticks)}")
    sqs = boto3.client("sqs")
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, AttributeNames=["All"], WaitTimeSeconds=1)
    (message,) = got["Messages"]
    arn = "arn:aws:sqs:us-east-1:000000000000:posync-syncit-sync.fifo"
    event = {"Records": [sqs_record(dict(message), arn, "us-east-1")]}
    # When the worker runs it, then gets the same delivery again (it died before SQS heard back)
    assert rt.invoke("worker", event) == {"batchItemFailures": []}
    first = conn(rt, "clover", merchant).last_run
    assert first["kind"] == "backfill" and first["counts"]["fetched"] == 40
    assert rt.invoke("worker", event) == {"batchItemFailures": []}
    # Then the redelivery ran no second backfill: the last run is still the first one
    assert conn(rt, "clover", merchant).last_run["run_id"] == first["run_id"]
    assert conn(rt, "clover", merchant).cursor["done_messages"][-1] == message["MessageId"]
    assert_in_sync(rt, "clover", merchant)
