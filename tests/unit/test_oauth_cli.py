"""``posync app-credentials`` against moto in-process: writes, merges, validates, never echoes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from moto import mock_aws

from posync.aws import reset_clients
from posync.config import Settings
from posync.webhooks import DynamoVerificationStore
from posync_local.cli_credentials import credentials_group
from tests.unit.test_oauth_connections import create_tables

SECRET = "clover-app-secret-value-0123456789"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("POSYNC_LOCAL_STATE", str(tmp_path / "no-state.json"))
    monkeypatch.setenv("POSYNC_STAGE", "cli")
    with mock_aws():
        reset_clients()
        yield
    reset_clients()


def stored(name: str) -> dict[str, str]:
    raw = boto3.client("secretsmanager", region_name="us-east-1").get_secret_value(SecretId=name)[
        "SecretString"
    ]
    return dict(json.loads(raw))


def pem_file(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def test_set_clover_reads_the_secret_from_stdin_and_never_echoes_it(aws: None) -> None:
    # When the operator stores the Clover app credentials
    result = CliRunner().invoke(
        credentials_group,
        ["set", "clover", "--client-id", "CLOVERAPP1", "--client-secret-stdin"],
        input=SECRET + "\n",
    )
    # Then they are in the app secret, and the output names the id but not the secret
    assert result.exit_code == 0, result.output
    assert stored("posync/cli/app/clover") == {"client_id": "CLOVERAPP1", "client_secret": SECRET}
    assert "CLOVERAPP1" in result.output and SECRET not in result.output
    # When the webhook auth code is added later
    again = CliRunner().invoke(
        credentials_group, ["set", "clover", "--webhook-auth-code-stdin"], input="hook-code\n"
    )
    # Then it is merged in, keeping the client secret
    assert again.exit_code == 0, again.output
    assert stored("posync/cli/app/clover")["webhook_auth_code"] == "hook-code"
    assert stored("posync/cli/app/clover")["client_secret"] == SECRET
    assert "hook-code" not in again.output
    # And show lists fields, not values
    shown = CliRunner().invoke(credentials_group, ["show", "clover"])
    assert "client_secret" in shown.output and SECRET not in shown.output


def test_set_clover_without_a_secret_anywhere_fails_and_writes_nothing(aws: None) -> None:
    result = CliRunner().invoke(credentials_group, ["set", "clover", "--client-id", "CLOVERAPP1"])
    assert result.exit_code != 0
    assert "client_secret" in result.output
    with pytest.raises(
        boto3.client("secretsmanager", region_name="us-east-1").exceptions.ResourceNotFoundException
    ):
        stored("posync/cli/app/clover")


def test_set_poynt_validates_the_rsa_key(aws: None, tmp_path: Path) -> None:
    # Given an RSA key file
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = pem_file(tmp_path, key)
    # When it is stored
    result = CliRunner().invoke(
        credentials_group,
        ["set", "poynt", "--app-id", "urn:aid:0b9f1c2e-1111", "--private-key-file", str(path)],
    )
    # Then the secret holds the app id and the PEM, and the output shows neither the key nor its header
    assert result.exit_code == 0, result.output
    saved = stored("posync/cli/app/poynt")
    assert saved["app_id"] == "urn:aid:0b9f1c2e-1111"
    assert saved["private_key_pem"] == path.read_text()
    assert "PRIVATE" not in result.output


def test_set_poynt_refuses_a_non_rsa_key_and_garbage(aws: None, tmp_path: Path) -> None:
    ec_path = pem_file(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    result = CliRunner().invoke(
        credentials_group, ["set", "poynt", "--app-id", "urn:aid:x", "--private-key-file", str(ec_path)]
    )
    assert result.exit_code != 0 and "not an RSA key" in result.output
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    result = CliRunner().invoke(
        credentials_group, ["set", "poynt", "--app-id", "urn:aid:x", "--private-key-file", str(junk)]
    )
    assert result.exit_code != 0 and "PEM" in result.output


def test_options_of_the_other_provider_are_refused(aws: None) -> None:
    result = CliRunner().invoke(credentials_group, ["set", "clover", "--app-id", "urn:aid:x"])
    assert result.exit_code == 2


def test_webhook_verification_prints_the_code_clover_sent(aws: None) -> None:
    settings = Settings.from_env()
    create_tables(settings)
    missing = CliRunner().invoke(credentials_group, ["webhook-verification"])
    assert missing.exit_code == 3
    DynamoVerificationStore(settings).put_verification_code("clover", "vc-41")
    DynamoVerificationStore(settings).put_verification_code("clover", "vc-42")
    result = CliRunner().invoke(credentials_group, ["webhook-verification"])
    # each code on its own line with the time it came, newest last
    lines = result.output.splitlines()
    assert result.exit_code == 0 and [line.split("\t")[0] for line in lines] == ["vc-41", "vc-42"]
    assert all("(received 20" in line for line in lines)


def test_connect_link_prints_a_link_the_connect_service_accepts(aws: None) -> None:
    # Given the stage's state key
    import time
    from urllib.parse import parse_qs, urlsplit

    from posync.oauth_state import LinkSigner, SecretsManagerStateKey
    from posync_local.cli_links import connect_link_command

    settings = Settings.from_env()
    boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name=settings.state_key_secret_name, SecretString="k" * 43
    )
    # When the operator asks for a link for shop-7 that lives 2 days
    out = CliRunner().invoke(
        connect_link_command,
        ["clover", "--ref", "shop-7", "--expires", "2d", "--base-url", "https://api.shop.example"],
    )
    # Then it prints a link on the given host whose signature verifies for that ref and expiry
    assert out.exit_code == 0, out.output
    link = out.stdout.strip()
    parts = urlsplit(link)
    assert (parts.netloc, parts.path) == ("api.shop.example", "/connect/clover")
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["ref"] == "shop-7"
    assert LinkSigner(SecretsManagerStateKey(settings)).verify("clover", q["ref"], q["exp"], q["sig"])
    assert 2 * 86400 - 60 < int(q["exp"]) - time.time() <= 2 * 86400
    # And bad input is refused with a clear message
    bad = CliRunner().invoke(connect_link_command, ["clover", "--ref", "no spaces", "--expires", "7d"])
    assert bad.exit_code == 2 and "--ref" in bad.output
    long = CliRunner().invoke(connect_link_command, ["clover", "--ref", "s", "--expires", "100d"])
    assert long.exit_code == 2 and "90 days" in long.output
