"""Scenario 3: AWS calls of real sync runs, with the real adapters on the embedded AWS.

``posync_local.runtime.LocalRuntime`` (moto's server, the stage provisioned from
``posync.resources``, the real handlers in process) is pointed at the Clover sandbox
process. A merchant connects through ``/connect`` -> consent -> ``/oauth/clover/callback``,
which stores its tokens and queues the backfill; ``drain()`` feeds the queue to the real
worker handler. Then orders change and a scheduled sync runs the same way.

Calls are counted with a botocore event hook (``provide-client-params``, once per API
call, retries not included) on the clients posync's code uses (``posync.aws.client``);
the local runtime's own calls (provisioning, draining the queue) use other clients and
are not counted. Figures per run: DynamoDB write request units per 1,000 orders (target
<= 2,500 for the sandbox's 1-2 KB orders: one conditional put per order, 1 unit per KB,
not a transaction's 2; ``..._as_transactions`` is what the same puts cost in one), the write
calls behind them, S3 PUTs per export partition touched (target <= 2), Secrets Manager
reads (target <= 1 per run). Write units are estimated from each request as DynamoDB bills
them (item size rounded up to 1 KB; twice that inside a transaction); an UpdateItem or
DeleteItem counts 1 (its item's stored size is not in the request: a lower bound).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import requests

import posync.aws
from bench.common import check, load
from bench.sandboxproc import SandboxProcess
from posync.connections import ConnectionRepository
from posync.domain import connection_id
from posync.exports import modified_ms, read_manifested
from posync.store import OrderRepository
from posync.syncqueue import SyncKind, SyncRequest
from posync_local.local_aws import client as local_client
from posync_local.runtime import LocalRuntime

SERVICES = ("dynamodb", "s3", "secretsmanager", "sqs", "events", "kms")
DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"})
WRU = "dynamodb-wru"  # the counter's key for estimated write request units, by operation
# Per 1,000 orders: the sandbox's canonical orders are 1-2 KB (2 units a put); their puts inside
# transactions cost twice that (measured 2,120 against ~4,240).
WRITE_UNITS_TARGET = 2500


def _value_bytes(value: Mapping[str, Any]) -> int:
    """An attribute value's size as DynamoDB counts it (names and values, UTF-8; numbers ~ digits/2)."""
    ((kind, v),) = value.items()
    if kind == "S":
        return len(str(v).encode())
    if kind == "N":
        return len(str(v).lstrip("-").replace(".", "")) // 2 + 1
    if kind == "B":
        return len(v)
    if kind in ("SS", "NS", "BS"):
        return sum(_value_bytes({kind[0]: x}) for x in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_bytes(x) for k, x in v.items())
    if kind == "L":
        return 3 + sum(1 + _value_bytes(x) for x in v)
    return 1  # BOOL, NULL


def item_units(item: Mapping[str, Any]) -> int:
    """Write request units of putting ``item``: its size rounded up to 1 KB."""
    size = sum(len(k.encode()) + _value_bytes(v) for k, v in item.items())
    return max(1, -(-size // 1024))


def write_units(operation: str, params: Mapping[str, Any]) -> int:
    """Estimated write request units of one DynamoDB write call (see the module doc)."""
    if operation == "PutItem":
        return item_units(params.get("Item", {}))
    if operation == "TransactWriteItems":
        return sum(
            2 * (item_units(op["Put"]["Item"]) if "Put" in op else 1) for op in params["TransactItems"]
        )
    if operation == "BatchWriteItem":
        reqs = [r for rs in params.get("RequestItems", {}).values() for r in rs]
        return sum(item_units(r["PutRequest"]["Item"]) if "PutRequest" in r else 1 for r in reqs)
    return 1


_DT = re.compile(r"^exports/orders/v1/.*/dt=(\d{4}-\d{2}-\d{2})/")


class CallCounter:
    """Counts API calls by (service, operation) and the keys of S3 PUTs, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.put_keys: list[str] = []
        self._hooked: set[int] = set()

    def hook(self) -> None:
        """Register on every client posync's code uses (``posync.aws.client``)."""
        self.hook_clients(posync.aws.client(service) for service in SERVICES)

    def hook_clients(self, clients: Iterable[Any]) -> None:
        """Register on these botocore clients (idempotent per client)."""
        for c in clients:
            if id(c) in self._hooked:
                continue
            self._hooked.add(id(c))
            c.meta.events.register("provide-client-params", self._on_call)

    def _on_call(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        service = str(model.service_model.service_name)
        with self._lock:
            self.calls[(service, str(model.name))] += 1
            if service == "s3" and model.name == "PutObject":
                self.put_keys.append(str(params.get("Key", "")))
            if service == "dynamodb" and model.name in DYNAMODB_WRITES:
                self.calls[(WRU, str(model.name))] += write_units(str(model.name), params)

    def take(self) -> tuple[Counter[tuple[str, str]], list[str]]:
        with self._lock:
            calls, keys = self.calls, self.put_keys
            self.calls, self.put_keys = Counter(), []
        return calls, keys


def connect(rt: LocalRuntime, sb: SandboxProcess, merchant_id: str) -> None:
    """The browser round trip through posync's own /connect and callback (consent auto-approved)."""
    sb.set_knobs(auto_approve=True)
    try:
        with requests.Session() as http:
            r = http.get(
                f"{rt.api_url}/connect/clover",
                params={"merchant_id": merchant_id},
                allow_redirects=False,
                timeout=30,
            )
            for _ in range(3):  # -> the sandbox's consent (auto-approved) -> posync's callback
                if r.status_code != 302:
                    break
                r = http.get(r.headers["Location"], allow_redirects=False, timeout=60)
            if r.status_code != 200:
                raise RuntimeError(f"connecting {merchant_id} ended with HTTP {r.status_code}")
        rt.apply_env()
        ConnectionRepository(rt.settings).get("clover", merchant_id)  # raises if it was not stored
    finally:
        sb.set_knobs(auto_approve=False)


def _figures(
    calls: Counter[tuple[str, str]], keys: list[str], orders: int, runs: int, invocations: int
) -> dict[str, Any]:
    ddb_writes = sum(n for (svc, op), n in calls.items() if svc == "dynamodb" and op in DYNAMODB_WRITES)
    ddb_reads = sum(n for (svc, op), n in calls.items() if svc == "dynamodb" and op not in DYNAMODB_WRITES)
    s3_puts = calls[("s3", "PutObject")]
    partitions = {m.group(1) for k in keys if (m := _DT.match(k))}
    sm_reads = calls[("secretsmanager", "GetSecretValue")]
    units = sum(n for (svc, _), n in calls.items() if svc == WRU)
    per_k = ddb_writes / max(1, orders) * 1000
    units_per_k = units / max(1, orders) * 1000
    per_partition = s3_puts / max(1, len(partitions))
    per_run = sm_reads / max(1, runs)
    return {
        "orders_exported": orders,
        "runs": runs,
        "invocations": invocations,
        "dynamodb_writes": ddb_writes,
        "dynamodb_reads": ddb_reads,
        "dynamodb_writes_per_1000_orders": round(per_k, 2),
        "dynamodb_write_units": units,
        "dynamodb_write_units_per_1000_orders": round(units_per_k, 2),
        "dynamodb_write_units_target": WRITE_UNITS_TARGET,
        "dynamodb_write_units_as_transactions": units + calls[(WRU, "PutItem")],
        "s3_puts": s3_puts,
        "partitions_touched": len(partitions),
        "s3_puts_per_partition": round(per_partition, 2),
        "s3_puts_target": 2,
        "secretsmanager_reads": sm_reads,
        "secretsmanager_reads_per_run": round(per_run, 2),
        "secretsmanager_target": 1,
        "pass": units_per_k <= WRITE_UNITS_TARGET and per_partition <= 2 and per_run <= 1,
        "calls": {f"{svc}.{op}": n for (svc, op), n in sorted(calls.items())},
    }


def _state(
    rt: LocalRuntime, merchant_id: str
) -> tuple[dict[str, int], list[tuple[str, int]], dict[str, Any]]:
    """What posync holds: stored orders (id -> modified ms), exported versions, the last run."""
    rt.apply_env()
    settings = rt.settings
    cid = connection_id("clover", merchant_id)
    stored = {
        o["order_id"]: modified_ms(o["modified_at"]) for o in OrderRepository(settings).iter_orders(cid)
    }
    exported = [
        (str(o["order_id"]), modified_ms(str(o["modified_at"])))
        for o in read_manifested(settings, provider="clover", merchant_id=merchant_id)
    ]
    last_run = ConnectionRepository(settings).get("clover", merchant_id).last_run
    return stored, exported, last_run


def _drain(rt: LocalRuntime, counter: CallCounter) -> tuple[Counter[tuple[str, str]], list[str], Any, float]:
    counter.hook()
    counter.take()
    t0 = time.monotonic()
    report = rt.drain(max_seconds=600)
    elapsed = time.monotonic() - t0
    calls, keys = counter.take()
    return calls, keys, report, elapsed


def runtime(sb: SandboxProcess, stage: str = "bench") -> LocalRuntime:
    """A local runtime (embedded AWS, provisioned stage, real handlers) on the sandbox process.

    Not started: use it as a context manager.
    """
    env = {
        "POSYNC_CLOVER_OAUTH_BASE": sb.url,
        "POSYNC_CLOVER_API_BASE": sb.url,
        "POSYNC_CLOVER_AUTHORIZE_BASE": sb.url,
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    return LocalRuntime(sandbox=False, stage=stage, env=env)


def scenario(sb: SandboxProcess, rt: LocalRuntime, *, orders: int, days: int, changes: int) -> dict[str, Any]:
    """A backfill of ``orders`` orders over ``days`` days, then a run after ``changes`` changes."""
    out: dict[str, Any] = {"aws": "embedded (moto server in this process)", "orders": orders, "days": days}
    t0 = time.monotonic()
    merchant = sb.add_merchant(orders=orders, days=days)
    sb.set_knobs(latency_ms=50)
    rt.store_app_credentials("clover", sb.app_credentials)
    connect(rt, sb, merchant)  # the callback queues the backfill
    out["setup_s"] = round(time.monotonic() - t0, 2)
    counter = CallCounter()
    load_before = load()

    calls, keys, report, elapsed = _drain(rt, counter)
    stored, exported, last_run = _state(rt, merchant)
    truth = sb.truth(merchant)
    backfill = _figures(calls, keys, int(last_run.get("counts", {}).get("exported", 0)), 1, report.messages)
    stored_check, exported_check = check(truth, sorted(stored.items())), check(truth, exported)
    backfill.update(
        {
            "elapsed_s": round(elapsed, 2),
            "worker_failures": report.failures,
            "dead_lettered": report.dead_lettered,
            "check_stored": stored_check.as_dict(),
            "check_exported": exported_check.as_dict(),
            "check_ok": stored_check.ok and exported_check.ok and report.failures == 0,
        }
    )

    modified = sb.modify_orders(merchant, changes // 2)
    created = sb.create_orders(merchant, changes - changes // 2)
    req = SyncRequest("clover", merchant, SyncKind.SCHEDULED, reason="bench")
    local_client("sqs").send_message(
        QueueUrl=str(rt.settings.sync_queue_url),
        MessageBody=req.to_json(),
        MessageGroupId=req.connection_id,
        MessageDeduplicationId=f"{req.connection_id}-bench-{time.time_ns()}",
    )
    calls, keys, report, elapsed = _drain(rt, counter)
    stored2, exported2, last_run2 = _state(rt, merchant)
    truth2 = sb.truth(merchant)
    incremental = _figures(
        calls, keys, int(last_run2.get("counts", {}).get("exported", 0)), 1, report.messages
    )
    before = set(exported)
    stored_check, exported_check = check(truth2, sorted(stored2.items())), check(truth2, exported2)
    incremental.update(
        {
            "elapsed_s": round(elapsed, 2),
            "changed_orders": len(set(modified) | set(created)),
            "worker_failures": report.failures,
            "dead_lettered": report.dead_lettered,
            "check_stored": stored_check.as_dict(),
            "check_exported": exported_check.as_dict(),
            "new_versions_exported": sum(1 for v in exported2 if v not in before),
            "check_ok": stored_check.ok and exported_check.ok and report.failures == 0,
        }
    )
    out["backfill"] = backfill
    out["incremental"] = incremental
    from bench import reconcile  # the sweep's cost, on this merchant (it changes the merchant: last)

    out["reconcile"] = reconcile.measure(sb, rt, merchant, counter, days=days, changes=max(2, changes // 50))
    total_orders = backfill["orders_exported"] + incremental["orders_exported"]
    total_writes = backfill["dynamodb_writes"] + incremental["dynamodb_writes"]
    out["dynamodb_writes_per_1000_orders_overall"] = round(total_writes / max(1, total_orders) * 1000, 2)
    total_units = backfill["dynamodb_write_units"] + incremental["dynamodb_write_units"]
    out["dynamodb_write_units_per_1000_orders_overall"] = round(total_units / max(1, total_orders) * 1000, 2)
    out["pass"] = bool(backfill["pass"] and incremental["pass"])
    out["check_ok"] = bool(backfill["check_ok"] and incremental["check_ok"] and out["reconcile"]["check_ok"])
    out["load_before"] = load_before
    out["load_after"] = load()
    sb.set_knobs(latency_ms=0)
    return out
