"""The sync queue's message contract (SQS FIFO, one message group per connection).

Producers: the dispatcher (schedule), the OAuth callback (first backfill), the
webhooks (targeted syncs), the worker itself (continuations) and the CLI (manual).
The consumer is the worker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from posync.aws import client
from posync.domain import check_merchant_id, connection_id
from posync.errors import InvalidInput

ORDER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class SyncKind(StrEnum):
    SCHEDULED = "scheduled"
    BACKFILL = "backfill"
    CONTINUATION = "continuation"
    WEBHOOK = "webhook"
    MANUAL = "manual"
    RECONCILE = "reconcile"  # re-read orders modified since ``since``; export what differs (posync.reconcile)
    DELETED = "deleted"  # the provider announced deletions (``order_ids``): confirm them by id, tombstone


@dataclass(frozen=True)
class SyncRequest:
    """What one sync queue message asks for: a connection, a kind of sync and why."""

    provider: str
    merchant_id: str
    kind: SyncKind
    since: str | None = None  # RFC 3339 UTC: start here instead of the cursor (backfill, manual)
    run_id: str | None = None  # set on continuations: the run goes on
    reason: str | None = None  # free text for logs ("schedule slot 2026-11-23T18:15Z", "webhook")
    order_ids: tuple[str, ...] | None = None  # kind DELETED: the orders announced deleted (at most 100)
    at_ms: int | None = None  # kind DELETED: when the provider announced it (the webhook's ts)
    # Delivery metadata, never sent: the SQS message id (the same on every redelivery), set
    # by the worker so that a message whose run already completed is not run again.
    message_id: str | None = field(default=None, compare=False)

    @property
    def connection_id(self) -> str:
        return connection_id(self.provider, self.merchant_id)

    def to_json(self) -> str:
        # Field by field, not dataclasses.asdict (which deep-copies: some 60 us a message, and the
        # dispatcher writes tens of thousands a tick).
        body: dict[str, Any] = {
            "provider": self.provider,
            "merchant_id": self.merchant_id,
            "kind": self.kind.value,
        }
        for name in ("since", "run_id", "reason", "at_ms"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.order_ids is not None:
            body["order_ids"] = list(self.order_ids)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str, message_id: str | None = None) -> SyncRequest:
        try:
            data: dict[str, Any] = json.loads(body)
            req = cls(
                provider=str(data["provider"]),
                merchant_id=str(data["merchant_id"]),
                kind=SyncKind(data.get("kind", "scheduled")),
                since=data.get("since"),
                run_id=data.get("run_id"),
                reason=data.get("reason"),
                order_ids=_order_ids(data.get("order_ids")),
                at_ms=_int_or_none(data.get("at_ms")),
                message_id=message_id,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"malformed sync message: {type(exc).__name__}") from exc
        check_merchant_id(req.provider, req.merchant_id)
        return req


MAX_ORDER_IDS = 100


def _order_ids(raw: Any) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) > MAX_ORDER_IDS:
        raise ValueError("order_ids must be a list of at most 100 ids")
    ids = tuple(str(i) for i in raw)
    if not all(ORDER_ID.fullmatch(i) for i in ids):
        raise ValueError("order_ids holds a malformed id")
    return ids


def _int_or_none(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError("at_ms must be an integer")
    return raw


def send_sync(queue_url: str, req: SyncRequest, dedup_id: str) -> None:
    """Enqueue one sync. ``dedup_id`` makes repeats within SQS's 5-minute window a no-op."""
    client("sqs").send_message(
        QueueUrl=queue_url,
        MessageBody=req.to_json(),
        MessageGroupId=req.connection_id,
        MessageDeduplicationId=dedup_id[:128],
    )


def queue_url(settings_queue_url: str | None, queue_name: str) -> str:
    """The sync queue's URL: from configuration when deployed, looked up by name locally."""
    if settings_queue_url:
        return settings_queue_url
    url: str = client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"]
    return url
