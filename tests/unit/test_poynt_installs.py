"""Poynt on-terminal installs and webhook de-duplication (in-memory fakes)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from posync.domain import Connection, ConnectionStatus
from posync.providers.poynt.installs import APP_INSTALLED, connect, sweep
from posync.providers.poynt.webhooks import delivery_id, parse_events, signature
from posync.syncqueue import SyncRequest
from posync.webhooks import WebhookService
from tests.unit.oauth_fakes import EventLog, FakeClock, FakeConnections, FakeTokenStore, unit_settings
from tests.unit.test_webhooks_service import MemoryLedger

A, B, C = (f"0b9f1c2e-1111-4222-8333-44445555666{i}" for i in range(3))
SECRET = "poynt-hook-secret"


class ListingConnections(FakeConnections):
    def list_by_status(
        self, status: ConnectionStatus | str, page_size: int = 100, start_key: dict[str, Any] | None = None
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        return [c for c in self.conns.values() if c.status is ConnectionStatus(status)], None


class MemoryDeliveries:
    def __init__(self) -> None:
        self.seen: set[str] = set()

    def first(self, provider: str, delivery: str) -> bool:
        if delivery in self.seen:
            return False
        self.seen.add(delivery)
        return True

    def forget(self, provider: str, delivery: str) -> None:
        self.seen.discard(delivery)


class Creds:
    webhook_secret = SECRET


class CredStore:
    def get(self, provider: str, max_age_s: float | None = None) -> Any:
        return Creds()

    def age(self, provider: str) -> float | None:
        return 0.0


def world(on_install: Any = None) -> tuple[WebhookService, ListingConnections, list[tuple[SyncRequest, str]]]:
    conns = ListingConnections()
    queued: list[tuple[SyncRequest, str]] = []
    svc = WebhookService(
        unit_settings(),
        credentials=CredStore(),
        connections=conns,
        tokens=FakeTokenStore(),
        verification=None,  # type: ignore[arg-type]
        enqueue=lambda r, d: queued.append((r, d)),
        events=EventLog(),
        clock=FakeClock(),
        deliveries=MemoryDeliveries(),
        on_install=on_install,
        ledger=MemoryLedger(),
    )
    return svc, conns, queued


def deliver(svc: WebhookService, event: dict[str, Any]) -> Any:
    body = json.dumps(event).encode()
    return svc.handle("poynt", {"poynt-webhook-signature": signature(SECRET, body)}, body)


def event(kind: str, biz: str, eid: str = "ev-1", resource_id: str = "o-1") -> dict[str, Any]:
    """An event as Poynt sends it: its own id and ``createdAt`` (PNT-WEBHOOK-EVENT)."""
    return {
        "id": eid,
        "eventType": kind,
        "businessId": biz,
        "resource": "/orders",
        "resourceId": resource_id,
        "createdAt": "2026-12-08T01:00:00Z",
    }


def test_a_retried_order_event_is_acknowledged_without_a_second_sync() -> None:
    # Given a connected business
    svc, conns, _queued = world()
    conns.add(Connection("poynt", A))
    # When Poynt delivers an event and retries it (same id), then sends a new one
    first = deliver(svc, event("ORDER_UPDATED", A))
    retry = deliver(svc, event("ORDER_UPDATED", A))
    other = deliver(svc, event("ORDER_COMPLETED", A, eid="ev-2"))
    # Then the retry changed nothing
    assert (first.syncs_queued, retry.syncs_queued, retry.ignored, other.syncs_queued) == (1, 0, 1, 1)


def test_a_delivery_that_failed_is_not_remembered() -> None:
    svc, _conns, _ = world(on_install=lambda p, b: (_ for _ in ()).throw(RuntimeError("down")))
    with pytest.raises(RuntimeError):
        deliver(svc, event("APPLICATION_SUBSCRIPTION_START", A))
    svc._on_install = lambda p, b: None
    assert deliver(svc, event("APPLICATION_SUBSCRIPTION_START", A)).installed == 1


def test_start_connects_end_revokes_an_installed_business_without_touching_secrets() -> None:
    installed: list[str] = []
    svc, conns, _ = world(on_install=lambda p, b: installed.append(b))
    assert deliver(svc, event("APPLICATION_SUBSCRIPTION_START", A)).installed == 1
    assert installed == [A]
    conns.add(Connection("poynt", A, auth=APP_INSTALLED))
    result = deliver(svc, event("APPLICATION_SUBSCRIPTION_END", A, eid="ev-9"))
    assert result.revoked == 1
    assert conns.get("poynt", A).status is ConnectionStatus.REVOKED


def test_delivery_ids_fall_back_to_the_event_content() -> None:
    ev = {"eventType": "ORDER_UPDATED", "businessId": A, "resourceId": "o", "createdAt": "t"}
    assert delivery_id(ev) == delivery_id(dict(ev)) != delivery_id({**ev, "createdAt": "u"})
    assert parse_events([ev, {**ev, "eventType": "ORDER_CANCELLED"}])[A].order_events == 2


def test_connect_is_idempotent_and_queues_one_backfill() -> None:
    conns = ListingConnections()
    queued: list[tuple[SyncRequest, str]] = []
    for _ in range(2):
        conn = connect(
            A,
            connections=conns,
            enqueue=lambda r, d: queued.append((r, d)),
            region="sandbox",
            backfill_days=90,
        )
    assert conn.auth == APP_INSTALLED and conn.status is ConnectionStatus.ACTIVE
    assert [r.kind.value for r, _ in queued] == ["backfill"]


def test_the_sweep_connects_active_subscriptions_and_revokes_only_installed_connections_that_left() -> None:
    conns = ListingConnections()
    conns.add(Connection("poynt", B, auth=APP_INSTALLED))
    conns.add(Connection("poynt", C))  # connected by consent: the billing list says nothing about it
    queued: list[tuple[SyncRequest, str]] = []
    subs = {A: "ACTIVE", B: "CANCELLED", "not-a-business": "ACTIVE"}
    connected, revoked = sweep(
        subs,
        connections=conns,
        enqueue=lambda r, d: queued.append((r, d)),
        region="sandbox",
        backfill_days=90,
    )
    assert (connected, revoked) == (1, 1)
    assert conns.get("poynt", A).auth == APP_INSTALLED
    assert conns.get("poynt", B).status is ConnectionStatus.REVOKED
    assert conns.get("poynt", C).status is ConnectionStatus.ACTIVE
