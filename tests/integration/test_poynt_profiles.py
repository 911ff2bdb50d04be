"""Poynt end to end under every sandbox profile: consent, incremental syncs, on-terminal installs.

Each profile is one reading of what Poynt's docs leave open (``posync_local.sandbox.poynt``):
how ``status`` is spelled on the consent redirect, what ``startAt``/``endAt`` filter, the order
rows come in, the paging link's ``rel``. Everything runs through our HTTP front, the embedded
AWS and the real Poynt sandbox.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner, Result

from posync.connections import ConnectionRepository
from posync.domain import ConnectionStatus
from posync_local.cli import cli
from posync_local.runtime import LocalRuntime
from posync_local.sandbox import PoyntSandbox
from posync_local.sandbox.poynt import DEFAULT_PROFILE, PROFILES
from tests.integration.auth_flow import connect, connection, queued_syncs, secret_exists
from tests.integration.test_sync_engine import assert_in_sync, exported

pytestmark = pytest.mark.integration
_slots = iter(range(1, 10_000))


def later() -> datetime:
    """A schedule time in a slot of its own (ticks in one slot are deduplicated, as on AWS)."""
    return datetime.now(UTC) + timedelta(days=2, hours=next(_slots))


@pytest.fixture
def poynt(rt: LocalRuntime) -> Iterator[PoyntSandbox]:
    if rt.poynt is None:
        pytest.skip("the Poynt sandbox is not available")
    yield rt.poynt
    rt.poynt.use_profile(DEFAULT_PROFILE)
    rt.poynt.knobs.modify_during_paging = 0


@pytest.fixture
def run(tmp_path: Path) -> Any:
    def invoke(*args: str) -> Result:
        env = {"POSYNC_STACK": None, "POSYNC_LOCAL_STATE": str(tmp_path / "no-local-stack.json")}
        return CliRunner().invoke(cli, list(args), env=env)

    return invoke


@pytest.mark.parametrize("profile", PROFILES)
def test_a_merchant_connects_and_a_denial_gets_the_denial_page(
    rt: LocalRuntime, poynt: PoyntSandbox, profile: str
) -> None:
    # Given the sandbox spelling status as this profile does
    poynt.use_profile(profile)
    approving, denying = poynt.add_merchant(orders=2), poynt.add_merchant(orders=2)
    # When one merchant approves and another denies
    ok = connect(rt, "poynt", merchant_id=approving)
    no = connect(rt, "poynt", merchant_id=denying, decision="deny")
    # Then the first is connected (business from the token) and the second sees the denial page
    assert ok.callback.status_code == 200, ok.callback.text
    conn = connection(rt.settings, "poynt", approving)
    assert conn is not None and conn.status is ConnectionStatus.ACTIVE and conn.auth == "oauth"
    assert no.callback.status_code == 200
    assert "not approved" in no.callback.text
    assert connection(rt.settings, "poynt", denying) is None
    queued_syncs(rt.settings)


@pytest.mark.parametrize("profile", PROFILES)
def test_syncs_hold_with_orders_changed_while_paged_and_older_orders_changed_between_runs(
    rt: LocalRuntime, poynt: PoyntSandbox, profile: str
) -> None:
    # Given a connected business under this profile, orders changing while they are paged
    poynt.use_profile(profile)
    merchant = poynt.add_merchant(orders=150, days=60)
    assert connect(rt, "poynt", merchant_id=merchant).callback.status_code == 200
    poynt.knobs.modify_during_paging = 2
    rt.drain()
    poynt.knobs.modify_during_paging = 0
    rt.tick(at=later())  # the next scheduled run reads what changed during the first
    assert_in_sync(rt, "poynt", merchant)
    # When older orders are cancelled and refunded, and one loses its item ids
    by_age = sorted(poynt.orders(merchant), key=lambda o: o["createdAt"])
    paid = [
        o["id"]
        for o in by_age
        if o["amounts"].get("capturedTotals") and o["statuses"]["status"] != "CANCELLED"
    ]
    cancelled, refunded = paid[:4], paid[4:8]
    for oid in cancelled:
        poynt.cancel_order(merchant, oid)
    for oid in refunded:
        poynt.refund_order(merchant, oid, 1)
    poynt.strip_item_ids(merchant, paid[8])
    rt.tick(at=later())
    # Then the next run exports each at its new version, and nothing is quarantined
    state = assert_in_sync(rt, "poynt", merchant)
    assert set(cancelled + refunded + [paid[8]]) <= set(state)
    assert connection(rt.settings, "poynt", merchant).last_run["counts"]["quarantined"] == 0  # type: ignore[union-attr]
    versions = dict(exported(rt, "poynt", merchant))
    for oid in cancelled + refunded:
        assert versions[oid] == state[oid]
    queued_syncs(rt.settings)


def _hook(rt: LocalRuntime) -> str:
    return f"{rt.api_url}/webhooks/poynt"


def test_add_app_installed_syncs_with_the_app_token_and_no_secret(
    rt: LocalRuntime, poynt: PoyntSandbox, run: Any
) -> None:
    # Given a business with the app installed on its terminal (no consent)
    merchant = poynt.add_merchant(orders=40, days=20)
    poynt.install_app(merchant)
    rt.apply_env()
    # When the operator adds it and the queue drains
    result = run("connections", "add", "poynt", merchant, "--app-installed", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["auth"] == "app_installed"
    rt.drain()
    # Then it synced completely with the app's token, and no token secret exists for it
    assert_in_sync(rt, "poynt", merchant)
    assert not secret_exists(rt.settings, "poynt", merchant)
    # And once the app leaves the terminal (no END webhook), a sync stops as revoked, no retry storm
    poynt.uninstall_app(merchant)
    report = rt.tick(at=later())
    assert report.failures == 0
    assert connection(rt.settings, "poynt", merchant).last_error is None  # type: ignore[union-attr]
    # And a business without the app is refused with nothing stored
    other = poynt.add_merchant(orders=1)
    refused = run("connections", "add", "poynt", other, "--app-installed")
    assert refused.exit_code != 0 and "installed" in refused.output
    assert connection(rt.settings, "poynt", other) is None
    # And Clover (or Poynt without the flag) is a usage error
    assert run("connections", "add", "poynt", other).exit_code == 2


def test_the_billing_list_connects_and_revokes_installed_businesses(
    rt: LocalRuntime, poynt: PoyntSandbox, run: Any
) -> None:
    a, b = poynt.add_merchant(orders=3), poynt.add_merchant(orders=3)
    poynt.install_app(a)
    poynt.install_app(b)
    rt.apply_env()
    first = run("connections", "sync-installs", "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["connected"] >= 2
    for m in (a, b):
        conn = connection(rt.settings, "poynt", m)
        assert conn is not None and conn.auth == "app_installed" and conn.status is ConnectionStatus.ACTIVE
    poynt.uninstall_app(b)
    second = json.loads(run("connections", "sync-installs", "--json").stdout)
    assert second["revoked"] == 1
    assert connection(rt.settings, "poynt", b).status is ConnectionStatus.REVOKED  # type: ignore[union-attr]
    assert connection(rt.settings, "poynt", a).status is ConnectionStatus.ACTIVE  # type: ignore[union-attr]
    queued_syncs(rt.settings)


def test_subscription_webhooks_connect_and_revoke_and_retries_are_deduplicated(
    rt: LocalRuntime, poynt: PoyntSandbox
) -> None:
    # Given a business that installs the app
    merchant = poynt.add_merchant(orders=5)
    poynt.install_app(merchant)
    # When Poynt sends APPLICATION_SUBSCRIPTION_START, then retries the same delivery
    t0 = time.monotonic()
    status, body = poynt.send_subscription_event(_hook(rt), merchant, "APPLICATION_SUBSCRIPTION_START")
    answered_s = time.monotonic() - t0
    retry = requests.post(_hook(rt), data=body, headers=poynt.sign_webhook(body), timeout=5)
    # Then the business is connected once, well inside Poynt's 2 s, and the retry changes nothing
    assert status == 200 and retry.status_code == 200
    assert answered_s < 1.0, answered_s
    print(f"poynt subscription webhook answered in {answered_s * 1000:.0f} ms")
    conn = connection(rt.settings, "poynt", merchant)
    assert conn is not None and conn.auth == "app_installed"
    assert [m["kind"] for m in queued_syncs(rt.settings) if m["merchant_id"] == merchant] == ["backfill"]
    # When the subscription ends
    end_status, _ = poynt.send_subscription_event(_hook(rt), merchant, "APPLICATION_SUBSCRIPTION_END")
    # Then the connection is revoked
    assert end_status == 200
    assert ConnectionRepository(rt.settings).get("poynt", merchant).status is ConnectionStatus.REVOKED


PROBE_SEES = {
    "guessed": ("update time", "updatedAt ascending", "rel next"),
    "sdk": ("creation time", "createdAt descending", "rel NEXT"),
    "sparse": ("creation time", "no time order", "count says more remain"),
    "newest-first": ("update time", "updatedAt descending", "rel self-next"),
}


@pytest.mark.parametrize("profile", PROFILES)
def test_the_probe_checks_every_pnt_row_and_tells_the_profiles_apart(
    rt: LocalRuntime, poynt: PoyntSandbox, profile: str
) -> None:
    from posync.probe import run_checks
    from posync.providers.poynt.probe import CHECKS, context
    from posync.ratelimit import RequestLimiter, TokenLimiter
    from posync.tokens import build_token_service
    from posync.transport import Transport, session

    # Given a connected business under this profile, one order without item ids
    poynt.use_profile(profile)
    merchant = poynt.add_merchant(orders=30, days=20)
    assert connect(rt, "poynt", merchant_id=merchant).callback.status_code == 200
    queued_syncs(rt.settings)
    poynt.strip_item_ids(merchant, poynt.order_ids(merchant)[0])
    conn = ConnectionRepository(rt.settings).get("poynt", merchant)
    transport = Transport(
        conn,
        rt.settings.poynt.api_base,
        build_token_service(rt.settings),
        RequestLimiter(TokenLimiter(None, None)),
        http=session("poynt", 4),
    )
    # When the probe runs its checks
    findings = {f.row: f for f in run_checks(CHECKS, context(transport, merchant))}
    # Then every row has a finding, none differs, and the observations name this profile's reading
    assert set(findings) == {c.row for c in CHECKS}
    assert [f.row for f in findings.values() if f.verdict == "differs"] == []
    window, order, link = PROBE_SEES[profile]
    assert window in findings["PNT-LIST-WINDOW"].detail
    assert order in findings["PNT-LIST-ORDER"].detail
    assert link in findings["PNT-LIST-LINK"].detail
    assert findings["PNT-ITEM-ID"].detail.startswith(
        ("1 of", "2 of", "3 of", "4 of", "5 of", "6 of", "7 of", "8 of")
    )
    assert findings["PNT-LIST-304"].verdict == findings["PNT-LIST-IMS"].verdict == "holds"
    assert findings["PNT-CONSENT-STATUS"].verdict == "not checkable"
    assert all(merchant not in f.detail for f in findings.values())
