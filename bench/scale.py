"""Scenario 6: 100,000 connections on one Clover app, several schedule ticks.

The real :class:`posync.dispatcher.Dispatcher` and polling policy (``posync.schedule``) run
over 100,000 connection records held by **in-memory adapters that count the calls the AWS
ones would make** (no embedded AWS: pushing 100,000 items through moto's server each tick
would measure moto): :class:`IndexStore` answers the ``by-status`` index page by page (one
Query per 1,000 items) and counts ``queued_at`` marks (UpdateItem); :class:`CountingQueue`
takes ``SendMessageBatch``.

A **simulated Clover** (:class:`Provider`) holds each merchant's newest order time and the
app's limit: 50 requests/s, so a 15-minute tick has room for 45,000 requests for all
merchants together. A run reads with one request when nothing changed since its cursor
(the order-level read finds nothing; the big read is skipped) and two per page of up to
1,000 orders otherwise. :class:`Workers` drain the queue the way the SQS event source does,
one run per message in send order, at most the tick's requests; what does not fit stays
queued (the backlog). Merchants are ``busy`` (orders every tick; one in five also sends a
webhook, whose sync runs at once), ``daily`` (an order about every two and a half hours)
or ``dormant`` (none for weeks).

The worker's AWS calls per run are those one idle scheduled run makes through the real
worker on the embedded AWS (``IDLE_RUN_CALLS``, measured with ``bench.aws_calls``'
counter), plus a Secrets Manager read (a container rarely holds the connection's token);
the event source's SQS receive and delete calls are modelled (one each per ten messages).
``dispatch_s`` is the measured pass (in this process, scaled from this machine's core to
the dispatcher's share of a vCPU) plus the AWS latency the counted calls would add at
``LATENCY_S`` each, spread over the dispatcher's reader and sender threads. Costs are list
prices (us-east-1, arm64, on-demand), month = 30 days.
"""

from __future__ import annotations

import bisect
import json
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from posync.dispatcher import Dispatcher
from posync.domain import Connection, ConnectionStatus
from posync.resources import FUNCTIONS, WORKER_MEMORY_MB
from posync.schedule import PollConfig

APP_RPS = 50.0  # Clover's per-app limit
TICK_S = 900
LATENCY_S = {"query": 0.05, "send": 0.02, "mark": 0.01}
ITEM_KB = 2.0  # a connection item (cursor and last run as JSON)
RUN_BASE_S = 0.15  # a run's own work besides provider requests (DynamoDB calls, CPU)
REQUEST_S = 0.25  # one Clover request, paced by the token's limiter
WORKER_BATCH = 10
# One idle scheduled run through the real worker on the embedded AWS (bench.aws_calls' counter).
IDLE_RUN_CALLS = {
    "dynamodb.GetItem": 3,  # the connection; the app's slots item, at lease and at release
    "dynamodb.UpdateItem": 5,  # the lease and its release, the rate bucket, the cursor commit, ...
    # no S3 PUT and no event: a run that exports nothing writes no manifest (posync.sync)
    "secretsmanager.GetSecretValue": 1,  # measured 0 in a warm container; 1 per run assumed
}
CHANGED_RUN = {"wru": 2 * 3 * 3, "s3_puts": 2, "events": 1}  # besides IDLE_RUN_CALLS: 3 orders of 3 KB
PRICES = {  # USD, us-east-1 list prices
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s_arm": 0.0000133334,
    "dynamodb_wru": 0.625 / 1e6,
    "dynamodb_rru": 0.125 / 1e6,
    "s3_put": 0.005 / 1000,
    "sqs_fifo_request": 0.50 / 1e6,
    "eventbridge_event": 1.00 / 1e6,
    "secrets_api_call": 0.05 / 10_000,
    "secret_month": 0.40,
}
TICKS_PER_MONTH = 30 * 86400 // TICK_S
MIX = (("busy", 0.05), ("daily", 0.15), ("dormant", 0.80))


def iso(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- adapters


class IndexStore:
    """The connections table and its ``by-status`` index, in memory, counting calls."""

    def __init__(self, conns: Sequence[Connection]) -> None:
        self.by_id = {c.connection_id: c for c in conns}
        self.ids = sorted(self.by_id)
        self.queries = 0
        self.items_read = 0
        self.marks = 0

    def list_by_status(
        self,
        status: ConnectionStatus | str,
        page_size: int = 100,
        start_key: dict[str, Any] | None = None,
        id_range: tuple[str, str] | None = None,
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        lo, hi = id_range or ("", "\uffff")
        i = (
            bisect.bisect_left(self.ids, lo)
            if start_key is None
            else bisect.bisect_right(self.ids, start_key["id"])
        )
        end = bisect.bisect_right(self.ids, hi)
        chunk = self.ids[i : min(end, i + page_size)]
        self.queries += 1
        self.items_read += len(chunk)
        page = [self.by_id[k] for k in chunk]
        more = i + page_size < end
        return page, ({"id": chunk[-1]} if more and chunk else None)

    def mark_queued(self, conn_id: str, at: str) -> None:
        self.marks += 1
        self.by_id[conn_id].queued_at = at


@dataclass
class CountingQueue:
    """The FIFO sync queue: ``SendMessageBatch`` (deduplication ids honoured), FIFO order."""

    pending: list[tuple[str, str]] = field(default_factory=list)  # (connection id, kind)
    dedup: set[str] = field(default_factory=set)
    calls: int = 0
    sent: int = 0

    def send_message_batch(self, QueueUrl: str, Entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # noqa: N803
        self.calls += 1
        ok = []
        for e in Entries:
            ok.append({"Id": e["Id"], "MessageId": e["Id"]})
            if e["MessageDeduplicationId"] in self.dedup:
                continue
            self.dedup.add(str(e["MessageDeduplicationId"]))
            self.pending.append((str(e["MessageGroupId"]), str(json.loads(e["MessageBody"])["kind"])))
            self.sent += 1
        return {"Successful": ok, "Failed": []}


class Provider:
    """Clover as the runs see it: each merchant's newest order time, and the requests a run makes."""

    def __init__(self, newest: dict[str, float]) -> None:
        self.newest = newest

    def requests(self, conn: Connection) -> int:
        since = float(conn.cursor.get("modified_ms", 0)) / 1000
        return 1 if self.newest.get(conn.connection_id, 0.0) < since else 2


@dataclass
class Workers:
    """The worker fleet within the app's limit: runs messages in order until the tick's requests are spent."""

    store: IndexStore
    provider: Provider
    rps: float = APP_RPS
    runs: int = 0
    idle_runs: int = 0
    requests: int = 0
    run_s: float = 0.0

    def run(self, conn: Connection, at: float, kind: str) -> int:
        n = self.provider.requests(conn)
        newest = self.provider.newest.get(conn.connection_id)
        cursor = {"v": 1, "modified_ms": int(at * 1000), "ids_at_T": []}
        if newest is not None:
            cursor["newest"] = int(newest * 1000)
        conn.cursor = cursor
        conn.last_run = {
            "status": "completed",
            "kind": kind,
            "started_at": iso(at),
            "finished_at": iso(at + RUN_BASE_S + n * REQUEST_S),
            "counts": {"requests": n},
        }
        self.runs += 1
        self.idle_runs += n == 1
        self.requests += n
        self.run_s += RUN_BASE_S + n * REQUEST_S
        return n

    def drain(self, queue: CountingQueue, start: float, room: int) -> int:
        """Run queued syncs from ``start`` while the tick has ``room`` requests; returns requests spent."""
        spent = 0
        done = 0
        for conn_id, kind in queue.pending:
            conn = self.store.by_id[conn_id]
            need = self.provider.requests(conn)
            if spent + need > room:
                break
            spent += self.run(conn, start + spent / self.rps, kind)
            done += 1
        del queue.pending[:done]
        return spent


# --------------------------------------------------------------------------- the scenario


def _merchant(i: int) -> str:
    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(13):
        i, r = divmod(i, 36)
        out.append(chars[r])
    return "".join(reversed(out))


def population(
    n: int, now: float, rng: random.Random
) -> tuple[list[Connection], dict[str, str], dict[str, float]]:
    """``n`` connections, each synced within the last hour, of the mix's activity kinds."""
    conns: list[Connection] = []
    kinds: dict[str, str] = {}
    newest: dict[str, float] = {}
    # Spread ids over the whole key space, as real merchant ids are.
    step = 36**13 // max(1, n)
    for i in range(n):
        mid = _merchant(i * step + rng.randrange(step))
        r = rng.random()
        kind = "busy" if r < MIX[0][1] else "daily" if r < MIX[0][1] + MIX[1][1] else "dormant"
        synced = now - rng.uniform(0, 3600)
        last_order = {
            "busy": synced - rng.uniform(0, 300),
            "daily": synced - rng.uniform(0, 86400),
            "dormant": synced - rng.uniform(10, 60) * 86400,
        }[kind]
        conn = Connection(
            provider="clover",
            merchant_id=mid,
            cursor={
                "v": 1,
                "modified_ms": int(synced * 1000),
                "ids_at_T": [],
                "newest": int(last_order * 1000),
            },
            last_run={
                "status": "completed",
                "kind": "scheduled",
                "started_at": iso(synced),
                "counts": {"requests": 1},
            },
        )
        conns.append(conn)
        kinds[conn.connection_id] = kind
        newest[conn.connection_id] = last_order
    return conns, kinds, newest


def _cost(counts: Mapping[str, float], *, connections: int, ticks: int, dispatch_s: float) -> dict[str, Any]:
    """USD per merchant-month from the counted calls (scaled from ``ticks`` to a month)."""
    month = TICKS_PER_MONTH / ticks
    dispatcher_mb = next(f.memory_mb for f in FUNCTIONS if f.name == "dispatcher")
    p = PRICES
    lines = {
        "lambda": (
            (counts["worker_invocations"] + ticks) * p["lambda_request"]
            + counts["worker_run_s"] * WORKER_MEMORY_MB / 1024 * p["lambda_gb_s_arm"]
            + ticks * dispatch_s * dispatcher_mb / 1024 * p["lambda_gb_s_arm"]
        ),
        "dynamodb": counts["wru"] * p["dynamodb_wru"] + counts["rru"] * p["dynamodb_rru"],
        "s3": counts["s3_puts"] * p["s3_put"],
        "sqs": counts["sqs_requests"] * p["sqs_fifo_request"],
        "eventbridge": (counts["events"] + ticks) * p["eventbridge_event"],
        "secrets_manager_calls": counts["secrets_calls"] * p["secrets_api_call"],
    }
    per = {k: v * month / connections for k, v in lines.items()}
    total = sum(per.values())
    return {
        "per_merchant_month_usd": {k: round(v, 6) for k, v in per.items()},
        "total_usd": round(total, 5),
        "secret_usd": p["secret_month"],
        "total_with_secret_usd": round(total + p["secret_month"], 5),
        "prices": p,
    }


def scenario(
    *, connections: int = 100_000, ticks: int = 6, seed: int = 7, app_rps: float = APP_RPS
) -> dict[str, Any]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
    conns, kinds, newest = population(connections, start, rng)
    store = IndexStore(conns)
    queue = CountingQueue()
    provider = Provider(newest)
    workers = Workers(store, provider, app_rps)
    policy = PollConfig(
        tick_s=TICK_S,
        max_interval_s=3600,
        active_s=3600,
        pending_s=3600,
        budget_share=0.9,
        app_rps={"clover": app_rps, "poynt": app_rps},
    )
    clock = [start]
    dispatcher = Dispatcher(store, queue, "scale-queue", TICK_S // 60, policy=policy, clock=lambda: clock[0])
    dispatcher_timeout = next(f.timeout_s for f in FUNCTIONS if f.name == "dispatcher")
    dispatcher_mb = next(f.memory_mb for f in FUNCTIONS if f.name == "dispatcher")
    busy = [cid for cid, k in kinds.items() if k == "busy"]
    daily = [cid for cid, k in kinds.items() if k == "daily"]
    per_tick: list[dict[str, Any]] = []
    staleness: Counter[str] = Counter()
    staleness_max: dict[str, float] = {}
    backlog: list[int] = []
    worst_dispatch = 0.0
    totals: Counter[str] = Counter()
    room_total = int(app_rps * TICK_S)
    for t in range(ticks):
        now = clock[0] = start + (t + 1) * TICK_S
        # Orders since the last tick; webhooks from some busy merchants run their syncs at once.
        for cid in busy:
            newest[cid] = now - rng.uniform(0, 300)
        for cid in daily:
            if rng.random() < 0.1:
                newest[cid] = now - rng.uniform(0, TICK_S)
        requests_before = workers.requests
        webhook_requests = 0
        for cid in busy:
            if rng.random() < 0.2:
                webhook_requests += workers.run(store.by_id[cid], now - rng.uniform(0, 600), "webhook")
        marks0, queries0, items0, calls0 = store.marks, store.queries, store.items_read, queue.calls
        t0 = time.monotonic()
        report = dispatcher.dispatch(datetime.fromtimestamp(now, UTC))
        measured = time.monotonic() - t0
        q, s, m = store.queries - queries0, queue.calls - calls0, store.marks - marks0
        modelled = (
            q * LATENCY_S["query"] / min(dispatcher.readers, len(dispatcher.segments))
            + (s * LATENCY_S["send"] + m * LATENCY_S["mark"]) / dispatcher.senders
        )
        # This machine's core against the dispatcher's share of one (Lambda: 1,769 MB = 1 vCPU).
        dispatch_s = measured * max(1.0, WORKER_MEMORY_MB / dispatcher_mb) + modelled
        worst_dispatch = max(worst_dispatch, dispatch_s)
        runs0 = workers.runs
        spent = workers.drain(queue, now + dispatch_s, room_total - webhook_requests)
        backlog.append(len(queue.pending))
        runs = workers.runs - runs0
        for cls, v in report.staleness_max_s.items():
            staleness_max[cls] = max(staleness_max.get(cls, 0.0), v)
        staleness.update(report.classes)
        totals["queries"] += q
        totals["items_read"] += store.items_read - items0
        totals["sends"] += s
        totals["marks"] += m
        per_tick.append(
            {
                "tick": t + 1,
                "due": report.states.get("due", 0),
                "sent": report.sent,
                "deferred": report.deferred,
                "coalesced": report.states.get("pending", 0) + report.states.get("running", 0),
                "planned_requests": report.planned.get("clover", 0),
                "requests": workers.requests - requests_before,
                "webhook_requests": webhook_requests,
                "scheduled_requests": spent,
                "runs": runs,
                "backlog": backlog[-1],
                "dispatch_measured_s": round(measured, 2),
                "dispatch_s": round(dispatch_s, 2),
                "classes": dict(report.classes),
            }
        )
    idle_class = sum(1 for k in kinds.values() if k == "dormant")
    bound = policy.staleness_bound_s + 2 * RUN_BASE_S + 2 * REQUEST_S
    budget = room_total
    max_requests = max(p["requests"] for p in per_tick)
    worker_calls = sum(IDLE_RUN_CALLS.values())
    runs_total = workers.runs
    # Calls an idle connection costs per tick: its share of the index reads, and its runs' calls
    # (one in four ticks at the hourly bound) with their queue and mark calls.
    idle_runs_per_tick = runs_total and workers.idle_runs / ticks
    idle_calls = (
        totals["queries"] / ticks / connections
        + (idle_runs_per_tick / max(1, idle_class))
        * (
            worker_calls + 1 + 0.1 + 2 / WORKER_BATCH + 1 / WORKER_BATCH
        )  # + mark, send, receive/delete, invoke
    )
    # A run that found changes also writes its orders (a transaction: twice the units of ~3 KB
    # each, for a few orders), one part and the manifest, and puts the OrdersExported event.
    changed = runs_total - workers.idle_runs
    counts = {
        "worker_invocations": runs_total / WORKER_BATCH,
        "worker_run_s": workers.run_s,
        # An update costs the item's size in write units (rounded up to 1 KB): ITEM_KB each, taken
        # for every update (the rate bucket and lease items are smaller: an upper bound).
        "wru": (totals["marks"] + runs_total * IDLE_RUN_CALLS["dynamodb.UpdateItem"]) * ITEM_KB
        + changed * CHANGED_RUN["wru"],
        "rru": totals["items_read"] * ITEM_KB / 4 * 0.5 + runs_total * IDLE_RUN_CALLS["dynamodb.GetItem"],
        "s3_puts": runs_total * IDLE_RUN_CALLS.get("s3.PutObject", 0) + changed * CHANGED_RUN["s3_puts"],
        "sqs_requests": totals["sends"] + runs_total * 2 / WORKER_BATCH,
        "events": runs_total * IDLE_RUN_CALLS.get("events.PutEvents", 0) + changed * CHANGED_RUN["events"],
        "secrets_calls": runs_total * IDLE_RUN_CALLS["secretsmanager.GetSecretValue"],
    }
    cost = _cost(counts, connections=connections, ticks=ticks, dispatch_s=worst_dispatch)
    growth = backlog[-1] - backlog[0] if backlog else 0
    checks = {
        "dispatcher_fits": worst_dispatch <= dispatcher_timeout,
        "budget_holds": max_requests <= budget,
        "backlog_zero": growth == 0 and max(backlog, default=0) == 0,
        "staleness_within_bound": max(staleness_max.values(), default=0.0) <= bound,
    }
    return {
        "adapters": "in-memory, counting the calls the AWS adapters would make (no embedded AWS)",
        "connections": connections,
        "ticks": ticks,
        "mix": dict(MIX),
        "dispatcher_timeout_s": dispatcher_timeout,
        "dispatch_s": round(worst_dispatch, 2),
        "app_budget_requests_per_tick": budget,
        "planned_budget_requests_per_tick": policy.budget("clover"),
        "max_requests_per_tick": max_requests,
        "staleness_bound_s": round(bound, 1),
        "max_staleness_s": {k: round(v, 1) for k, v in staleness_max.items()},
        "backlog": backlog,
        "backlog_growth": growth,
        "aws_calls_per_idle_connection_per_tick": round(idle_calls, 3),
        "worker_calls_per_idle_run": IDLE_RUN_CALLS,
        "runs_with_changes": changed,
        "runs": runs_total,
        "cost": cost,
        "per_tick": per_tick,
        "checks": checks,
        "pass": all(checks.values()),
        "check_ok": True,  # no orders move here: the ground-truth scenarios are the others
    }
