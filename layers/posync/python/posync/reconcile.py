"""The reconciliation sweep and confirmed deletions: what changed without the provider's clock moving.

A sync reads what the provider says changed (``modifiedTime`` / ``If-Modified-Since``). Some
changes do not say so: a refund may leave the order's ``modifiedTime`` where it was
(CLV-REFUND-1, not documented), a deleted order may leave every list (CLV-DEL-2). Two run
kinds of the sync queue (``posync.syncqueue.SyncKind``) catch them, through the same worker,
lease, rate limits, checkpoints and continuations as a sync (``posync.sync``):

**RECONCILE** (``since`` = the window's start; the schedule sends ``now - reconcile_days``,
``posync reconcile`` sends ``--days``). The run re-reads every order whose modified time is
in ``[since, now)`` with the sync's keyset engine: that covers every order *created* in the
window (an order's modified time is never before its creation) and those modified since.
Each page goes through :class:`ReconcileSink`: the stored versions of the page's orders are
read (``BatchGetItem``), and an order is stored and exported only if its content differs
from the stored one (``posync.tombstones.content``: everything but ``modified_at``). A
version whose provider time did not move is moved 1 ms after the stored one
(``posync.tombstones.settle``) so that newest-wins keeps it. Then the **absence sweep**:
every stored order not deleted whose version is in the window and that the list did not
show is read by id (Clover); gone (404, or ``deletedTimestamp``) -> its tombstone. The
settled sync cursor does not move (a reconcile is not a sync). Counts (``corrections``,
and per cause ``silent``, ``changed``, ``missing``, ``deleted``, ``unchanged``) go to the
manifest and the ``OrdersCorrected`` metric.

**DELETED** (``order_ids``, ``at_ms``): the Clover webhook's ``DELETE`` of ``O:`` objects
(CLV-DEL-4). Each order is read by id first (the webhook's shared-secret header is not a
signature, and delivery order is not guaranteed); gone -> a tombstone of the stored
version (deleted at ``deletedTimestamp``, else the webhook's ``ts``), its own small run and
manifest. An order posync never stored and Clover no longer shows leaves nothing to say.

A reconcile is a run like a sync's (one at a time per connection, its state in the cursor's
``run`` part): a sync message arriving mid-reconcile goes on with the reconcile (the next
schedule slot syncs), a reconcile arriving mid-sync waits until that run completes
(``deferred``).

Poynt has no deletions: its reconcile is the content comparison alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from posync.errors import MalformedOrder
from posync.observability import logger
from posync.ratelimit import BudgetExhausted, Deadline
from posync.serialized import Serialized
from posync.sources.clover_deletions import Presence, clover_presence
from posync.times import iso_to_ms
from posync.tombstones import Stored, StoredVersions, content, is_tombstone, settle, tombstone

if TYPE_CHECKING:
    from posync.sources import KeysetSource
    from posync.transport import Transport

CAUSES = ("silent", "changed", "missing", "deleted", "unchanged")
SWEEP_BATCH = 25  # tombstones written together by the absence sweep

PresenceCheck = Callable[["Transport", str, str, Deadline], Presence]
PRESENCE: dict[str, PresenceCheck] = {"clover": clover_presence}


class WindowIndex(Protocol):
    """The stored orders of a connection whose version is in a window (``OrderRepository``)."""

    def live_in_window(self, conn_id: str, from_ms: int, to_ms: int) -> Any: ...


class StoreParts(Protocol):
    """What :class:`ReconcileSink` needs of the sync's store sink (``posync.sync.StoreSink``)."""

    repository: Any
    exports: Any
    conn_id: str

    @property
    def run_id(self) -> str: ...

    @property
    def wants_checkpoint(self) -> bool: ...

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None: ...

    def checkpoint(self) -> None: ...

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None: ...

    def close(self) -> None: ...


@dataclass
class ReconcileSink:
    """A reconcile run's pages: stored and exported only where they differ from storage."""

    inner: StoreParts
    versions: StoredVersions
    clock: Callable[[], float] = time.time
    seen: set[str] = field(default_factory=set)
    tally: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("corrections", *CAUSES), 0))
    sweep_after: str | None = None  # the last order id the absence sweep finished

    @property
    def run_id(self) -> str:
        return self.inner.run_id

    @property
    def wants_checkpoint(self) -> bool:
        return self.inner.wants_checkpoint

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        self.inner.quarantine(raw, reason)

    def checkpoint(self) -> None:
        self.inner.checkpoint()

    def finish(self, cursor_from: Any, cursor_to: Any, counts: Mapping[str, int]) -> str | None:
        return self.inner.finish(cursor_from, cursor_to, counts)

    def close(self) -> None:
        self.inner.close()

    def take_tally(self) -> dict[str, int]:
        out, self.tally = self.tally, dict.fromkeys(self.tally, 0)
        return out

    def write(self, orders: Sequence[Mapping[str, Any]]) -> int:
        conn_id = self.inner.conn_id
        stored = self.versions.stored(conn_id, [str(o["order_id"]) for o in orders], with_content=True)
        changed: list[Mapping[str, Any]] = []
        cause: dict[str, str] = {}
        for order in orders:
            oid = str(order["order_id"])
            self.seen.add(oid)
            old = stored.get(oid)
            if old is not None and old.order is not None and content(old.order) == content(order):
                self.tally["unchanged"] += 1
                continue
            settled = settle(order, old)
            if settled is None:
                self.tally["unchanged"] += 1
                continue
            if old is None:
                cause[oid] = "missing"
            elif is_tombstone(order):
                cause[oid] = "deleted"
            elif iso_to_ms(str(order["modified_at"])) <= old.modified_ms:
                cause[oid] = "silent"
            else:
                cause[oid] = "changed"
            changed.append(settled)
        return self._store(changed, cause)

    def _store(self, orders: list[Mapping[str, Any]], cause: Mapping[str, str]) -> int:
        if not orders:
            return 0
        inner = self.inner
        got = inner.repository.write(inner.conn_id, inner.run_id, orders, ledger=inner.exports)
        for order in got:
            inner.exports.add(order)
            self.tally["corrections"] += 1
            self.tally[cause.get(str(order["order_id"]), "changed")] += 1
        return len(got)

    def sweep(
        self,
        *,
        index: WindowIndex,
        presence: PresenceCheck,
        transport: Transport,
        merchant_id: str,
        window: tuple[int, int],
        deadline: Deadline,
    ) -> None:
        """Tombstone the stored orders of ``window`` the list did not show and that are gone.

        Raises BudgetExhausted when time runs out; :attr:`sweep_after` then says where to go on
        (everything up to it is durable once the caller checkpoints).
        """
        pending: list[tuple[str, Presence]] = []
        try:
            for oid, _ in index.live_in_window(self.inner.conn_id, window[0], window[1]):
                if (self.sweep_after is not None and oid <= self.sweep_after) or oid in self.seen:
                    continue
                found = presence(transport, merchant_id, oid, deadline)
                if found.gone:
                    pending.append((oid, found))
                if len(pending) >= SWEEP_BATCH:
                    self._bury(pending)
                    pending = []
                self.sweep_after = oid
        except BudgetExhausted:
            self._bury(pending)
            raise
        self._bury(pending)

    def _bury(self, gone: list[tuple[str, Presence]]) -> None:
        if not gone:
            return
        found_ms = int(self.clock() * 1000)
        stored = self.versions.stored(self.inner.conn_id, [oid for oid, _ in gone], with_content=True)
        dead: list[Mapping[str, Any]] = []
        for oid, p in gone:
            t = bury(stored.get(oid), p.deleted_ms or found_ms)
            if t is not None:
                dead.append(t)
        self._store(dead, dict.fromkeys((str(o["order_id"]) for o in dead), "deleted"))


def bury(stored: Stored | None, deleted_ms: int) -> Mapping[str, Any] | None:
    """The tombstone of a stored order (None: not stored, or already a tombstone)."""
    if stored is None or stored.order is None or stored.deleted:
        return None
    return Serialized.of(tombstone(stored.order, deleted_ms, after_ms=stored.modified_ms))


# --------------------------------------------------------------------------- DELETED runs


@dataclass
class DeletedResult:
    """How a DELETED run ended: orders confirmed gone, tombstones exported, orders still there."""

    confirmed: int = 0
    exported: int = 0
    alive: int = 0
    unknown: int = 0  # gone, but never stored: nothing to tombstone
    manifest_key: str | None = None


def confirm_deleted(
    *,
    source: KeysetSource,
    sink: StoreParts,
    versions: StoredVersions,
    normalize: Callable[[str, str, dict[str, Any]], dict[str, Any]],
    provider: str,
    merchant_id: str,
    order_ids: Sequence[str],
    announced_ms: int,
    deadline: Deadline,
) -> DeletedResult:
    """Read each announced order by id; write the tombstones of those gone; finish the run."""
    result = DeletedResult()
    presence = PRESENCE.get(provider)
    if presence is None:
        result.alive = len(order_ids)
        return result
    gone: list[tuple[str, Presence]] = []
    for oid in dict.fromkeys(order_ids):
        found = presence(source.transport, merchant_id, oid, deadline)
        if found.gone:
            gone.append((oid, found))
        else:
            result.alive += 1
    result.confirmed = len(gone)
    stored = versions.stored(sink.conn_id, [oid for oid, _ in gone], with_content=True)
    dead: list[Mapping[str, Any]] = []
    for oid, p in gone:
        old = stored.get(oid)
        t = bury(old, p.deleted_ms or announced_ms)
        if t is None and old is None and p.raw:
            try:  # never stored, but Clover still shows it (deletedTimestamp): its own tombstone
                t = settle(normalize(provider, merchant_id, p.raw), None)
            except MalformedOrder as exc:
                sink.quarantine(p.raw, exc.reason)
        if t is not None:
            dead.append(t)
        elif old is None:
            result.unknown += 1
    if dead:
        got = sink.repository.write(sink.conn_id, sink.run_id, dead, ledger=sink.exports)
        for order in got:
            sink.exports.add(order)
        result.exported = len(got)
    counts = {
        "requests": source.stats.requests,
        "confirmed_deleted": result.confirmed,
        "corrections": result.exported,
        "deleted": result.exported,
        "still_there": result.alive,
        "unknown": result.unknown,
    }
    result.manifest_key = sink.finish(None, None, counts)
    logger.info("deletions confirmed", extra={"counts": counts})
    return result
