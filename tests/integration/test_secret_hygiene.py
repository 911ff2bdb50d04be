"""Secret hygiene: no token, code, client secret, webhook secret, state key or private key in any
log line or HTTP answer.

The secrets are collected from where they live, not from what a test happened to see: the
sandboxes' own records (every access and refresh token and authorization code they issued,
the app's client secret, private key and webhook secrets: ``sandbox.secrets()``), the stage's
state key and app credentials, and every connection secret in Secrets Manager. The module
drives every path that handles them (consent and callback, refused and failed exchanges,
forced expiry and refresh, a refused refresh, revocation, signed and forged webhooks, syncs)
and records every answer our front gave. The log scan covers every line the process logged
since the integration session started (root and Powertools loggers, ``captured_logs``), and
runs once more when the session ends, over what later modules logged too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import boto3
import pytest
import requests

from posync.syncqueue import SyncKind, SyncRequest, send_sync
from posync.tokens import SecretsManagerTokenStore, TokensMissing
from posync.webhooks import poynt_signature
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import (
    BROWSER,
    clover_of,
    decide,
    poynt_of,
    queued_syncs,
    sandbox_of,
    start_connect,
)

pytestmark = pytest.mark.integration

PROVIDERS = ("clover", "poynt")
TIMEOUT = 10


def needles(value: str) -> set[str]:
    """A secret as it could appear in text: as is, JSON-escaped, URL-encoded, and a key line by line."""
    out = {value, json.dumps(value)[1:-1], quote(value, safe="")}
    out.update(line for line in value.splitlines() if len(line) >= 40 and "-----" not in line)
    return {v for v in out if len(v) >= 12}


def all_secrets(rt: LocalRuntime) -> set[str]:
    """Every secret value of the stage and of the sandboxes, in every form it could leak in."""
    rt.apply_env()
    values: set[str] = set()
    for sb in (rt.clover, rt.poynt):
        assert sb is not None
        values.update(sb.secrets())
    sm = boto3.client("secretsmanager")

    def read(name: str) -> str | None:
        try:
            return str(sm.get_secret_value(SecretId=name)["SecretString"])
        except sm.exceptions.ResourceNotFoundException:  # a test of an unconfigured stage removed it
            return None

    state_key = read(rt.settings.state_key_secret_name)
    if state_key:
        values.add(state_key)
    for provider in PROVIDERS:
        raw = read(rt.settings.app_secret_name(provider))
        creds = json.loads(raw) if raw else {}
        values.update(str(v) for k, v in creds.items() if k not in ("client_id", "app_id") and v)
    store = SecretsManagerTokenStore(rt.settings)
    for page in sm.get_paginator("list_secrets").paginate():
        for s in page["SecretList"]:
            _, _, rest = s["Name"].partition(f"posync/{rt.stage}/")
            provider, _, merchant = rest.partition("/")
            if provider in PROVIDERS and "DeletedDate" not in s:
                try:
                    tokens = store.read(provider, merchant)
                except TokensMissing:
                    continue
                values.update(v for v in (tokens.access_token, tokens.refresh_token) if v)
    out: set[str] = set()
    for v in values:
        out |= needles(v)
    return out


@dataclass
class Answers:
    """Every answer our front gave in this module, as text (status line, headers, body)."""

    texts: list[str] = field(default_factory=list)
    browser: requests.Session = field(default_factory=lambda: BROWSER)  # auth_flow's, with the cookie

    def record(self, resp: requests.Response) -> requests.Response:
        head = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
        self.texts.append(f"{resp.status_code}\n{head}\n\n{resp.text}")
        return resp

    def get(self, url: str, **kw: object) -> requests.Response:
        return self.record(self.browser.get(url, allow_redirects=False, timeout=TIMEOUT, **kw))  # type: ignore[arg-type]

    def post(self, url: str, **kw: object) -> requests.Response:
        return self.record(self.browser.post(url, timeout=TIMEOUT, **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def session_log_scan(local_runtime: LocalRuntime, captured_logs: LogCapture) -> Iterator[None]:
    """At the end of the session: scan every log line of the whole session once more."""
    yield
    if local_runtime.clover is None:
        return
    found = captured_logs.find(sorted(all_secrets(local_runtime)))
    assert found == [], f"{len(found)} secret value(s) reached the logs during the session"


@pytest.fixture(scope="module")
def rt(module_runtime: LocalRuntime) -> LocalRuntime:
    if module_runtime.clover is None:
        pytest.skip("the provider sandboxes are not available")
    return module_runtime


@pytest.fixture(scope="module")
def answers() -> Answers:
    return Answers()


def approve(rt: LocalRuntime, provider: str) -> tuple[str, str]:
    merchant = sandbox_of(rt, provider).add_merchant(orders=30, days=10)
    return merchant, decide(start_connect(rt, provider), "approve", merchant)


def test_every_path_that_handles_a_secret_is_driven(
    rt: LocalRuntime, answers: Answers, session_log_scan: None
) -> None:
    connected: dict[str, str] = {}
    for provider in PROVIDERS:
        sb = sandbox_of(rt, provider)
        # consent and callback (codes in query strings, tokens from the provider)
        merchant, callback = approve(rt, provider)
        assert answers.get(callback).status_code == 200
        connected[provider] = merchant
        # the same callback replayed, and a callback whose exchange the provider fails (5xx)
        assert answers.get(callback).status_code == 400
        _, callback2 = approve(rt, provider)
        sb.fail_next(1, status=503, path_prefix="/oauth/v2/token" if provider == "clover" else "/token")
        assert answers.get(callback2).status_code == 502
        # a denial and a forged state carrying a genuine code
        denied = decide(start_connect(rt, provider), "deny")
        assert answers.get(denied).status_code == 200
        _, callback3 = approve(rt, provider)
        key = "state" if provider == "clover" else "context"
        assert answers.get(callback3.replace(f"{key}=", f"{key}=x")).status_code == 400
    # the backfills, then forced expiry (refresh on 401) and another sync
    rt.drain()
    for provider, merchant in connected.items():
        sandbox_of(rt, provider).expire_access_tokens(merchant)
        req = SyncRequest(provider, merchant, SyncKind.MANUAL, reason="hygiene")
        send_sync(str(rt.settings.sync_queue_url), req, f"hygiene-{provider}-refresh")
    report = rt.drain()
    assert report.failures == 0
    assert all(sandbox_of(rt, p).stats.snapshot()["refreshes"].get(m, 0) >= 1 for p, m in connected.items())
    # webhooks: genuine and forged signatures
    clover, poynt = clover_of(rt), poynt_of(rt)
    body = json.dumps(
        {"appId": "a", "merchants": {connected["clover"]: [{"objectId": "O:X", "type": "UPDATE"}]}}
    )
    url = f"{rt.api_url}/webhooks"
    assert answers.post(f"{url}/clover", data=body, headers={"X-Clover-Auth": clover.webhook_auth_code}).ok
    assert answers.post(f"{url}/clover", data=body, headers={"X-Clover-Auth": "nope"}).status_code == 401
    event = json.dumps({"eventType": "ORDER_UPDATED", "businessId": connected["poynt"]}).encode()
    sig = poynt_signature(poynt.webhook_secret, event)
    assert answers.post(f"{url}/poynt", data=event, headers={"Poynt-Webhook-Signature": sig}).ok
    assert (
        answers.post(f"{url}/poynt", data=event, headers={"Poynt-Webhook-Signature": sig[::-1]}).status_code
        == 401
    )
    rt.drain()
    # a revoked grant: the refresh is refused and the connection needs the merchant again
    clover.revoke(connected["clover"])
    clover.expire_access_tokens(connected["clover"])
    send_sync(
        str(rt.settings.sync_queue_url),
        SyncRequest("clover", connected["clover"], SyncKind.MANUAL, reason="hygiene"),
        "hygiene-clover-revoked",
    )
    rt.drain()
    queued_syncs(rt.settings)
    # and the health and connect routes, with and without hostile input
    assert answers.get(f"{rt.api_url}/health").status_code == 200
    assert answers.get(f"{rt.api_url}/connect/clover", params={"merchant_id": "../x"}).status_code == 400
    assert answers.get(f"{rt.api_url}/connect/poynt").status_code == 302
    assert len(answers.texts) >= 17


def test_the_secrets_collected_are_real_and_many(rt: LocalRuntime) -> None:
    # The scans below are only as good as this list: it holds every connection's stored tokens,
    # and the sandboxes' own records include them (the accessor sees what the provider issued)
    secrets = all_secrets(rt)
    store = SecretsManagerTokenStore(rt.settings)
    for provider in PROVIDERS:
        sb = sandbox_of(rt, provider)
        issued = set(sb.secrets())
        assert len(issued) >= 5
        for merchant in sb.merchants:
            try:
                tokens = store.read(provider, merchant)
            except Exception:
                continue
            assert tokens.access_token in issued and tokens.access_token in secrets
    assert clover_of(rt).client_secret in secrets
    assert any(line in secrets for line in poynt_of(rt).app_private_key_pem.decode().splitlines()[1:-1])


def test_no_answer_carries_a_secret(rt: LocalRuntime, answers: Answers) -> None:
    secrets = sorted(all_secrets(rt))
    assert answers.texts
    leaks = [(i, s[:6]) for i, text in enumerate(answers.texts) for s in secrets if s in text]
    assert leaks == [], f"{len(leaks)} secret(s) in answers (answer index, first characters)"


def test_no_log_line_of_the_session_so_far_carries_a_secret(
    rt: LocalRuntime, captured_logs: LogCapture
) -> None:
    secrets = sorted(all_secrets(rt))
    text = captured_logs.text
    # the logs did record the flows above (the scan looks at real lines)
    assert "merchant connected" in text and "token refreshed" in text and "sync completed" in text
    found = [s[:6] for s in secrets if s in text]
    assert found == [], f"{len(found)} secret value(s) in the logs"
