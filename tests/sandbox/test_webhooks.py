"""Webhooks the sandboxes send: Clover's fixed X-Clover-Auth and Poynt's HMAC-SHA1 signature verify."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import TYPE_CHECKING

import pytest

from posync_local.sandbox import CloverSandbox, PoyntSandbox

if TYPE_CHECKING:
    from tests.sandbox.conftest import Receiver

pytestmark = pytest.mark.integration


def test_clover_order_webhook_carries_the_auth_code_and_the_order_ids(
    clover: CloverSandbox, receiver: Receiver
) -> None:
    # Given a merchant with orders
    mid = clover.add_merchant(orders=5)
    ids = clover.order_ids(mid)[:2]
    # When the sandbox notifies the app
    statuses = clover.send_webhook(receiver.url, mid, ids, event_type="CREATE")
    # Then one message arrives with the fixed auth code (compared in constant time) and the events
    assert statuses == [200]
    (msg,) = receiver.received
    assert hmac.compare_digest(msg.headers["X-Clover-Auth"], clover.webhook_auth_code)
    assert msg.headers["X-Clover-Auth"] == clover.sign_webhook(msg.body)["X-Clover-Auth"]
    body = json.loads(msg.body)
    assert body["appId"] == clover.client_id
    events = body["merchants"][mid]
    assert [e["objectId"] for e in events] == [f"O:{oid}" for oid in ids]
    assert {e["type"] for e in events} == {"CREATE"}
    assert all(isinstance(e["ts"], int) for e in events)


def test_clover_verification_and_uninstall_messages(clover: CloverSandbox, receiver: Receiver) -> None:
    mid = clover.add_merchant(orders=1)
    code = clover.send_verification(receiver.url)
    assert json.loads(receiver.received[0].body) == {"verificationCode": code}
    assert "X-Clover-Auth" not in receiver.received[0].headers
    assert clover.send_uninstall(receiver.url, mid) == 200
    event = json.loads(receiver.received[1].body)["merchants"][mid][0]
    assert event["objectId"] == f"A:{clover.client_id}"
    assert event["type"] == "DELETE"


def test_poynt_webhooks_are_signed_with_hmac_sha1(poynt: PoyntSandbox, receiver: Receiver) -> None:
    # Given a business with orders
    bid = poynt.add_merchant(orders=4)
    ids = poynt.order_ids(bid)[:3]
    # When the sandbox notifies the app
    assert poynt.send_webhook(receiver.url, bid, ids) == [200, 200, 200]
    # Then each order is one event whose signature verifies with the hook's secret
    assert len(receiver.received) == 3
    for msg, oid in zip(receiver.received, ids, strict=True):
        expected = base64.b64encode(
            hmac.new(poynt.webhook_secret.encode(), msg.body, hashlib.sha1).digest()
        ).decode()
        assert hmac.compare_digest(msg.headers["Poynt-Webhook-Signature"], expected)
        event = json.loads(msg.body)
        assert event["eventType"] == "ORDER_UPDATED"
        assert event["businessId"] == bid
        assert event["resourceId"] == oid
        assert event["resource"] == "/orders"
    # And a tampered body would not verify
    msg = receiver.received[0]
    forged = base64.b64encode(
        hmac.new(poynt.webhook_secret.encode(), msg.body + b" ", hashlib.sha1).digest()
    ).decode()
    assert forged != msg.headers["Poynt-Webhook-Signature"]


def test_poynt_uninstall_event(poynt: PoyntSandbox, receiver: Receiver) -> None:
    bid = poynt.add_merchant(orders=1)
    assert poynt.send_uninstall(receiver.url, bid) == 200
    event = json.loads(receiver.received[0].body)
    assert event["eventType"] == "APPLICATION_SUBSCRIPTION_END"
    assert event["businessId"] == bid


def test_app_credentials_match_what_the_webhooks_use(clover: CloverSandbox, poynt: PoyntSandbox) -> None:
    assert clover.app_credentials["webhook_auth_code"] == clover.webhook_auth_code
    assert clover.app_credentials["client_id"] == clover.client_id
    creds = poynt.app_credentials
    assert creds["app_id"] == poynt.app_id
    assert creds["webhook_secret"] == poynt.webhook_secret
    assert creds["private_key_pem"].encode() == poynt.app_private_key_pem
