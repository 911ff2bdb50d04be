"""The ``posync`` command line."""

from __future__ import annotations

import click

from posync_local.cli_credentials import credentials_group
from posync_local.cli_lifecycle import reconcile_command
from posync_local.cli_links import connect_link_command
from posync_local.cli_ops import connections_group, exports_group
from posync_local.cli_poynt import add_command, sync_installs_command
from posync_local.cli_probe import probe_command
from posync_local.cli_run import backfill_command, sync_command
from posync_local.demo import demo_command
from posync_local.local_cli import local_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="posync")
def cli() -> None:
    """posync: point-of-sale orders from Clover and Poynt into your own AWS account."""


cli.add_command(local_group)
cli.add_command(credentials_group)
cli.add_command(demo_command)
cli.add_command(connections_group)
connections_group.add_command(add_command)  # Poynt app installs, Clover sandbox tokens
connections_group.add_command(sync_installs_command)
cli.add_command(sync_command)
cli.add_command(backfill_command)
cli.add_command(reconcile_command)
cli.add_command(exports_group)
cli.add_command(probe_command)
cli.add_command(connect_link_command)


def main() -> None:
    cli()
