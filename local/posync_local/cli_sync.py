"""``posync sync {clover|poynt} MERCHANT_ID [--since DATE]``: queue a manual sync.

The message goes to the stage's FIFO sync queue (kind ``manual``); the worker picks it up
like any other (locally: ``posync local tick``, or the running stack's own drain). With
``--since`` the run re-reads everything modified since that date (it never skips the span
between the connection's cursor and the date). Provider, merchant id and date are checked
before anything is sent: bad input is a clear message and a non-zero exit.

Target: the running local stack when ``AWS_ENDPOINT_URL`` is set or ``posync local up``'s
state file exists; otherwise the default AWS session (a deployed stack, found by its
queue name or ``POSYNC_SYNC_QUEUE_URL``).
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, date, datetime

import click
from botocore.exceptions import BotoCoreError, ClientError

from posync.config import PROVIDERS, ConfigError, Settings
from posync.domain import ConnectionStatus, check_merchant_id, connection_id
from posync.errors import ConnectionNotFound, InvalidInput
from posync.syncqueue import SyncKind, SyncRequest

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def parse_since(value: str, now: datetime | None = None) -> str:
    """``YYYY-MM-DD`` (midnight UTC) or an RFC 3339 time -> RFC 3339 UTC; not in the future."""
    now = now or datetime.now(UTC)
    text = value.strip()
    try:
        if len(text) == 10:
            when = datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=UTC)
        else:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise InvalidInput("--since needs a time zone (e.g. 2026-11-01T00:00:00Z) or a plain date")
    except ValueError as exc:
        raise InvalidInput(
            f"--since must be a date (YYYY-MM-DD) or an RFC 3339 time, got {value[:40]!r}"
        ) from exc
    when = when.astimezone(UTC)
    if when > now:
        raise InvalidInput("--since is in the future")
    if when < EARLIEST:
        raise InvalidInput("--since is before 2000-01-01")
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _settings(stage: str | None) -> tuple[Settings, str]:
    target = "AWS (default session)"
    if os.environ.get("AWS_ENDPOINT_URL"):
        target = f"AWS endpoint {os.environ['AWS_ENDPOINT_URL']}"
    else:
        from posync_local.runtime import activate_local_stack

        state = activate_local_stack()
        if state is not None:
            target = f"the local stack ({state.path})"
    if stage:
        os.environ["POSYNC_STAGE"] = stage
    try:
        return Settings.from_env(), target
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("sync")
@click.argument("provider", type=click.Choice(PROVIDERS))
@click.argument("merchant_id")
@click.option("--since", help="Re-read orders modified since this date (YYYY-MM-DD or RFC 3339, UTC).")
@click.option("--stage", default=None, help="Stage (default: POSYNC_STAGE or the local stack's).")
@click.option("--force", is_flag=True, help="Queue even if the connection is not active.")
@click.option("--json", "as_json", is_flag=True, help="Print the queued request as JSON.")
def sync_command(
    provider: str, merchant_id: str, *, since: str | None, stage: str | None, force: bool, as_json: bool
) -> None:
    """Queue a manual sync of one merchant's orders."""
    try:
        check_merchant_id(provider, merchant_id)
        since_iso = parse_since(since) if since is not None else None
    except InvalidInput as exc:
        raise click.BadParameter(str(exc)) from exc
    settings, target = _settings(stage)
    from posync.connections import ConnectionRepository
    from posync.syncqueue import queue_url, send_sync

    try:
        conn = ConnectionRepository(settings).get(provider, merchant_id)
    except ConnectionNotFound as exc:
        raise click.ClickException(
            f"no {provider} connection for merchant {merchant_id} on {target} (stage {settings.stage})"
        ) from exc
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(f"cannot reach {target}: {type(exc).__name__}") from exc
    if conn.status != ConnectionStatus.ACTIVE and not force:
        raise click.ClickException(
            f"the connection is {conn.status.value}: the merchant must reconnect (or pass --force)"
        )
    request = SyncRequest(
        provider=provider,
        merchant_id=merchant_id,
        kind=SyncKind.MANUAL,
        since=since_iso,
        reason="posync sync (command line)",
    )
    try:
        url = queue_url(settings.sync_queue_url, settings.resources.queue("sync").name)
        send_sync(url, request, f"{connection_id(provider, merchant_id)}-manual-{secrets.token_hex(8)}")
    except (ClientError, BotoCoreError) as exc:
        raise click.ClickException(f"could not queue the sync on {target}: {type(exc).__name__}") from exc
    if as_json:
        click.echo(json.dumps({"queued": json.loads(request.to_json()), "target": target}))
        return
    scope = f"since {since_iso}" if since_iso else "since its cursor"
    click.echo(f"Queued a manual sync of {provider} merchant {merchant_id} ({scope}) on {target}.")
    if "local stack" in target or os.environ.get("AWS_ENDPOINT_URL"):
        click.echo("The local stack processes it on its next drain (`posync local tick`).")
