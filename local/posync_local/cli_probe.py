"""``posync probe PROVIDER MERCHANT_ID [--json]``: check the provider contract register's rows
(``docs/provider-contracts.md``) against the stage's real connection, read-only.

The connection is found as ``posync sync`` finds it (the stage's connections table; its
tokens through the stage's token service, refreshed if due), and read through the same
transport as a sync, held to 2 requests a second and one at a time: well inside every
provider's limits. Each provider package plugs in by name: ``posync.providers.<provider>.probe``
exposes ``CHECKS`` (a sequence of ``posync.probe.Check``) and ``context(transport,
merchant_id)``. One line per row (``holds`` / ``differs`` / ``not checkable``), or a JSON
document with ``--json``; exit 1 if any row differs.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import click

from posync.connections import ConnectionRepository
from posync.domain import Connection, ConnectionStatus
from posync.errors import ConnectionNotFound
from posync.probe import Check, Finding, run_checks
from posync.ratelimit import RequestLimiter, TokenLimiter
from posync.transport import Transport, session
from posync_local.cli_common import (
    PROVIDER_ARG,
    Failure,
    cli_errors,
    echo_json,
    merchant_id_for,
    open_target,
    target_options,
)

PROBE_RPS = 2.0  # Clover allows 16 a second per token: the probe never comes near a 429


def probe_module(provider: str) -> ModuleType:
    """``posync.providers.<provider>.probe`` (with ``CHECKS`` and ``context``), or a Failure."""
    try:
        module = importlib.import_module(f"posync.providers.{provider}.probe")
    except ModuleNotFoundError as exc:
        raise Failure(f"posync has no contract probe for {provider} yet") from exc
    if not hasattr(module, "CHECKS") or not callable(getattr(module, "context", None)):
        raise Failure(f"posync.providers.{provider}.probe lacks CHECKS or context()")
    return module


def probe_transport(settings: Any, tokens: Any, conn: Connection) -> Transport:
    """The connection's transport, as a sync builds it, limited to ``PROBE_RPS`` and one in flight."""
    return Transport(
        conn,
        settings.hosts(conn.provider).api_base,
        tokens,
        RequestLimiter(TokenLimiter(PROBE_RPS, 1)),
        http=session(conn.provider, 2),
    )


def probe(module: ModuleType, transport: Transport, merchant_id: str) -> list[Finding]:
    checks: Sequence[Check] = module.CHECKS
    return run_checks(checks, module.context(transport, merchant_id))


def render(provider: str, merchant_id: str, findings: list[Finding], requests: int) -> str:
    width = max((len(f.row) for f in findings), default=0)
    lines = [f"{f.row.ljust(width)}  {f.verdict:<13}  {f.detail}" for f in findings]
    counts = {v: sum(f.verdict == v for f in findings) for v in ("holds", "differs", "not checkable")}
    lines.append(
        f"{provider} {merchant_id}: {counts['holds']} hold, {counts['differs']} differ, "
        f"{counts['not checkable']} not checkable ({requests} requests)"
    )
    return "\n".join(lines)


@click.command("probe", short_help="Check the provider contract register against a real connection.")
@PROVIDER_ARG
@click.argument("merchant_id")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@target_options
@cli_errors
def probe_command(
    provider: str, merchant_id: str, *, as_json: bool, stack: str | None, stage: str | None
) -> None:
    """Read-only checks of docs/provider-contracts.md's rows for PROVIDER, on MERCHANT_ID's connection."""
    from posync.tokens import build_token_service

    provider = provider.lower()
    merchant_id = merchant_id_for(provider, merchant_id)
    module = probe_module(provider)
    target = open_target(stack, stage)
    settings = target.settings
    try:
        conn = ConnectionRepository(settings).get(provider, merchant_id)
    except ConnectionNotFound as exc:
        raise ConnectionNotFound(
            f"no {provider} connection for merchant {merchant_id} on {target.description}"
        ) from exc
    if conn.status is not ConnectionStatus.ACTIVE:
        raise Failure(f"the connection is {conn.status.value}: the merchant must connect again first")
    transport = probe_transport(settings, build_token_service(settings), conn)
    findings = probe(module, transport, merchant_id)
    if as_json:
        echo_json(
            {
                "provider": provider,
                "merchant_id": merchant_id,
                "requests": transport.stats.requests,
                "findings": [f.to_json() for f in findings],
            }
        )
    else:
        click.echo(render(provider, merchant_id, findings, transport.stats.requests))
    if any(f.verdict == "differs" for f in findings):
        raise click.exceptions.Exit(1)
