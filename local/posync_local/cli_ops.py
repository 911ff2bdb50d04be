"""``posync connections`` and ``posync exports``: what operators and consumers run against a stack.

    posync connections list [--status active|needs_reauth|revoked] [--json]
    posync connections show PROVIDER MERCHANT_ID [--json]
    posync connections disconnect PROVIDER MERCHANT_ID [--yes]
    posync exports list [--provider P] [--merchant M] [--since DATE] [--json]
    posync exports read [--provider P] [--merchant M] [--since DATE] [--latest] [--limit N]

Every command takes ``--stack NAME`` / ``--stage`` (see :mod:`posync_local.stack`) and
follows the exit codes of :mod:`posync_local.cli_common`. ``exports read`` streams
canonical orders as JSON lines from manifested files only (checksums verified), so it
never shows a partial run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import click
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError

from posync.aws import client
from posync.config import PROVIDERS
from posync.connections import ConnectionRepository, connection_from_item
from posync.domain import Connection, ConnectionStatus, connection_id
from posync.errors import ConnectionNotFound, InvalidInput, PosyncError
from posync.providers.clover.source import CloverSource
from posync.providers.poynt.source import PoyntSource
from posync.sources import iso_to_ms, ms_to_iso
from posync_local.cli_common import (
    PROVIDER_ARG,
    cli_errors,
    echo_json,
    iso_seconds,
    merchant_filter,
    merchant_id_for,
    open_target,
    parse_since,
    shorten,
    table,
    target_options,
)
from posync_local.stack import Target

CURSOR_TIME_KEYS = {"clover": CloverSource.time_key, "poynt": PoyntSource.time_key}
DISCONNECT_REASON = "disconnected by an operator (posync connections disconnect)"
STATUSES = [s.value for s in ConnectionStatus]

_de = TypeDeserializer()


def checked_since(value: str | None) -> str | None:
    """``--since`` as RFC 3339 UTC (a usage error, exit 2, with the expected format otherwise)."""
    if value is None:
        return None
    try:
        return parse_since(value)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc).removeprefix("--since "), param_hint="--since") from exc


# --- connections: views ---------------------------------------------------------------------------


def cursor_ms(provider: str, cursor: Mapping[str, Any] | None) -> int | None:
    """Epoch ms of a settled cursor (everything modified before it is synced), or None."""
    if not cursor:
        return None
    value = cursor.get(CURSOR_TIME_KEYS.get(provider, ""))
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return iso_to_ms(value)
        except InvalidInput:
            return None
    return None


def cursor_iso(provider: str, cursor: Mapping[str, Any] | None) -> str | None:
    ms = cursor_ms(provider, cursor)
    return None if ms is None else ms_to_iso(ms)


def connection_view(conn: Connection, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A connection as operators and scripts see it (times in RFC 3339 UTC; no token, ever)."""
    cursor = dict(conn.cursor or {})
    run = cursor.get("run") if isinstance(cursor.get("run"), dict) else None
    last = dict(conn.last_run or {})
    view: dict[str, Any] = {
        "provider": conn.provider,
        "merchant_id": conn.merchant_id,
        "connection_id": conn.connection_id,
        "status": conn.status.value,
        "region": conn.region,
        "ref": conn.ref,
        "connected_at": conn.connected_at,
        "access_expires_at": iso_seconds(conn.access_expires_at),
        "refresh_expires_at": iso_seconds(conn.refresh_expires_at),
        "cursor_position": cursor_iso(conn.provider, cursor),
        "run_in_progress": None
        if run is None
        else {
            "run_id": run.get("id"),
            "kind": run.get("kind"),
            "started_at": run.get("started_at"),
            "invocations": run.get("invocations"),
            "counts": run.get("counts", {}),
        },
        "last_sync": last or None,
        "last_error": conn.last_error,
    }
    if extra:
        view.update(extra)
    return view


def _last_sync_cell(view: Mapping[str, Any]) -> str | None:
    last = view.get("last_sync") or {}
    if view.get("run_in_progress") or last.get("status") == "in_progress":
        return "running"
    return iso_seconds(last.get("finished_at"))


def _row(view: Mapping[str, Any]) -> list[str | None]:
    return [
        view["provider"],
        view["merchant_id"],
        view["status"],
        view.get("ref"),
        iso_seconds(view.get("connected_at")),
        _last_sync_cell(view),
        iso_seconds(view.get("cursor_position")),
        shorten(view.get("last_error"), 48),
    ]


HEADERS = ("PROVIDER", "MERCHANT ID", "STATUS", "REF", "CONNECTED AT", "LAST SYNC", "CURSOR", "LAST ERROR")


def list_connections(repo: ConnectionRepository, statuses: Iterable[str]) -> list[Connection]:
    found: list[Connection] = []
    for status in statuses:
        start: dict[str, Any] | None = None
        while True:
            page, start = repo.list_by_status(status, page_size=500, start_key=start)
            found.extend(page)
            if not start:
                break
    return sorted(found, key=lambda c: (c.provider, c.merchant_id))


def read_connection(target: Target, provider: str, merchant_id: str) -> tuple[Connection, dict[str, Any]]:
    """The connection and the item's bookkeeping attributes (status reason, change times)."""
    cid = connection_id(provider, merchant_id)
    item = (
        client("dynamodb")
        .get_item(
            TableName=target.settings.connections_table,
            Key={"connection_id": {"S": cid}},
            ConsistentRead=True,
        )
        .get("Item")
    )
    if not item:
        raise ConnectionNotFound(
            f"no {provider} connection for merchant {merchant_id} on {target.description}"
        )
    extra = {
        k: _de.deserialize(item[k])
        for k in ("status_reason", "status_changed_at", "last_error_at", "updated_at")
        if k in item
    }
    return connection_from_item(item), extra


# --- connections: commands ------------------------------------------------------------------------


@click.group("connections", short_help="Merchants' connections: list, show, disconnect.")
def connections_group() -> None:
    """Merchants' connections: list them, inspect one, disconnect one."""


@connections_group.command("list", short_help="List connections with their sync state.")
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only connections in this status.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@target_options
@cli_errors
def list_command(*, status: str | None, as_json: bool, stack: str | None, stage: str | None) -> None:
    """List connections: provider, merchant, status, ref, connected at, last sync, cursor, last error."""
    target = open_target(stack, stage)
    conns = list_connections(ConnectionRepository(target.settings), [status] if status else STATUSES)
    views = [connection_view(c) for c in conns]
    if as_json:
        echo_json(views)
        return
    if not views:
        which = f"{status} connections" if status else "connections"
        click.echo(f"No {which} on {target.description}.")
        return
    click.echo(table(HEADERS, [_row(v) for v in views]))


@connections_group.command("show", short_help="Show one connection in detail.")
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@target_options
@cli_errors
def show_command(
    provider: str, merchant_id: str, *, as_json: bool, stack: str | None, stage: str | None
) -> None:
    """Show one connection: status, token expiry times, cursor, runs, last error (never a token)."""
    merchant_id = merchant_id_for(provider, merchant_id)
    target = open_target(stack, stage)
    conn, extra = read_connection(target, provider, merchant_id)
    view = connection_view(conn, extra)
    if as_json:
        echo_json(view)
        return
    click.echo(_describe(view))


def _counts(counts: Mapping[str, Any] | None) -> str:
    c = dict(counts or {})
    return (
        f"{c.get('fetched', 0)} orders, {c.get('pages', 0)} pages, {c.get('exported', 0)} exported, "
        f"{c.get('quarantined', 0)} quarantined"
    )


def _describe(view: Mapping[str, Any]) -> str:
    run = view.get("run_in_progress")
    last = view.get("last_sync") or {}
    lines = [
        ("status", view["status"]),
        ("status reason", view.get("status_reason")),
        ("ref", view.get("ref")),
        ("region", view.get("region")),
        ("connected at", iso_seconds(view.get("connected_at"))),
        ("access expires", view.get("access_expires_at")),
        ("refresh expires", view.get("refresh_expires_at")),
        ("cursor", view.get("cursor_position")),
        (
            "run in progress",
            None
            if not run
            else f"{run.get('run_id')} ({run.get('kind')}, started {iso_seconds(run.get('started_at'))}; "
            f"{_counts(run.get('counts'))} so far)",
        ),
        (
            "last sync",
            None
            if not last
            else f"{last.get('status')} {iso_seconds(last.get('finished_at') or last.get('checkpoint_at'))} "
            f"({last.get('kind')} run {last.get('run_id')}; {_counts(last.get('counts'))})",
        ),
        ("last manifest", last.get("manifest")),
        ("last error", view.get("last_error")),
        ("last error at", iso_seconds(view.get("last_error_at"))),
    ]
    width = max(len(k) for k, _ in lines) + 2
    body = "\n".join(f"  {(k + ':').ljust(width)}{v if v not in (None, '') else '-'}" for k, v in lines)
    return f"{view['provider']} merchant {view['merchant_id']}\n{body}"


@connections_group.command("disconnect", short_help="Disconnect a merchant and stop its syncs.")
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@target_options
@cli_errors
def disconnect_command(
    provider: str, merchant_id: str, *, yes: bool, as_json: bool, stack: str | None, stage: str | None
) -> None:
    """Disconnect a merchant: status revoked, syncs stop, the token secret is scheduled for deletion.

    What the provider's uninstall webhook does, on the operator's word: the dispatcher and the
    worker skip revoked connections; the tokens stay recoverable for 7 days; a
    ConnectionRevoked event goes on the stage's bus. The merchant can connect again at any time.
    """
    from posync.events import put_event
    from posync.tokens import SECRET_RECOVERY_DAYS, SecretsManagerTokenStore
    from posync.webhooks import REVOKED_EVENT

    merchant_id = merchant_id_for(provider, merchant_id)
    target = open_target(stack, stage)
    settings = target.settings
    conn, _ = read_connection(target, provider, merchant_id)
    if not yes:
        click.confirm(
            f"Disconnect {provider} merchant {merchant_id} on {target.description}? "
            f"Its syncs stop and its tokens are deleted after {SECRET_RECOVERY_DAYS} days",
            abort=True,
            err=True,
        )
    was = conn.status.value
    repo = ConnectionRepository(settings)
    if conn.status is not ConnectionStatus.REVOKED:
        repo.set_status(conn.connection_id, ConnectionStatus.REVOKED, DISCONNECT_REASON)
    SecretsManagerTokenStore(settings).schedule_deletion(provider, merchant_id)
    event_sent = True
    try:
        put_event(
            settings,
            REVOKED_EVENT,
            {
                "connection_id": conn.connection_id,
                "provider": provider,
                "merchant_id": merchant_id,
                "reason": "disconnected by an operator",
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
    except (ClientError, BotoCoreError, PosyncError) as exc:
        event_sent = False
        click.echo(f"Warning: the {REVOKED_EVENT} event was not sent ({type(exc).__name__}).", err=True)
    if as_json:
        echo_json(
            {
                "provider": provider,
                "merchant_id": merchant_id,
                "previous_status": was,
                "status": ConnectionStatus.REVOKED.value,
                "secret_deletion_in_days": SECRET_RECOVERY_DAYS,
                "event_sent": event_sent,
                "target": target.to_dict(),
            }
        )
        return
    click.echo(
        f"Disconnected {provider} merchant {merchant_id} (was {was}) on {target.description}: "
        f"syncs stopped; its token secret is deleted in {SECRET_RECOVERY_DAYS} days unless it reconnects."
    )


# --- exports ----------------------------------------------------------------------------------------


def manifest_view(manifest: Mapping[str, Any], key: str | None = None) -> dict[str, Any]:
    from posync.exports import manifest_key

    provider = str(manifest.get("provider", ""))
    cursor = manifest.get("cursor") or {}
    files = list(manifest.get("files") or [])
    return {
        "run_id": manifest.get("run_id"),
        "provider": provider,
        "merchant_id": manifest.get("merchant_id"),
        "files": len(files),
        "records": int(manifest.get("record_count", 0)),
        "quarantined": sum(int(q.get("records", 0)) for q in manifest.get("quarantine") or []),
        "cursor_from": cursor_iso(provider, cursor.get("from")),
        "cursor_to": cursor_iso(provider, cursor.get("to")),
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "schema_version": manifest.get("schema_version"),
        "manifest_key": key if key is not None else manifest_key(str(manifest.get("run_id"))),
        "partitions": sorted({str(f.get("dt")) for f in files}),
    }


def _finished_ms(view: Mapping[str, Any]) -> int:
    try:
        return iso_to_ms(str(view.get("finished_at") or ""))
    except InvalidInput:
        return 0


@click.group("exports", short_help="Export runs and the orders they hold.")
def exports_group() -> None:
    """The S3 exports: run manifests, and the canonical orders of manifested files."""


_PROVIDER_OPTION = click.option(
    "--provider", type=click.Choice(PROVIDERS, case_sensitive=False), default=None, help="Only this provider."
)
_MERCHANT_OPTION = click.option("--merchant", metavar="MERCHANT_ID", default=None, help="Only this merchant.")


@exports_group.command("list", short_help="List export runs (manifests).")
@_PROVIDER_OPTION
@_MERCHANT_OPTION
@click.option(
    "--since",
    metavar="DATE",
    default=None,
    help="Only runs finished at or after this date (YYYY-MM-DD or RFC 3339, UTC).",
)
@click.option(
    "--day",
    metavar="YYYY-MM-DD",
    default=None,
    help="Only runs started on this UTC date (needs --provider and --merchant; lists that partition only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@target_options
@cli_errors
def exports_list_command(
    *,
    provider: str | None,
    merchant: str | None,
    since: str | None,
    day: str | None,
    as_json: bool,
    stack: str | None,
    stage: str | None,
) -> None:
    """List export runs (manifests): run id, provider, merchant, files, records, cursor range, finished at."""
    from posync.exports import iter_manifest_items

    merchant = merchant_filter(provider, merchant)
    since_iso = checked_since(since)
    if day is not None:
        if provider is None or merchant is None:
            raise click.UsageError("--day needs --provider and --merchant")
        try:
            ok = len(day) == 10 and date.fromisoformat(day).isoformat() == day
        except ValueError:
            ok = False
        if not ok:
            raise click.BadParameter(f"{day[:20]!r} is not a date (YYYY-MM-DD)", param_hint="--day")
    target = open_target(stack, stage)
    items = iter_manifest_items(target.settings, provider, merchant, day=day, since=since_iso)
    views = [manifest_view(m, key) for key, m in items]
    if since_iso is not None:
        floor = iso_to_ms(since_iso)
        views = [v for v in views if _finished_ms(v) >= floor]
    views.sort(key=lambda v: (_finished_ms(v), str(v["run_id"])))
    if as_json:
        echo_json(views)
        return
    if not views:
        click.echo(f"No export runs on {target.description}.")
        return
    rows = [
        [
            str(v["run_id"]),
            v["provider"],
            v["merchant_id"],
            str(v["files"]),
            str(v["records"]),
            iso_seconds(v["cursor_from"]),
            iso_seconds(v["cursor_to"]),
            iso_seconds(v["finished_at"]),
        ]
        for v in views
    ]
    headers = (
        "RUN ID",
        "PROVIDER",
        "MERCHANT ID",
        "FILES",
        "RECORDS",
        "CURSOR FROM",
        "CURSOR TO",
        "FINISHED AT",
    )
    click.echo(table(headers, rows))


@exports_group.command("read", short_help="Print exported orders as JSON lines.")
@_PROVIDER_OPTION
@_MERCHANT_OPTION
@click.option(
    "--since",
    metavar="DATE",
    default=None,
    help="Only orders modified at or after this date (YYYY-MM-DD or RFC 3339, UTC).",
)
@click.option("--latest", is_flag=True, help="Fold the change log: only the newest version of each order.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Stop after this many orders.")
@target_options
@cli_errors
def exports_read_command(
    *,
    provider: str | None,
    merchant: str | None,
    since: str | None,
    latest: bool,
    limit: int | None,
    stack: str | None,
    stage: str | None,
) -> None:
    """Print canonical orders as JSON lines, from manifested files only (a partial run never shows).

    Exports are a change log: an order changed N times appears N times, unless --latest.
    Every file's size and SHA-256 are checked against its manifest before it is read.
    """
    from posync.exports import latest as fold_latest
    from posync.exports import read_manifested

    merchant = merchant_filter(provider, merchant)
    since_iso = checked_since(since)
    target = open_target(stack, stage)
    orders: Iterator[dict[str, Any]] = read_manifested(
        target.settings, since=since_iso, provider=provider, merchant_id=merchant
    )
    if latest:
        orders = iter(fold_latest(orders))
    _write_lines(orders, limit)


def _write_lines(orders: Iterator[dict[str, Any]], limit: int | None) -> None:
    out = sys.stdout
    try:
        for n, order in enumerate(orders, start=1):
            out.write(json.dumps(order, separators=(",", ":"), ensure_ascii=False) + "\n")
            if limit is not None and n >= limit:
                break
        out.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise click.exceptions.Exit(0) from None
    finally:
        if isinstance(orders, Generator):
            orders.close()
