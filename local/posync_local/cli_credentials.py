"""``posync app-credentials``: the app's own Clover and Poynt credentials in Secrets Manager.

    posync app-credentials set clover --client-id X --client-secret-stdin < secret.txt
    posync app-credentials set clover --webhook-auth-code-stdin < auth-code.txt
    posync app-credentials set poynt --app-id urn:aid:... --private-key-file key.pem [--webhook-secret-stdin]
    posync app-credentials show {clover|poynt}          # which fields are set, never their values
    posync app-credentials webhook-verification         # the code Clover sent to the webhook URL

Target: the running local stack when ``AWS_ENDPOINT_URL`` is set or ``posync local up``'s
state file exists; otherwise the default AWS session (profile, SSO, instance role...).
Secrets are read from stdin (or a hidden prompt on a terminal) and from files, never from
the command line, and are never echoed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from posync.app_credentials import AppCredentialsStore, AppNotConfigured, load_rsa_private_key
from posync.config import ConfigError, Settings
from posync.errors import InvalidInput


def _settings(stage: str | None) -> tuple[Settings, str]:
    """Point this process at the right AWS and return the stage's settings and a target label."""
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


def _secret_from_stdin(label: str) -> str:
    stream = sys.stdin
    value = click.prompt(label, hide_input=True) if stream.isatty() else stream.readline()
    value = str(value).strip()
    if not value:
        raise click.ClickException(f"{label}: nothing on stdin")
    return value


@click.group("app-credentials")
def credentials_group() -> None:
    """The app's provider credentials (Clover client id/secret, Poynt app id/private key)."""


@credentials_group.command("set")
@click.argument("provider", type=click.Choice(["clover", "poynt"]))
@click.option("--client-id", help="Clover: the app id shown in the Clover developer dashboard.")
@click.option("--client-secret-stdin", is_flag=True, help="Clover: read the app secret from stdin.")
@click.option(
    "--webhook-auth-code-stdin", is_flag=True, help="Clover: read the webhook X-Clover-Auth code from stdin."
)
@click.option("--app-id", help="Poynt: the application id, urn:aid:...")
@click.option(
    "--private-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Poynt: the app's RSA private key (PEM).",
)
@click.option(
    "--webhook-secret-stdin", is_flag=True, help="Poynt: read the webhook signing secret from stdin."
)
@click.option("--stage", help="The posync stage (default: POSYNC_STAGE or dev).")
def set_credentials(
    provider: str,
    *,
    client_id: str | None,
    client_secret_stdin: bool,
    webhook_auth_code_stdin: bool,
    app_id: str | None,
    private_key_file: Path | None,
    webhook_secret_stdin: bool,
    stage: str | None,
) -> None:
    """Write (merge) PROVIDER's app credentials. Nothing secret is echoed."""
    values: dict[str, str] = {}
    if provider == "clover":
        if app_id or private_key_file or webhook_secret_stdin:
            raise click.UsageError("--app-id, --private-key-file and --webhook-secret-stdin are for poynt")
        if client_secret_stdin and webhook_auth_code_stdin:
            raise click.UsageError(
                "read one secret from stdin per call (set the webhook auth code separately)"
            )
        if client_id:
            values["client_id"] = client_id
        if client_secret_stdin:
            values["client_secret"] = _secret_from_stdin("Clover client secret")
        if webhook_auth_code_stdin:
            values["webhook_auth_code"] = _secret_from_stdin("Clover webhook auth code")
    else:
        if client_id or client_secret_stdin or webhook_auth_code_stdin:
            raise click.UsageError(
                "--client-id, --client-secret-stdin and --webhook-auth-code-stdin are for clover"
            )
        if app_id:
            values["app_id"] = app_id
        if private_key_file is not None:
            pem = private_key_file.read_bytes()
            try:
                load_rsa_private_key(pem)
            except InvalidInput as exc:
                raise click.ClickException(f"{private_key_file}: {exc}") from exc
            values["private_key_pem"] = pem.decode("ascii", errors="strict")
        if webhook_secret_stdin:
            values["webhook_secret"] = _secret_from_stdin("Poynt webhook secret")
    if not values:
        raise click.UsageError("nothing to set: pass at least one option")
    settings, target = _settings(stage)
    try:
        creds = AppCredentialsStore(settings).save(provider, values)
    except (AppNotConfigured, InvalidInput) as exc:
        raise click.ClickException(str(exc)) from exc
    ident = creds.to_dict().get("client_id") or creds.to_dict().get("app_id")
    click.echo(
        f"Stored {provider} app credentials in {settings.app_secret_name(provider)} on {target} "
        f"(id {ident}; fields set: {', '.join(sorted(values))}; values not shown)."
    )


@credentials_group.command("show")
@click.argument("provider", type=click.Choice(["clover", "poynt"]))
@click.option("--stage", help="The posync stage (default: POSYNC_STAGE or dev).")
def show_credentials(provider: str, stage: str | None) -> None:
    """Say which of PROVIDER's credential fields are set (never their values)."""
    settings, target = _settings(stage)
    try:
        creds = AppCredentialsStore(settings).get(provider).to_dict()
    except AppNotConfigured as exc:
        raise click.ClickException(f"{exc} on {target}") from exc
    ident = creds.get("client_id") or creds.get("app_id")
    click.echo(f"{provider} app {ident} on {target}: fields set: {', '.join(sorted(creds))}")


@credentials_group.command("webhook-verification")
@click.option("--stage", help="The posync stage (default: POSYNC_STAGE or dev).")
def webhook_verification(stage: str | None) -> None:
    """Print the verification codes Clover posted to the webhook URL, newest last, each with its
    time (paste the one matching your click of "Send Verification Code" into Clover's dashboard)."""
    from posync.webhooks import DynamoVerificationStore

    settings, target = _settings(stage)
    found = DynamoVerificationStore(settings).read_verification_codes("clover")
    if not found:
        click.echo(f"No Clover verification code received yet on {target}.", err=True)
        sys.exit(3)  # not found, as in every posync command
    for code, received_at in found:
        click.echo(f"{code}\t(received {received_at})")
