"""Typed settings, read once from the environment and validated at cold start.

Provider hosts are configuration, never literals elsewhere in the code. A region
profile (``us``, ``eu``, ``la``, ``sandbox``) picks the defaults; each
``POSYNC_*_BASE`` variable overrides one of them (the local runtime points them
at the sandboxes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from posync.resources import Resources, resources

PROVIDERS: tuple[str, ...] = ("clover", "poynt")
# Poynt's billing API (on-terminal installs: GET /apps/{appId}/subscriptions); POSYNC_POYNT_BILLING_BASE
POYNT_BILLING_BASE = "https://billing.poynt.net"
PROVIDER_PATTERN = re.compile(r"^(clover|poynt)$")


class ConfigError(ValueError):
    """A setting is missing or malformed. Raised at cold start, never per request."""


@dataclass(frozen=True)
class ProviderHosts:
    """One provider's hosts: consent page, token endpoint, REST API."""

    authorize_base: str  # where the merchant's browser goes to consent
    oauth_base: str  # token exchange and refresh
    api_base: str  # orders and the rest of the REST API


# Region profile -> provider -> hosts. Clover: authorize on www.*, tokens and API on api.*;
# the sandbox serves all three on one host. Poynt: consent on poynt.net, tokens and API on services.
_DEFAULTS: dict[str, dict[str, ProviderHosts]] = {
    "sandbox": {
        "clover": ProviderHosts(
            "https://apisandbox.dev.clover.com",
            "https://apisandbox.dev.clover.com",
            "https://apisandbox.dev.clover.com",
        ),
        "poynt": ProviderHosts(
            "https://poynt.net", "https://services.poynt.net", "https://services.poynt.net"
        ),
    },
    "us": {
        "clover": ProviderHosts("https://www.clover.com", "https://api.clover.com", "https://api.clover.com"),
        "poynt": ProviderHosts(
            "https://poynt.net", "https://services.poynt.net", "https://services.poynt.net"
        ),
    },
    "eu": {
        "clover": ProviderHosts(
            "https://www.eu.clover.com", "https://api.eu.clover.com", "https://api.eu.clover.com"
        ),
        "poynt": ProviderHosts(
            "https://poynt.net", "https://services-eu.poynt.net", "https://services-eu.poynt.net"
        ),
    },
    "la": {
        "clover": ProviderHosts(
            "https://www.la.clover.com", "https://api.la.clover.com", "https://api.la.clover.com"
        ),
        "poynt": ProviderHosts(
            "https://poynt.net", "https://services.poynt.net", "https://services.poynt.net"
        ),
    },
}


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def provider_hosts(provider: str, env: Mapping[str, str]) -> ProviderHosts:
    """Hosts for one provider: the region profile's defaults, each overridable.

    Clover: ``POSYNC_CLOVER_OAUTH_BASE`` (token and refresh; also the authorize page
    unless ``POSYNC_CLOVER_AUTHORIZE_BASE`` says otherwise) and ``POSYNC_CLOVER_API_BASE``.
    Poynt: ``POSYNC_POYNT_OAUTH_BASE`` is the consent site; the token endpoint lives on
    ``POSYNC_POYNT_API_BASE`` with the rest of the API.
    """
    region = env.get("POSYNC_PROVIDER_REGION", "sandbox")
    if region not in _DEFAULTS:
        raise ConfigError(f"POSYNC_PROVIDER_REGION must be one of {sorted(_DEFAULTS)}, got {region!r}")
    d = _DEFAULTS[region][provider]
    up = provider.upper()

    def get(suffix: str, default: str) -> str:
        name = f"POSYNC_{up}_{suffix}"
        return _url(name, env.get(name) or default)

    if provider == "poynt":
        api = get("API_BASE", d.api_base)
        return ProviderHosts(authorize_base=get("OAUTH_BASE", d.authorize_base), oauth_base=api, api_base=api)
    oauth = get("OAUTH_BASE", d.oauth_base)
    authorize_default = oauth if env.get(f"POSYNC_{up}_OAUTH_BASE") else d.authorize_base
    return ProviderHosts(
        authorize_base=get("AUTHORIZE_BASE", authorize_default),
        oauth_base=oauth,
        api_base=get("API_BASE", d.api_base),
    )


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """A handler's typed settings, read from the environment and validated at cold start."""

    stage: str
    aws_region: str
    resources: Resources
    clover: ProviderHosts
    poynt: ProviderHosts
    public_base_url: str  # the API's public URL; redirect URIs are built from it only
    success_redirect_url: str | None
    sync_queue_url: str | None
    backfill_days: int
    schedule_minutes: int
    refresh_leeway_s: int
    provider_region: str = "sandbox"  # POSYNC_PROVIDER_REGION: recorded on each connection
    reconcile_days: int = 7  # POSYNC_RECONCILE_DAYS: the reconcile sweep's window (posync.reconcile)
    poynt_billing_base: str = POYNT_BILLING_BASE  # POSYNC_POYNT_BILLING_BASE (subscriptions)

    @property
    def connections_table(self) -> str:
        return self.resources.table("connections").name

    @property
    def orders_table(self) -> str:
        return self.resources.table("orders").name

    @property
    def control_table(self) -> str:
        return self.resources.table("control").name

    @property
    def bucket(self) -> str:
        return self.resources.bucket

    @property
    def event_bus(self) -> str:
        return self.resources.event_bus

    def hosts(self, provider: str) -> ProviderHosts:
        if provider == "clover":
            return self.clover
        if provider == "poynt":
            return self.poynt
        raise ConfigError(f"unknown provider {provider!r}")

    def redirect_uri(self, provider: str) -> str:
        return f"{self.public_base_url}/oauth/{provider}/callback"

    def connection_secret_name(self, provider: str, merchant_id: str) -> str:
        return f"{self.resources.secret_prefix}/{provider}/{merchant_id}"

    def app_secret_name(self, provider: str) -> str:
        return f"{self.resources.secret_prefix}/app/{provider}"

    @property
    def state_key_secret_name(self) -> str:
        return f"{self.resources.secret_prefix}/app/state-key"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e: Mapping[str, str] = os.environ if env is None else env
        stage = e.get("POSYNC_STAGE", "dev")
        region = e.get("AWS_REGION") or e.get("AWS_DEFAULT_REGION") or "us-east-1"
        account = e.get("POSYNC_ACCOUNT_ID", "000000000000")
        try:
            res = resources(stage, account=account, region=region)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if e.get("POSYNC_EXPORT_BUCKET"):
            res = Resources(**{**res.__dict__, "bucket": e["POSYNC_EXPORT_BUCKET"]})
        public = _url("POSYNC_PUBLIC_BASE_URL", e.get("POSYNC_PUBLIC_BASE_URL", "http://127.0.0.1:8080"))
        success = e.get("POSYNC_SUCCESS_REDIRECT_URL") or None
        if success is not None:
            success = _url("POSYNC_SUCCESS_REDIRECT_URL", success)
        return cls(
            stage=stage,
            aws_region=region,
            resources=res,
            clover=provider_hosts("clover", e),
            poynt=provider_hosts("poynt", e),
            public_base_url=public,
            success_redirect_url=success,
            sync_queue_url=e.get("POSYNC_SYNC_QUEUE_URL") or None,
            backfill_days=_int(e, "POSYNC_BACKFILL_DAYS", 90, 1, 3650),
            schedule_minutes=_int(e, "POSYNC_SCHEDULE_MINUTES", 15, 1, 1440),
            refresh_leeway_s=_int(e, "POSYNC_REFRESH_LEEWAY_SECONDS", 300, 0, 86400),
            provider_region=e.get("POSYNC_PROVIDER_REGION", "sandbox"),
            reconcile_days=_int(e, "POSYNC_RECONCILE_DAYS", 7, 1, 90),
            poynt_billing_base=_url(
                "POSYNC_POYNT_BILLING_BASE", e.get("POSYNC_POYNT_BILLING_BASE") or POYNT_BILLING_BASE
            ),
        )
