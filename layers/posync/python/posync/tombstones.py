"""Deleted orders end as tombstones; corrections of orders whose provider clock did not move.

A **tombstone** is a new version of an order (canonical order v1.1): its last known
content, ``state: "deleted"`` and ``deleted_at`` (Clover's ``deletedTimestamp`` when Clover
reports one, else when posync found the order gone: the DELETE webhook's ``ts``, or the
time a read by id answered 404). Register rows: CLV-DEL-1..5.

**Ordering (newest wins).** Storage keeps the version with the greatest ``modified_at``
(``posync.store``), so a tombstone must order after every live version posync stored:

- From Clover's own order (``deletedTimestamp`` set): ``modified_at = max(deletedTimestamp,
  modifiedTime + 1 ms)``. It is a function of the order alone (a re-read gives the same
  version, which storage drops as already stored), and it is later than every live version
  with that ``modifiedTime``, even when the deletion did not move ``modifiedTime`` and a list
  still returns the order at its old time (a profile the record leaves open).
- Against storage (:func:`settle`): a tombstone or a correction (a re-read whose content
  differs while the provider's modified time did not move: a silent refund, CLV-REFUND-1) is
  moved to 1 ms after the stored version when it does not already order after it; a
  tombstone for an order already stored as deleted is dropped (nothing new to say).

A read can never bring a deleted order back: a live version older than the tombstone loses
to it; one newer would mean the provider shows the order again, and then it is live.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from posync.serialized import Serialized, to_json
from posync.times import iso_to_ms, ms_to_iso

DELETED = "deleted"
SCHEMA_MINOR = 1  # canonical order v1.1: state "deleted" and deleted_at (docs/canonical-order-v1.md)
# Fields a re-read may change without the order changing: left out of the content comparison.
VOLATILE = frozenset({"modified_at"})


def is_tombstone(order: Mapping[str, Any]) -> bool:
    return order.get("state") == DELETED


def tombstone(order: Mapping[str, Any], deleted_ms: int, *, after_ms: int | None = None) -> dict[str, Any]:
    """``order`` (its last known content) as deleted at ``deleted_ms``.

    ``modified_at`` is the later of the deletion time and 1 ms after ``after_ms`` (default:
    the order's own ``modified_at``), so that the tombstone wins over that version.
    """
    body = dict(order.to_dict() if isinstance(order, Serialized) else order)
    base = iso_to_ms(str(body["modified_at"])) if after_ms is None else after_ms
    body["state"] = DELETED
    body["deleted_at"] = ms_to_iso(deleted_ms)
    body["modified_at"] = ms_to_iso(max(deleted_ms, base + 1))
    return body


def clover_deleted_ms(raw: Mapping[str, Any]) -> int | None:
    """Clover's ``deletedTimestamp`` (epoch ms), or None for a live order (CLV-DEL-1)."""
    value = raw.get("deletedTimestamp")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def content(order: Mapping[str, Any]) -> str:
    """The order's content as comparable text: everything but the fields a re-read may move."""
    body = order.to_dict() if isinstance(order, Serialized) else dict(order)
    for name in VOLATILE:
        body.pop(name, None)
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- against storage


@dataclass(frozen=True)
class Stored:
    """What storage holds for an order: its version (epoch ms), whether it is a tombstone, and
    (when asked for) its content."""

    modified_ms: int
    deleted: bool
    order: Mapping[str, Any] | None = None


class StoredVersions(Protocol):
    """The stored versions of some orders of one connection (``posync.store.OrderRepository``)."""

    def stored(self, conn_id: str, order_ids: Iterable[str], *, with_content: bool) -> dict[str, Stored]: ...


def settle(order: Mapping[str, Any], stored: Stored | None) -> Mapping[str, Any] | None:
    """A tombstone or a correction as it must be written over ``stored``; None: nothing to write.

    - no stored version: the order as it is;
    - a tombstone over a tombstone: None;
    - otherwise the order, its ``modified_at`` moved to 1 ms after the stored version's if it
      does not already order after it.
    """
    if stored is None:
        return order
    if is_tombstone(order) and stored.deleted:
        return None
    ms = iso_to_ms(str(order["modified_at"]))
    if ms > stored.modified_ms:
        return order
    body = order.to_dict() if isinstance(order, Serialized) else dict(order)
    body["modified_at"] = ms_to_iso(stored.modified_ms + 1)
    return Serialized.of(body) if isinstance(order, Serialized) else body


def with_tombstones_settled(
    versions: StoredVersions | None, conn_id: str, orders: list[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """A sync page with its tombstones settled against storage (one read for the page's few)."""
    if versions is None:
        return orders
    dead = [o for o in orders if _deleted(o)]
    if not dead:
        return orders
    stored = versions.stored(conn_id, [str(o["order_id"]) for o in dead], with_content=False)
    out: list[Mapping[str, Any]] = []
    for o in orders:
        if not _deleted(o):
            out.append(o)
            continue
        settled = settle(o, stored.get(str(o["order_id"])))
        if settled is not None:
            out.append(settled)
    return out


def _deleted(order: Mapping[str, Any]) -> bool:
    if isinstance(order, Serialized):
        return '"state":"deleted"' in order.text
    return is_tombstone(order)


def serialized(order: Mapping[str, Any]) -> Serialized:
    return (
        order
        if isinstance(order, Serialized)
        else Serialized(str(order["order_id"]), str(order["modified_at"]), to_json(order))
    )
