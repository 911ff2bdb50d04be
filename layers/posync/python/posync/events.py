"""EventBridge: posync's own events on the stage's bus (``source = posync``).

Detail types in use: ``OrdersExported`` (storage), ``ConnectionNeedsReauth``,
``ConnectionRevoked`` and ``ConnectionConnected`` (authorization). A detail never
carries a token, a code or a secret: ids, statuses, reasons and times only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from posync.aws import client
from posync.config import Settings
from posync.errors import PosyncError

SOURCE = "posync"


class EventNotDelivered(PosyncError):
    """EventBridge accepted the call but refused the entry (``FailedEntryCount`` > 0)."""


def put_event(settings: Settings, detail_type: str, detail: Mapping[str, Any]) -> str:
    """Put one event on ``settings.event_bus`` and return its event id.

    Raises ``EventNotDelivered`` when EventBridge reports the entry as failed (boto3's
    own retries cover throttling of the call itself).
    """
    reply = client("events").put_events(
        Entries=[
            {
                "Source": SOURCE,
                "DetailType": detail_type,
                "Detail": json.dumps(dict(detail), separators=(",", ":"), default=str),
                "EventBusName": settings.event_bus,
            }
        ]
    )
    entry = reply["Entries"][0] if reply.get("Entries") else {}
    if reply.get("FailedEntryCount", 0) or "EventId" not in entry:
        raise EventNotDelivered(f"EventBridge refused {detail_type}: {entry.get('ErrorCode', 'unknown')}")
    event_id: str = entry["EventId"]
    return event_id
