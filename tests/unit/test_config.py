"""Settings are read once, validated at cold start, and provider hosts are configuration."""

from __future__ import annotations

import pytest

from posync.config import ConfigError, Settings


def test_sandbox_profile_is_the_default() -> None:
    # Given no configuration at all
    s = Settings.from_env({})
    # Then the sandbox hosts from DESIGN.md are used
    assert s.clover.authorize_base == "https://apisandbox.dev.clover.com"
    assert s.clover.oauth_base == "https://apisandbox.dev.clover.com"
    assert s.poynt.authorize_base == "https://poynt.net"
    assert s.poynt.api_base == "https://services.poynt.net"
    assert s.backfill_days == 90
    assert s.schedule_minutes == 15


@pytest.mark.parametrize(
    ("region", "authorize", "token", "poynt_api"),
    [
        ("us", "https://www.clover.com", "https://api.clover.com", "https://services.poynt.net"),
        ("eu", "https://www.eu.clover.com", "https://api.eu.clover.com", "https://services-eu.poynt.net"),
        ("la", "https://www.la.clover.com", "https://api.la.clover.com", "https://services.poynt.net"),
    ],
)
def test_region_profile_picks_production_hosts(
    region: str, authorize: str, token: str, poynt_api: str
) -> None:
    s = Settings.from_env({"POSYNC_PROVIDER_REGION": region})
    assert s.clover.authorize_base == authorize
    assert s.clover.oauth_base == token
    assert s.clover.api_base == token
    assert s.poynt.oauth_base == poynt_api


def test_base_variables_override_the_profile() -> None:
    # Given the local runtime pointing both providers at sandboxes
    env = {
        "POSYNC_PROVIDER_REGION": "us",
        "POSYNC_CLOVER_OAUTH_BASE": "http://127.0.0.1:9001/",
        "POSYNC_CLOVER_API_BASE": "http://127.0.0.1:9001",
        "POSYNC_POYNT_OAUTH_BASE": "http://127.0.0.1:9002",
        "POSYNC_POYNT_API_BASE": "http://127.0.0.1:9002",
    }
    s = Settings.from_env(env)
    # Then every call goes there (trailing slashes dropped), consent pages included
    assert s.clover.authorize_base == "http://127.0.0.1:9001"
    assert s.clover.oauth_base == "http://127.0.0.1:9001"
    assert s.poynt.authorize_base == "http://127.0.0.1:9002"
    assert s.poynt.oauth_base == "http://127.0.0.1:9002"


@pytest.mark.parametrize(
    "env",
    [
        {"POSYNC_PROVIDER_REGION": "mars"},
        {"POSYNC_CLOVER_API_BASE": "ftp://example"},
        {"POSYNC_CLOVER_API_BASE": "not a url"},
        {"POSYNC_STAGE": "Prod!"},
        {"POSYNC_BACKFILL_DAYS": "ninety"},
        {"POSYNC_BACKFILL_DAYS": "0"},
        {"POSYNC_SCHEDULE_MINUTES": "100000"},
        {"POSYNC_SUCCESS_REDIRECT_URL": "javascript:alert(1)"},
    ],
)
def test_bad_settings_fail_at_cold_start_with_a_clear_message(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert str(err.value)


def test_names_come_from_the_resource_model() -> None:
    s = Settings.from_env(
        {"POSYNC_STAGE": "prod", "POSYNC_ACCOUNT_ID": "123456789012", "AWS_REGION": "eu-west-1"}
    )
    assert s.connections_table == "posync-prod-connections"
    assert s.bucket == "posync-prod-exports-123456789012-eu-west-1"
    assert s.connection_secret_name("clover", "ABCDEFGHJKMNP") == "posync/prod/clover/ABCDEFGHJKMNP"
    assert s.app_secret_name("poynt") == "posync/prod/app/poynt"
    assert s.redirect_uri("clover") == "http://127.0.0.1:8080/oauth/clover/callback"
