"""Webhook verification and effects (in-memory fakes)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from posync.app_credentials import AppCredentials, AppNotConfigured, CloverAppCredentials, parse_credentials
from posync.domain import Connection, ConnectionStatus
from posync.errors import InvalidInput
from posync.syncqueue import SyncKind, SyncRequest
from posync.webhooks import (
    PayloadTooLarge,
    VerificationRateLimited,
    WebhookService,
    WebhookUnauthorized,
    poynt_signature,
)
from tests.unit.oauth_fakes import EventLog, FakeClock, FakeConnections, FakeTokenStore, unit_settings

M1, M2 = "AAAAAAAAAAAA1", "AAAAAAAAAAAA2"
BIZ = "0b9f1c2e-1111-4222-8333-444455556666"
AUTH = "clover-webhook-auth-code"
POYNT_SECRET = "poynt-hook-secret"


class MemoryCredentials:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.stored: dict[str, dict[str, str]] = {
            "clover": {"client_id": "CLOVERAPP", "client_secret": "s", "webhook_auth_code": AUTH},
        }
        self.cache: dict[str, tuple[float, AppCredentials]] = {}
        self.reads = 0

    def get(self, provider: str, max_age_s: float | None = None) -> AppCredentials:
        hit = self.cache.get(provider)
        if hit is not None and (max_age_s is None or self.clock() - hit[0] < max_age_s):
            return hit[1]
        self.reads += 1
        creds = parse_credentials(provider, self.stored.get(provider, {}))
        self.cache[provider] = (self.clock(), creds)
        return creds

    def age(self, provider: str) -> float | None:
        hit = self.cache.get(provider)
        return None if hit is None else self.clock() - hit[0]


class PoyntCreds:
    """Poynt credentials need a real RSA key; the webhook path only reads the secret."""

    def __init__(self, secret: str | None) -> None:
        self.webhook_secret = secret


class MemoryLedger:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def first_time(self, provider: str, event_id: str) -> bool:
        if (provider, event_id) in self.seen:
            return False
        self.seen.add((provider, event_id))
        return True

    def forget(self, provider: str, event_id: str) -> None:
        self.seen.discard((provider, event_id))


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.creds = MemoryCredentials(self.clock)
        self.ledger = MemoryLedger()
        self.accept_codes = True
        self.connections = FakeConnections()
        self.tokens = FakeTokenStore()
        self.codes: list[tuple[str, str]] = []
        self.queued: list[tuple[SyncRequest, str]] = []
        self.events = EventLog()
        self.service = WebhookService(
            unit_settings(),
            credentials=self.creds,
            connections=self.connections,
            tokens=self.tokens,
            verification=self,
            enqueue=lambda req, dedup: self.queued.append((req, dedup)),
            events=self.events,
            ledger=self.ledger,
            clock=self.clock,
        )
        for m in (M1, M2):
            self.connections.add(Connection("clover", m))
        self.connections.add(Connection("poynt", BIZ))

    def put_verification_code(self, provider: str, code: str) -> bool:
        if self.accept_codes:
            self.codes.append((provider, code))
        return self.accept_codes

    def clover(self, body: dict[str, Any], auth: str | None = AUTH) -> Any:
        headers = {"x-clover-auth": auth} if auth is not None else {}
        return self.service.handle("clover", headers, json.dumps(body).encode())


def clover_orders(*merchants: str, n: int = 2) -> dict[str, Any]:
    return {
        "appId": "CLOVERAPP",
        "merchants": {
            m: [{"objectId": f"O:ORDER{i:08d}", "type": "UPDATE", "ts": 1} for i in range(n)]
            for m in merchants
        },
    }


def test_the_verification_handshake_stores_the_code_without_auth() -> None:
    # Given an app whose webhook auth code is not configured yet
    w = World()
    del w.creds.stored["clover"]["webhook_auth_code"]
    result = w.clover({"verificationCode": "1b2c3d"}, auth=None)
    assert result.verification
    assert w.codes == [("clover", "1b2c3d")]
    assert w.queued == []


def test_a_verification_body_once_the_auth_code_is_set_is_unauthorized() -> None:
    # Given an app whose X-Clover-Auth code is configured (the handshake is over)
    w = World()
    # When anyone posts a verification body
    with pytest.raises(WebhookUnauthorized):
        w.clover({"verificationCode": "attacker-code"}, auth=None)
    # Then nothing is stored for the operator to paste
    assert w.codes == []


def test_verification_codes_are_rate_limited_and_must_look_like_codes() -> None:
    w = World()
    del w.creds.stored["clover"]["webhook_auth_code"]
    w.accept_codes = False  # the store says the hourly limit is reached
    with pytest.raises(VerificationRateLimited):
        w.clover({"verificationCode": "1b2c3d"}, auth=None)
    w.accept_codes = True
    for bad in ("\x1b[2Jcleared", "", "x" * 129, 12345):
        with pytest.raises(InvalidInput):
            w.clover({"verificationCode": bad}, auth=None)
    assert w.codes == []


def test_clover_order_events_queue_one_deduplicated_sync_per_merchant() -> None:
    w = World()
    result = w.clover(clover_orders(M1, M2, n=5))
    assert result.syncs_queued == 2
    kinds = {(req.merchant_id, req.kind) for req, _ in w.queued}
    assert kinds == {(M1, SyncKind.WEBHOOK), (M2, SyncKind.WEBHOOK)}
    # The same minute gives the same dedup id (SQS FIFO drops the repeat); the next minute a new one
    w.clover(clover_orders(M1))
    w.clock.sleep(60)
    w.clover(clover_orders(M1))
    dedups = [d for req, d in w.queued if req.merchant_id == M1]
    assert dedups[0] == dedups[1] != dedups[2]
    assert dedups[0] == f"clover#{M1}#webhook#{(1_800_000_000 // 60)}"


@pytest.mark.parametrize("auth", [None, "", "wrong", AUTH + "x", AUTH.upper()])
def test_clover_messages_without_the_auth_code_are_unauthorized(auth: str | None) -> None:
    w = World()
    with pytest.raises(WebhookUnauthorized) as info:
        w.clover(clover_orders(M1), auth=auth)
    assert str(info.value) == "unauthorized"
    assert w.queued == []


def test_a_rotated_auth_code_is_picked_up_but_bad_signatures_do_not_cause_a_read_storm() -> None:
    w = World()
    w.clover(clover_orders(M1))
    assert w.creds.reads == 1
    # When the operator rotates the auth code
    w.creds.stored["clover"]["webhook_auth_code"] = "rotated-code"
    # Then within the reload window a bad message costs no extra read
    with pytest.raises(WebhookUnauthorized):
        w.clover(clover_orders(M1), auth="rotated-code")
    assert w.creds.reads == 1
    # And after it the new code is read once and accepted
    w.clock.sleep(31)
    w.clover(clover_orders(M1), auth="rotated-code")
    assert w.creds.reads == 2


def test_unconfigured_auth_code_refuses_everything() -> None:
    w = World()
    w.creds.stored["clover"].pop("webhook_auth_code")
    with pytest.raises(WebhookUnauthorized):
        w.clover(clover_orders(M1), auth="")


def test_unknown_and_malformed_merchants_are_ignored_quietly() -> None:
    w = World()
    result = w.clover(clover_orders("ZZZZZZZZZZZZ9", "bad id", M1))
    assert (result.syncs_queued, result.ignored) == (1, 2)


def test_an_app_uninstall_revokes_the_connection_and_schedules_its_secret_for_deletion() -> None:
    w = World()
    body = {"appId": "CLOVERAPP", "merchants": {M1: [{"objectId": "A:CLOVERAPP", "type": "DELETE", "ts": 1}]}}
    result = w.clover(body)
    assert result.revoked == 1
    assert w.connections.conns[f"clover#{M1}"].status is ConnectionStatus.REVOKED
    assert w.tokens.deleted == [("clover", M1)]
    assert [t for t, _ in w.events.events] == ["ConnectionRevoked"]
    # And later order events for it queue nothing
    assert w.clover(clover_orders(M1)).syncs_queued == 0


def clover_uninstall(merchant: str, ts: int | None) -> dict[str, Any]:
    event: dict[str, Any] = {"objectId": "A:CLOVERAPP", "type": "DELETE"}
    if ts is not None:
        event["ts"] = ts
    return {"appId": "CLOVERAPP", "merchants": {merchant: [event]}}


def test_an_uninstall_from_before_a_reconnect_is_ignored() -> None:
    # Given a merchant who uninstalled at 08:00 and reconnected at 08:05
    w = World()
    w.connections.conns[f"clover#{M1}"].connected_at = "2027-01-15T08:05:00.000Z"
    uninstalled_ms = 1_800_000_000_000  # 2027-01-15T08:00:00Z
    # When the 08:00 uninstall is delivered late (or replayed)
    result = w.clover(clover_uninstall(M1, uninstalled_ms))
    # Then the connection stays active and its secret is kept
    assert (result.revoked, result.ignored) == (0, 1)
    assert w.connections.conns[f"clover#{M1}"].status is ConnectionStatus.ACTIVE
    assert w.tokens.deleted == [] and w.events.events == []
    # And an uninstall without a time is not believed either
    assert w.clover(clover_uninstall(M1, None)).revoked == 0
    # But one after the reconnect revokes
    assert w.clover(clover_uninstall(M1, uninstalled_ms + 600_000)).revoked == 1
    assert w.connections.conns[f"clover#{M1}"].status is ConnectionStatus.REVOKED


def test_a_repeated_uninstall_event_is_processed_once() -> None:
    # Given an uninstall that was processed
    w = World()
    body = clover_uninstall(M1, 1_800_000_000_000)
    w.clover(body)
    # When the same event is delivered again
    w.clover(body)
    # Then its secret deletion and ConnectionRevoked event happened once
    assert w.tokens.deleted == [("clover", M1)]
    assert [t for t, _ in w.events.events] == ["ConnectionRevoked"]


def test_an_uninstall_whose_revoke_failed_is_processed_on_the_retry() -> None:
    w = World()
    body = clover_uninstall(M1, 1_800_000_000_000)
    failing = w.tokens.schedule_deletion

    def boom(provider: str, merchant_id: str) -> None:
        raise RuntimeError("secrets manager down")

    w.tokens.schedule_deletion = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        w.clover(body)
    w.tokens.schedule_deletion = failing  # type: ignore[method-assign]
    assert w.clover(body).revoked == 1
    assert w.tokens.deleted == [("clover", M1)]


def test_poynt_uninstalls_are_checked_against_the_connection_time_and_their_id() -> None:
    w = poynt_world()
    w.connections.conns[f"poynt#{BIZ}"].connected_at = "2027-01-15T08:05:00.000Z"
    old = poynt_event("APPLICATION_SUBSCRIPTION_END", created="2027-01-15T08:00:00Z", event_id="e-1")
    w.service.handle("poynt", {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, old)}, old)
    assert w.connections.conns[f"poynt#{BIZ}"].status is ConnectionStatus.ACTIVE
    new = poynt_event("APPLICATION_SUBSCRIPTION_END", created="2027-01-15T08:06:00Z", event_id="e-2")
    for _ in range(2):
        w.service.handle("poynt", {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, new)}, new)
    assert w.connections.conns[f"poynt#{BIZ}"].status is ConnectionStatus.REVOKED
    assert w.tokens.deleted == [("poynt", BIZ)]


def test_an_app_update_event_is_not_an_uninstall() -> None:
    w = World()
    w.clover({"merchants": {M1: [{"objectId": "A:CLOVERAPP", "type": "UPDATE", "ts": 1}]}})
    assert w.connections.conns[f"clover#{M1}"].status is ConnectionStatus.ACTIVE


def test_oversized_and_malformed_bodies() -> None:
    w = World()
    with pytest.raises(PayloadTooLarge):
        w.service.handle("clover", {"x-clover-auth": AUTH}, b" " * (256 * 1024 + 1))
    with pytest.raises(InvalidInput):
        w.service.handle("clover", {"x-clover-auth": AUTH}, b"not json")


def test_a_body_nested_too_deep_for_the_json_parser_is_a_bad_request_not_a_crash() -> None:
    # Given 100 KiB of nested arrays (the parser's recursion limit is far below that), before any auth
    w = World()
    body = b"[" * 50_000 + b"]" * 50_000
    # Then it is refused as malformed input (400), for Clover (parsed before auth) and signed Poynt alike
    with pytest.raises(InvalidInput):
        w.service.handle("clover", {}, body)
    p = poynt_world()
    with pytest.raises(InvalidInput):
        p.service.handle("poynt", {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, body)}, body)


def test_poynt_signature_is_base64_hmac_sha1() -> None:
    body = b'{"a":1}'
    expected = base64.b64encode(hmac.new(b"k", body, hashlib.sha1).digest()).decode()
    assert poynt_signature("k", body) == expected


def poynt_world(secret: str | None = POYNT_SECRET) -> World:
    w = World()
    original = w.creds.get

    def get(provider: str, max_age_s: float | None = None) -> Any:
        if provider == "poynt":
            if secret is None:
                raise AppNotConfigured("poynt app credentials are not configured")
            return PoyntCreds(secret)
        return original(provider, max_age_s)

    w.creds.get = get  # type: ignore[method-assign]
    return w


def poynt_event(
    event_type: str = "ORDER_UPDATED",
    biz: str = BIZ,
    created: str = "2027-01-15T08:00:00Z",
    event_id: str = "ev-1",
) -> bytes:
    return json.dumps(
        {
            "id": event_id,
            "createdAt": created,
            "eventType": event_type,
            "businessId": biz,
            "resource": "/orders",
            "resourceId": "o-1",
        }
    ).encode()


def test_a_signed_poynt_order_event_queues_a_sync() -> None:
    w = poynt_world()
    body = poynt_event()
    result = w.service.handle("poynt", {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, body)}, body)
    assert result.syncs_queued == 1
    assert w.queued[0][0].merchant_id == BIZ


@pytest.mark.parametrize("sig", ["", "AAAA", None])
def test_a_badly_signed_poynt_event_is_unauthorized(sig: str | None) -> None:
    w = poynt_world()
    body = poynt_event()
    headers = {} if sig is None else {"poynt-webhook-signature": sig}
    with pytest.raises(WebhookUnauthorized):
        w.service.handle("poynt", headers, body)
    assert w.queued == []


def test_a_poynt_signature_over_another_body_is_unauthorized() -> None:
    w = poynt_world()
    with pytest.raises(WebhookUnauthorized):
        w.service.handle(
            "poynt",
            {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, poynt_event())},
            poynt_event("X"),
        )


def test_a_poynt_subscription_end_revokes() -> None:
    w = poynt_world()
    body = poynt_event("APPLICATION_SUBSCRIPTION_END")
    w.service.handle("poynt", {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, body)}, body)
    assert w.connections.conns[f"poynt#{BIZ}"].status is ConnectionStatus.REVOKED
    assert w.tokens.deleted == [("poynt", BIZ)]


def test_poynt_without_a_configured_secret_refuses() -> None:
    w = poynt_world(secret=None)
    body = poynt_event()
    with pytest.raises(WebhookUnauthorized):
        w.service.handle("poynt", {"poynt-webhook-signature": poynt_signature(POYNT_SECRET, body)}, body)


def test_clover_credentials_type_is_what_the_check_reads() -> None:
    creds = parse_credentials(
        "clover", {"client_id": "A", "client_secret": "sekrit-1", "webhook_auth_code": "auth-2"}
    )
    assert isinstance(creds, CloverAppCredentials)
    assert creds.webhook_auth_code == "auth-2"
    assert "sekrit-1" not in repr(creds) and "auth-2" not in repr(creds)


def test_clover_order_deletes_queue_one_deleted_run_with_the_ids_and_latest_ts() -> None:
    # Given a message with two order DELETEs (one twice, later), an UPDATE and a malformed id
    w = World()
    body = {
        "appId": "CLOVERAPP",
        "merchants": {
            M1: [
                {"objectId": "O:ORDERB0000002", "type": "DELETE", "ts": 1_000},
                {"objectId": "O:ORDERA0000001", "type": "delete", "ts": 2_000},
                {"objectId": "O:ORDERB0000002", "type": "DELETE", "ts": 3_000},
                {"objectId": "O:ORDERC0000003", "type": "UPDATE", "ts": 4_000},
                {"objectId": "O:bad id!", "type": "DELETE", "ts": 5_000},
            ]
        },
    }
    # When it arrives
    w.clover(body)
    # Then one DELETED run names the two well-formed deleted orders, and the UPDATE its sync
    deleted = [(req, d) for req, d in w.queued if req.kind is SyncKind.DELETED]
    assert len(deleted) == 1
    req, dedup = deleted[0]
    assert req.order_ids == ("ORDERA0000001", "ORDERB0000002") and req.at_ms == 3_000
    assert SyncRequest.from_json(req.to_json()) == req
    assert [r.kind for r, _ in w.queued if r.kind is not SyncKind.DELETED] == [SyncKind.WEBHOOK]
    # And the same ids again give the same deduplication id
    w.clover(body)
    assert [d for r, d in w.queued if r.kind is SyncKind.DELETED] == [dedup, dedup]


def test_a_delete_only_message_queues_no_webhook_sync() -> None:
    w = World()
    w.clover({"appId": "A", "merchants": {M1: [{"objectId": "O:ORDERA0000001", "type": "DELETE", "ts": 1}]}})
    assert [r.kind for r, _ in w.queued] == [SyncKind.DELETED]


@pytest.mark.parametrize(
    "order_ids", [["ok"] * 101, "ORDER", [1, "x y"], ["a/b"]], ids=["too-many", "not-a-list", "bad", "slash"]
)
def test_malformed_order_ids_in_a_sync_message_are_refused(order_ids: Any) -> None:
    body = json.dumps({"provider": "clover", "merchant_id": M1, "kind": "deleted", "order_ids": order_ids})
    with pytest.raises(InvalidInput):
        SyncRequest.from_json(body)
