"""Webhooks from the sandboxes through our HTTP front: verification, signatures, syncs, uninstall."""

from __future__ import annotations

import json

import boto3
import pytest
import requests

from posync.domain import ConnectionStatus
from posync.webhooks import DynamoVerificationStore
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import (
    Secrets,
    bus_events,
    bus_listener,
    clover_of,
    connect,
    connection,
    poynt_of,
    queued_syncs,
    sandbox_of,
    stored_tokens,
)

pytestmark = pytest.mark.usefixtures("empty_sync_queue")


def hook_url(rt: LocalRuntime, provider: str) -> str:
    return f"{rt.api_url}/webhooks/{provider}"


def connected(rt: LocalRuntime, seen: Secrets, provider: str) -> str:
    sandbox = sandbox_of(rt, provider)
    merchant = str(sandbox.add_merchant(orders=3))
    assert connect(rt, provider, merchant_id=merchant, secrets=seen).callback.status_code == 200
    seen.add_tokens(stored_tokens(rt.settings, provider, merchant))
    queued_syncs(rt.settings)  # drop the backfill
    return merchant


def test_a_verification_code_after_the_auth_code_is_set_is_refused(rt: LocalRuntime) -> None:
    # Given a stage whose Clover webhook auth code is configured (the handshake is over)
    before = DynamoVerificationStore(rt.settings).read_verification_codes("clover")
    # When a verification body arrives (Clover's own, or anyone's)
    body = json.dumps({"verificationCode": "4f0c9a5e-attacker"})
    resp = requests.post(
        hook_url(rt, "clover"), data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    # Then it is a bare 401 and no code is offered to the operator
    assert (resp.status_code, resp.json()) == (401, {"error": "unauthorized"})
    assert DynamoVerificationStore(rt.settings).read_verification_codes("clover") == before


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_order_events_queue_one_webhook_sync(rt: LocalRuntime, seen: Secrets, provider: str) -> None:
    # Given a connected merchant
    merchant = connected(rt, seen, provider)
    sandbox = sandbox_of(rt, provider)
    orders = [o["id"] for o in sandbox.orders(merchant)[:3]]
    # When the provider sends order events (Poynt: one signed POST per order)
    statuses = sandbox.send_webhook(hook_url(rt, provider), merchant, orders)
    # Then they are accepted and a single webhook sync is queued for the merchant
    assert set(statuses) == {200}
    msgs = queued_syncs(rt.settings)
    assert [(m["merchant_id"], m["kind"]) for m in msgs] == [(merchant, "webhook")]
    assert msgs[0]["_group"] == f"{provider}#{merchant}"


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_bad_signature_is_a_bare_401(rt: LocalRuntime, seen: Secrets, provider: str) -> None:
    merchant = connected(rt, seen, provider)
    header = "X-Clover-Auth" if provider == "clover" else "Poynt-Webhook-Signature"
    payload = (
        clover_of(rt).webhook_payload(merchant, ["X"])
        if provider == "clover"
        else {"eventType": "ORDER_UPDATED", "businessId": merchant, "resource": "/orders", "resourceId": "x"}
    )
    resp = requests.post(
        hook_url(rt, provider),
        data=json.dumps(payload),
        headers={header: "d3JvbmcK", "Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 401
    assert resp.json() == {"error": "unauthorized"}
    assert queued_syncs(rt.settings) == []


def test_an_unknown_merchant_gets_the_same_200_and_nothing_happens(rt: LocalRuntime) -> None:
    status = clover_of(rt).send_webhook(hook_url(rt, "clover"), "ZZZZZZZZZZZZ1", ["ORDER"])
    assert status == [200]
    assert queued_syncs(rt.settings) == []


def test_an_oversized_body_is_413(rt: LocalRuntime) -> None:
    body = b"{" + b" " * (256 * 1024) + b"}"
    resp = requests.post(
        hook_url(rt, "clover"), data=body, headers=clover_of(rt).sign_webhook(body), timeout=10
    )
    assert resp.status_code == 413


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_an_uninstall_revokes_and_schedules_the_secret_for_deletion(
    rt: LocalRuntime, seen: Secrets, provider: str
) -> None:
    # Given a connected merchant and a listener for ConnectionRevoked
    merchant = connected(rt, seen, provider)
    settings = rt.settings
    listener = bus_listener(settings, "ConnectionRevoked", f"revoked-{provider}-{merchant[:8].lower()}")
    sandbox = sandbox_of(rt, provider)
    # When the merchant uninstalls the app
    assert sandbox.send_uninstall(hook_url(rt, provider), merchant) == 200
    # Then the connection is revoked (its syncs stop) and its secret is scheduled for deletion
    conn = connection(settings, provider, merchant)
    assert conn is not None and conn.status is ConnectionStatus.REVOKED
    desc = boto3.client("secretsmanager").describe_secret(
        SecretId=settings.connection_secret_name(provider, merchant)
    )
    assert "DeletedDate" in desc
    assert [e["detail"]["connection_id"] for e in bus_events(listener)] == [f"{provider}#{merchant}"]
    # And later order events queue nothing
    sandbox.send_webhook(hook_url(rt, provider), merchant, ["X"])
    assert queued_syncs(settings) == []
    # And reconnecting brings it back (secret restored, status active)
    assert connect(rt, provider, merchant_id=merchant, secrets=seen).callback.status_code == 200
    again = connection(settings, provider, merchant)
    assert again is not None and again.status is ConnectionStatus.ACTIVE
    seen.add_tokens(stored_tokens(settings, provider, merchant))


def test_no_secret_reached_the_logs(rt: LocalRuntime, seen: Secrets, captured_logs: LogCapture) -> None:
    seen.add(clover_of(rt).webhook_auth_code, poynt_of(rt).webhook_secret, clover_of(rt).client_secret)
    assert captured_logs.find(sorted(seen.values)) == []
    # (and the capture did see this module's log lines, so the scan means something)
    assert "webhook sync queued" in captured_logs.text


def test_an_uninstall_replayed_after_a_reconnect_changes_nothing(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a Clover merchant who uninstalled, then reconnected
    merchant = connected(rt, seen, "clover")
    sandbox = clover_of(rt)
    uninstall = {
        "appId": sandbox.client_id,
        "merchants": {
            merchant: [{"objectId": f"A:{sandbox.client_id}", "type": "DELETE", "ts": sandbox.now_ms()}]
        },
    }
    assert sandbox.post(hook_url(rt, "clover"), uninstall) == 200
    assert connect(rt, "clover", merchant_id=merchant, secrets=seen).callback.status_code == 200
    queued_syncs(rt.settings)
    # When that uninstall message is delivered again (a replay, or Clover's late retry)
    assert sandbox.post(hook_url(rt, "clover"), uninstall) == 200
    # Then the reconnected merchant stays active with its secret
    conn = connection(rt.settings, "clover", merchant)
    assert conn is not None and conn.status is ConnectionStatus.ACTIVE
    desc = boto3.client("secretsmanager").describe_secret(
        SecretId=rt.settings.connection_secret_name("clover", merchant)
    )
    assert "DeletedDate" not in desc
