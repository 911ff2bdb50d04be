"""The hosted connect link in a real headless Chromium: what a merchant sees and clicks.

The browser opens ``{api}/connect/{provider}`` on the local stack (the real connect and
callback handlers behind the local HTTP front), lands on the provider sandbox's consent
page, picks its merchant, clicks Approve (``#approve``) or Deny (``#deny``), and follows
the redirect back to our callback's page. Then what is stored is checked: the connection
record, the token secret, and, once the queue is drained, the first exports.
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from posync.connections import ConnectionRepository
from posync.domain import ConnectionStatus
from posync.errors import ConnectionNotFound
from posync.exports import iter_manifests, latest, read_manifested
from posync.tokens import SecretsManagerTokenStore
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import decide

pytestmark = pytest.mark.e2e

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONSENT = {
    "clover": ("/oauth/v2/authorize", "Clover sandbox: authorize app", "#merchant_id"),
    "poynt": ("/applications/authorize", "Poynt sandbox: authorize application", "#business_id"),
}
TITLE = {"clover": "Clover", "poynt": "Poynt"}


def sandbox(rt: LocalRuntime, provider: str) -> Any:
    sb = rt.clover if provider == "clover" else rt.poynt
    assert sb is not None
    return sb


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file (asserting it is one: signature, then an IHDR chunk)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def secret_exists(rt: LocalRuntime, provider: str, merchant_id: str) -> bool:
    sm = boto3.client("secretsmanager")
    try:
        sm.describe_secret(SecretId=rt.settings.connection_secret_name(provider, merchant_id))
    except sm.exceptions.ResourceNotFoundException:
        return False
    return True


def open_consent_page(page: Any, rt: LocalRuntime, provider: str, merchant_id: str) -> None:
    """Open the hosted link; land on the sandbox's consent page; choose the merchant."""
    path, title, select = CONSENT[provider]
    page.goto(rt.connect_url(provider))
    assert page.url.startswith(f"{sandbox(rt, provider).url}{path}?"), page.url
    assert page.title() == title
    assert page.is_visible("#approve") and page.is_visible("#deny")
    page.select_option(select, merchant_id)


def click_and_land_on_callback(page: Any, rt: LocalRuntime, provider: str, button: str) -> Any:
    """Click a consent button; follow the redirect to our callback; return that page's response."""
    callback = re.compile(re.escape(f"{rt.api_url}/oauth/{provider}/callback?") + ".*")
    with page.expect_response(callback) as answer:
        page.click(button)
    page.wait_for_url(callback)
    page.wait_for_load_state("load")
    return answer.value


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_merchant_approves_in_the_browser_and_its_orders_are_exported(
    provider: str, e2e_runtime: LocalRuntime, page: Any, tmp_path: Path
) -> None:
    rt = e2e_runtime
    sb = sandbox(rt, provider)
    name = TITLE[provider]
    # Given a sandbox merchant with orders
    merchant_id = sb.add_merchant(orders=30, days=60)
    rt.drain()  # whatever earlier tests left queued
    started = time.time()

    # When the merchant opens the hosted link, picks itself and clicks Approve
    open_consent_page(page, rt, provider, merchant_id)
    answer = click_and_land_on_callback(page, rt, provider, "#approve")

    # Then the browser shows our success page
    assert answer.status == 200
    assert page.title() == f"{name} connected"
    assert page.inner_text("h1") == f"{name} connected"
    text = page.inner_text("body")
    business = sb.merchant(merchant_id).profile.name
    assert f"{business} ({name} merchant {merchant_id}) is connected." in text
    # (the browser kept the binding cookie /connect set: HttpOnly, SameSite=Lax, for the callback)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "posync_connect"]
    assert (
        cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == f"/oauth/{provider}/callback"
    )
    assert "Your orders are being copied now" in text
    shot = tmp_path / f"{provider}-connected.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    width, height = png_size(shot)
    assert width >= 800 and height >= 600

    # And the connection is recorded, active, with its tokens in their secret
    settings = rt.settings
    conn = ConnectionRepository(settings).get(provider, merchant_id)
    assert conn.status == ConnectionStatus.ACTIVE
    tokens = SecretsManagerTokenStore(settings).read(provider, merchant_id)
    assert tokens.access_expires_at > started
    assert tokens.access_token and tokens.access_token not in page.content()

    # When the queue is drained (the backfill the callback queued)
    report = rt.drain()
    assert report.idle and report.messages >= 1 and report.failures == 0

    # Then the first exports exist: one manifest, every sandbox order in it
    manifests = list(iter_manifests(settings, provider, merchant_id))
    assert len(manifests) == 1
    exported = latest(read_manifested(settings, provider=provider, merchant_id=merchant_id))
    assert sorted(o["order_id"] for o in exported) == sorted(sb.order_ids(merchant_id))
    assert manifests[0]["record_count"] == len(exported) == 30


def test_a_merchant_who_clicks_deny_sees_a_clear_page_and_nothing_is_stored(
    e2e_runtime: LocalRuntime, page: Any, tmp_path: Path
) -> None:
    rt = e2e_runtime
    merchant_id = sandbox(rt, "clover").add_merchant(orders=5, days=30)
    rt.drain()
    # When the merchant opens the hosted link and clicks Deny
    open_consent_page(page, rt, "clover", merchant_id)
    answer = click_and_land_on_callback(page, rt, "clover", "#deny")

    # Then the page says plainly that nothing happened, and offers to start again
    assert answer.status == 200
    assert page.title() == "Connection cancelled"
    assert page.inner_text("h1") == "Connection cancelled"
    text = page.inner_text("body")
    assert "posync was not approved at Clover" in text
    assert "nothing was connected and nothing was stored" in text
    again = page.get_attribute("a", "href")
    assert again == rt.connect_url("clover")
    shot = tmp_path / "clover-denied.png"
    page.screenshot(path=str(shot))
    assert png_size(shot)[0] > 0

    # And nothing is stored or queued
    with pytest.raises(ConnectionNotFound):
        ConnectionRepository(rt.settings).get("clover", merchant_id)
    assert not secret_exists(rt, "clover", merchant_id)
    assert rt.drain().messages == 0

    # And the "Start again" link leads back to the consent page
    page.click("a")
    page.wait_for_url(re.compile(re.escape(f"{sandbox(rt, 'clover').url}/oauth/v2/authorize?") + ".*"))
    assert page.title() == CONSENT["clover"][1]


def test_a_callback_url_from_someone_elses_sign_in_connects_nothing_in_the_browser(
    e2e_runtime: LocalRuntime, page: Any
) -> None:
    # Given an attacker who walked the flow with their own merchant (their own cookie-keeping
    # client) and stopped at the redirect back to posync
    rt = e2e_runtime
    attacker_merchant = sandbox(rt, "clover").add_merchant(orders=1, days=30)
    with requests.Session() as attacker:
        consent = attacker.get(rt.connect_url("clover"), allow_redirects=False, timeout=10)
        callback_url = decide(str(consent.headers["Location"]), "approve", attacker_merchant)
    # When a victim opens that callback URL in their browser
    answer = page.goto(callback_url)
    # Then the page says to finish in the browser that started, and nothing is connected
    assert answer is not None and answer.status == 400
    assert page.inner_text("h1") == "Please finish connecting in the browser you started in"
    with pytest.raises(ConnectionNotFound):
        ConnectionRepository(rt.settings).get("clover", attacker_merchant)
    assert not secret_exists(rt, "clover", attacker_merchant)
