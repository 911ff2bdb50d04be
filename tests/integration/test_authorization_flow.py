"""Merchant authorization end to end: our HTTP front, the provider sandboxes, the embedded AWS.

Each test drives the consent in the sandbox's HTML page over HTTP (GET the page, POST
Approve or Deny) and follows the redirect to our callback, then checks what was stored.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import boto3
import pytest
import requests

from posync.connections import ConnectionRepository
from posync.oauth_state import BINDING_COOKIE, StateSigner, key_from_secret
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import (
    BROWSER,
    ConsentForm,
    Secrets,
    api_accepts,
    clover_of,
    connect,
    connection,
    decide,
    follow_callback,
    poynt_of,
    queued_syncs,
    read_consent_page,
    sandbox_of,
    secret_exists,
    signed_link,
    start_connect,
    stored_tokens,
)

PROVIDERS = ("clover", "poynt")


pytestmark = pytest.mark.usefixtures("empty_sync_queue")


def new_merchant(rt: LocalRuntime, provider: str) -> str:
    sandbox = sandbox_of(rt, provider)
    return str(sandbox.add_merchant(orders=3))


def stored_nothing(rt: LocalRuntime, provider: str, merchant_id: str) -> bool:
    s = rt.settings
    return (
        connection(s, provider, merchant_id) is None
        and not secret_exists(s, provider, merchant_id)
        and queued_syncs(s) == []
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_merchant_connects_and_its_first_sync_is_queued(
    rt: LocalRuntime, seen: Secrets, provider: str
) -> None:
    # Given a merchant at the provider
    merchant = new_merchant(rt, provider)
    # When it goes through connect -> consent (Approve) -> callback, with the operator's ref
    result = connect(rt, provider, merchant_id=merchant, ref="shop-17", secrets=seen)
    # Then our callback says it worked
    assert result.callback.status_code == 200, result.callback.text
    assert "connected" in result.callback.text
    # And the tokens are in the connection's secret, encrypted with the stage key, and they work
    s = rt.settings
    tokens = stored_tokens(s, provider, merchant)
    seen.add_tokens(tokens)
    desc = boto3.client("secretsmanager").describe_secret(
        SecretId=s.connection_secret_name(provider, merchant)
    )
    assert desc["KmsKeyId"] == s.resources.kms_alias
    assert api_accepts(rt, provider, merchant, tokens.access_token)
    # And the connection record is active with the ref and the token expiry
    conn = connection(s, provider, merchant)
    assert conn is not None
    assert (conn.status.value, conn.ref, conn.region) == ("active", "shop-17", "sandbox")
    assert conn.access_expires_at == tokens.access_expires_at
    # And exactly one first sync with backfill is on the queue, in the connection's message group
    [msg] = queued_syncs(s)
    assert (msg["provider"], msg["merchant_id"], msg["kind"]) == (provider, merchant, "backfill")
    assert msg["_group"] == f"{provider}#{merchant}"
    assert msg["since"] < conn.connected_at


def test_the_clover_app_market_entry_preselects_the_merchant(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a merchant arriving from the App Market with its merchant id (the sandbox has several)
    merchant = new_merchant(rt, "clover")
    new_merchant(rt, "clover")
    authorize = start_connect(rt, "clover", merchant_id=merchant)
    # Then the consent page has that merchant selected
    form, _ = read_consent_page(authorize)
    assert form.selected == merchant
    # And approving as is connects it
    result = follow_callback(decide(authorize), seen)
    assert result.callback.status_code == 200
    assert connection(rt.settings, "clover", merchant) is not None


def test_reconnecting_keeps_the_cursor_and_replaces_the_tokens(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a connected merchant whose sync has a cursor
    merchant = new_merchant(rt, "clover")
    connect(rt, "clover", merchant_id=merchant, secrets=seen)
    s = rt.settings
    repo = ConnectionRepository(s)
    conn = repo.get("clover", merchant)
    repo.commit_cursor(conn, {"modified_ms": 1_700_000_000_000, "ids_at_T": ["A"]}, {"run_id": "r1"})
    first = stored_tokens(s, "clover", merchant)
    queued_syncs(s)
    # When the merchant connects again
    again = connect(rt, "clover", merchant_id=merchant, secrets=seen)
    # Then the cursor is still there, the tokens are new, and a backfill is queued again
    assert again.callback.status_code == 200
    assert repo.get("clover", merchant).cursor == {"modified_ms": 1_700_000_000_000, "ids_at_T": ["A"]}
    second = stored_tokens(s, "clover", merchant)
    seen.add_tokens(first)
    seen.add_tokens(second)
    assert second.access_token != first.access_token
    assert [m["kind"] for m in queued_syncs(s)] == ["backfill"]


def with_state(callback_url: str, name: str, value: str) -> str:
    parts = urlsplit(callback_url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    q[name] = value
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(q), ""))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_forged_state_gives_a_clear_page_and_stores_nothing(
    rt: LocalRuntime, seen: Secrets, provider: str
) -> None:
    # Given an approved consent whose state is replaced by one signed with another key
    merchant = new_merchant(rt, provider)
    callback_url = decide(start_connect(rt, provider), merchant_id=merchant)
    forged = StateSigner(lambda: b"not-the-key-" * 3).issue(provider)
    name = "state" if provider == "clover" else "context"
    # When the browser lands on our callback with it
    result = follow_callback(with_state(callback_url, name, forged), seen)
    # Then a 400 page says so and links a fresh connect, and nothing is stored
    assert result.callback.status_code == 400
    assert "not valid" in result.callback.text
    assert f'href="{rt.api_url}/connect/{provider}"' in result.callback.text
    assert stored_nothing(rt, provider, merchant)


def test_an_expired_state_gives_a_clear_page_and_stores_nothing(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a state signed with the stage's key eleven minutes ago
    s = rt.settings
    key = key_from_secret(
        boto3.client("secretsmanager").get_secret_value(SecretId=s.state_key_secret_name)["SecretString"]
    )
    link = signed_link(rt, "clover", "late-shop")
    lq = {k: v[0] for k, v in parse_qs(urlsplit(link).query).items()}
    merchant = new_merchant(rt, "clover")
    authorize = start_connect(rt, "clover")
    old = StateSigner(lambda: key, clock=lambda: time.time() - 660).issue(
        "clover",
        ref="late-shop",
        browser=BROWSER.cookies.get(BINDING_COOKIE, path="/oauth/clover/callback"),
        link_expires_at=int(lq["exp"]),
        link_sig=lq["sig"],
    )
    authorize = with_state(authorize, "state", old)
    # When the merchant approves and comes back
    result = follow_callback(decide(authorize, merchant_id=merchant), seen)
    # Then the page says the link expired and offers the signed link again (keeping the ref)
    assert result.callback.status_code == 400
    assert "expired" in result.callback.text
    assert link.replace("&", "&amp;") in result.callback.text
    assert stored_nothing(rt, "clover", merchant)


def test_a_replayed_callback_gives_a_clear_page_and_changes_nothing(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a callback that succeeded
    merchant = new_merchant(rt, "clover")
    first = connect(rt, "clover", merchant_id=merchant, secrets=seen)
    assert first.callback.status_code == 200
    s = rt.settings
    tokens = stored_tokens(s, "clover", merchant)
    queued_syncs(s)
    exchanges = clover_of(rt).stats.snapshot()["token_exchanges"]
    # When the same callback URL is requested again
    again = follow_callback(first.callback_url, seen)
    # Then it is refused as already used, without another exchange or any change
    assert again.callback.status_code == 400
    assert "already used" in again.callback.text
    assert clover_of(rt).stats.snapshot()["token_exchanges"] == exchanges
    assert stored_tokens(s, "clover", merchant) == tokens
    assert queued_syncs(s) == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_denied_consent_gives_a_clear_page_and_stores_nothing(
    rt: LocalRuntime, seen: Secrets, provider: str
) -> None:
    merchant = new_merchant(rt, provider)
    result = connect(rt, provider, merchant_id=merchant, decision="deny", secrets=seen)
    assert result.callback.status_code == 200
    assert "cancelled" in result.callback.text.lower()
    assert "not approved" in result.callback.text
    assert stored_nothing(rt, provider, merchant)


@pytest.mark.parametrize(("provider", "path"), [("clover", "/oauth/v2/token"), ("poynt", "/token")])
def test_a_provider_500_on_the_exchange_gives_a_502_page_and_stores_nothing(
    rt: LocalRuntime, seen: Secrets, provider: str, path: str
) -> None:
    # Given a provider whose token endpoint fails once
    merchant = new_merchant(rt, provider)
    sandbox = sandbox_of(rt, provider)
    callback_url = decide(start_connect(rt, provider), merchant_id=merchant)
    sandbox.fail_next(1, status=500, path_prefix=path)
    # When the callback exchanges the code
    result = follow_callback(callback_url, seen)
    # Then a 502 page explains it and nothing is stored
    assert result.callback.status_code == 502
    assert "not responding" in result.callback.text
    assert stored_nothing(rt, provider, merchant)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_callback_opened_in_another_browser_connects_nothing(
    rt: LocalRuntime, seen: Secrets, provider: str
) -> None:
    # Given an attacker who walked the flow with their own merchant and stopped at the redirect back
    attacker = new_merchant(rt, provider)
    callback_url = decide(start_connect(rt, provider), merchant_id=attacker)
    # When a victim opens that callback URL in their own browser (no binding cookie)
    with requests.Session() as victim:
        page = victim.get(callback_url, allow_redirects=False, timeout=10)
    # Then a clear page says so, and the attacker's merchant is not connected
    assert page.status_code == 400
    assert "browser you started in" in page.text
    assert stored_nothing(rt, provider, attacker)
    # But the browser that started it can still finish (its state was not used up)
    assert follow_callback(callback_url, seen).callback.status_code == 200


def test_a_signed_link_carries_its_ref_and_an_unsigned_ref_starts_nothing(
    rt: LocalRuntime, seen: Secrets
) -> None:
    # Given a merchant connected once through the operator's signed link for shop-1
    merchant = new_merchant(rt, "clover")
    assert connect(rt, "clover", merchant_id=merchant, ref="shop-1", secrets=seen).callback.ok
    # When someone opens a connect link with a ref of their own, unsigned, or with an edited ref
    unsigned = BROWSER.get(f"{rt.api_url}/connect/clover?ref=evil", allow_redirects=False, timeout=10)
    edited = BROWSER.get(
        signed_link(rt, "clover", "shop-2").replace("ref=shop-2", "ref=evil"),
        allow_redirects=False,
        timeout=10,
    )
    # Then each gets a clear page and no consent redirect
    for page in (unsigned, edited):
        assert page.status_code == 400 and "not valid" in page.text
        assert "Location" not in page.headers
    # And a reconnect through a plain link keeps the stored ref
    assert connect(rt, "clover", merchant_id=merchant, secrets=seen).callback.ok
    conn = connection(rt.settings, "clover", merchant)
    assert conn is not None and conn.ref == "shop-1"
    queued_syncs(rt.settings)


def test_an_unknown_provider_is_a_404_page(rt: LocalRuntime) -> None:
    resp = requests.get(f"{rt.api_url}/connect/square", allow_redirects=False, timeout=10)
    assert resp.status_code == 404
    assert "text/html" in resp.headers["Content-Type"]


def test_a_callback_code_never_appears_in_a_page(rt: LocalRuntime, seen: Secrets) -> None:
    merchant = new_merchant(rt, "clover")
    callback_url = decide(start_connect(rt, "clover"), merchant_id=merchant)
    code = parse_qs(urlsplit(callback_url).query)["code"][0]
    tampered = follow_callback(with_state(callback_url, "state", "x.y"), seen)
    assert code not in tampered.callback.text


def test_no_token_code_or_secret_reached_the_logs(
    rt: LocalRuntime, seen: Secrets, captured_logs: LogCapture
) -> None:
    # Given every code and token the tests above saw, and the apps' secrets
    s = rt.settings
    seen.add(clover_of(rt).client_secret, getattr(rt.clover, "webhook_auth_code", None))
    pem = poynt_of(rt).app_private_key_pem
    pem_text = pem.decode() if isinstance(pem, bytes) else str(pem)
    seen.add(*[line for line in pem_text.splitlines() if "PRIVATE KEY" not in line][:3])
    seen.add(
        boto3.client("secretsmanager").get_secret_value(SecretId=s.state_key_secret_name)["SecretString"]
    )
    assert len(seen.values) > 10
    # Then none of them is in the captured log output
    find = captured_logs.find
    assert find(sorted(seen.values)) == []
    # (and the capture did see the callbacks' log lines, so the scan means something)
    assert "merchant connected" in captured_logs.text


def test_consent_form_parser_reads_the_page() -> None:
    form = ConsentForm()
    form.feed(
        '<form method="post" action="/x"><input type="hidden" name="state" value="s">'
        '<select name="merchant_id"><option value="A">a</option>'
        '<option value="B" selected>b</option></select>'
        '<button id="approve" name="decision" value="approve">Approve</button>'
        '<button id="deny" name="decision" value="deny">Deny</button></form>'
    )
    assert (form.action, form.fields, form.selected, form.options) == ("/x", {"state": "s"}, "B", ["A", "B"])
