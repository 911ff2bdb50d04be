"""Deletions and refunds that do not move modifiedTime, under every reading Clover leaves open.

Deleted orders end as tombstones whichever way they are found (the DELETE webhook, the sync
reading Clover's deleted order, the reconciliation sweep's read by id), under each listing
profile; a refund that leaves ``modifiedTime`` alone is caught by the sweep and nothing else
is exported again. Clover answers 503 now and then meanwhile (retried).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import boto3
import pytest

from posync.canonical import normalize
from posync.domain import connection_id
from posync.exports import latest, modified_ms, read_manifested
from posync.store import OrderRepository
from posync_local.sandbox.clover import LIFECYCLE_PROFILES, REFUND_PROFILES
from tests.chaos.conftest import Chaos, stats_delta

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


def folded(chaos: Chaos, merchant: str) -> dict[str, dict[str, Any]]:
    rows = read_manifested(chaos.rt.settings, provider="clover", merchant_id=merchant)
    return {str(o["order_id"]): o for o in latest(rows)}


def duplicates(chaos: Chaos, merchant: str) -> list[tuple[str, int]]:
    versions = Counter(
        (str(o["order_id"]), modified_ms(str(o["modified_at"])))
        for o in read_manifested(chaos.rt.settings, provider="clover", merchant_id=merchant)
    )
    return [v for v, n in versions.items() if n > 1]


def reconcile(chaos: Chaos) -> None:
    """The reconcile schedule's event into the dispatcher, then the queue drained."""
    chaos.rt.apply_env()
    report = chaos.rt.invoke("dispatcher", {"kind": "reconcile"})
    assert report["sent"] >= 1
    chaos.drain()


def last_manifest(chaos: Chaos, merchant: str) -> dict[str, Any]:
    key = chaos.connection("clover", merchant).last_run["manifest"]
    body = boto3.client("s3").get_object(Bucket=chaos.rt.settings.bucket, Key=key)["Body"].read()
    manifest: dict[str, Any] = json.loads(body)
    return manifest


@pytest.mark.parametrize("profile", sorted(LIFECYCLE_PROFILES))
def test_deleted_orders_end_as_tombstones_under_every_listing_profile(chaos: Chaos, profile: str) -> None:
    # Given a synced merchant, and Clover deleting under this profile's reading
    sb = chaos.clover()
    m = chaos.merchant("clover", orders=40, days=5)
    chaos.drain()
    for name, value in LIFECYCLE_PROFILES[profile].items():
        setattr(sb.knobs, name, value)
    ids = sorted(o["id"] for o in sb.orders(m))
    announced, silent = ids[:2], ids[2:4]  # two with a DELETE webhook, two without
    t0 = int(time.time() * 1000)
    deleted_at = dict(zip(announced + silent, sb.delete_orders(m, announced + silent), strict=True))
    before = sb.stats.snapshot()
    api = f"/v3/merchants/{m}/orders"
    # When the DELETE webhook arrives for two, the schedule runs, then the reconcile sweep, each
    # of them meeting Clover answering 503 twice
    assert sb.send_webhook(f"{chaos.rt.api_url}/webhooks/clover", m, announced, event_type="DELETE") == [200]
    sb.knobs.fail_next(2, 503, path_prefix=api)
    chaos.drain()
    sb.knobs.fail_next(2, 503, path_prefix=api)
    chaos.tick()
    sb.knobs.fail_next(2, 503, path_prefix=api)
    reconcile(chaos)
    chaos.provider_faults["http_5xx"] = stats_delta(before, sb.stats.snapshot(), "server_errors")
    # Then every deleted order's latest version, stored and exported, is its tombstone
    chaos.rt.apply_env()
    repo = OrderRepository(chaos.rt.settings)
    exported = folded(chaos, m)
    now = int(time.time() * 1000)
    for oid in announced + silent:
        stored = repo.get(connection_id("clover", m), oid)
        assert stored is not None and stored["state"] == "deleted", (profile, oid)
        assert exported[oid]["state"] == "deleted", (profile, oid)
        assert exported[oid]["modified_at"] == stored["modified_at"]
        found = modified_ms(str(stored["deleted_at"]))
        if LIFECYCLE_PROFILES[profile]["deleted_by_id"] == "order":
            assert found == deleted_at[oid]  # Clover's deletedTimestamp
        else:
            assert t0 <= found <= now  # when posync found out (webhook ts, or the 404)
        # with the order's content as it was (the totals did not change)
        live = normalize("clover", m, {**sb.order(m, oid), "deletedTimestamp": None})
        assert stored["totals"] == live["totals"] and stored["payments"] == live["payments"]
    # And nothing else is deleted, and no version was exported twice
    alive = [oid for oid, o in exported.items() if o["state"] != "deleted"]
    assert sorted(alive) == ids[4:]
    assert duplicates(chaos, m) == []
    assert chaos.provider_faults["http_5xx"] > 0
    chaos.assert_no_secret_in_logs()


@pytest.mark.parametrize("profile", sorted(REFUND_PROFILES))
def test_a_refund_is_caught_whether_or_not_it_moves_modified_time(chaos: Chaos, profile: str) -> None:
    # Given a synced merchant whose paid orders get a refund later, under this profile
    sb = chaos.clover()
    m = chaos.merchant("clover", orders=40, days=5)
    chaos.drain()
    sb.knobs.refund_moves_modified = REFUND_PROFILES[profile]["refund_moves_modified"]
    paid = [
        o["id"]
        for o in sb.orders(m)
        if o.get("paymentState") == "PAID" and not (o.get("refunds") or {}).get("elements")
    ][:2]
    assert len(paid) == 2
    for oid in paid:
        sb.refund_later(m, oid, 100)
    # When the schedule runs
    chaos.tick()
    exported = folded(chaos, m)
    caught_by_sync = [oid for oid in paid if exported[oid]["totals"]["refunded"] == 100]
    # Then the sync sees the refund only if modifiedTime moved (the reason the sweep exists)
    assert caught_by_sync == (paid if sb.knobs.refund_moves_modified else [])
    # When the reconcile sweep runs (Clover answering 503 twice on the way)
    before = sb.stats.snapshot()
    sb.knobs.fail_next(2, 503, path_prefix=f"/v3/merchants/{m}/orders")
    reconcile(chaos)
    chaos.provider_faults["http_5xx"] = stats_delta(before, sb.stats.snapshot(), "server_errors")
    # Then both refunds are in the latest versions, stored and exported, matching Clover
    exported = folded(chaos, m)
    chaos.rt.apply_env()
    repo = OrderRepository(chaos.rt.settings)
    for oid in paid:
        truth = normalize("clover", m, sb.order(m, oid))
        assert truth["totals"]["refunded"] == 100
        for got in (exported[oid], repo.get(connection_id("clover", m), oid)):
            assert got is not None
            assert got["totals"] == truth["totals"] and got["refunds"] == truth["refunds"]
            assert got["state"] == truth["state"] == "partially_refunded"
    # And the sweep exported exactly the corrections still missing, nothing else (a sweep that
    # corrected nothing writes no manifest: its counts are on the connection's last run)
    expected = 0 if sb.knobs.refund_moves_modified else 2
    run = chaos.connection("clover", m).last_run
    if expected:
        manifest = last_manifest(chaos, m)
        counts = manifest["counts"]
        assert manifest["record_count"] == expected
    else:
        assert run["manifest"] is None
        counts = run["counts"]
    assert run["kind"] == "reconcile"
    assert counts["corrections"] == expected
    assert counts["silent"] == expected
    assert counts["unchanged"] == 40 - expected
    assert duplicates(chaos, m) == []
    assert chaos.provider_faults["http_5xx"] > 0
    chaos.assert_no_secret_in_logs()
