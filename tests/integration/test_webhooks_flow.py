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


def test_the_clover_verification_code_is_stored_for_the_operator(rt: LocalRuntime) -> None:
    # When Clover posts the verification handshake
    code = clover_of(rt).send_verification(hook_url(rt, "clover"))
    # Then the operator can read it back (what `posync app-credentials webhook-verification` prints)
    found = DynamoVerificationStore(rt.settings).read_verification_code("clover")
    assert found is not None and found[0] == code


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
