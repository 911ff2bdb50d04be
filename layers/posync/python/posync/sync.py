"""One sync run of one connection: pages since the cursor -> normalize -> store -> export -> cursor.

:meth:`SyncService.run` handles one SQS message (:class:`posync.syncqueue.SyncRequest`)
within the invocation's deadline:

1. Load the connection. ``needs_reauth`` / ``revoked`` connections are skipped with a
   logged reason (no retry); an unknown one likewise.
2. Decide what to read. A run in progress (the cursor's ``run`` part, left by an earlier
   invocation) is resumed exactly; otherwise a new run reads from the settled cursor minus
   the lookback (2 minutes: late writes and clock skew; the duplicates it brings are
   absorbed by newest-wins storage), or from ``request.since`` (backfill, manual; never
   later than the cursor, so a manual sync cannot skip a gap), or, for a connection that
   never synced, ``settings.backfill_days`` back. The run's upper bound is "now" at its
   start: orders modified during the run are read by the next one.
3. For every page (fetched concurrently by the source, see ``posync.sources``): each order
   is normalized in the fetch thread as soon as it is parsed (``MalformedOrder`` ->
   quarantined with its reason, the run goes on) and serialized once
   (``posync.serialized``), so a page waiting to be written holds one JSON text per
   order, not the raw orders (some 5x larger as objects) nor canonical dicts (some 2x);
   then the page is upserted newest-wins and what changed is added to the run's export
   parts.
4. Checkpoint (export parts uploaded and recorded, then the cursor committed with the
   page's progress) every ``checkpoint_s`` seconds / ``checkpoint_pages`` pages, when the
   export writer asks, and when the invocation stops. The cursor never moves past a page
   whose DynamoDB and S3 writes are not durable; a failed write raises without a
   checkpoint.
5. When the time is short (``stop_margin_s`` before the Lambda deadline) or a wait would
   not fit (:class:`~posync.ratelimit.BudgetExhausted`): checkpoint, enqueue a
   ``CONTINUATION`` with the same run id, return. When everything is read: the manifest
   and the ``OrdersExported`` event (``ExportWriter.finish``), then the settled cursor; a
   run that exported and quarantined nothing writes no manifest and sends no event.
6. ``AuthorizationRevoked``: checkpoint what is durable and stop (the token service has
   already marked the connection ``needs_reauth``). Provider failures that outlast the
   transport's retries: checkpoint, record a short reason on the connection, raise (SQS
   redelivers; after ``maxReceiveCount`` the message goes to the DLQ).

Cursor (the connection's ``cursor`` attribute, JSON)::

    {"v": 1, "modified_ms": T, "ids_at_T": [], "newest": N,          # Clover (Poynt: "updated_at", ISO)
     "done_messages": [...],  # SQS ids of the last messages whose runs completed
     "run": {"id", "kind", "started_at", "from", "progress", "counts", "invocations", ...}}

A message redelivered after its run completed (the invocation died before SQS got its
answer) finds its id in ``done_messages`` and is acknowledged without a run; redelivered
mid-run, it resumes the run like a continuation would.

The ``run`` part exists only while a run is in progress; ``progress`` is the source's
keyset snapshot (``{"end", "slices": [{"from", "to", "ids", "offset"?}]}``).
"""

from __future__ import annotations

import math
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from posync.config import PROVIDERS, ConfigError, Settings
from posync.domain import Connection, ConnectionStatus
from posync.errors import (
    AuthorizationRevoked,
    ConnectionNotFound,
    InvalidInput,
    MalformedOrder,
    PosyncError,
    ProviderError,
)
from posync.observability import logger
from posync.ports import AccessTokens, ConnectionStore, ExportSink, OrderSink, OrderSource
from posync.ratelimit import (
    SYSTEM_CLOCK,
    AppRate,
    AppSlots,
    BudgetExhausted,
    Clock,
    Deadline,
    Limits,
    RequestLimiter,
    TokenLimiter,
    TokenLimiters,
)
from posync.serialized import Serialized
from posync.sources import DAY_MS, KeysetSource, Page, Plan, SourceConfig, build_source, iso_to_ms, ms_to_iso
from posync.syncqueue import SyncKind, SyncRequest
from posync.tombstones import StoredVersions, with_tombstones_settled
from posync.transport import Transport, session

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SyncConfig:
    """The engine's tuning, from the environment (validated at cold start)."""

    limits: Mapping[str, Limits]
    lookback_ms: int = 2 * 60_000  # POSYNC_SYNC_LOOKBACK_SECONDS
    stop_margin_s: float = 30.0  # POSYNC_SYNC_STOP_MARGIN_SECONDS: stop this long before the deadline
    checkpoint_s: float = 0.0  # POSYNC_SYNC_CHECKPOINT_SECONDS (0: only when the invocation stops)
    checkpoint_pages: int = 0  # POSYNC_SYNC_CHECKPOINT_PAGES (0: by time only)
    parallelism: int = 0  # POSYNC_SYNC_PARALLELISM (0: the token's concurrency)
    cpu_slots: int = 1  # POSYNC_SYNC_CPU_SLOTS: pages parsed and normalized at once
    page_limit: int = 0  # POSYNC_SYNC_PAGE_LIMIT (0: the provider's maximum)
    app_limit: str = "dynamodb"  # POSYNC_APP_LIMIT: dynamodb | local | off
    backfill_days: int = 90
    read_timeout_s: float = 30.0  # POSYNC_SYNC_READ_TIMEOUT_SECONDS: per provider request

    @classmethod
    def from_env(cls, env: Mapping[str, str], settings: Settings | None = None) -> SyncConfig:
        def num(name: str, default: float, lo: float, hi: float) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
            if math.isnan(value) or not lo <= value <= hi:
                raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {raw!r}")
            return value

        app_limit = env.get("POSYNC_APP_LIMIT", "dynamodb") or "dynamodb"
        if app_limit not in ("dynamodb", "local", "off"):
            raise ConfigError(f"POSYNC_APP_LIMIT must be dynamodb, local or off, got {app_limit!r}")
        return cls(
            limits={p: Limits.from_env(p, env) for p in PROVIDERS},
            lookback_ms=int(num("POSYNC_SYNC_LOOKBACK_SECONDS", 120, 0, 86_400) * 1000),
            stop_margin_s=num("POSYNC_SYNC_STOP_MARGIN_SECONDS", 30, 0, 600),
            checkpoint_s=num("POSYNC_SYNC_CHECKPOINT_SECONDS", 0, 0, 3600),
            checkpoint_pages=int(num("POSYNC_SYNC_CHECKPOINT_PAGES", 0, 0, 100_000)),
            parallelism=int(num("POSYNC_SYNC_PARALLELISM", 0, 0, 64)),
            cpu_slots=int(num("POSYNC_SYNC_CPU_SLOTS", 1, 1, 16)),
            page_limit=int(num("POSYNC_SYNC_PAGE_LIMIT", 0, 0, 1000)),
            app_limit=app_limit,
            read_timeout_s=num("POSYNC_SYNC_READ_TIMEOUT_SECONDS", 30, 0.1, 300),
            backfill_days=settings.backfill_days if settings is not None else 90,
        )


# --------------------------------------------------------------------------- sinks


class StoreSink:
    """Pages into newest-wins storage and the run's export parts (exactly once, see posync.store)."""

    def __init__(
        self,
        repository: OrderSink,
        exports: ExportSink,
        conn_id: str,
        versions: StoredVersions | None = None,
    ) -> None:
        self.repository = repository
        self.exports = exports
        self.conn_id = conn_id
        self.versions = versions  # set: a page's tombstones are settled against storage first

    @property
    def run_id(self) -> str:
        return self.exports.run_id

    @property
    def wants_checkpoint(self) -> bool:
        return self.exports.should_checkpoint

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        orders = with_tombstones_settled(self.versions, self.conn_id, list(orders))
        changed = self.repository.write(self.conn_id, self.exports.run_id, orders, ledger=self.exports)
        for order in changed:
            self.exports.add(order)
        return len(changed)

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        self.exports.quarantine(raw, reason)

    def checkpoint(self) -> None:
        self.exports.checkpoint()

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None:
        return self.exports.finish(cursor_from, cursor_to, counts)

    def close(self) -> None:
        self.exports.close()


@dataclass
class CountingSink:
    """Counts what a run would store: for benchmarks of the fetch pipeline without AWS."""

    run_id: str = "bench"
    orders: int = 0
    pages: int = 0
    quarantined: int = 0
    checkpoints: int = 0
    finished: bool = False
    keep_ids: bool = False
    ids: list[str] = field(default_factory=list)

    @property
    def wants_checkpoint(self) -> bool:
        return False

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        self.pages += 1
        self.orders += len(orders)
        if self.keep_ids:
            self.ids.extend(str(o["order_id"]) for o in orders)
        return len(orders)

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        self.quarantined += 1

    def checkpoint(self) -> None:
        self.checkpoints += 1

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None:
        self.finished = True
        return None

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- sources


class SourceFactory:
    """Builds one connection's order source for one invocation (limiters, transport, app lease).

    Per-token limiters live as long as the factory (a container): a 429's pause reaches the
    next invocation here, and through the run's state (``paused_until``) one in another
    container. The app's concurrency is leased when ``app_slots`` is given, renewed (and
    resized to a fair share) before requests, and released by ``source.close()``, which also
    hands the app's rate tokens taken and not used back.
    """

    def __init__(
        self,
        settings: Settings,
        tokens: AccessTokens,
        config: SyncConfig,
        *,
        app_rates: Mapping[str, AppRate] | None = None,
        app_slots: Callable[[str], AppSlots] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        app_tokens: AccessTokens | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self._app_tokens = app_tokens  # Poynt on-terminal connections (built on first use)
        self.config = config
        self.app_rates = dict(app_rates or {})
        self.app_slots = app_slots
        self.clock = clock
        self.limiters = {p: TokenLimiters(config.limits[p], clock) for p in PROVIDERS}

    def __call__(self, conn: Connection, deadline: Deadline) -> KeysetSource:
        p = conn.provider
        limits = self.config.limits[p]
        want = self.config.parallelism or limits.token_concurrency or 5
        if limits.token_concurrency:
            want = min(want, limits.token_concurrency)
        if p == "poynt":
            want = 1  # one sequential pass, one request at a time (posync.providers.poynt.source)
        if _caught_up(conn, self.clock.time()):
            # A scheduled run of a connection that is caught up reads a page or two: one request
            # slot is enough, and leasing more would starve the other connections' runs of the
            # app's shared concurrency. A run that turns out bigger continues with full parallelism.
            want = 1
        release: Callable[[], None] | None = None
        slots: AppSlots | None = None
        if self.app_slots is not None:
            slots = self.app_slots(p)
            want = slots.lease(want, deadline)
            release = slots.release
        token = self.limiters[p].get(conn.connection_id)
        token.set_concurrency(min(want, limits.token_concurrency) if limits.token_concurrency else want)
        app_rate = self.app_rates.get(p)
        transport = Transport(
            conn,
            self.settings.hosts(p).api_base,
            self._tokens_for(conn),
            RequestLimiter(token, app_rate, slots),
            http=session(p, max(16, 2 * want)),
            clock=self.clock,
            read_timeout_s=self.config.read_timeout_s,
        )
        source = build_source(
            p,
            conn.merchant_id,
            transport,
            SourceConfig(
                parallelism=want,
                cpu_slots=self.config.cpu_slots,
                lookback_ms=self.config.lookback_ms,
                page_limit=self.config.page_limit or None,
            ),
        )
        if release is not None:
            source.on_close(release)
        if app_rate is not None:
            source.on_close(app_rate.settle)  # tokens taken and not used go back to the app's bucket
        return source

    def _tokens_for(self, conn: Connection) -> AccessTokens:
        """The merchant's tokens; a Poynt on-terminal connection uses the app's own token."""
        if conn.auth != "app_installed":
            return self.tokens
        if self._app_tokens is None:
            from posync.providers.poynt.installs import AppTokens, app_oauth

            self._app_tokens = AppTokens(app_oauth(self.settings))
        return self._app_tokens


CAUGHT_UP_S = 2 * 3600


def _token_limiter(source: Any) -> TokenLimiter | None:
    """The per-token limiter behind a source's transport (None for sources without one)."""
    limiter = getattr(getattr(source, "transport", None), "limiter", None)
    token = getattr(limiter, "token", None)
    return token if isinstance(token, TokenLimiter) else None


def _caught_up(conn: Connection, now_s: float) -> bool:
    """A settled cursor (no run in progress) less than ``CAUGHT_UP_S`` behind ``now_s``."""
    cursor = conn.cursor or {}
    if not cursor or "run" in cursor:
        return False
    position: float | None = None
    if isinstance(cursor.get("modified_ms"), int | float):
        position = float(cursor["modified_ms"]) / 1000
    elif isinstance(cursor.get("updated_at"), str):
        try:
            position = datetime.fromisoformat(cursor["updated_at"].replace("Z", "+00:00")).timestamp()
        except ValueError:
            return False
    return position is not None and now_s - position < CAUGHT_UP_S


# --------------------------------------------------------------------------- the run


class Metrics(Protocol):
    def add_metric(self, name: str, unit: MetricUnit, value: float) -> None: ...


class Enqueue(Protocol):
    def __call__(self, request: SyncRequest, dedup_id: str) -> None: ...


@dataclass
class RunResult:
    """How a sync invocation ended for one connection, with its counts."""

    status: str  # completed | continued | skipped | not_found | revoked
    run_id: str | None = None
    reason: str | None = None
    pages: int = 0
    orders: int = 0  # new orders read (after keyset de-duplication)
    exported: int = 0
    quarantined: int = 0
    discrepancies: int = 0  # orders stored flagged (canonical ``discrepancies`` not empty)
    requests: int = 0
    manifest_key: str | None = None
    corrected: int = 0  # reconcile and deleted runs: versions exported because storage was out of date


DONE_MESSAGES = 10  # message ids remembered: a whole SQS batch (10) from one connection's group
COUNT_KEYS = (
    "pages",
    "fetched",
    "stored",
    "exported",
    "quarantined",
    "requests",
    "rate_limited",
    "discrepancies",  # orders stored with a derived figure that disagrees with its computation
)


@dataclass(frozen=True)
class Quarantined:
    """A provider order that did not normalize, and why (it goes to the quarantine)."""

    raw: dict[str, Any]
    reason: str


def done_messages(cursor: dict[str, Any] | None) -> list[str]:
    """The ids of the last messages whose runs completed (kept in the settled cursor)."""
    got = (cursor or {}).get("done_messages")
    return [m for m in got if isinstance(m, str)] if isinstance(got, list) else []


def new_run_id(provider: str, merchant_id: str, now_s: float) -> str:
    stamp = datetime.fromtimestamp(now_s, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{provider}-{merchant_id}-{secrets.token_hex(3)}"


class SyncService:
    """Runs syncs; handlers build it once per container with the real adapters."""

    def __init__(
        self,
        *,
        connections: ConnectionStore,
        sources: Callable[[Connection, Deadline], KeysetSource],
        sinks: Callable[[Connection, str], Any],
        enqueue: Enqueue,
        config: SyncConfig,
        normalize: Callable[[str, str, dict[str, Any]], dict[str, Any]] | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
        versions: Any = None,
    ) -> None:
        if normalize is None:
            from posync.canonical import normalize as canonical_normalize

            normalize = canonical_normalize
        if metrics is None:
            from posync.observability import metrics as powertools_metrics

            metrics = powertools_metrics
        self.connections = connections
        self.sources = sources
        self.sinks = sinks
        self.enqueue = enqueue
        self.config = config
        self.normalize = normalize
        self.metrics = metrics
        self.clock = clock
        # posync.store.OrderRepository (stored() and live_in_window()): reconcile and deleted runs
        # compare with storage through it; None: they re-read and store newest-wins only.
        self.versions = versions

    # ---- entry point

    def run(self, request: SyncRequest, deadline: Deadline) -> RunResult:
        """One invocation's share of a run. See the module docstring for the contract."""
        try:
            conn = self.connections.get(request.provider, request.merchant_id)
        except ConnectionNotFound:
            logger.warning("sync skipped: no such connection", extra={"connection_id": request.connection_id})
            return RunResult("not_found", reason="no such connection")
        if conn.status != ConnectionStatus.ACTIVE:
            reason = f"connection is {conn.status.value}"
            logger.info("sync skipped", extra={"connection_id": conn.connection_id, "reason": reason})
            return RunResult("skipped", reason=reason)
        if (
            request.message_id
            and request.kind is not SyncKind.CONTINUATION
            and request.message_id in done_messages(conn.cursor)
        ):
            # Redelivered after its run completed (the invocation died before SQS heard
            # back): a backfill must not read its whole window again.
            logger.info(
                "sync skipped: this message's run already completed",
                extra={"connection_id": conn.connection_id, "message_id": request.message_id},
            )
            return RunResult("skipped", reason="message already processed")
        if request.kind is SyncKind.DELETED:
            return self._deleted(conn, request, deadline)
        run = _Run(self, conn, request, deadline)
        logger.append_keys(connection_id=conn.connection_id, run_id=run.run_id)
        try:
            return run.execute()
        finally:
            logger.remove_keys(["connection_id", "run_id"])

    def _deleted(self, conn: Connection, request: SyncRequest, deadline: Deadline) -> RunResult:
        """Announced deletions, confirmed by id and tombstoned (``posync.reconcile``); its own run."""
        from posync.reconcile import confirm_deleted

        run_id = new_run_id(conn.provider, conn.merchant_id, self.clock.time())
        result = RunResult("completed", run_id=run_id)
        if self.versions is None or not request.order_ids:
            return RunResult("skipped", reason="nothing to confirm")
        stop = Deadline(deadline.at - self.config.stop_margin_s, deadline.clock)
        try:
            source = self.sources(conn, stop)
        except BudgetExhausted:
            self.enqueue(request, f"{conn.connection_id}-deleted-{secrets.token_hex(6)}")
            return RunResult("continued", reason="no provider capacity")
        sink = self.sinks(conn, run_id)
        try:
            done = confirm_deleted(
                source=source,
                sink=sink,
                versions=self.versions,
                normalize=self.normalize,
                provider=conn.provider,
                merchant_id=conn.merchant_id,
                order_ids=request.order_ids,
                announced_ms=request.at_ms or int(self.clock.time() * 1000),
                deadline=stop,
            )
        except BudgetExhausted:
            self.enqueue(request, f"{conn.connection_id}-deleted-{secrets.token_hex(6)}")
            return RunResult("continued", run_id=run_id, reason="time budget reached")
        finally:
            result.requests = source.stats.requests
            source.close()
            sink.close()
        result.exported = result.corrected = done.exported
        result.manifest_key = done.manifest_key
        self.metrics.add_metric(name="OrdersCorrected", unit=MetricUnit.Count, value=done.exported)
        return result


class _Run:
    """The state of one invocation of one run."""

    def __init__(self, svc: SyncService, conn: Connection, request: SyncRequest, deadline: Deadline) -> None:
        self.svc = svc
        self.conn = conn
        self.request = request
        self.clock = svc.clock
        self.t0 = self.clock.monotonic()
        self.stop = Deadline(deadline.at - svc.config.stop_margin_s, deadline.clock)
        self.now_ms = int(self.clock.time() * 1000)
        cursor = dict(conn.cursor or {})
        self.state: dict[str, Any] = dict(cursor.pop("run", None) or {})
        self.settled_part = cursor  # the cursor without its run part
        self.resumed = bool(self.state)
        if self.resumed:
            self.run_id = str(self.state["id"])
            if request.since and request.kind is not SyncKind.CONTINUATION:
                # A backfill/manual request arriving mid-run: finish this run, then honour it.
                self.state["deferred"] = {"kind": request.kind.value, "since": request.since}
        else:
            self.run_id = new_run_id(conn.provider, conn.merchant_id, self.clock.time())
            self.state = {
                "id": self.run_id,
                "kind": request.kind.value,
                "started_at": ms_to_iso(self.now_ms),
                "from": cursor or None,
                "counts": dict.fromkeys(COUNT_KEYS, 0),
                "invocations": 0,
            }
            if request.message_id and request.kind is not SyncKind.CONTINUATION:
                self.state["message_id"] = request.message_id
            if request.kind is SyncKind.RECONCILE and request.since:
                self.state["window_from"] = request.since
        self.state["invocations"] = int(self.state.get("invocations", 0)) + 1
        self.counts: dict[str, int] = {k: int(self.state.get("counts", {}).get(k, 0)) for k in COUNT_KEYS}
        # A reconcile run (posync.reconcile): its window from the request, its own counts, no cursor move.
        self.reconcile = self.state.get("kind") == SyncKind.RECONCILE.value and "window_from" in self.state
        if self.reconcile:
            for k, v in (self.state.get("counts") or {}).items():
                self.counts.setdefault(str(k), int(v))
        self.newest: int | None = self.state.get("newest")
        self.result = RunResult("continued", run_id=self.run_id)
        self.source: OrderSource | None = None
        self.pages_since_checkpoint = 0
        self.last_checkpoint = self.clock.monotonic()
        self.flagged: set[str] = set()  # ids of prepared orders with discrepancies, until written
        self.flag_lock = threading.Lock()

    # ---- planning

    def _plan(self, source: OrderSource) -> Plan:
        if self.reconcile and "sweep" in self.state:  # the list is read: the absence sweep goes on
            return Plan(end=int(self.state.get("end_ms", self.now_ms)), slices=())
        if self.reconcile and not (self.resumed and self.state.get("progress")):
            start = iso_to_ms(str(self.state["window_from"]))
            end = int(self.state.get("end_ms", self.now_ms)) if self.resumed else self.now_ms
            self.state["end_ms"] = end
            return source.plan(min(start, end), end)
        if self.resumed and self.state.get("progress"):
            try:
                return source.resume(self.state["progress"])
            except InvalidInput as exc:
                # A damaged run state must not poison every future message: re-plan this run
                # from the settled cursor (re-read orders are absorbed by newest-wins storage).
                logger.error("unreadable sync progress; re-planning the run", extra={"why": str(exc)})
                self.state.pop("progress", None)
                self.state.pop("end_ms", None)
        try:
            settled = source.settled(self.settled_part)
        except InvalidInput as exc:
            logger.error("unreadable sync cursor; reading the backfill window", extra={"why": str(exc)})
            settled = None
        since = None
        if self.request.since:
            try:
                since = iso_to_ms(self.request.since)
            except InvalidInput as exc:
                raise InvalidInput("sync request 'since' is not an RFC 3339 time") from exc
        if settled is not None:
            start = settled - self.svc.config.lookback_ms
            if since is not None and not self.resumed:
                start = min(start, since)
        elif since is not None:
            start = since
        else:
            start = self.now_ms - self.svc.config.backfill_days * DAY_MS
        end = self.now_ms
        if self.resumed:  # a run whose plan was never saved (no page read yet): keep its end
            end = int(self.state.get("end_ms", end))
        start = min(start, end)
        self.state["end_ms"] = end
        return source.plan(start, end)

    # ---- execution

    def execute(self) -> RunResult:
        svc = self.svc
        conn = self.conn
        try:
            source = self.source = svc.sources(conn, self.stop)
        except BudgetExhausted as exc:
            # No share of the app's capacity before the deadline: nothing was read; try again.
            logger.info("no provider capacity in time; sync re-queued", extra={"why": str(exc)})
            self._requeue()
            self.result.reason = "no provider capacity"
            return self.result
        paused_until = self.state.get("paused_until")
        token = _token_limiter(source)
        if isinstance(paused_until, int | float) and token is not None:
            left = float(paused_until) - self.clock.time()
            if left > 0:  # a 429 seen by the invocation before (perhaps in another container)
                token.pause(left)
        sink = None
        try:
            plan = self._plan(source)
            self.state["progress"] = source.plan_progress(plan)
            if not self.resumed and plan.slices:
                # Name the run in the cursor before its first write: an invocation that dies after
                # a checkpoint but before committing it is then redelivered into this same run,
                # whose manifest lists that checkpoint's parts (a new run never would).
                self._commit_progress()
            sink = svc.sinks(conn, self.run_id)
            if self.reconcile and svc.versions is not None and isinstance(sink, StoreSink):
                from posync.reconcile import ReconcileSink

                sink = ReconcileSink(sink, svc.versions, clock=self.clock.time)
                sink.sweep_after = (self.state.get("sweep") or {}).get("after")
            logger.info(
                "sync run",
                extra={
                    "kind": self.request.kind.value,
                    "resumed": self.resumed,
                    "invocation": self.state["invocations"],
                    "window_from": ms_to_iso(min((s[0] for s in plan.slices), default=plan.end)),
                    "window_to": ms_to_iso(plan.end),
                },
            )
            return self._loop(source, sink, plan)
        finally:
            self._emit(source)
            source.close()
            if sink is not None:
                sink.close()

    def _prepare(self, raw: dict[str, Any]) -> Serialized | Quarantined:
        """A raw order -> its canonical form, serialized (run in the source's fetch threads)."""
        try:
            order = self.svc.normalize(self.conn.provider, self.conn.merchant_id, raw)
        except MalformedOrder as exc:
            return Quarantined(raw, exc.reason)
        if order.get("discrepancies"):  # counted when written (a page may be read again)
            with self.flag_lock:
                self.flagged.add(str(order["order_id"]))
        return Serialized.of(order)

    def _loop(self, source: OrderSource, sink: Any, plan: Plan) -> RunResult:
        pages = source.pages(plan, self.stop, self._prepare)
        done = False
        try:
            for page in pages:
                self._write(sink, page)  # raises on a failed write: no checkpoint, cursor stays
                progress = self.state["progress"] = page.progress
                del page  # not held while the next page is awaited
                if progress is None:
                    done = True
                    break
                if self._checkpoint_due(sink):
                    self._checkpoint(sink)
                if self.stop.expired():
                    break
        except BudgetExhausted as exc:
            logger.info("time budget reached; continuing in a new invocation", extra={"why": str(exc)})
        except AuthorizationRevoked:
            self._checkpoint(sink)
            logger.warning("sync stopped: the provider refused the connection's authorization")
            self.result.status = "revoked"
            self.result.reason = "authorization revoked"
            return self.result
        except ProviderError as exc:
            self._checkpoint(sink)
            reason = f"{type(exc).__name__}: {exc}"[:300]
            logger.warning("sync failed; SQS will redeliver", extra={"reason": reason})
            try:
                self.svc.connections.record_error(self.conn, reason)
            except (PosyncError, ClientError):
                logger.exception("could not record the sync error")
            raise
        finally:
            pages.close()
        if done:
            return self._complete(source, sink, plan)
        self._checkpoint(sink)
        self._continue()
        return self.result

    def _write(self, sink: Any, page: Page) -> None:
        canonical: list[Mapping[str, Any]] = []
        for order in page.orders:
            if isinstance(order, Quarantined):
                sink.quarantine(order.raw, order.reason)
                self.counts["quarantined"] += 1
                self.result.quarantined += 1
            else:
                canonical.append(order)
        exported = sink.write(canonical) if canonical else 0
        if self.flagged:
            with self.flag_lock:
                flagged = sum(1 for o in canonical if o["order_id"] in self.flagged)
                self.flagged.difference_update(str(o["order_id"]) for o in canonical)
            if flagged:
                self.counts["discrepancies"] = self.counts.get("discrepancies", 0) + flagged
                self.result.discrepancies += flagged
                logger.warning("orders stored with discrepancies", extra={"orders": flagged})
        self._tally(sink)
        self.counts["pages"] += 1
        self.counts["fetched"] += len(page.orders)
        self.counts["stored"] += len(canonical)
        self.counts["exported"] += exported
        self.result.pages += 1
        self.result.orders += len(page.orders)
        self.result.exported += exported
        self.pages_since_checkpoint += 1
        if page.newest_ms is not None:
            self.newest = page.newest_ms if self.newest is None else max(self.newest, page.newest_ms)

    def _tally(self, sink: Any) -> None:
        take = getattr(sink, "take_tally", None)
        if take is None:
            return
        for k, v in take().items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.result.corrected = self.counts.get("corrections", 0)

    def _sweep(self, source: OrderSource, sink: Any) -> bool:
        """A reconcile's absence sweep (Clover); False: time ran out, the run continues."""
        from posync.reconcile import PRESENCE

        presence = PRESENCE.get(self.conn.provider)
        if presence is None or not hasattr(sink, "sweep"):
            return True
        window = (iso_to_ms(str(self.state["window_from"])), int(self.state.get("end_ms", self.now_ms)))
        try:
            sink.sweep(
                index=self.svc.versions,
                presence=presence,
                transport=source.transport,  # type: ignore[attr-defined]
                merchant_id=self.conn.merchant_id,
                window=window,
                deadline=self.stop,
            )
        except BudgetExhausted as exc:
            logger.info("time budget reached in the absence sweep; continuing", extra={"why": str(exc)})
            self._tally(sink)
            self.state["sweep"] = {"after": sink.sweep_after}
            self.state["progress"] = None
            self._checkpoint(sink)
            self._continue()
            return False
        self._tally(sink)
        return True

    def _checkpoint_due(self, sink: Any) -> bool:
        cfg = self.svc.config
        if sink.wants_checkpoint:
            return True
        if cfg.checkpoint_pages and self.pages_since_checkpoint >= cfg.checkpoint_pages:
            return True
        return bool(cfg.checkpoint_s) and self.clock.monotonic() - self.last_checkpoint >= cfg.checkpoint_s

    def _counts_now(self) -> dict[str, int]:
        counts = dict(self.counts)
        if self.source is not None:
            counts["requests"] += self.source.stats.requests
            counts["rate_limited"] += self.source.stats.rate_limited
        return counts

    def _state_for_cursor(self) -> dict[str, Any]:
        state = dict(self.state)
        state["counts"] = self._counts_now()
        token = _token_limiter(self.source)
        paused = token.paused_for() if token is not None else 0.0
        if paused > 0:
            # A 429's pause goes with the run: its continuation may run in another container.
            state["paused_until"] = round(self.clock.time() + paused, 3)
        else:
            state.pop("paused_until", None)
        if self.newest is not None:
            state["newest"] = self.newest
        return state

    def _checkpoint(self, sink: Any) -> None:
        """Make what was written durable, then commit the progress it covers."""
        if sink is None:
            return
        sink.checkpoint()
        self._commit_progress()

    def _commit_progress(self) -> None:
        cursor = {**self.settled_part, "run": self._state_for_cursor()}
        last_run = {
            "run_id": self.run_id,
            "status": "in_progress",
            "kind": self.state.get("kind"),
            "started_at": self.state.get("started_at"),
            "checkpoint_at": ms_to_iso(int(self.clock.time() * 1000)),
            "counts": self._counts_now(),
        }
        self.svc.connections.commit_cursor(self.conn, cursor, last_run)
        self.pages_since_checkpoint = 0
        self.last_checkpoint = self.clock.monotonic()

    def _continue(self) -> None:
        n = int(self.state["invocations"])
        req = SyncRequest(
            provider=self.conn.provider,
            merchant_id=self.conn.merchant_id,
            kind=SyncKind.CONTINUATION,
            run_id=self.run_id,
            reason=f"continuation {n + 1} of run {self.run_id}",
        )
        # Random suffix: a retried invocation must not collide with SQS's 5-minute deduplication.
        self.svc.enqueue(req, f"{self.run_id}-c{n}-{secrets.token_hex(4)}")
        self.result.status = "continued"
        logger.info("sync continues", extra={"next_invocation": n + 1, "pages": self.result.pages})

    def _requeue(self) -> None:
        if self.resumed:
            self._continue()
            return
        req = SyncRequest(
            provider=self.conn.provider,
            merchant_id=self.conn.merchant_id,
            kind=self.request.kind,
            since=self.request.since,
            reason="re-queued: no provider capacity",
        )
        self.svc.enqueue(req, f"{self.conn.connection_id}-requeue-{secrets.token_hex(6)}")
        self.result.status = "continued"

    def _complete(self, source: OrderSource, sink: Any, plan: Plan) -> RunResult:
        if self.reconcile:
            if not self._sweep(source, sink):
                return self.result
            cursor_to = dict(self.settled_part)  # a reconcile does not move the sync cursor
        else:
            cursor_to = source.settled_cursor(plan.end, self.newest)
        done = done_messages(self.settled_part)
        message_id = self.state.get("message_id")
        if isinstance(message_id, str) and message_id not in done:
            done = [*done, message_id][-DONE_MESSAGES:]
        if done:
            cursor_to["done_messages"] = done
        counts = self._counts_now()
        # A reconcile's corrections (tombstones of its absence sweep included) are exports too.
        if counts["exported"] or counts["quarantined"] or counts.get("corrections"):
            manifest = sink.finish(self.state.get("from"), cursor_to, counts)
            export_run_id: str | None = sink.run_id
        else:
            # Nothing handed to the exports in the whole run: no manifest, no event, no S3 call
            # (docs/exports.md); the cursor commit below is the run's heartbeat.
            manifest, export_run_id = None, None
        last_run = {
            "run_id": self.run_id,
            "export_run_id": export_run_id,
            "status": "completed",
            "kind": self.state.get("kind"),
            "started_at": self.state.get("started_at"),
            "finished_at": ms_to_iso(int(self.clock.time() * 1000)),
            "counts": counts,
            "manifest": manifest,
            "invocations": self.state.get("invocations"),
        }
        self.svc.connections.commit_cursor(self.conn, cursor_to, last_run)
        self.result.status = "completed"
        self.result.manifest_key = manifest
        deferred = self.state.get("deferred")
        if isinstance(deferred, dict) and deferred.get("since"):
            req = SyncRequest(
                provider=self.conn.provider,
                merchant_id=self.conn.merchant_id,
                kind=SyncKind(deferred.get("kind", "manual")),
                since=str(deferred["since"]),
                reason=f"deferred until run {self.run_id} finished",
            )
            self.svc.enqueue(req, f"{self.run_id}-deferred-{secrets.token_hex(4)}")
        logger.info("sync completed", extra={"counts": counts, "manifest": manifest})
        return self.result

    # ---- metrics

    def _emit(self, source: OrderSource) -> None:
        stats = source.stats
        self.result.requests = stats.requests
        m = self.svc.metrics
        m.add_metric(name="OrdersSynced", unit=MetricUnit.Count, value=self.result.exported)
        m.add_metric(name="PagesFetched", unit=MetricUnit.Count, value=self.result.pages)
        m.add_metric(name="RateLimited", unit=MetricUnit.Count, value=stats.rate_limited)
        m.add_metric(name="ProviderRetries", unit=MetricUnit.Count, value=stats.retries)
        m.add_metric(name="OrdersQuarantined", unit=MetricUnit.Count, value=self.result.quarantined)
        m.add_metric(name="OrdersWithDiscrepancies", unit=MetricUnit.Count, value=self.result.discrepancies)
        if self.reconcile:
            m.add_metric(name="OrdersCorrected", unit=MetricUnit.Count, value=self.result.corrected)
        m.add_metric(
            name="RunDurationMs",
            unit=MetricUnit.Milliseconds,
            value=(self.clock.monotonic() - self.t0) * 1000,
        )
        if self.result.status == "completed":
            position = int(self.state.get("end_ms", self.now_ms))
        else:
            progress = self.state.get("progress") or {}
            starts = [s.get("from") for s in progress.get("slices", [])]
            try:
                position = min(source.decode_time(s) for s in starts) if starts else self.now_ms
            except (InvalidInput, TypeError, ValueError):
                position = self.now_ms
        lag = max(0.0, self.clock.time() - position / 1000)
        m.add_metric(name="SyncLagSeconds", unit=MetricUnit.Seconds, value=round(lag, 3))


# --------------------------------------------------------------------------- production wiring


def build_sync_service(settings: Settings, config: SyncConfig, *, clock: Clock = SYSTEM_CLOCK) -> SyncService:
    """The worker's wiring: DynamoDB connections and orders, S3 exports, Secrets Manager tokens,
    the provider APIs behind the rate limiters, and the sync queue for continuations."""
    from posync.aws import client
    from posync.connections import ConnectionRepository
    from posync.exports import ExportWriter
    from posync.ratelimit import DynamoAppRate, DynamoAppSlots, LocalAppRate
    from posync.store import OrderRepository
    from posync.syncqueue import queue_url, send_sync
    from posync.tokens import build_token_service

    connections = ConnectionRepository(settings)
    repository = OrderRepository(settings)
    tokens = build_token_service(settings)

    app_rates: dict[str, AppRate] = {}
    app_slots: Callable[[str], AppSlots] | None = None
    for p in PROVIDERS:
        rps = config.limits[p].app_rps
        if rps and config.app_limit == "dynamodb":
            app_rates[p] = DynamoAppRate(client("dynamodb"), settings.control_table, p, rps, clock=clock)
        elif rps and config.app_limit == "local":
            app_rates[p] = LocalAppRate(rps, clock)
    if config.app_limit == "dynamodb":

        def slots(provider: str) -> AppSlots:
            capacity = config.limits[provider].app_concurrency
            if not capacity:
                from posync.ratelimit import UnlimitedApp

                return UnlimitedApp()
            return DynamoAppSlots(client("dynamodb"), settings.control_table, provider, capacity, clock=clock)

        app_slots = slots

    sources = SourceFactory(settings, tokens, config, app_rates=app_rates, app_slots=app_slots, clock=clock)

    def sinks(conn: Connection, run_id: str) -> StoreSink:
        writer = ExportWriter(settings, run_id, conn.provider, conn.merchant_id)
        return StoreSink(repository, writer, conn.connection_id, versions=repository)

    urls: list[str] = []

    def enqueue(request: SyncRequest, dedup_id: str) -> None:
        if not urls:
            urls.append(queue_url(settings.sync_queue_url, settings.resources.queue("sync").name))
        send_sync(urls[0], request, dedup_id)

    return SyncService(
        connections=connections,
        sources=sources,
        sinks=sinks,
        enqueue=enqueue,
        config=config,
        clock=clock,
        versions=repository,
    )
