"""The connections table: one item per (provider, merchant) connection.

Item layout (pk ``connection_id`` = ``provider#merchant_id``; GSI ``by-status`` on
``status``): ``provider``, ``merchant_id``, ``status``, ``status_reason``, ``region``,
``ref``, ``connected_at``, ``auth`` (``oauth`` | ``app_installed``), ``access_expires_at`` /
``refresh_expires_at`` (Unix seconds), ``cursor`` and ``last_run`` (JSON strings: the sync
engine owns their content), ``last_error`` / ``last_error_at``, ``queued_at`` (when the
dispatcher last queued a sync: ``posync.schedule``) and ``updated_at``. Tokens are never
stored here (they live in Secrets Manager).

The ``by-status`` index is expected to project all attributes (the CDK default and
what the local runtime provisions); ``list_by_status`` falls back to a consistent
``get`` for any item the index returns without its ``merchant_id``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import Connection, ConnectionStatus, check_merchant_id, check_provider, connection_id
from posync.errors import ConnectionNotFound, InvalidInput, StaleWrite

STATUS_INDEX = "by-status"
MAX_ERROR_CHARS = 500

_ser = TypeSerializer()
_de = TypeDeserializer()


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _split_id(conn_id: str) -> tuple[str, str]:
    provider, sep, merchant_id = conn_id.partition("#")
    if not sep:
        raise InvalidInput("not a connection id")
    return check_provider(provider), check_merchant_id(provider, merchant_id)


def _json_attr(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return dict(value) if isinstance(value, dict) else {}


def _int_or_none(raw: Any) -> int | None:
    return None if raw is None else int(raw)


def connection_from_item(item: dict[str, Any]) -> Connection:
    """A ``Connection`` from a low-level DynamoDB item (``{"attr": {"S": ...}}``)."""
    data = {k: _de.deserialize(v) for k, v in item.items()}
    return Connection(
        provider=str(data["provider"]),
        merchant_id=str(data["merchant_id"]),
        status=ConnectionStatus(str(data.get("status", ConnectionStatus.ACTIVE))),
        region=str(data.get("region", "sandbox")),
        ref=data.get("ref"),
        connected_at=data.get("connected_at"),
        access_expires_at=_int_or_none(data.get("access_expires_at")),
        refresh_expires_at=_int_or_none(data.get("refresh_expires_at")),
        cursor=_json_attr(data.get("cursor")),
        last_run=_json_attr(data.get("last_run")),
        last_error=data.get("last_error"),
        queued_at=data.get("queued_at"),
        auth=str(data.get("auth") or "oauth"),
    )


class _Update:
    """A small UpdateExpression builder (SET / REMOVE with placeholder names and values)."""

    def __init__(self) -> None:
        self.sets: list[str] = []
        self.removes: list[str] = []
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def set(self, attr: str, value: Any) -> _Update:
        i = len(self.names)
        self.names[f"#a{i}"] = attr
        self.values[f":v{i}"] = _ser.serialize(value)
        self.sets.append(f"#a{i} = :v{i}")
        return self

    def remove(self, attr: str) -> _Update:
        i = len(self.names)
        self.names[f"#a{i}"] = attr
        self.removes.append(f"#a{i}")
        return self

    def expression(self) -> str:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        return " ".join(parts)


class ConnectionRepository:
    """Connections on DynamoDB (``settings.connections_table``).

    Every method validates provider and merchant id against ``posync.domain``'s strict
    patterns before they reach a key. Writes that must not resurrect a deleted item
    (``commit_cursor``, ``set_status``, ``record_*``) are conditional on the item existing
    and raise ``ConnectionNotFound`` otherwise; status and expiry writes can also be made
    conditional on the status and ``connected_at`` (the grant generation) the writer read.
    """

    def __init__(self, settings: Settings, now: Callable[[], str] = utc_now_iso) -> None:
        self._table = settings.connections_table
        self._now = now

    @staticmethod
    def _ddb() -> Any:
        return client("dynamodb")

    @staticmethod
    def _key(conn_id: str) -> dict[str, Any]:
        _split_id(conn_id)
        return {"connection_id": {"S": conn_id}}

    # -- reads ---------------------------------------------------------------------------

    def get(self, provider: str, merchant_id: str) -> Connection:
        return self.get_by_id(connection_id(provider, merchant_id))

    def get_by_id(self, conn_id: str) -> Connection:
        reply = self._ddb().get_item(TableName=self._table, Key=self._key(conn_id), ConsistentRead=True)
        item = reply.get("Item")
        if not item:
            raise ConnectionNotFound(f"no connection {conn_id}")
        return connection_from_item(item)

    def list_by_status(
        self,
        status: ConnectionStatus | str,
        page_size: int = 100,
        start_key: dict[str, Any] | None = None,
        id_range: tuple[str, str] | None = None,
    ) -> tuple[list[Connection], dict[str, Any] | None]:
        """One page of connections in ``status``; pass the returned key back to go on (None: done).

        ``id_range`` (inclusive) keeps to one segment of the index's sort key, so that several
        segments can be read at once (the dispatcher's fan-out).
        """
        status = ConnectionStatus(status)
        params: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#s = :s",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":s": {"S": status.value}},
            "Limit": max(1, min(page_size, 1000)),
        }
        if id_range is not None:
            params["KeyConditionExpression"] = "#s = :s AND #id BETWEEN :lo AND :hi"
            params["ExpressionAttributeNames"]["#id"] = "connection_id"
            params["ExpressionAttributeValues"][":lo"] = {"S": id_range[0]}
            params["ExpressionAttributeValues"][":hi"] = {"S": id_range[1]}
        if start_key:
            params["ExclusiveStartKey"] = start_key
        reply = self._ddb().query(**params)
        conns: list[Connection] = []
        for item in reply.get("Items", []):
            if "merchant_id" in item and "provider" in item:
                conns.append(connection_from_item(item))
            else:  # index projected keys only: read the item itself
                try:
                    conns.append(self.get_by_id(_de.deserialize(item["connection_id"])))
                except ConnectionNotFound:
                    continue
        next_key: dict[str, Any] | None = reply.get("LastEvaluatedKey") or None
        return conns, next_key

    # -- writes --------------------------------------------------------------------------

    def save_connected(self, conn: Connection) -> Connection:
        """Create or update a connection after a successful consent; an existing cursor is kept.

        Sets status ``active``, region, ``connected_at`` and the token expiries, clears the
        last error and status reason; ``ref`` is only overwritten when the new one is set.
        Returns the stored connection (with its kept cursor).
        """
        conn_id = conn.connection_id
        up = (
            _Update()
            .set("provider", conn.provider)
            .set("merchant_id", conn.merchant_id)
            .set("status", ConnectionStatus.ACTIVE.value)
            .set("region", conn.region)
            .set("connected_at", conn.connected_at or self._now())
            .set("auth", conn.auth)
            .set("updated_at", self._now())
            .remove("last_error")
            .remove("status_reason")
        )
        if conn.ref is not None:
            up.set("ref", conn.ref)
        for attr in ("access_expires_at", "refresh_expires_at"):
            value = getattr(conn, attr)
            if value is None:
                up.remove(attr)
            else:
                up.set(attr, int(value))
        reply = self._ddb().update_item(
            TableName=self._table,
            Key=self._key(conn_id),
            UpdateExpression=up.expression(),
            ExpressionAttributeNames=up.names,
            ExpressionAttributeValues=up.values,
            ReturnValues="ALL_NEW",
        )
        return connection_from_item(reply["Attributes"])

    def _update_existing(
        self,
        conn_id: str,
        up: _Update,
        *,
        expected_status: ConnectionStatus | None = None,
        expected_connected_at: str | None = None,
    ) -> None:
        """The update, on an existing item whose status / ``connected_at`` are still the ones read.

        ``ConnectionNotFound`` when the item is gone, ``StaleWrite`` when an expectation failed.
        """
        up.set("updated_at", self._now())
        up.names["#pk"] = "connection_id"
        condition = ["attribute_exists(#pk)"]
        if expected_status is not None:
            up.names["#xs"] = "status"
            up.values[":xs"] = _ser.serialize(ConnectionStatus(expected_status).value)
            condition.append("#xs = :xs")
        if expected_connected_at is not None:
            up.names["#xc"] = "connected_at"
            up.values[":xc"] = _ser.serialize(expected_connected_at)
            condition.append("#xc = :xc")
        try:
            self._ddb().update_item(
                TableName=self._table,
                Key=self._key(conn_id),
                UpdateExpression=up.expression(),
                ConditionExpression=" AND ".join(condition),
                ExpressionAttributeNames=up.names,
                ExpressionAttributeValues=up.values,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            if len(condition) == 1:
                raise ConnectionNotFound(f"no connection {conn_id}") from exc
            now = self.get_by_id(conn_id)  # ConnectionNotFound when it is gone
            raise StaleWrite(
                f"{conn_id} changed since it was read (now {now.status.value}, connected {now.connected_at})"
            ) from exc

    def set_status(
        self,
        conn_id: str,
        status: ConnectionStatus | str,
        reason: str | None = None,
        *,
        expected_status: ConnectionStatus | None = None,
        expected_connected_at: str | None = None,
    ) -> None:
        """Move a connection to ``status`` with a short human-readable ``reason``.

        With ``expected_status`` / ``expected_connected_at`` the write only lands while the
        connection is still in that status on that grant (``StaleWrite`` otherwise): a worker
        holding a stale grant cannot undo a reconnect or overwrite an operator's ``revoked``.
        """
        up = _Update().set("status", ConnectionStatus(status).value).set("status_changed_at", self._now())
        if reason:
            up.set("status_reason", reason[:MAX_ERROR_CHARS])
        else:
            up.remove("status_reason")
        self._update_existing(
            conn_id, up, expected_status=expected_status, expected_connected_at=expected_connected_at
        )

    def commit_cursor(self, conn: Connection, cursor: dict[str, Any], last_run: dict[str, Any]) -> None:
        """Store the sync position (after the checkpoint it describes is durable).

        A completed run also clears the last sync error (same write): the connection has
        recovered, and ``posync connections show`` should not keep reporting a fixed failure.
        """
        up = (
            _Update()
            .set("cursor", json.dumps(cursor, separators=(",", ":"), sort_keys=True, default=str))
            .set("last_run", json.dumps(last_run, separators=(",", ":"), sort_keys=True, default=str))
        )
        recovered = last_run.get("status") == "completed"
        if recovered:
            up.remove("last_error").remove("last_error_at")
        self._update_existing(conn.connection_id, up)
        conn.cursor = dict(cursor)
        conn.last_run = dict(last_run)
        if recovered:
            conn.last_error = None

    def mark_queued(self, conn_id: str, at: str) -> None:
        """Remember that the dispatcher queued a sync at ``at`` (coalescing: see posync.schedule)."""
        self._update_existing(conn_id, _Update().set("queued_at", at))

    def record_error(self, conn: Connection, message: str) -> None:
        """Remember the last sync error (a short, secret-free reason)."""
        text = message[:MAX_ERROR_CHARS]
        self._update_existing(
            conn.connection_id, _Update().set("last_error", text).set("last_error_at", self._now())
        )
        conn.last_error = text

    def record_token_expiry(
        self,
        conn_id: str,
        access_expires_at: int | None,
        refresh_expires_at: int | None,
        *,
        expected_connected_at: str | None = None,
    ) -> None:
        """Mirror a (refreshed) token pair's expiry times on the record, for operators and alarms
        (only while the record is still on ``expected_connected_at``'s grant, when given)."""
        up = _Update()
        for attr, value in (
            ("access_expires_at", access_expires_at),
            ("refresh_expires_at", refresh_expires_at),
        ):
            if value is None:
                up.remove(attr)
            else:
                up.set(attr, int(value))
        self._update_existing(conn_id, up, expected_connected_at=expected_connected_at)
