"""``posync sync`` and ``posync backfill``: queue a sync of one merchant, and optionally follow it.

    posync sync PROVIDER MERCHANT_ID [--since DATE] [--wait] [--json]
    posync backfill PROVIDER MERCHANT_ID [--days N] [--wait] [--json]

Both put one message on the stage's FIFO sync queue (the contract of ``posync.syncqueue``;
kind ``manual`` or ``backfill``), after checking the provider, the merchant id, the date and
that the connection exists and is active. ``--since`` re-reads everything modified since
that date (never skipping the span between the cursor and the date); ``--days N`` re-reads
the last N days.

``--wait``: on the local stack the queue is drained in this process by the real worker
handler, with a live progress line on stderr (see :mod:`posync_local.cli_progress`); on a
deployed stack the worker Lambda runs it, and the connection's checkpointed counts are
polled. The final line (stdout) gives orders, pages and the elapsed time; exit 1 if the
run failed or did not finish within ``--timeout``.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import click

from posync.connections import ConnectionRepository
from posync.domain import Connection, ConnectionStatus
from posync.errors import ConnectionNotFound
from posync.sources import iso_to_ms
from posync.syncqueue import SyncKind, SyncRequest, queue_url, send_sync
from posync_local.cli_common import (
    PROVIDER_ARG,
    Failure,
    cli_errors,
    echo_json,
    merchant_id_for,
    open_target,
    target_options,
)
from posync_local.cli_ops import checked_since
from posync_local.cli_progress import LiveProgress, PageObserver, plural, quiet_functions, worker_service
from posync_local.stack import Target

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_TIMEOUT_S = 1800.0
POLL_INTERVAL_S = 2.0
CLOCK_SKEW_S = 5.0  # a deployed run counts as ours if it started at most this long before we queued


@dataclass
class WaitResult:
    status: str  # completed | failed | timeout | needs_reauth | revoked
    orders: int
    pages: int
    elapsed_s: float
    run_id: str | None = None
    kind: str | None = None
    exported: int | None = None
    quarantined: int | None = None
    manifest: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


def wait_options(fn: Callable[P, R]) -> Callable[P, R]:
    fn = click.option(
        "--progress-interval",
        type=click.FloatRange(min=0),
        default=1.0,
        hidden=True,
        help="Seconds between plain progress lines when stderr is not a terminal.",
    )(fn)
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=1),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="With --wait: give up after this many seconds (exit 1; the sync itself goes on).",
    )(fn)
    fn = click.option(
        "--wait",
        is_flag=True,
        help="Follow the sync until it is done, with live progress on stderr "
        "(the local stack runs it in this process).",
    )(fn)
    return fn


# --- queueing ---------------------------------------------------------------------------------------


def queue_sync(target: Target, request: SyncRequest) -> Connection:
    """Check the connection (exists: else exit 3; active: else exit 1), then send ``request``."""
    settings = target.settings
    try:
        conn = ConnectionRepository(settings).get(request.provider, request.merchant_id)
    except ConnectionNotFound as exc:
        raise ConnectionNotFound(
            f"no {request.provider} connection for merchant {request.merchant_id} on {target.description}"
        ) from exc
    if conn.status is not ConnectionStatus.ACTIVE:
        raise Failure(f"the connection is {conn.status.value}: the merchant must connect again first")
    url = queue_url(settings.sync_queue_url, settings.resources.queue("sync").name)
    dedup = f"{request.connection_id}-{request.kind.value}-{secrets.token_hex(8)}"
    send_sync(url, request, dedup)
    return conn


def _scope(request: SyncRequest) -> str:
    return f"since {request.since}" if request.since else "since its cursor"


def _run_and_report(
    target: Target,
    request: SyncRequest,
    *,
    wait: bool,
    timeout: float,
    as_json: bool,
    progress_interval: float = 1.0,
) -> None:
    before = queue_sync(target, request)
    queued = {"queued": json.loads(request.to_json()), "target": target.description}
    if not as_json:
        click.echo(
            f"Queued a {request.kind.value} sync of {request.provider} merchant {request.merchant_id} "
            f"({_scope(request)}) on {target.description}."
        )
    if not wait:
        if as_json:
            echo_json(queued)
        elif target.is_local:
            click.echo("The local stack runs it on its next drain (`posync local tick`), or pass --wait.")
        return
    result = follow(target, request, before, timeout=timeout, progress_interval=progress_interval)
    if as_json:
        echo_json({**queued, "result": result.to_dict()})
    else:
        click.echo(_final_line(result))
    if not result.ok:
        raise click.exceptions.Exit(1)


def _final_line(r: WaitResult) -> str:
    numbers = f"{plural(r.orders, 'order')}, {plural(r.pages, 'page')} in {r.elapsed_s:.1f} s"
    if r.ok:
        return f"Done: {numbers} ({r.kind} run {r.run_id} completed)."
    why = f": {r.error}" if r.error else ""
    return f"Not done ({r.status}{why}): {numbers}."


# --- following ---------------------------------------------------------------------------------------


def _ours(last: dict[str, Any], previous_run_id: str | None, queued_at: float) -> bool:
    if not last or last.get("run_id") == previous_run_id:
        return False
    try:
        started = iso_to_ms(str(last.get("started_at"))) / 1000
    except Exception:  # noqa: BLE001 - a run without a readable start is not ours
        return False
    return started >= queued_at - CLOCK_SKEW_S


def _result(
    conn: Connection, status: str, progress_orders: int, progress_pages: int, elapsed: float
) -> WaitResult:
    last = dict(conn.last_run or {})
    counts = dict(last.get("counts") or {})
    orders = progress_orders if progress_pages else int(counts.get("fetched", 0))
    pages = progress_pages if progress_pages else int(counts.get("pages", 0))
    error = conn.last_error if status != "completed" else None
    return WaitResult(
        status=status,
        orders=orders,
        pages=pages,
        elapsed_s=elapsed,
        run_id=last.get("run_id"),
        kind=last.get("kind"),
        exported=int(counts["exported"]) if "exported" in counts else None,
        quarantined=int(counts["quarantined"]) if "quarantined" in counts else None,
        manifest=last.get("manifest"),
        error=error,
    )


def follow(
    target: Target,
    request: SyncRequest,
    before: Connection,
    *,
    timeout: float,
    progress_interval: float = 1.0,
) -> WaitResult:
    """Wait for the queued sync (drained here on the local stack; polled on a deployed one)."""
    label = f"{request.provider} {request.merchant_id}"
    progress = LiveProgress(label, sys.stderr, interval_s=progress_interval)
    previous = (before.last_run or {}).get("run_id")
    queued_at = time.time()
    if target.is_local:
        return _drain_here(
            target,
            request=request,
            progress=progress,
            previous=previous,
            queued_at=queued_at,
            timeout=timeout,
        )
    return _poll(
        target, request=request, progress=progress, previous=previous, queued_at=queued_at, timeout=timeout
    )


def _status_of(conn: Connection, completed: bool) -> str:
    if completed:
        return "completed"
    if conn.status is not ConnectionStatus.ACTIVE:
        return conn.status.value
    return "failed"


def _drain_here(
    target: Target,
    *,
    request: SyncRequest,
    progress: LiveProgress,
    previous: str | None,
    queued_at: float,
    timeout: float,
) -> WaitResult:
    from posync_local.local_functions import FunctionHost, FunctionNotFound
    from posync_local.local_tick import drain

    settings = target.settings
    host = FunctionHost(stage=settings.stage, region=settings.aws_region)
    try:
        handler = host.handler("worker")
    except FunctionNotFound as exc:
        raise Failure(f"cannot run the worker here: {exc}") from exc
    observer = PageObserver(request.connection_id, progress)
    service = worker_service(handler)
    undo = observer.install(service) if service is not None else None
    started = time.monotonic()
    try:
        with progress, quiet_functions(progress.stream):
            report = drain(settings, host.invoke, max_seconds=timeout)
    finally:
        if undo is not None:
            undo()
    elapsed = time.monotonic() - started
    conn = ConnectionRepository(settings).get(request.provider, request.merchant_id)
    last = dict(conn.last_run or {})
    completed = _ours(last, previous, queued_at) and last.get("status") == "completed"
    if not report.idle and not completed:
        result = _result(conn, "timeout", progress.orders, progress.pages, elapsed)
        result.error = f"still running after {timeout:.0f} s; `posync local tick` goes on with it"
        return result
    return _result(conn, _status_of(conn, completed), progress.orders, progress.pages, elapsed)


def _poll(
    target: Target,
    *,
    request: SyncRequest,
    progress: LiveProgress,
    previous: str | None,
    queued_at: float,
    timeout: float,
) -> WaitResult:
    interval = POLL_INTERVAL_S
    repo = ConnectionRepository(target.settings)
    started = time.monotonic()
    with progress:
        progress.message(f"Waiting for the worker of {target.description}...")
        while True:
            conn = repo.get(request.provider, request.merchant_id)
            last = dict(conn.last_run or {})
            run = (conn.cursor or {}).get("run") or {}
            mine = _ours(last, previous, queued_at)
            if mine:
                counts = last.get("counts") or {}
                progress.set(int(counts.get("fetched", 0)), int(counts.get("pages", 0)))
            elif isinstance(run, dict) and run.get("id") != previous and run.get("counts"):
                counts = run["counts"]
                progress.set(int(counts.get("fetched", 0)), int(counts.get("pages", 0)))
            elapsed = time.monotonic() - started
            if mine and last.get("status") == "completed":
                return _result(conn, "completed", 0, 0, elapsed)
            if conn.status is not ConnectionStatus.ACTIVE:
                return _result(conn, conn.status.value, progress.orders, progress.pages, elapsed)
            if elapsed >= timeout:
                result = _result(conn, "timeout", progress.orders, progress.pages, elapsed)
                result.error = f"not finished after {timeout:.0f} s (it goes on: `posync connections show`)"
                return result
            time.sleep(min(interval, max(0.1, timeout - elapsed)))


# --- commands ----------------------------------------------------------------------------------------


@click.command("sync", short_help="Queue a sync of one merchant (--wait: follow it).")
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option(
    "--since",
    metavar="DATE",
    default=None,
    help="Re-read orders modified since this date (YYYY-MM-DD or RFC 3339, UTC). Default: the cursor.",
)
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print the queued request (and the result) as JSON.")
@target_options
@cli_errors
def sync_command(
    provider: str,
    merchant_id: str,
    *,
    since: str | None,
    wait: bool,
    timeout: float,
    progress_interval: float,
    as_json: bool,
    stack: str | None,
    stage: str | None,
) -> None:
    """Queue a manual sync of one merchant's orders (since its cursor, or --since a date)."""
    merchant_id = merchant_id_for(provider, merchant_id)
    since_iso = checked_since(since)
    target = open_target(stack, stage)
    request = SyncRequest(
        provider=provider,
        merchant_id=merchant_id,
        kind=SyncKind.MANUAL,
        since=since_iso,
        reason="posync sync (command line)",
    )
    _run_and_report(
        target,
        request,
        wait=wait,
        timeout=timeout,
        as_json=as_json,
        progress_interval=progress_interval,
    )


@click.command("backfill", short_help="Re-read the last N days of one merchant.")
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option(
    "--days",
    type=click.IntRange(1, 3650),
    default=None,
    help="How many days back to re-read (default: the stage's backfill, POSYNC_BACKFILL_DAYS or 90).",
)
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print the queued request (and the result) as JSON.")
@target_options
@cli_errors
def backfill_command(
    provider: str,
    merchant_id: str,
    *,
    days: int | None,
    wait: bool,
    timeout: float,
    progress_interval: float,
    as_json: bool,
    stack: str | None,
    stage: str | None,
) -> None:
    """Queue a backfill: re-read the last N days of one merchant's orders (windows of 90 days at most)."""
    merchant_id = merchant_id_for(provider, merchant_id)
    target = open_target(stack, stage)
    n = days if days is not None else target.settings.backfill_days
    start = (datetime.now(UTC) - timedelta(days=n)).replace(microsecond=0)
    request = SyncRequest(
        provider=provider,
        merchant_id=merchant_id,
        kind=SyncKind.BACKFILL,
        since=start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        reason=f"posync backfill --days {n} (command line)",
    )
    _run_and_report(
        target,
        request,
        wait=wait,
        timeout=timeout,
        as_json=as_json,
        progress_interval=progress_interval,
    )
