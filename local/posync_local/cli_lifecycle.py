"""``posync reconcile`` and ``posync connections add clover MERCHANT_ID --token-stdin``.

    posync reconcile PROVIDER MERCHANT_ID [--days N] [--wait] [--json]
    posync connections add clover MERCHANT_ID --token-stdin [--json]

``reconcile`` queues a ``reconcile`` run (``posync.reconcile``): the orders modified in the
last N days (default: the stage's ``POSYNC_RECONCILE_DAYS``, 7) are re-read and a version is
exported only where the content differs from what is stored; with ``--wait`` the final line
counts the corrections by cause.

``connections add`` is the quick start before the app's OAuth is set up: a Clover *sandbox*
merchant API token (made in the sandbox Merchant Dashboard) is checked against Clover
(``GET /v3/merchants/{mId}``), stored as the connection's tokens (no refresh token: it is
never refreshed; a 401 later means it was revoked, CLV-TOKEN-1) and the first backfill is
queued. Outside the sandbox region it is refused with Clover's reason: production requires
OAuth. The token is read from stdin (hidden when typed) and never echoed, logged or printed.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import requests

from posync.connections import ConnectionRepository
from posync.domain import Connection, ConnectionStatus
from posync.syncqueue import SyncKind, SyncRequest, queue_url, send_sync
from posync.tokens import MERCHANT_API_TOKEN, SecretsManagerTokenStore, TokenSet
from posync_local.cli_common import (
    PROVIDER_ARG,
    Failure,
    cli_errors,
    echo_json,
    merchant_id_for,
    open_target,
    target_options,
)
from posync_local.cli_progress import plural
from posync_local.cli_run import follow, queue_sync, wait_options

TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9._~+/=-]{8,512}$")
PRODUCTION_REFUSAL = (
    "Clover merchant API tokens are for Clover's sandbox only: production requires OAuth "
    "(Clover: use test API tokens only in the sandbox; production apps use OAuth expiring access "
    "and refresh tokens). This stage's provider region is {region}: connect the merchant with the "
    "hosted link, {connect}"
)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


# --- reconcile -------------------------------------------------------------------------------------


@click.command("reconcile", short_help="Re-read recent orders; export what changed unannounced.")
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option(
    "--days",
    type=click.IntRange(1, 90),
    default=None,
    help="Re-read orders modified (so also created) in the last N days (default: POSYNC_RECONCILE_DAYS, 7).",
)
@wait_options
@click.option("--json", "as_json", is_flag=True, help="Print the queued request (and the result) as JSON.")
@target_options
@cli_errors
def reconcile_command(
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
    """Queue a reconciliation sweep of one merchant: refunds, payments and deletions that did not
    move the provider's modified time are exported as new versions, and counted."""
    merchant_id = merchant_id_for(provider, merchant_id)
    target = open_target(stack, stage)
    n = days if days is not None else target.settings.reconcile_days
    request = SyncRequest(
        provider=provider,
        merchant_id=merchant_id,
        kind=SyncKind.RECONCILE,
        since=_iso(datetime.now(UTC) - timedelta(days=n)),
        reason=f"posync reconcile --days {n} (command line)",
    )
    before = queue_sync(target, request)
    queued = {"queued": json.loads(request.to_json()), "target": target.description}
    if not as_json:
        click.echo(
            f"Queued a reconcile of {provider} merchant {merchant_id} (the last {plural(n, 'day')}) "
            f"on {target.description}."
        )
    if not wait:
        if as_json:
            echo_json(queued)
        return
    result = follow(target, request, before, timeout=timeout, progress_interval=progress_interval)
    conn = ConnectionRepository(target.settings).get(provider, merchant_id)
    counts = dict((conn.last_run or {}).get("counts") or {})
    causes_of = ("corrections", "silent", "changed", "missing", "deleted")
    corrections = {k: int(counts.get(k, 0)) for k in causes_of}
    if as_json:
        echo_json({**queued, "result": {**result.to_dict(), "corrections": corrections}})
    elif result.ok:
        causes = ", ".join(f"{k} {v}" for k, v in corrections.items() if k != "corrections")
        click.echo(
            f"Done: {plural(result.orders, 'order')} re-read, "
            f"{plural(corrections['corrections'], 'correction')} exported ({causes}) "
            f"in {result.elapsed_s:.1f} s (reconcile run {result.run_id})."
        )
    else:
        click.echo(f"Not done ({result.status}{': ' + result.error if result.error else ''}).")
    if not result.ok:
        raise click.exceptions.Exit(1)


# --- connections add ---------------------------------------------------------------------------------


def _read_token() -> str:
    stream = sys.stdin
    value = click.prompt("Merchant API token", hide_input=True) if stream.isatty() else stream.readline()
    token = str(value).strip()
    if not token:
        raise click.ClickException("no token on stdin")
    if not TOKEN_SHAPE.fullmatch(token):
        raise click.ClickException("that does not look like a Clover API token (8-512 token characters)")
    return token


def _check_with_clover(api_base: str, merchant_id: str, token: str) -> None:
    """``GET /v3/merchants/{mId}`` with the token: 200, or a clear refusal (never the token)."""
    try:
        r = requests.get(
            f"{api_base}/v3/merchants/{merchant_id}",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=15,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise Failure(f"could not reach Clover at {api_base}: {type(exc).__name__}") from None
    if r.status_code in (401, 403):
        why = f"Clover refused the token for merchant {merchant_id} ({r.status_code})"
        raise Failure(f"{why}; nothing stored")
    if r.status_code != 200:
        raise Failure(f"Clover answered {r.status_code} for merchant {merchant_id}: nothing stored")


def add_with_token(
    provider: str, merchant_id: str, *, as_json: bool, stack: str | None, stage: str | None
) -> None:
    """Connect a Clover sandbox merchant with a merchant API token, before the app's OAuth is set up.

    The token is checked against Clover, stored like a connection's tokens (never refreshed) and
    the first backfill is queued. Refused outside the sandbox region: production requires OAuth.
    """
    if provider != "clover":
        raise Failure("only Clover has merchant API tokens; connect Poynt merchants with the hosted link")
    merchant_id = merchant_id_for(provider, merchant_id)
    target = open_target(stack, stage)
    settings = target.settings
    if settings.provider_region != "sandbox":
        connect = f"{settings.public_base_url}/connect/clover"
        raise Failure(PRODUCTION_REFUSAL.format(region=settings.provider_region, connect=connect))
    token = _read_token()
    _check_with_clover(settings.hosts("clover").api_base, merchant_id, token)
    now = int(time.time())
    tokens = TokenSet(access_token=token, access_expires_at=0, obtained_at=now, kind=MERCHANT_API_TOKEN)
    SecretsManagerTokenStore(settings).store_new(provider, merchant_id, tokens)
    del token, tokens
    repo = ConnectionRepository(settings)
    conn = repo.save_connected(
        Connection(
            provider=provider,
            merchant_id=merchant_id,
            status=ConnectionStatus.ACTIVE,
            region=settings.provider_region,
            ref="merchant-api-token",
            connected_at=_iso(datetime.now(UTC)),
        )
    )
    request = SyncRequest(
        provider=provider,
        merchant_id=merchant_id,
        kind=SyncKind.BACKFILL,
        since=_iso(datetime.now(UTC) - timedelta(days=settings.backfill_days)),
        reason="first sync after posync connections add (merchant API token)",
    )
    url = queue_url(settings.sync_queue_url, settings.resources.queue("sync").name)
    send_sync(url, request, f"{conn.connection_id}#token#{secrets.token_hex(8)}")
    view: dict[str, Any] = {
        "provider": provider,
        "merchant_id": merchant_id,
        "status": conn.status.value,
        "token": "merchant API token (stored; never refreshed)",
        "backfill_queued_since": request.since,
        "target": target.description,
    }
    if as_json:
        echo_json(view)
    else:
        click.echo(
            f"Connected clover merchant {merchant_id} on {target.description} with a merchant API token "
            f"(sandbox only; never refreshed). The first backfill is queued (since {request.since})."
        )
