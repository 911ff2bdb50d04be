"""``posync connect-link PROVIDER --ref ID [--expires 7d]``: an operator-signed connect link.

The link carries ``ref`` (the operator's own id for the merchant) onto the connection; only a
link signed with the stage's state key does (``posync.oauth_state``), until ``--expires``
(default 7 days, at most 90). Send it to the merchant; a bad or expired signature gets a
clear page. The link's host is ``--base-url`` (default ``POSYNC_PUBLIC_BASE_URL``, the local
stack's front when it is running).
"""

from __future__ import annotations

import re
import time

import click

from posync.oauth_state import MAX_LINK_TTL_S, LinkSigner, SecretsManagerStateKey, StateKeyUnavailable
from posync_local.cli_credentials import _settings

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``90m``, ``12h``, ``7d``, ``2w`` -> seconds (1 second to 90 days)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise click.BadParameter("use a number and a unit: 90m, 12h, 7d, 2w")
    seconds = int(m.group(1)) * _UNIT_S[m.group(2)]
    if not 0 < seconds <= MAX_LINK_TTL_S:
        raise click.BadParameter("a link lives between 1 second and 90 days")
    return seconds


@click.command("connect-link")
@click.argument("provider", type=click.Choice(["clover", "poynt"]))
@click.option("--ref", required=True, help="Your own id for this merchant (1-64 of A-Z a-z 0-9 . _ : @ -).")
@click.option("--expires", default="7d", show_default=True, help="How long the link works: 90m, 12h, 7d, 2w.")
@click.option("--base-url", help="The API's public URL (default: POSYNC_PUBLIC_BASE_URL).")
@click.option("--stage", help="The posync stage (default: POSYNC_STAGE or dev).")
def connect_link_command(
    provider: str, ref: str, expires: str, base_url: str | None, stage: str | None
) -> None:
    """Print a signed connect link that puts REF on the merchant's connection."""
    from dataclasses import replace

    from posync.authorization import signed_connect_link
    from posync.config import ConfigError, _url
    from posync.domain import REF_PATTERN

    if not REF_PATTERN.fullmatch(ref):
        raise click.BadParameter("1-64 characters of letters, digits and ._:@-", param_hint="--ref")
    ttl_s = parse_duration(expires)
    settings, target = _settings(stage)
    if base_url:
        try:
            settings = replace(settings, public_base_url=_url("--base-url", base_url))
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--base-url") from exc
    expires_at = int(time.time()) + ttl_s
    try:
        link = signed_connect_link(
            settings, LinkSigner(SecretsManagerStateKey(settings)), provider, ref, expires_at
        )
    except StateKeyUnavailable as exc:
        raise click.ClickException(f"{exc} on {target}") from exc
    click.echo(link)
    click.echo(f"(valid until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires_at))})", err=True)
