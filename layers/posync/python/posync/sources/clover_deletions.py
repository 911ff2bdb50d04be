"""Is a Clover order gone? One read by id (``GET /v3/merchants/{mId}/orders/{orderId}``).

Clover's record leaves open what a read by id of a deleted order answers (CLV-DEL-3): a
404, or the order with ``deletedTimestamp``. Both mean deleted; any other answer is the
order, alive (the read asks for no expansion: the caller only needs to know).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from posync.errors import ProviderError
from posync.ratelimit import Deadline
from posync.tombstones import clover_deleted_ms
from posync.transport import Transport


@dataclass(frozen=True)
class Presence:
    """What a read by id found: ``gone`` (404 or deletedTimestamp), and Clover's deletion time
    (None after a 404: the caller uses the time it found out)."""

    gone: bool
    deleted_ms: int | None = None
    raw: dict[str, Any] | None = None  # the order as Clover answered (a deleted one too)


def clover_presence(transport: Transport, merchant_id: str, order_id: str, deadline: Deadline) -> Presence:
    try:
        reply = transport.get(f"/v3/merchants/{merchant_id}/orders/{order_id}", None, deadline=deadline)
    except ProviderError as exc:
        if exc.status == 404:
            return Presence(gone=True)
        raise
    body = reply.body if isinstance(reply.body, dict) else {}
    deleted = clover_deleted_ms(body)
    return Presence(gone=deleted is not None, deleted_ms=deleted, raw=body)
