"""The fault-injection suite: faults in the providers and in AWS, then the invariants.

Machinery (everything runs in this process, against real HTTP servers on 127.0.0.1):

- ``chaos_session`` (session): one :class:`LocalRuntime` (embedded AWS, Clover and Poynt
  sandboxes) for the suite, started lazily and stopped as soon as the run leaves
  ``tests/chaos`` (so later suites never see its environment). Every boto3 client built
  while it lives gets the :class:`FaultInjector`'s botocore event hooks.
- ``chaos`` (function): a stage of its own for each test (fresh tables, queues, bucket,
  front; shared AWS and sandboxes), whose worker runs in :class:`WorkerContainers` (a
  killed worker's container, and everything it held in memory, is gone; the next
  delivery cold-starts a new one). Faults are cleared and sandbox knobs reset after it.

Faults:

- **Provider** (the sandbox knobs): 429 storms (low per-token limits), a 5xx rate,
  latency above posync's read timeout, revoked grants, spent refresh tokens, orders
  modified while they are paged. Counted from the sandbox's own stats.
- **AWS** (:class:`Fault`): botocore ``before-call`` / ``after-call`` hooks that answer a
  call with a real error (``ThrottlingException``, ``ProvisionedThroughputExceededException``,
  ``InternalError``, ``ServiceUnavailable``...: botocore raises its own modeled
  ``ClientError`` for them, as it would for AWS's answer), or raise :class:`Kill` before the
  call is sent or after it succeeded (the worker dies with or without that write durable),
  or run an action (revoke the merchant after the second page is stored).

Invariants (:meth:`Chaos.verify`), after the faults stop and the schedule runs again: every
sandbox order is in DynamoDB once at its latest version and in the manifested exports
(folded with ``latest``); no version is exported twice; every sync message sent was
processed or is in the dead-letter queue (:class:`SqsLedger`); and, checked right after
each faulty drain (:meth:`Chaos.assert_cursor_covers`), no cursor or committed run
progress is past an order version that is not stored and durably exported.

Each test prints ``chaos: kind=... injected=N lost=0 duplicates=0`` per fault kind; the
session ends with a summary by kind. Nothing here may log or print a secret: each test
also scans the log lines it caused for every token, code and key the sandboxes hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import boto3.session
import pytest
import requests
from botocore.awsrequest import AWSResponse, HTTPHeaders

import posync.aws
from posync.connections import ConnectionRepository
from posync.domain import Connection, connection_id
from posync.exports import RunLedger, latest, modified_ms, read_manifested
from posync.sources import iso_to_ms
from posync_local.local_aws import external_aws_requested
from posync_local.local_functions import FunctionHost, Handler
from posync_local.local_testing import LogCapture
from posync_local.local_tick import TickReport
from posync_local.runtime import LocalRuntime
from posync_local.sandbox import CloverSandbox, PoyntSandbox

HERE = Path(__file__).resolve().parent
NOISY = ("botocore", "boto3", "urllib3", "werkzeug", "s3transfer")
TIMEOUT = 10

# The worker's tuning in this suite: small pages (many writes to fail between), a checkpoint
# every 3 pages (kills land between checkpoints), a 1 s stop margin (short invocations).
CHAOS_ENV = {
    "POSYNC_SYNC_STOP_MARGIN_SECONDS": "1",
    "POSYNC_SYNC_PAGE_LIMIT": "20",
    "POSYNC_SYNC_CHECKPOINT_PAGES": "3",
    "POSYNC_BACKFILL_DAYS": "60",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos_env(**variables): extra environment for the worker of one chaos test's stage"
    )


# --------------------------------------------------------------------------- faults in AWS


class Kill(BaseException):
    """The worker process dies here. A BaseException: no ``except Exception`` in posync stops it."""


@dataclass
class Fault:
    """One kind of AWS fault: which calls it hits, when, and what it does to them.

    ``target`` is a substring of what the call touches (the table names of a DynamoDB call,
    ``bucket/key`` of an S3 call, the queue URL of an SQS call). The first ``skip`` matching
    calls pass; the next ``times`` are hit. ``when="before"``: the call is never sent;
    ``"after"``: it was sent and succeeded, then the fault strikes (a lost reply, a death
    after the write). ``error`` is the AWS error code to answer with (``status`` its HTTP
    status); without one the worker is killed (:class:`Kill`), or ``action`` runs instead.
    """

    kind: str
    service: str
    operation: str
    when: str = "before"
    target: str | None = None
    error: str | None = None
    status: int = 400
    skip: int = 0
    times: int = 1
    action: Callable[[], object] | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, service: str, operation: str, target: str, when: str) -> bool:
        return (
            self.when == when
            and self.service == service
            and self.operation == operation
            and (self.target is None or self.target in target)
        )

    @property
    def exhausted(self) -> bool:
        return self.fired >= self.times


def _target(service: str, params: dict[str, Any]) -> str:
    if service == "dynamodb":
        names: list[str] = []
        if "TableName" in params:
            names.append(str(params["TableName"]))
        for item in params.get("TransactItems", []):
            names.extend(str(op.get("TableName", "")) for op in item.values() if isinstance(op, dict))
        names.extend(str(k) for k in params.get("RequestItems", {}))
        return ",".join(names)
    if service == "s3":
        return f"{params.get('Bucket', '')}/{params.get('Key', '')}"
    if service == "sqs":
        return str(params.get("QueueUrl", ""))
    return ""


@dataclass
class SqsLedger:
    """Every sync message posync sent, and what became of it, by deduplication id.

    Sends are seen on ``SendMessage`` (posync's producers), deliveries on ``ReceiveMessage``
    and processing on ``DeleteMessage(Batch)`` (the local event source deletes what the worker
    did not report failed). A FIFO send deduplicated by SQS is the same message.
    """

    queues: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    processed: set[str] = field(default_factory=set)
    deliveries: int = 0
    _receipts: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, operation: str, params: dict[str, Any], parsed: dict[str, Any]) -> None:
        if str(params.get("QueueUrl", "")) not in self.queues:
            return
        with self._lock:
            if operation == "SendMessage" and "MessageDeduplicationId" in params:
                self.sent.add(str(params["MessageDeduplicationId"]))
            elif operation == "SendMessageBatch":
                ok = {str(s.get("Id")) for s in parsed.get("Successful", [])}
                self.sent.update(
                    str(e["MessageDeduplicationId"])
                    for e in params.get("Entries", [])
                    if str(e.get("Id")) in ok and "MessageDeduplicationId" in e
                )
            elif operation == "ReceiveMessage":
                for m in parsed.get("Messages", []):
                    dedup = m.get("Attributes", {}).get("MessageDeduplicationId")
                    if dedup:
                        self._receipts[str(m["ReceiptHandle"])] = str(dedup)
                        self.deliveries += 1
            elif operation == "DeleteMessage":
                self._done(str(params.get("ReceiptHandle", "")))
            elif operation == "DeleteMessageBatch":
                ok = {str(s.get("Id")) for s in parsed.get("Successful", [])}
                for e in params.get("Entries", []):
                    if str(e.get("Id")) in ok:
                        self._done(str(e.get("ReceiptHandle", "")))

    def _done(self, receipt: str) -> None:
        dedup = self._receipts.get(receipt)
        if dedup is not None:
            self.processed.add(dedup)


class FaultInjector:
    """botocore event hooks on every boto3 client built while it is installed (see the module doc)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._suspended = 0
        self.ledger = SqsLedger()
        self.totals: Counter[str] = Counter()  # AWS faults fired, by kind, for the whole session

    # -- arming

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """No fault strikes inside (the suite's own reads while it checks the invariants)."""
        with self._lock:
            self._suspended += 1
        try:
            yield
        finally:
            with self._lock:
                self._suspended -= 1

    def fired(self) -> Counter[str]:
        with self._lock:
            out: Counter[str] = Counter()
            for f in self._faults:
                out[f.kind] += f.fired
            return out

    # -- hooks

    def hook(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build", self._note)
        events.register("before-call", lambda **kw: self._before(client, **kw))
        events.register("after-call", lambda **kw: self._after(client, **kw))

    @staticmethod
    def _note(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        context["chaos_target"] = _target(service, params)
        context["chaos_params"] = params
        context["chaos_items"] = len(params.get("TransactItems", []))

    def _strike(self, model: Any, context: dict[str, Any], when: str) -> Fault | None:
        service, operation = model.service_model.service_name, model.name
        target = str(context.get("chaos_target", ""))
        with self._lock:
            if self._suspended:
                return None
            for f in self._faults:
                if f.exhausted or not f.matches(service, operation, target, when):
                    continue
                f.seen += 1
                if f.seen <= f.skip:
                    continue
                f.fired += 1
                self.totals[f.kind] += 1
                return f
        return None

    @staticmethod
    def _error_body(f: Fault, context: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Error": {"Code": f.error, "Message": f"injected by the chaos suite ({f.kind})"},
            "ResponseMetadata": {"HTTPStatusCode": f.status, "HTTPHeaders": {}},
        }
        if f.error == "TransactionCanceledException":
            # DynamoDB names each item's reason; here every item was throttled.
            body["CancellationReasons"] = [{"Code": "ThrottlingError"}] * int(context.get("chaos_items", 0))
        return body

    def _before(self, client: Any, *, model: Any, context: dict[str, Any], **_: Any) -> Any:
        f = self._strike(model, context, "before")
        if f is None:
            return None
        if f.action is not None:
            f.action()
            return None
        if f.error is None:
            raise Kill(f.kind)
        # Short-circuit the call: botocore emits after-call and raises its modeled error.
        http = AWSResponse("https://chaos.invalid/", f.status, HTTPHeaders(), None)
        return http, self._error_body(f, context)

    def _after(
        self,
        client: Any,
        *,
        http_response: Any,
        parsed: dict[str, Any],
        model: Any,
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        if model.service_model.service_name == "sqs" and http_response.status_code < 300:
            self.ledger.observe(model.name, context.get("chaos_params", {}), parsed)
        if http_response.status_code >= 300:
            return
        f = self._strike(model, context, "after")
        if f is None:
            return
        if f.action is not None:
            f.action()
            return
        if f.error is None:
            raise Kill(f.kind)
        # The call succeeded but its reply is lost: the caller sees the error.
        raise client.exceptions.from_code(f.error)(self._error_body(f, context), model.name)


# --------------------------------------------------------------------------- the worker's containers


class WorkerContainers:
    """The worker as Lambda runs it: one warm container until a :class:`Kill`, then a cold one.

    Installed as the runtime's ``worker`` override. A killed invocation's messages go back
    to the queue (the local event source sees the failure and makes them visible again,
    as SQS does after the visibility timeout); the container's module state (token cache,
    limiters, clients' caches) is dropped with it.
    """

    def __init__(self, rt: LocalRuntime) -> None:
        self.rt = rt
        self._host: FunctionHost | None = None
        self.cold_starts = 0
        self.kills: Counter[str] = Counter()

    def _handler(self) -> Handler:
        if self._host is None:
            self._host = FunctionHost(
                self.rt.functions.functions_dir, stage=self.rt.stage, account_id=self.rt.functions.account_id
            )
            self.cold_starts += 1
        return self._host.handler("worker")

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        handler = self._handler()
        try:
            return handler(event, context)
        except Kill as kill:
            self._host = None
            self.kills[str(kill)] += 1
            raise RuntimeError(f"the worker was killed ({kill})") from None


# --------------------------------------------------------------------------- the session


@dataclass
class Verdict:
    orders: int
    lost: list[str]
    stale: list[str]
    duplicates: list[tuple[str, str]]
    messages_sent: int
    messages_lost: list[str]
    dead_lettered: int


class ChaosSession:
    """The suite's runtime (started on first use) and its tallies."""

    def __init__(self) -> None:
        self.injector = FaultInjector()
        self.capture = LogCapture()
        self.runtime: LocalRuntime | None = None
        self._patch: pytest.MonkeyPatch | None = None
        self._stages = itertools.count(1)
        self._knobs: dict[int, dict[str, Any]] = {}
        self.injected: Counter[str] = Counter()
        self.lost = 0
        self.duplicates = 0
        self.orders = 0
        self.messages = Counter[str]()
        self.lines: list[str] = []
        self.final: list[str] = []
        self._levels: dict[str, int] = {}

    def start(self) -> LocalRuntime:
        if self.runtime is not None:
            return self.runtime
        patch = pytest.MonkeyPatch()
        original = boto3.session.Session.client
        injector = self.injector

        def client(self: boto3.session.Session, *args: Any, **kwargs: Any) -> Any:
            made = original(self, *args, **kwargs)
            injector.hook(made)
            return made

        patch.setattr(boto3.session.Session, "client", client)
        self._patch = patch
        posync.aws.reset_clients()
        root = logging.getLogger()
        self._levels = {name: logging.getLogger(name or None).level for name in ("", *NOISY)}
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
        self.capture.attach()
        rt = LocalRuntime(api_port=0, aws_port=0, sandbox=True, stage="chaos", env=CHAOS_ENV)
        try:
            rt.start()
        except BaseException:
            self.close()
            raise
        self.capture.attach()  # loggers the handlers created while loading
        for sb in (rt.clover, rt.poynt):
            assert sb is not None
            self._knobs[id(sb)] = {
                f.name: getattr(sb.knobs, f.name)
                for f in dataclasses.fields(sb.knobs)
                if not f.name.startswith("_")
            }
        self.runtime = rt
        return rt

    def next_stage(self) -> str:
        return f"cx{next(self._stages)}"

    def reset_sandboxes(self) -> None:
        rt = self.runtime
        if rt is None:
            return
        for sb in (rt.clover, rt.poynt):
            if sb is None:
                continue
            for name, value in self._knobs.get(id(sb), {}).items():
                setattr(sb.knobs, name, value)
            sb.knobs.clear_failures()
            sb.limiter.reset()

    def close(self) -> None:
        """Stop the runtime, restore the environment and boto3 (idempotent)."""
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None
        if self._patch is not None:
            self._patch.undo()
            self._patch = None
            posync.aws.reset_clients()
        self.capture.detach()
        for name, level in self._levels.items():
            logging.getLogger(name or None).setLevel(level)
        self._levels = {}

    def summary(self) -> list[str]:
        kinds = " ".join(f"{k}={n}" for k, n in sorted(self.injected.items()))
        return [
            *self.lines,
            f"chaos: total injected={sum(self.injected.values())} ({kinds}) orders={self.orders} "
            f"lost={self.lost} duplicates={self.duplicates} messages_sent={self.messages['sent']} "
            f"processed={self.messages['processed']} dead_lettered={self.messages['dead_lettered']} "
            f"lost_messages={self.messages['lost']}",
        ]


_session = ChaosSession()


@pytest.fixture(scope="session")
def chaos_session() -> Iterator[ChaosSession]:
    yield _session
    _session.close()
    if _session.lines:
        _session.final = _session.summary()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The session's chaos summary (made by the fixture's finalizer), after the test output."""
    if _session.final:
        terminalreporter.section("chaos summary")
        for line in _session.final:
            terminalreporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Leaving this folder: stop the suite's runtime so later suites see the environment as it was."""
    if nextitem is not None and HERE in Path(str(nextitem.path)).resolve().parents:
        return
    _session.close()


# --------------------------------------------------------------------------- one test's stage


def later(hours: int) -> datetime:
    """A schedule slot of its own (ticks in one slot are deduplicated, as on AWS)."""
    return datetime.now(UTC) + timedelta(hours=hours)


def order_ms(provider: str, raw: dict[str, Any]) -> int:
    if provider == "clover":
        return int(raw["modifiedTime"])
    return iso_to_ms(str(raw["updatedAt"]))


class Chaos:
    """One test's stage: connect merchants, inject faults, drain, check the invariants."""

    def __init__(self, session: ChaosSession, rt: LocalRuntime, test_name: str) -> None:
        self.session = session
        self.rt = rt
        self.name = test_name
        self.faults = session.injector
        self.containers = WorkerContainers(rt)
        rt.functions.override("worker", self.containers)
        self.merchants: list[tuple[str, str]] = []
        self.provider_faults: Counter[str] = Counter()
        self.aws_faults: Counter[str] = Counter()
        self._slots = itertools.count(1)
        self._log_mark = session.capture.mark()
        queue = rt.settings.resources.queue("sync")
        assert rt.provisioned is not None
        self.sync_queue_url = rt.provisioned.sync_queue_url
        self.dlq_name = rt.settings.resources.queue(str(queue.dead_letter)).name
        self.faults.ledger = SqsLedger(queues={self.sync_queue_url})

    # -- sandboxes and merchants

    def sandbox(self, provider: str) -> CloverSandbox | PoyntSandbox:
        sb = self.rt.clover if provider == "clover" else self.rt.poynt
        assert sb is not None
        return sb

    def clover(self) -> CloverSandbox:
        assert self.rt.clover is not None
        return self.rt.clover

    def connect(self, provider: str, merchant_id: str) -> None:
        """The browser round trip: /connect -> consent (auto-approved) -> callback (queues the backfill),
        in one cookie-keeping session (the callback requires the binding cookie /connect sets)."""
        sb = self.sandbox(provider)
        sb.knobs.auto_approve = True
        browser = requests.Session()
        try:
            params = {"merchant_id": merchant_id} if provider == "clover" else {}
            r = browser.get(
                f"{self.rt.api_url}/connect/{provider}", params=params, allow_redirects=False, timeout=TIMEOUT
            )
            assert r.status_code == 302, r.text
            consent = str(r.headers["Location"])
            if provider == "poynt":
                consent += f"&business_id={merchant_id}"
            r = browser.get(consent, allow_redirects=False, timeout=TIMEOUT)
            assert r.status_code == 302, r.text
            r = browser.get(str(r.headers["Location"]), allow_redirects=False, timeout=TIMEOUT)
            assert r.status_code in (200, 302), r.text
        finally:
            browser.close()
            sb.knobs.auto_approve = False

    def merchant(self, provider: str, orders: int = 80, days: int = 30) -> str:
        """A new sandbox merchant, connected (its backfill is queued, not run)."""
        m = self.sandbox(provider).add_merchant(orders=orders, days=days)
        self.connect(provider, m)
        self.merchants.append((provider, m))
        return m

    def connection(self, provider: str, merchant_id: str) -> Connection:
        self.rt.apply_env()
        return ConnectionRepository(self.rt.settings).get(provider, merchant_id)

    # -- running

    def drain(self, **options: Any) -> TickReport:
        """Drain the sync queue into the worker (failed deliveries come back at once)."""
        options.setdefault("retry_delay_s", 0)
        options.setdefault("max_seconds", 60.0)
        return self.rt.drain(**options)

    def tick(self, **options: Any) -> TickReport:
        """Fire the schedule in a slot of its own and drain."""
        options.setdefault("retry_delay_s", 0)
        options.setdefault("max_seconds", 60.0)
        return self.rt.tick(at=later(next(self._slots)), **options)

    def stop_faults(self) -> None:
        """Disarm the AWS faults (what they did stays counted)."""
        self.aws_faults.update(self.faults.fired())
        self.faults.clear()

    def settle(self, rounds: int = 4) -> None:
        """The faults stop; the schedule runs until every connection has completed a run since."""
        self.stop_faults()
        self.session.reset_sandboxes()
        for _ in range(rounds):
            report = self.tick()
            assert report.idle, report.to_dict()
            pending = [
                (p, m)
                for p, m in self.merchants
                if self.connection(p, m).cursor.get("run") is not None or report.failures
            ]
            if not pending:
                return
        raise AssertionError(f"runs still in progress after {rounds} scheduled syncs: {pending}")

    # -- the invariants

    def truth(self, provider: str, merchant_id: str) -> dict[str, int]:
        """order id -> modified ms of the sandbox's current versions."""
        return {str(o["id"]): order_ms(provider, o) for o in self.sandbox(provider).orders(merchant_id)}

    def stored(self, provider: str, merchant_id: str) -> dict[str, tuple[int, str]]:
        """order id -> (modified ms, export epoch) of what DynamoDB holds."""
        ddb = boto3.client("dynamodb")
        out: dict[str, tuple[int, str]] = {}
        pages = ddb.get_paginator("query").paginate(
            TableName=self.rt.settings.orders_table,
            KeyConditionExpression="connection_id = :c",
            ExpressionAttributeValues={":c": {"S": connection_id(provider, merchant_id)}},
            ProjectionExpression="order_id, modified_ms, export_ref",
            ConsistentRead=True,
        )
        for page in pages:
            for item in page.get("Items", []):
                out[item["order_id"]["S"]] = (int(item["modified_ms"]["N"]), item["export_ref"]["S"])
        return out

    def exported(self, provider: str, merchant_id: str) -> list[tuple[str, int]]:
        return [
            (str(o["order_id"]), modified_ms(str(o["modified_at"])))
            for o in read_manifested(self.rt.settings, provider=provider, merchant_id=merchant_id)
        ]

    def assert_cursor_covers(self, provider: str, merchant_id: str) -> int:
        """No cursor moved past an unwritten page: every order version the connection's cursor (or
        its run's committed progress) says was read is stored, and its export epoch committed.

        Returns how many of the sandbox's current versions the cursor covers.
        """
        self.rt.apply_env()
        with self.faults.suspended():
            conn = self.connection(provider, merchant_id)
            cursor = dict(conn.cursor or {})
            run = cursor.pop("run", None) or {}
            decode: Callable[[Any], int] = (
                (lambda v: int(v)) if provider == "clover" else (lambda v: iso_to_ms(str(v)))
            )
            time_key = "modified_ms" if provider == "clover" else "updated_at"
            progress = run.get("progress")
            if progress:
                end = decode(progress["end"])
                pending = [
                    (decode(s["from"]), decode(s["to"]), set(s.get("ids", []))) for s in progress["slices"]
                ]

                def covered(t: int, oid: str) -> bool:
                    return t < end and not any(
                        a <= t < b and not (t == a and oid in ids) for a, b, ids in pending
                    )

            elif time_key in cursor:
                settled = decode(cursor[time_key])

                def covered(t: int, oid: str) -> bool:
                    return t < settled

            else:
                return 0
            stored = self.stored(provider, merchant_id)
            ledger = RunLedger(self.rt.settings)
            n = 0
            for oid, t in self.truth(provider, merchant_id).items():
                if not covered(t, oid):
                    continue
                n += 1
                assert oid in stored, f"{provider} {oid}: under the cursor but not stored"
                assert stored[oid][0] == t, (
                    f"{provider} {oid}: under the cursor but stored at another version"
                )
                assert ledger.committed(stored[oid][1]), (
                    f"{provider} {oid}: under the cursor, export not durable"
                )
            return n

    def dead_lettered(self) -> set[str]:
        sqs = boto3.client("sqs")
        url = sqs.get_queue_url(QueueName=self.dlq_name)["QueueUrl"]
        ids: set[str] = set()
        for _ in range(20):
            got = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=30,
                MessageSystemAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                break
            ids.update(str(m["Attributes"]["MessageDeduplicationId"]) for m in got)
        return ids

    def verify(self, *, expect_faults: bool = True) -> Verdict:
        """After the faults: the invariants of the module doc, a summary line per fault kind."""
        self.rt.apply_env()
        with self.faults.suspended():
            lost: list[str] = []
            stale: list[str] = []
            duplicates: list[tuple[str, str]] = []
            total = 0
            for provider, m in self.merchants:
                truth = self.truth(provider, m)
                total += len(truth)
                stored = self.stored(provider, m)
                versions = self.exported(provider, m)
                counts = Counter(versions)
                duplicates += [(oid, str(ms)) for (oid, ms), n in counts.items() if n > 1]
                folded = {
                    str(o["order_id"]): modified_ms(str(o["modified_at"]))
                    for o in latest(read_manifested(self.rt.settings, provider=provider, merchant_id=m))
                }
                for oid, t in truth.items():
                    if oid not in stored:
                        lost.append(f"{provider}:{oid}:not-stored")
                    elif oid not in folded:
                        lost.append(f"{provider}:{oid}:not-exported")
                    elif stored[oid][0] != t or folded[oid] != t:
                        stale.append(f"{provider}:{oid}")
                extra = (set(stored) | set(folded)) - set(truth)
                lost += [f"{provider}:{oid}:unknown" for oid in sorted(extra)]
            ledger = self.faults.ledger
            sent = set(ledger.sent)
            dlq = self.dead_lettered()
            missing = sorted(sent - ledger.processed - dlq)
            verdict = Verdict(
                orders=total,
                lost=lost,
                stale=stale,
                duplicates=duplicates,
                messages_sent=len(sent),
                messages_lost=missing,
                dead_lettered=len(dlq),
            )
        injected = self.faults.fired() + self.aws_faults + self.provider_faults
        for kind, killed in self.containers.kills.items():
            assert injected[kind] >= killed
        if expect_faults:
            assert sum(injected.values()) > 0, "no fault was injected: the test proves nothing"
        s = self.session
        for kind, n in sorted(injected.items()):
            if n == 0:
                continue
            line = (
                f"chaos: kind={kind} injected={n} lost={len(lost) + len(stale)} "
                f"duplicates={len(duplicates)} test={self.name}"
            )
            print(line)
            s.lines.append(line)
            s.injected[kind] += n
        s.lost += len(lost) + len(stale)
        s.duplicates += len(duplicates)
        s.orders += total
        s.messages["sent"] += verdict.messages_sent
        s.messages["processed"] += len(ledger.processed & sent)
        s.messages["dead_lettered"] += verdict.dead_lettered
        s.messages["lost"] += len(missing)
        self.assert_no_secret_in_logs()
        assert lost == [], f"orders lost: {lost[:10]}"
        assert stale == [], f"orders not at their latest version: {stale[:10]}"
        assert duplicates == [], f"versions exported twice: {duplicates[:10]}"
        assert missing == [], f"sync messages neither processed nor dead-lettered: {missing}"
        return verdict

    def assert_no_secret_in_logs(self) -> None:
        needles: set[str] = set()
        for sb in (self.rt.clover, self.rt.poynt):
            assert sb is not None
            for value in sb.secrets():
                needles.update(secret_needles(value))
        leaked = self.session.capture.find(sorted(needles), since=self._log_mark)
        assert leaked == [], f"{len(leaked)} secret value(s) reached the logs"

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.session.capture.since(self._log_mark)))


def secret_needles(value: str) -> set[str]:
    """A secret as it could appear in a log line: whole, JSON-escaped, and (keys) line by line."""
    out = {value, json.dumps(value)[1:-1]}
    if "-----BEGIN" in value:
        out.update(line for line in value.splitlines() if len(line) >= 40 and "-----" not in line)
    return {v for v in out if len(v) >= 12}


@pytest.fixture
def chaos(chaos_session: ChaosSession, request: pytest.FixtureRequest) -> Iterator[Chaos]:
    if external_aws_requested():
        pytest.skip("the chaos suite injects faults into the embedded AWS only")
    marker = request.node.get_closest_marker("chaos_env")
    env = {**CHAOS_ENV, **(marker.kwargs if marker is not None else {})}
    base = chaos_session.start()
    rt = base.derive(chaos_session.next_stage(), env=env)
    rt.start()
    c = Chaos(chaos_session, rt, request.node.name)
    try:
        yield c
    finally:
        chaos_session.injector.clear()
        chaos_session.reset_sandboxes()
        rt.stop()
        base.apply_env()


def stats_delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int:
    return int(after[key]) - int(before[key])
