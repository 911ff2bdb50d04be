"""Poynt webhook events as Poynt sends them (register rows PNT-HOOK-*).

- ``Poynt-Webhook-Signature`` is the base64 HMAC-SHA1 of the raw body keyed with the hook's
  secret (PNT-HOOK-SIG).
- The body is one event (or a list) ``{id, eventType, resource, resourceId, businessId,
  links: [{rel: "resource", href}], createdAt, deliveryCount, ...}``: it does **not** carry
  the order (PNT-HOOK-BODY), so an order event only queues a sync; the order is read by the
  incremental source like any other change.
- Poynt waits 2 s for a 200, then retries the same event (PNT-HOOK-RETRY): deliveries are
  de-duplicated by the event's ``id`` (a delivery carries it; without one, by its type,
  business, resource id and ``createdAt``), and the handler only does conditional writes
  and one queue message, well inside that time.
- Billing events ``APPLICATION_SUBSCRIPTION_START`` / ``_END`` (PNT-INSTALL-HOOK) connect
  and revoke on-terminal businesses (``posync.providers.poynt.installs``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

SUBSCRIPTION_START = "APPLICATION_SUBSCRIPTION_START"
# APPLICATION_SUBSCRIPTION_END is Poynt's documented "subscription cancellation/end" event (its
# billing-webhooks guide and the Java SDK's hook-registration sample subscribe to it with
# APPLICATION_SUBSCRIPTION_START); the two others are accepted in case a portal sends them.
UNINSTALL_EVENTS = frozenset(
    {"APPLICATION_SUBSCRIPTION_END", "APPLICATION_UNINSTALLED", "BUSINESS_APPLICATION_UNINSTALLED"}
)
INSTALL_EVENTS = frozenset({SUBSCRIPTION_START})


def signature(secret: str, body: bytes) -> str:
    """``Poynt-Webhook-Signature`` of ``body``: base64 HMAC-SHA1 keyed with the hook's secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha1).digest()).decode("ascii")


def signature_ok(secret: str, body: bytes, presented: str) -> bool:
    return hmac.compare_digest(presented.encode(), signature(secret, body).encode())


@dataclass
class BusinessEvents:
    """What one delivery says about one business."""

    installed: bool = False
    uninstalled: bool = False
    order_events: int = 0
    event_ids: list[str] = field(default_factory=list)


def delivery_id(ev: dict[str, Any]) -> str:
    """A stable id of one event: Poynt's ``id``, else its type, business, resource and time."""
    eid = ev.get("id")
    if isinstance(eid, str) and eid:
        return eid[:128]
    parts = (ev.get("eventType"), ev.get("businessId"), ev.get("resourceId"), ev.get("createdAt"))
    return "|".join(str(p)[:64] for p in parts)


def parse_events(data: Any) -> dict[str, BusinessEvents]:
    """Per business id (as sent; the caller validates it), what the delivery asks for."""
    events: Iterable[Any] = data if isinstance(data, list) else [data]
    out: dict[str, BusinessEvents] = {}
    for ev in events:
        if not isinstance(ev, dict):
            continue
        biz = str(ev.get("businessId", ""))
        event_type = str(ev.get("eventType", "")).upper()
        b = out.setdefault(biz, BusinessEvents())
        b.event_ids.append(delivery_id(ev))
        if event_type in UNINSTALL_EVENTS:
            b.uninstalled = True
        elif event_type in INSTALL_EVENTS:
            b.installed = True
        elif event_type.startswith("ORDER_") or str(ev.get("resource", "")).rstrip("/") == "/orders":
            b.order_events += 1
    return out


DELIVERY_RETENTION_S = 86_400  # Poynt retries over minutes; a day covers them with room to spare


class DynamoDeliveryLog:
    """Seen delivery ids in the control table (``pk = webhook#poynt#delivery#<id>``, TTL a day):
    one conditional put per event, so two concurrent retries cannot both act."""

    def __init__(self, settings: Any, clock: Any = None) -> None:
        import time

        self._table = settings.control_table
        self._clock = clock or time.time

    @staticmethod
    def _key(provider: str, delivery: str) -> dict[str, Any]:
        return {"pk": {"S": f"webhook#{provider}#delivery#{delivery}"}}

    def first(self, provider: str, delivery: str) -> bool:
        from botocore.exceptions import ClientError

        from posync.aws import client

        now = int(self._clock())
        try:
            client("dynamodb").put_item(
                TableName=self._table,
                Item={**self._key(provider, delivery), "expires_at": {"N": str(now + DELIVERY_RETENTION_S)}},
                ConditionExpression="attribute_not_exists(pk) OR expires_at < :now",
                ExpressionAttributeValues={":now": {"N": str(now)}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

    def forget(self, provider: str, delivery: str) -> None:
        """Marked long expired (a put: the webhook function may write, not delete, control items)."""
        from posync.aws import client

        client("dynamodb").put_item(
            TableName=self._table, Item={**self._key(provider, delivery), "expires_at": {"N": "0"}}
        )
