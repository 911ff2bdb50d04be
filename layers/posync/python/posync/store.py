"""The orders table: one item per order, newest version wins, exactly once in the exports.

Item (``settings.orders_table``, pk ``connection_id``, sk ``order_id``)::

    modified_at  S   the canonical order's modified_at (RFC 3339 UTC)
    modified_ms  N   the same in epoch milliseconds: the newest-wins condition compares it
    state        S   "deleted" for a tombstone (see posync.tombstones), else "live"
    run_id       S   the sync run that wrote this version
    export_ref   S   the export epoch the version was handed to (ExportWriter.write_ref)
    payload      S   the canonical order as compact JSON, or, for an order over ~350 KB,
    payload_s3   S   the key of ``raw/orders/...`` in the export bucket holding it
    updated_at   S   when this item was written

:meth:`OrderRepository.write` upserts a page with one conditional ``PutItem`` per order
(``attribute_not_exists OR modified_ms < :m``), ``put_threads`` at a time, and returns
the versions the caller must export. A put is 1 write unit per KB, half a transactional
one, and a refused put refuses only its own order. A refused put reports the stored
version (``ReturnValuesOnConditionCheckFailure=ALL_OLD``): an older-or-equal incoming
version is dropped, except an equal version whose export epoch never committed (its
run died before the parts were durable), which is taken over (conditioned on that
epoch) and exported again, and an equal version stamped with the open epoch that this
repository never returned (its own earlier attempt committed but the reply was lost, and
the retry found it), which is returned now. Each order's put is decided by the stored
item alone, so concurrent writers of the same order (two runs, a reconcile) still
leave the newest version stored, and exactly one of them exports it. Every thread is
joined before ``write`` returns or raises.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from botocore.exceptions import ClientError

from posync.aws import client
from posync.config import Settings
from posync.errors import PosyncError
from posync.exports import ExportError, RunLedger, modified_ms
from posync.serialized import Serialized, to_json
from posync.tombstones import Stored

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

# Conditional puts in flight per page: a put takes ~5-10 ms in Lambda, so 16 keep a page of
# 1,000 near half a second; posync.aws' clients pool 32 connections.
PUT_THREADS = 16
MAX_SETTLE_ROUNDS = 8  # refusals of one order's put before giving up (the item keeps changing)
MAX_INLINE_PAYLOAD = 350_000  # bigger canonical orders go to S3 raw/ with a pointer
ITEM_OVERHEAD = 300  # key and attribute names, numbers: a generous estimate
RETRYABLE_CALL = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionInProgressException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
_NEW = "attribute_not_exists(#oid) OR #m < :m"
_TAKEOVER = "#m = :m AND #ref = :oldref"


def _state(order: Mapping[str, Any]) -> str:
    if isinstance(order, Serialized):  # the text is at hand; parsing it for one field is not
        return "deleted" if '"state":"deleted"' in order.text else "live"
    return "deleted" if order.get("state") == "deleted" else "live"


class StoreError(PosyncError):
    """The orders table refused a write for a reason retrying will not fix, or retries ran out."""


class ExportLedger(Protocol):
    """What the repository needs from the export side (``ExportWriter`` implements it)."""

    @property
    def write_ref(self) -> str:
        """The open export epoch, stamped on every version returned for export."""
        ...

    def exported(self, ref: str) -> bool:
        """Is a version stamped with ``ref`` already in the exports (or in the open epoch)?"""
        ...


class _RunLevelLedger:
    """Fallback when no writer is passed: the epoch is the run; a run counts once it has a manifest.

    At least once, not exactly once: a lookback overlap inside one unfinished run exports
    a version twice. Pass the ``ExportWriter`` as ``ledger`` for exactly once.
    """

    def __init__(self, run_id: str, ledger: RunLedger) -> None:
        self.write_ref = run_id
        self._ledger = ledger

    def exported(self, ref: str) -> bool:
        return self._ledger.committed(ref)


@dataclass
class _Entry:
    """One canonical order on its way to DynamoDB: its item, size and the version it may replace."""

    order: Mapping[str, Any]
    order_id: str
    ms: int
    item: dict[str, Any]
    size: int
    old_ref: str | None = None  # set when taking over a version from an uncommitted epoch


class OrderRepository:
    """Newest-wins upserts of canonical orders, and reads back."""

    def __init__(
        self,
        settings: Settings,
        *,
        dynamodb: DynamoDBClient | None = None,
        s3: S3Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 8,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        put_threads: int = PUT_THREADS,
    ) -> None:
        self._settings = settings
        self._ddb: DynamoDBClient = dynamodb if dynamodb is not None else client("dynamodb")
        self._s3_client = s3
        self._sleep = sleep
        self._clock = clock
        self._max_attempts = max_attempts
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        if put_threads < 1:
            raise ValueError("put_threads must be at least 1")
        self._threads = put_threads
        self._calls_lock = threading.Lock()
        self.calls = 0  # PutItem calls made (for metrics and tests)
        # The versions returned for export under the open epoch ``_handed_ref``: an equal version
        # stamped with that epoch but not in here was stored by a call of ours whose reply was lost.
        self._handed_ref = ""
        self._handed: set[tuple[str, int]] = set()

    @property
    def _s3(self) -> S3Client:
        if self._s3_client is None:
            self._s3_client = client("s3")
        return self._s3_client

    # ---------------------------------------------------------------- writing

    def write(
        self,
        conn_id: str,
        run_id: str,
        orders: Sequence[Mapping[str, Any]],
        *,
        ledger: ExportLedger | None = None,
    ) -> list[Mapping[str, Any]]:
        """Upsert a page of canonical orders; return the versions to export (in page order).

        A version older than or equal to the stored one is neither written nor returned,
        unless the stored equal version was handed to an export epoch that never committed.
        Duplicate order ids in the page: the newest (the later one on a tie) is kept.
        Pass the run's ``ExportWriter`` as ``ledger`` for exactly-once exports.

        If it raises after part of the page was stored, the writer is told
        (``write_failed``) and refuses to checkpoint or finish: end the invocation without a
        checkpoint and let the message be retried; the retry exports those versions.
        """
        if not orders:
            return []
        if ledger is None:
            ledger = _RunLevelLedger(run_id, RunLedger(self._settings, s3=self._s3, dynamodb=self._ddb))
        ref = ledger.write_ref
        newest: dict[str, _Entry] = {}
        for order in orders:
            oid = str(order["order_id"])
            try:
                ms = modified_ms(str(order["modified_at"]))
            except ExportError as exc:
                raise StoreError(f"order {oid[:64]}: {exc}") from exc
            prev = newest.get(oid)
            if prev is None or ms >= prev.ms:
                newest[oid] = _Entry(order=order, order_id=oid, ms=ms, item={}, size=0)
        entries = list(newest.values())
        now = (
            datetime.fromtimestamp(self._clock(), UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )
        for e in entries:
            e.item, e.size = self._item(conn_id, run_id, ref, e, now)

        exported = self._put_all(entries, ledger)
        handed = self._handed_over(ref)
        handed.update((e.order_id, e.ms) for e in entries if e.order_id in exported)
        return [e.order for e in entries if e.order_id in exported]

    def _handed_over(self, ref: str) -> set[tuple[str, int]]:
        if ref != self._handed_ref:
            self._handed_ref, self._handed = ref, set()
        return self._handed

    def _item(self, conn_id: str, run_id: str, ref: str, e: _Entry, now: str) -> tuple[dict[str, Any], int]:
        payload = to_json(e.order)
        size = len(payload.encode())
        item: dict[str, Any] = {
            "connection_id": {"S": conn_id},
            "order_id": {"S": e.order_id},
            "modified_at": {"S": str(e.order["modified_at"])},
            "modified_ms": {"N": str(e.ms)},
            "state": {"S": _state(e.order)},
            "run_id": {"S": run_id},
            "export_ref": {"S": ref},
            "updated_at": {"S": now},
        }
        if size > MAX_INLINE_PAYLOAD:
            key = (
                f"raw/orders/{quote(conn_id.replace('#', '/'), safe='/')}/"
                f"{quote(e.order_id, safe='')}/{e.ms}.json"
            )
            body = payload.encode()
            self._s3.put_object(
                Bucket=self._settings.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ServerSideEncryption="aws:kms",
                SSEKMSKeyId=self._settings.resources.kms_alias,
                BucketKeyEnabled=True,
            )
            item["payload_s3"] = {"S": key}
            size = len(key)
        else:
            item["payload"] = {"S": payload}
        return item, size + ITEM_OVERHEAD

    def _put_params(self, e: _Entry) -> dict[str, Any]:
        put: dict[str, Any] = {
            "TableName": self._settings.orders_table,
            "Item": e.item,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if e.old_ref is None:
            put["ConditionExpression"] = _NEW
            put["ExpressionAttributeNames"] = {"#oid": "order_id", "#m": "modified_ms"}
            put["ExpressionAttributeValues"] = {":m": {"N": str(e.ms)}}
        else:
            put["ConditionExpression"] = _TAKEOVER
            put["ExpressionAttributeNames"] = {"#m": "modified_ms", "#ref": "export_ref"}
            put["ExpressionAttributeValues"] = {":m": {"N": str(e.ms)}, ":oldref": {"S": e.old_ref}}
        return put

    def _backoff(self, attempt: int) -> None:
        delay = min(self._cap, self._base * 2**attempt)
        self._sleep(delay * (0.5 + secrets.randbelow(1000) / 2000))

    def _put_all(self, entries: list[_Entry], ledger: ExportLedger) -> set[str]:
        """Put every entry, ``put_threads`` at a time; the ids stored for export.

        On an error the puts not yet started are skipped, the running ones finish (every
        thread is joined), the ledger is told if any version was stored, and the first
        error (in page order) is raised.
        """
        stop = threading.Event()  # set by the first error: puts not yet started are skipped

        def put_one(e: _Entry) -> bool | None:
            if stop.is_set():
                return None
            try:
                return self._put(e, ledger)
            except BaseException:
                stop.set()
                raise

        futures: list[tuple[_Entry, Future[bool | None]]] = []
        with ThreadPoolExecutor(
            max_workers=min(self._threads, len(entries)), thread_name_prefix="posync-put"
        ) as pool:
            futures = [(e, pool.submit(put_one, e)) for e in entries]
        # Leaving the block joined every thread.
        exported: set[str] = set()
        error: BaseException | None = None
        for e, fut in futures:
            exc = fut.exception()
            if exc is not None:
                error = error or exc
            elif fut.result() is True:
                exported.add(e.order_id)
        if error is not None:
            if exported:
                # Versions are stored with the open epoch but were never handed over: that
                # epoch must not commit (the retried invocation's new epoch exports them).
                failed = getattr(ledger, "write_failed", None)
                if callable(failed):
                    failed()
            raise error
        return exported

    def _put(self, e: _Entry, ledger: ExportLedger) -> bool:
        """One order's conditional put until it is stored (True) or dropped (False)."""
        throttled = 0
        refused = 0
        while True:
            with self._calls_lock:
                self.calls += 1
            try:
                self._ddb.put_item(**self._put_params(e))
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code == "ConditionalCheckFailedException":
                    refused += 1
                    if refused > MAX_SETTLE_ROUNDS:
                        raise StoreError(
                            f"order {e.order_id[:64]}: write did not settle (the item keeps changing)"
                        ) from exc
                    old: Mapping[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
                    if not self._settle(e, old, ledger):
                        return False
                    continue
                if code in RETRYABLE_CALL:
                    throttled += 1
                    if throttled >= self._max_attempts:
                        raise
                    self._backoff(throttled)
                    continue
                if code == "ValidationException":
                    raise StoreError(f"order {e.order_id[:64]} refused: {code}") from exc
                raise
            return True

    def _settle(self, e: _Entry, old: Mapping[str, Any] | None, ledger: ExportLedger) -> bool:
        """A condition failed: decide from the stored version whether to try again (True) or drop."""
        if not old or "modified_ms" not in old:
            e.old_ref = None  # gone meanwhile (or never returned): the plain condition decides
            return True
        old_ms = int(old["modified_ms"]["N"])
        if old_ms > e.ms:
            return False  # stored is newer
        if old_ms < e.ms:
            e.old_ref = None  # changed under us to something older: try the plain write again
            return True
        old_ref = old.get("export_ref", {}).get("S")
        if (
            old_ref is not None
            and old_ref == ledger.write_ref
            and (e.order_id, e.ms) not in self._handed_over(old_ref)
        ):
            e.old_ref = old_ref  # our own write whose reply was lost (committed, then an error): hand it over
            return True
        if old_ref is None or ledger.exported(old_ref):
            return False  # same version, already exported (or in this epoch's open parts)
        e.old_ref = old_ref  # same version, its epoch never committed: take it over
        return True

    # ---------------------------------------------------------------- reading

    def _decode(self, item: Mapping[str, Any]) -> dict[str, Any]:
        if "payload" in item:
            order: dict[str, Any] = json.loads(item["payload"]["S"])
            return order
        body = self._s3.get_object(Bucket=self._settings.bucket, Key=item["payload_s3"]["S"])["Body"].read()
        big: dict[str, Any] = json.loads(body)
        return big

    def get(self, conn_id: str, order_id: str) -> dict[str, Any] | None:
        """The stored (newest) canonical order, or None."""
        reply = self._ddb.get_item(
            TableName=self._settings.orders_table,
            Key={"connection_id": {"S": conn_id}, "order_id": {"S": order_id}},
            ConsistentRead=True,
        )
        item = reply.get("Item")
        return self._decode(item) if item else None

    def stored_version(self, conn_id: str, order_id: str) -> dict[str, str | int] | None:
        """The bookkeeping of the stored version: modified_at, modified_ms, run_id, export_ref."""
        reply = self._ddb.get_item(
            TableName=self._settings.orders_table,
            Key={"connection_id": {"S": conn_id}, "order_id": {"S": order_id}},
            ConsistentRead=True,
            ProjectionExpression="modified_at, modified_ms, run_id, export_ref",
        )
        item = reply.get("Item")
        if not item:
            return None
        return {
            "modified_at": item["modified_at"]["S"],
            "modified_ms": int(item["modified_ms"]["N"]),
            "run_id": item["run_id"]["S"],
            "export_ref": item["export_ref"]["S"],
        }

    def stored(self, conn_id: str, order_ids: Iterable[str], *, with_content: bool) -> dict[str, Stored]:
        """The stored versions of ``order_ids`` (absent ids: not stored), by ``BatchGetItem``
        (100 keys a call, strongly consistent; unprocessed keys asked again with backoff)."""
        out: dict[str, Stored] = {}
        ids = list(dict.fromkeys(order_ids))
        projection = None if with_content else "order_id, modified_ms, #st"
        for i in range(0, len(ids), 100):
            keys: list[dict[str, Any]] = [
                {"connection_id": {"S": conn_id}, "order_id": {"S": oid}} for oid in ids[i : i + 100]
            ]
            attempt = 0
            while keys:
                request: dict[str, Any] = {"Keys": keys, "ConsistentRead": True}
                if projection is not None:
                    request["ProjectionExpression"] = projection
                    request["ExpressionAttributeNames"] = {"#st": "state"}
                reply = self._ddb.batch_get_item(RequestItems={self._settings.orders_table: request})  # type: ignore[dict-item]
                for item in reply.get("Responses", {}).get(self._settings.orders_table, []):
                    oid = item["order_id"]["S"]
                    order = self._decode(item) if with_content else None
                    state = item.get("state", {}).get("S") or (order or {}).get("state")
                    out[oid] = Stored(int(item["modified_ms"]["N"]), state == "deleted", order)
                left: Mapping[str, Any] = reply.get("UnprocessedKeys", {})
                unprocessed: Mapping[str, Any] = left.get(self._settings.orders_table, {})
                keys = list(unprocessed.get("Keys", []))
                if keys:
                    attempt += 1
                    if attempt >= self._max_attempts:
                        raise StoreError("orders read throttled: retries exhausted")
                    self._backoff(attempt)
        return out

    def live_in_window(self, conn_id: str, from_ms: int, to_ms: int) -> Iterator[tuple[str, int]]:
        """(order_id, modified_ms) of the stored orders not deleted whose version is in
        ``[from_ms, to_ms)``: a Query of the connection's partition, filtered (the reconcile
        sweep's list of what should still exist; its read cost is the partition's size)."""
        pages = self._ddb.get_paginator("query").paginate(
            TableName=self._settings.orders_table,
            KeyConditionExpression="connection_id = :c",
            FilterExpression="#m >= :a AND #m < :b AND (attribute_not_exists(#st) OR #st <> :d)",
            ProjectionExpression="order_id, #m",
            ExpressionAttributeNames={"#m": "modified_ms", "#st": "state"},
            ExpressionAttributeValues={
                ":c": {"S": conn_id},
                ":a": {"N": str(from_ms)},
                ":b": {"N": str(to_ms)},
                ":d": {"S": "deleted"},
            },
        )
        for page in pages:
            for item in page.get("Items", []):
                yield item["order_id"]["S"], int(item["modified_ms"]["N"])

    def iter_orders(self, conn_id: str) -> Iterator[dict[str, Any]]:
        """Every stored order of a connection (newest versions), in order_id order."""
        pages = self._ddb.get_paginator("query").paginate(
            TableName=self._settings.orders_table,
            KeyConditionExpression="connection_id = :c",
            ExpressionAttributeValues={":c": {"S": conn_id}},
        )
        for page in pages:
            for item in page.get("Items", []):
                yield self._decode(item)
