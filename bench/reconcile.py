"""The reconciliation sweep's cost (part of the ``aws_calls`` scenario, on its merchant).

After the scenario's backfill and incremental run, some paid orders get a refund that leaves
``modifiedTime`` alone and some orders are deleted (the sandbox's default reading: gone from
the lists, 404 by id). One ``reconcile`` run over the whole window then goes through the real
worker. Figures: provider requests per 1,000 orders re-read (the list pages, the order-level
second read, the reads by id of the absence sweep), DynamoDB calls per 1,000 (the batched
reads of the stored versions, the window query, the writes of the corrections), and the
corrections against what was changed (each silent refund and each deletion exactly once,
nothing else).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.aws_calls import DYNAMODB_WRITES, CallCounter
from bench.sandboxproc import SandboxProcess
from posync.connections import ConnectionRepository
from posync.domain import connection_id
from posync.store import OrderRepository
from posync.syncqueue import SyncKind, SyncRequest
from posync_local.local_aws import client as local_client
from posync_local.runtime import LocalRuntime

CAUSES = ("corrections", "silent", "deleted", "missing", "changed")


def measure(
    sb: SandboxProcess, rt: LocalRuntime, merchant: str, counter: CallCounter, *, days: int, changes: int
) -> dict[str, Any]:
    refunded = sb.refund_some(merchant, changes, 100)
    deleted = sb.delete_some(merchant, max(1, changes // 2))
    since = datetime.now(UTC) - timedelta(days=days + 1)
    req = SyncRequest(
        "clover",
        merchant,
        SyncKind.RECONCILE,
        since=since.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        reason="bench reconcile",
    )
    rt.apply_env()
    local_client("sqs").send_message(
        QueueUrl=str(rt.settings.sync_queue_url),
        MessageBody=req.to_json(),
        MessageGroupId=req.connection_id,
        MessageDeduplicationId=f"{req.connection_id}-bench-reconcile-{time.time_ns()}",
    )
    before = sb.stats()
    counter.hook()
    counter.take()
    t0 = time.monotonic()
    report = rt.drain(max_seconds=600)
    elapsed = time.monotonic() - t0
    calls, _ = counter.take()
    after = sb.stats()
    rt.apply_env()
    last = ConnectionRepository(rt.settings).get("clover", merchant).last_run
    counts = {k: int(v) for k, v in dict(last.get("counts") or {}).items()}
    reread = counts.get("fetched", 0)
    provider = sum(after["requests"].values()) - sum(before["requests"].values())
    ddb = {f"{op}": n for (svc, op), n in sorted(calls.items()) if svc == "dynamodb"}
    ddb_writes = sum(n for op, n in ddb.items() if op in DYNAMODB_WRITES)
    ddb_reads = sum(n for op, n in ddb.items() if op not in DYNAMODB_WRITES)
    repo = OrderRepository(rt.settings)
    cid = connection_id("clover", merchant)
    tombstoned = sum(1 for oid in deleted if (repo.get(cid, oid) or {}).get("state") == "deleted")
    refunds_in = sum(
        1 for oid in refunded if (repo.get(cid, oid) or {}).get("totals", {}).get("refunded", 0) >= 100
    )
    per_k = 1000 / max(1, reread)
    ok = (
        report.failures == 0
        and last.get("status") == "completed"
        and counts.get("silent") == len(refunded)
        and counts.get("deleted") == len(deleted)
        and counts.get("corrections") == len(refunded) + len(deleted)
        and tombstoned == len(deleted)
        and refunds_in == len(refunded)
    )
    return {
        "orders_reread": reread,
        "silent_refunds": len(refunded),
        "deleted": len(deleted),
        "corrections": {k: counts.get(k, 0) for k in CAUSES},
        "unchanged": counts.get("unchanged", 0),
        "provider_requests": provider,
        "provider_requests_per_1000_orders": round(provider * per_k, 2),
        "dynamodb_reads": ddb_reads,
        "dynamodb_writes": ddb_writes,
        "dynamodb_reads_per_1000_orders": round(ddb_reads * per_k, 2),
        "dynamodb_calls": ddb,
        "elapsed_s": round(elapsed, 2),
        "invocations": report.messages,
        "check_ok": ok,
    }
