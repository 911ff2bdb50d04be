"""Poynt on-terminal apps from the command line (``posync.providers.poynt.installs``).

    posync connections add poynt BUSINESS_ID --app-installed [--ref REF] [--json]
    posync connections add clover MERCHANT_ID --token-stdin [--json]   (posync_local.cli_lifecycle)
    posync connections sync-installs [--json]

``add`` connects a business whose terminal has the operator's app installed: no consent page,
the app's own token; it first checks that the token may read the business (a 403 means the
app is not installed there, and nothing is stored). ``sync-installs`` reads the billing
subscription list and connects every ACTIVE business, revoking app-installed connections whose
business left it (what the ``APPLICATION_SUBSCRIPTION_*`` webhooks do, as a sweep).
"""

from __future__ import annotations

import click

from posync.authorization import sync_enqueuer
from posync.connections import ConnectionRepository
from posync.errors import InvalidInput, ProviderError
from posync_local.cli_common import (
    PROVIDER_ARG,
    cli_errors,
    echo_json,
    merchant_id_for,
    open_target,
    target_options,
)


def _session() -> object:
    from posync.providers import shared_session

    return shared_session()


@click.command(
    "add", short_help="Connect without the consent page: a Poynt app install or a Clover sandbox token."
)
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option("--app-installed", is_flag=True, help="Poynt: the app is installed on the business's terminal.")
@click.option(
    "--token-stdin",
    is_flag=True,
    help="Clover sandbox: read a merchant API token (Merchant Dashboard) from stdin; never echoed.",
)
@click.option("--ref", default=None, help="Your own reference for the connection (Poynt).")
@click.option("--json", "as_json", is_flag=True, help="Print the connection as JSON.")
@target_options
@cli_errors
def add_command(
    provider: str,
    merchant_id: str,
    *,
    app_installed: bool,
    token_stdin: bool,
    ref: str | None,
    as_json: bool,
    stack: str | None,
    stage: str | None,
) -> None:
    """Connect a merchant without the hosted link, and queue its first backfill.

    ``--app-installed`` (Poynt): the operator's on-terminal app is installed, so the app's own
    token reads the business. ``--token-stdin`` (Clover, sandbox region only): a merchant API
    token from the dashboard, stored and never refreshed (posync_local.cli_lifecycle).
    """
    if token_stdin:
        if app_installed or ref is not None:
            raise click.UsageError("--token-stdin takes neither --app-installed nor --ref")
        from posync_local.cli_lifecycle import add_with_token

        add_with_token(provider, merchant_id, as_json=as_json, stack=stack, stage=stage)
        return
    add_app_installed(
        provider, merchant_id, app_installed=app_installed, ref=ref, as_json=as_json, stack=stack, stage=stage
    )


def add_app_installed(
    provider: str,
    merchant_id: str,
    *,
    app_installed: bool,
    ref: str | None,
    as_json: bool,
    stack: str | None,
    stage: str | None,
) -> None:
    """Connect a business by its installed on-terminal app and queue its first backfill."""
    from posync.domain import check_ref
    from posync.providers.poynt.installs import app_oauth, connect

    if provider != "poynt" or not app_installed:
        raise click.UsageError(
            "only Poynt businesses with the app installed (--app-installed) and Clover sandbox "
            "merchants with a merchant API token (--token-stdin) are added by hand; "
            "other merchants connect through the hosted link (GET /connect/{provider})"
        )
    merchant_id = merchant_id_for(provider, merchant_id)
    check_ref(ref)
    target = open_target(stack, stage)
    settings = target.settings
    oauth = app_oauth(settings)
    resp = _session().get(  # type: ignore[attr-defined]
        f"{settings.poynt.api_base}/businesses/{merchant_id}",
        headers={"Authorization": f"Bearer {oauth.app_access_token()}", "api-version": "1.2"},
        timeout=(5.0, 15.0),
        allow_redirects=False,
    )
    if resp.status_code in (401, 403, 404):
        raise InvalidInput(
            f"the app may not read business {merchant_id} ({resp.status_code}): "
            "is the app installed on its terminal? Nothing was stored."
        )
    if resp.status_code != 200:
        raise ProviderError(
            f"poynt answered {resp.status_code} to GET /businesses/{{id}}", status=resp.status_code
        )
    conn = connect(
        merchant_id,
        connections=ConnectionRepository(settings),
        enqueue=sync_enqueuer(settings),
        region=settings.provider_region,
        backfill_days=settings.backfill_days,
        ref=ref,
    )
    if as_json:
        echo_json(
            {"provider": "poynt", "merchant_id": merchant_id, "status": conn.status.value, "auth": conn.auth}
        )
        return
    click.echo(f"poynt business {merchant_id} connected (app installed); its first backfill is queued.")


@click.command("sync-installs", short_help="Connect and revoke Poynt businesses from the billing list.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@target_options
@cli_errors
def sync_installs_command(*, as_json: bool, stack: str | None, stage: str | None) -> None:
    """Read the app's billing subscriptions: connect ACTIVE businesses, revoke those that left."""
    from posync.providers.poynt.installs import app_oauth, subscribed_businesses, sweep

    target = open_target(stack, stage)
    settings = target.settings
    subs = subscribed_businesses(app_oauth(settings), settings.poynt_billing_base, _session())
    connected, revoked = sweep(
        subs,
        connections=ConnectionRepository(settings),
        enqueue=sync_enqueuer(settings),
        region=settings.provider_region,
        backfill_days=settings.backfill_days,
    )
    if as_json:
        echo_json({"subscriptions": len(subs), "connected": connected, "revoked": revoked})
        return
    click.echo(f"{len(subs)} subscriptions: {connected} businesses connected, {revoked} revoked.")
