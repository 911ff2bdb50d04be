"""The sync run loop with in-memory fakes: cursor discipline, quarantine, continuations, failures."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from posync.domain import Connection, ConnectionStatus
from posync.errors import AuthorizationRevoked, ConnectionNotFound, MalformedOrder, ProviderError
from posync.ratelimit import BudgetExhausted, Deadline
from posync.serialized import Serialized
from posync.sources import DAY_MS, KeysetSource, ms_to_iso
from posync.sync import COUNT_KEYS, RunResult, SyncConfig, SyncService
from posync.syncqueue import SyncKind, SyncRequest
from posync.transport import RetryPolicy
from tests.unit.test_sources_fakeapi import CLOVER_MID, FakeClover, clover_source

LOOKBACK_MS = 120_000


class Clock:
    """Wall time pinned to the fake API's "now"; monotonic time moves only when told."""

    def __init__(self, api: FakeClover) -> None:
        self.api = api
        self.mono = 0.0
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.api.now_ms / 1000

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.mono += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)


class Connections:
    def __init__(self, conn: Connection, log: list[str]) -> None:
        self.conn = conn
        self.log = log
        self.commits: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.errors: list[str] = []

    def get(self, provider: str, merchant_id: str) -> Connection:
        if (provider, merchant_id) != (self.conn.provider, self.conn.merchant_id):
            raise ConnectionNotFound("no")
        return Connection(**{**self.conn.__dict__})

    def list_by_status(
        self, status: ConnectionStatus | str, page_size: int = 100, start_key: dict[str, Any] | None = None
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        return [self.conn], None

    def commit_cursor(self, conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        self.log.append("commit")
        self.commits.append((cursor, last_run))
        self.conn.cursor = cursor
        self.conn.last_run = last_run

    def record_error(self, conn: Connection, message: str) -> None:
        self.errors.append(message)


class Store:
    """Newest-wins storage + exports in memory; 'durable' means checkpointed or finished.

    Like posync.store with the export ledger: a stored version whose export epoch never
    committed (its invocation died before a checkpoint) is exported again when read again.
    """

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.stored: dict[str, str] = {}  # order id -> modified_at
        self.epoch_of: dict[str, int] = {}
        self.committed_epochs: set[int] = set()
        self.epoch = 0
        self.exported_pending: list[str] = []
        self.exported: list[str] = []
        self.quarantined: list[tuple[dict[str, Any], str]] = []
        self.manifests: list[dict[str, Any]] = []
        self.fail_on_write: int | None = None
        self.writes = 0
        self.on_write: Any = None

    def sink(self, conn: Connection, run_id: str) -> Sink:
        self.epoch += 1
        return Sink(self, run_id)


class Sink:
    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.wants_checkpoint = False

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        s = self.store
        s.writes += 1
        if s.on_write is not None:
            s.on_write()
        if s.fail_on_write is not None and s.writes >= s.fail_on_write:
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "TransactWriteItems"
            )
        changed = 0
        for o in orders:
            oid, version = o["order_id"], o["modified_at"]
            have = s.stored.get(oid, "")
            if have < version or (have == version and s.epoch_of[oid] not in s.committed_epochs):
                s.stored[oid] = version
                s.epoch_of[oid] = s.epoch
                s.exported_pending.append(oid)
                changed += 1
        s.log.append("write")
        return changed

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        self.store.quarantined.append((dict(raw), reason))

    def checkpoint(self) -> None:
        self.store.log.append("checkpoint")
        self.store.exported += self.store.exported_pending
        self.store.exported_pending = []
        self.store.committed_epochs.add(self.store.epoch)
        self.store.epoch += 1

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None:
        self.checkpoint()
        self.store.log.append("finish")
        self.store.manifests.append(
            {"run": self.run_id, "from": cursor_from, "to": cursor_to, "counts": counts}
        )
        return f"exports/manifests/v1/{self.run_id}.json"

    def close(self) -> None:
        self.store.exported_pending = []  # an abandoned invocation's open parts are lost


class Metrics:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add_metric(self, name: str, unit: MetricUnit, value: float) -> None:
        self.values.setdefault(name, []).append(value)


def normalize(provider: str, merchant_id: str, raw: dict[str, Any]) -> dict[str, Any]:
    if raw.get("poison"):
        raise MalformedOrder("total: not an integer")
    order = {"order_id": raw["id"], "modified_at": ms_to_iso(raw["modifiedTime"]), "merchant_id": merchant_id}
    if raw.get("flagged"):
        order["discrepancies"] = [{"field": "totals.tax", "value": 5, "computed": 1}]
    return order


class World:
    def __init__(
        self, n: int = 1500, days: float = 30, cursor: dict[str, Any] | None = None, **cfg: Any
    ) -> None:
        self.api = FakeClover(seed=5)
        self.ids = self.api.add_spread(n, days=days) if n else []
        self.clock = Clock(self.api)
        self.log: list[str] = []
        self.conn = Connection(provider="clover", merchant_id=CLOVER_MID, cursor=cursor or {})
        self.connections = Connections(self.conn, self.log)
        self.store = Store(self.log)
        self.enqueued: list[tuple[SyncRequest, str]] = []
        self.metrics = Metrics()
        self.sources_built: list[KeysetSource] = []
        self.source_error: BaseException | None = None
        self.tokens_error: BaseException | None = None
        config = {"page_limit": 100, "stop_margin_s": 30.0, "checkpoint_s": 1e9, **cfg}
        self.config = SyncConfig(limits={}, lookback_ms=LOOKBACK_MS, **config)
        self.service = SyncService(
            connections=self.connections,
            sources=self.make_source,
            sinks=self.store.sink,
            enqueue=lambda req, dedup: self.enqueued.append((req, dedup)),
            config=self.config,
            normalize=normalize,
            metrics=self.metrics,
            clock=self.clock,
        )

    def make_source(self, conn: Connection, deadline: Deadline) -> KeysetSource:
        if self.source_error is not None:
            raise self.source_error
        src = clover_source(self.api, page_limit=self.config.page_limit, parallelism=3)
        src.transport.policy = RetryPolicy(base_s=0.001, cap_s=0.005)
        if self.tokens_error is not None:
            err = self.tokens_error

            def refuse(conn: Connection) -> str:
                raise err

            src.transport.tokens.access_token = refuse  # type: ignore[method-assign]
        self.sources_built.append(src)
        return src

    def run(
        self,
        kind: SyncKind = SyncKind.SCHEDULED,
        since: str | None = None,
        seconds: float = 900,
        message_id: str | None = None,
    ) -> RunResult:
        req = SyncRequest("clover", CLOVER_MID, kind, since=since, message_id=message_id)
        return self.service.run(req, Deadline(self.clock.mono + seconds, self.clock))

    def continue_run(self, seconds: float = 900) -> RunResult:
        req, _ = self.enqueued.pop(0)
        assert req.kind is SyncKind.CONTINUATION
        return self.service.run(req, Deadline(self.clock.mono + seconds, self.clock))


def assert_commits_follow_durable_writes(log: list[str]) -> None:
    """Every cursor commit comes right after a checkpoint or a finished manifest (or before a run's
    first write, naming the run), never after a bare write."""
    for i, event in enumerate(log):
        if event == "commit" and i > 0:
            assert log[i - 1] in ("checkpoint", "finish", "commit"), log[max(0, i - 3) : i + 1]


# --------------------------------------------------------------------------- a whole run


def test_a_first_sync_backfills_every_order_once_and_settles_the_cursor() -> None:
    # Given a connected merchant that never synced and 1,500 orders over 30 days
    w = World(n=1500, days=30)
    # When the sync runs
    result = w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - 31 * DAY_MS))
    # Then every order is stored and exported exactly once, and a manifest ends the run
    assert result.status == "completed"
    assert Counter(w.store.exported) == Counter(w.ids)
    assert set(w.store.stored) == set(w.ids)
    assert len(w.store.manifests) == 1
    assert result.manifest_key == f"exports/manifests/v1/{result.run_id}.json"
    # and the cursor is settled at the run's upper bound with no run in progress
    cursor, last_run = w.connections.commits[-1]
    assert cursor["modified_ms"] == w.api.now_ms
    assert "run" not in cursor
    assert last_run["status"] == "completed"
    assert last_run["counts"]["exported"] == 1500
    assert_commits_follow_durable_writes(w.log)
    # and the metrics say so
    assert w.metrics.values["OrdersSynced"] == [1500]
    assert w.metrics.values["PagesFetched"][0] >= 15
    assert w.metrics.values["OrdersQuarantined"] == [0]
    assert w.metrics.values["SyncLagSeconds"][0] < 1
    assert "RunDurationMs" in w.metrics.values


def test_the_sinks_get_each_order_normalized_and_serialized_once() -> None:
    # Given a sink that keeps what it is given
    w = World(n=300, days=3)
    given: list[Any] = []
    write = Sink.write

    def keep(self: Sink, orders: Sequence[Mapping[str, Any]]) -> int:
        given.extend(orders)
        return write(self, orders)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Sink, "write", keep)
        # When the sync runs
        w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - 4 * DAY_MS))
    # Then every order came as its normalized form, serialized (not as dicts)
    assert all(isinstance(o, Serialized) for o in given)
    assert sorted(o["order_id"] for o in given) == sorted(w.ids)
    by_id = {o["order_id"]: o.to_dict() for o in given}
    some = w.ids[0]
    assert by_id[some] == {
        "order_id": some,
        "modified_at": by_id[some]["modified_at"],
        "merchant_id": CLOVER_MID,
    }


def test_a_connection_that_never_synced_reads_backfill_days() -> None:
    w = World(n=300, days=200, backfill_days=90)
    w.run()
    oldest = min(
        int(v.split(">=")[1]) for r in w.api.requests for k, v in r["params"] if k == "filter" and ">=" in v
    )
    assert oldest == w.api.now_ms - 90 * DAY_MS
    assert set(w.store.stored) == {i for i in w.ids if w.api.times[i] >= w.api.now_ms - 90 * DAY_MS}


def test_the_next_sync_starts_at_the_cursor_minus_the_lookback_and_brings_changes() -> None:
    # Given a completed first sync
    w = World(n=500, days=5)
    w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - 6 * DAY_MS))
    end1 = w.api.now_ms
    w.api.requests.clear()
    # When 10 orders change and 5 are created, and the next scheduled sync runs
    changed = w.ids[:10]
    for oid in changed:
        w.api.modify(oid)
    created = [w.api.add(w.api.now_ms) for _ in range(5)]
    w.api.now_ms += 1
    result = w.run()
    # Then it read only from the cursor minus the lookback, and exported exactly the changes
    lows = [
        int(v.split(">=")[1]) for r in w.api.requests for k, v in r["params"] if k == "filter" and ">=" in v
    ]
    assert min(lows) == end1 - LOOKBACK_MS
    assert result.status == "completed"
    assert Counter(w.store.exported) == Counter(w.ids + changed + created)


def test_a_run_that_finds_nothing_new_writes_no_manifest_and_sends_no_event() -> None:
    # Given a completed first sync, and nothing changed since
    w = World(n=300, days=5)
    w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - 6 * DAY_MS))
    assert len(w.store.manifests) == 1
    w.api.now_ms += 60_000
    w.log.clear()
    # When the next scheduled sync runs (it re-reads the lookback: versions already stored)
    result = w.run()
    # Then it completes with no manifest (hence no event), and its heartbeat is the cursor commit
    assert result.status == "completed" and result.manifest_key is None
    assert len(w.store.manifests) == 1 and "finish" not in w.log
    assert w.log[-1] == "commit"
    assert w.conn.last_run["status"] == "completed" and w.conn.last_run["manifest"] is None
    assert w.conn.cursor["modified_ms"] == w.api.now_ms


def test_a_manual_since_later_than_the_cursor_never_skips_the_gap() -> None:
    w = World(n=200, days=10)
    w.conn.cursor = {"v": 1, "modified_ms": w.api.now_ms - 8 * DAY_MS, "ids_at_T": []}
    w.run(SyncKind.MANUAL, since=ms_to_iso(w.api.now_ms - DAY_MS))
    assert set(w.store.stored) == {
        i for i in w.ids if w.api.times[i] >= w.api.now_ms - 8 * DAY_MS - LOOKBACK_MS
    }


# --------------------------------------------------------------------------- quarantine


def test_a_malformed_order_is_quarantined_and_the_run_goes_on() -> None:
    w = World(n=0)
    good = [w.api.add(w.api.now_ms - 1000 + i) for i in range(5)]
    bad = w.api.add(w.api.now_ms - 500, poison=True)
    more = [w.api.add(w.api.now_ms - 100 + i) for i in range(5)]
    result = w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - DAY_MS))
    assert result.status == "completed"
    assert result.quarantined == 1
    assert [raw["id"] for raw, _ in w.store.quarantined] == [bad]
    assert w.store.quarantined[0][1] == "total: not an integer"
    assert set(w.store.exported) == set(good + more)
    assert w.metrics.values["OrdersQuarantined"] == [1]
    assert w.connections.commits[-1][1]["counts"]["quarantined"] == 1


def test_orders_with_discrepancies_are_stored_and_counted_once() -> None:
    # Given five orders, two of which normalize with a discrepancy (their tax disagrees with the rates)
    w = World(n=0)
    plain = [w.api.add(w.api.now_ms - 1000 + i) for i in range(3)]
    flagged = [w.api.add(w.api.now_ms - 500 + i, flagged=True) for i in range(2)]
    # When the run syncs them
    result = w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - DAY_MS))
    # Then all five are exported (a flag is not a quarantine), and the two are counted:
    # in the result, the metric (the Discrepancies alarm watches it) and the run's counts
    assert set(w.store.exported) == set(plain + flagged)
    assert (result.quarantined, result.discrepancies) == (0, 2)
    assert w.metrics.values["OrdersWithDiscrepancies"] == [2]
    assert w.connections.commits[-1][1]["counts"]["discrepancies"] == 2


# --------------------------------------------------------------------------- failures


def test_a_failed_write_never_advances_the_cursor_and_a_redelivery_loses_nothing() -> None:
    # Given a run that checkpoints every 3 pages, and storage that fails on the 8th page
    w = World(n=1500, days=30, checkpoint_pages=3)
    w.store.fail_on_write = 8
    since = ms_to_iso(w.api.now_ms - 31 * DAY_MS)
    # When it runs / Then the failure propagates (SQS will redeliver)
    with pytest.raises(ClientError):
        w.run(SyncKind.BACKFILL, since=since)
    # and the cursor was committed only after checkpoints, covering pages 1-6 at most
    assert_commits_follow_durable_writes(w.log)
    assert w.log[-1] == "write" or w.log[-1] == "commit"
    committed = w.connections.commits[-1][0]
    assert committed["run"]["counts"]["pages"] == 6
    assert "modified_ms" not in committed  # nothing settled yet
    # When the message is redelivered and storage works again
    w.store.fail_on_write = None
    result = w.run(SyncKind.BACKFILL, since=since)
    # Then the same run resumes and every order reaches the exports
    assert result.status == "completed"
    assert result.run_id == committed["run"]["id"]
    assert set(w.store.exported) == set(w.ids)
    assert set(w.store.stored) == set(w.ids)


def test_provider_failure_checkpoints_records_the_error_and_raises() -> None:
    w = World(n=800, days=10, checkpoint_pages=1000)
    served = 0
    real = w.api.serve

    def flaky(path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> Any:
        nonlocal served
        served += 1
        if served > 3:
            from tests.unit.test_sources_fakeapi import response

            return response(503, {"message": "down"})
        return real(path, params, headers)

    w.api.serve = flaky  # type: ignore[method-assign]
    with pytest.raises(ProviderError):
        w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - 11 * DAY_MS))
    assert len(w.connections.errors) == 1
    assert "503" in w.connections.errors[0]
    cursor = w.connections.commits[-1][0]
    assert cursor["run"]["counts"]["pages"] >= 1
    assert_commits_follow_durable_writes(w.log)
    assert set(w.store.exported) <= set(w.ids)
    assert len(w.store.exported) == cursor["run"]["counts"]["exported"]


def test_revoked_authorization_stops_without_retry() -> None:
    w = World(n=100, days=1)
    w.tokens_error = AuthorizationRevoked("invalid_grant")
    result = w.run()
    assert result.status == "revoked"
    assert w.enqueued == []
    assert w.store.exported == []


@pytest.mark.parametrize("status", [ConnectionStatus.NEEDS_REAUTH, ConnectionStatus.REVOKED])
def test_inactive_connections_are_skipped_with_a_reason(status: ConnectionStatus) -> None:
    w = World(n=10, days=1)
    w.conn.status = status
    result = w.run()
    assert result.status == "skipped"
    assert result.reason is not None and status.value in result.reason
    assert w.api.requests == []
    assert w.connections.commits == []


def test_an_unknown_connection_is_skipped() -> None:
    w = World(n=0)
    result = w.service.run(SyncRequest("clover", "NOSUCHMERCH01", SyncKind.SCHEDULED), Deadline.after(100))
    assert result.status == "not_found"


# --------------------------------------------------------------------------- deadlines and continuations


def test_a_near_deadline_checkpoints_and_enqueues_a_continuation_of_the_same_run() -> None:
    # Given each page taking 10 s to store and an invocation with 100 s (30 s margin)
    w = World(n=2000, days=40)
    w.store.on_write = lambda: w.clock.advance(10)
    since = ms_to_iso(w.api.now_ms - 41 * DAY_MS)
    # When the backfill runs
    first = w.run(SyncKind.BACKFILL, since=since, seconds=100)
    # Then it stopped early, checkpointed, and queued a continuation with the same run id
    assert first.status == "continued"
    assert 5 <= first.pages <= 8
    (req, dedup) = w.enqueued[0]
    assert req.kind is SyncKind.CONTINUATION
    assert req.run_id == first.run_id
    assert dedup.startswith(f"{first.run_id}-c1-")
    assert w.connections.commits[-1][0]["run"]["id"] == first.run_id
    assert_commits_follow_durable_writes(w.log)
    # When the continuations run (each with the same short budget)
    results = [first]
    while w.enqueued:
        results.append(w.continue_run(seconds=100))
    # Then the last one completes the same run and every order was exported exactly once
    assert results[-1].status == "completed"
    assert {r.run_id for r in results} == {first.run_id}
    assert len(results) >= 3
    assert Counter(w.store.exported) == Counter(w.ids)
    assert len(w.store.manifests) == 1
    assert w.store.manifests[0]["counts"]["exported"] == 2000
    assert w.connections.commits[-1][1]["invocations"] == len(results)


def test_budget_exhaustion_in_the_source_checkpoints_and_continues() -> None:
    w = World(n=1000, days=20)
    calls = 0
    real = w.api.serve

    def limited(path: str, params: list[tuple[str, str]], headers: dict[str, str]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:
            from tests.unit.test_sources_fakeapi import response

            return response(429, {}, {"Retry-After": "3600"})  # far past the budget
        return real(path, params, headers)

    w.api.serve = limited  # type: ignore[method-assign]
    result = w.run(SyncKind.BACKFILL, since=ms_to_iso(w.api.now_ms - 21 * DAY_MS), seconds=600)
    assert result.status == "continued"
    assert w.enqueued and w.enqueued[0][0].kind is SyncKind.CONTINUATION
    assert_commits_follow_durable_writes(w.log)
    assert w.log[-2:] == ["checkpoint", "commit"]


def test_no_app_capacity_requeues_the_request() -> None:
    w = World(n=10, days=1)
    w.source_error = BudgetExhausted("no slots")
    result = w.run(SyncKind.BACKFILL, since="2026-01-01T00:00:00Z")
    assert result.status == "continued"
    (req, _) = w.enqueued[0]
    assert (req.kind, req.since) == (SyncKind.BACKFILL, "2026-01-01T00:00:00Z")


def test_a_backfill_arriving_mid_run_is_deferred_until_the_run_finishes() -> None:
    w = World(n=1200, days=20)
    w.store.on_write = lambda: w.clock.advance(10)
    w.run(SyncKind.SCHEDULED, seconds=60)
    assert w.enqueued
    w.enqueued.clear()  # the continuation got lost; a manual backfill arrives instead
    w.store.on_write = None
    result = w.run(SyncKind.MANUAL, since="2020-01-01T00:00:00Z")
    assert result.status == "completed"
    (req, _) = w.enqueued[0]
    assert (req.kind, req.since) == (SyncKind.MANUAL, "2020-01-01T00:00:00Z")


def test_a_backfill_redelivered_after_its_run_completed_is_not_read_again() -> None:
    # Given a backfill message whose run completed (the invocation then died before SQS heard back)
    w = World(n=600, days=10)
    since = ms_to_iso(w.api.now_ms - 11 * DAY_MS)
    first = w.run(SyncKind.BACKFILL, since=since, message_id="msg-1")
    assert first.status == "completed"
    assert w.connections.commits[-1][0]["done_messages"] == ["msg-1"]
    w.api.requests.clear()
    # When SQS redelivers the same message
    again = w.run(SyncKind.BACKFILL, since=since, message_id="msg-1")
    # Then it is acknowledged without a run: no provider request, nothing exported twice
    assert (again.status, again.reason) == ("skipped", "message already processed")
    assert w.api.requests == []
    assert Counter(w.store.exported) == Counter(w.ids)
    # while a new message with the same body runs, and the cursor keeps the last ten ids
    for i in range(2, 13):
        assert w.run(SyncKind.SCHEDULED, message_id=f"msg-{i}").status == "completed"
    assert w.connections.commits[-1][0]["done_messages"] == [f"msg-{i}" for i in range(3, 13)]
    assert w.run(SyncKind.BACKFILL, since=since, message_id="msg-1").status == "completed"


def test_a_message_redelivered_mid_run_resumes_that_run_and_is_remembered_when_it_ends() -> None:
    # Given a backfill message whose run was cut short (each page takes 10 s to store)
    w = World(n=2000, days=40)
    w.store.on_write = lambda: w.clock.advance(10)
    since = ms_to_iso(w.api.now_ms - 41 * DAY_MS)
    first = w.run(SyncKind.BACKFILL, since=since, seconds=100, message_id="msg-1")
    assert first.status == "continued"
    w.enqueued.clear()  # the invocation died before its continuation was sent
    w.store.on_write = None
    # When SQS redelivers the message
    again = w.run(SyncKind.BACKFILL, since=since, message_id="msg-1")
    # Then it finishes the same run, every order exported once, and the message is remembered
    assert (again.status, again.run_id) == ("completed", first.run_id)
    assert Counter(w.store.exported) == Counter(w.ids)
    assert w.connections.commits[-1][0]["done_messages"] == ["msg-1"]


def test_the_message_id_is_delivery_metadata_never_sent() -> None:
    req = SyncRequest("clover", CLOVER_MID, SyncKind.BACKFILL, since="2026-01-01T00:00:00Z", message_id="m")
    assert "message_id" not in req.to_json() and '"m"' not in req.to_json()
    assert SyncRequest.from_json(req.to_json(), message_id="m2").message_id == "m2"
    assert SyncRequest.from_json(req.to_json()) == req  # equality ignores delivery metadata


def test_config_from_env_validates() -> None:
    from posync.config import ConfigError

    cfg = SyncConfig.from_env({"POSYNC_SYNC_LOOKBACK_SECONDS": "60", "POSYNC_CLOVER_TOKEN_RPS": "4"})
    assert cfg.lookback_ms == 60_000
    assert cfg.limits["clover"].token_rps == 4
    with pytest.raises(ConfigError):
        SyncConfig.from_env({"POSYNC_SYNC_STOP_MARGIN_SECONDS": "soon"})
    with pytest.raises(ConfigError):
        SyncConfig.from_env({"POSYNC_APP_LIMIT": "redis"})
    with pytest.raises(ConfigError, match="POSYNC_SYNC_CPU_SLOTS"):
        SyncConfig.from_env({"POSYNC_SYNC_CPU_SLOTS": "0"})
    assert set(COUNT_KEYS) >= {"pages", "exported", "quarantined"}


def test_a_damaged_run_state_is_replanned_not_retried_forever() -> None:
    # Given a connection whose in-progress run state cannot be read
    w = World(n=200, days=3)
    w.conn.cursor = {
        "v": 1,
        "modified_ms": w.api.now_ms - 4 * DAY_MS,
        "ids_at_T": [],
        "run": {"id": "20260101T000000Z-clover-x-abc", "progress": {"slices": "garbage"}},
    }
    # When it syncs / Then the run is re-planned from the settled cursor and completes
    result = w.run()
    assert result.status == "completed"
    assert result.run_id == "20260101T000000Z-clover-x-abc"
    assert set(w.store.stored) == set(w.ids)


def test_a_damaged_settled_cursor_falls_back_to_the_backfill_window() -> None:
    w = World(n=100, days=3)
    w.conn.cursor = {"v": 1, "modified_ms": "yesterday"}
    result = w.run()
    assert result.status == "completed"
    assert set(w.store.stored) == set(w.ids)


def test_keyset_sources_are_order_sources() -> None:
    from posync.ports import OrderSource

    src: OrderSource = clover_source(FakeClover())
    assert src.provider == "clover"


def test_a_new_run_is_named_in_the_cursor_before_its_first_write() -> None:
    # Given a first sync that checkpoints every 3 pages, and a cursor commit that fails (throttled)
    # right after the first checkpoint made its pages durable
    w = World(n=1000, days=20, checkpoint_pages=3)
    commit = w.connections.commit_cursor
    calls: list[int] = []

    def flaky(conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "UpdateItem")
        commit(conn, cursor, last_run)

    w.connections.commit_cursor = flaky  # type: ignore[method-assign]
    since = ms_to_iso(w.api.now_ms - 21 * DAY_MS)
    # When it runs / Then the failure propagates after the checkpoint
    with pytest.raises(ClientError):
        w.run(SyncKind.BACKFILL, since=since)
    assert w.log[: w.log.index("write")] == ["commit"]
    assert "checkpoint" in w.log
    # and the run was named in the cursor before anything was written, with nothing read yet
    (cursor, last_run) = w.connections.commits[0]
    run_id = cursor["run"]["id"]
    assert last_run["status"] == "in_progress"
    assert cursor["run"]["counts"]["pages"] == 0
    # When SQS redelivers the message
    result = w.run(SyncKind.BACKFILL, since=since)
    # Then the same run resumes (the checkpointed parts belong to it and its manifest lists them)
    assert (result.status, result.run_id) == ("completed", run_id)
    assert w.store.manifests[-1]["run"] == run_id
    assert set(w.store.stored) == set(w.ids)
