"""ConnectionRepository against moto's in-process DynamoDB (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from posync.aws import reset_clients
from posync.config import Settings
from posync.connections import ConnectionRepository
from posync.domain import Connection, ConnectionStatus
from posync.errors import ConnectionNotFound, InvalidInput, StaleWrite
from posync.ports import ConnectionStore
from tests.unit.oauth_fakes import unit_settings

M1, M2, M3 = "AAAAAAAAAAAA1", "AAAAAAAAAAAA2", "AAAAAAAAAAAA3"


def create_tables(settings: Settings) -> None:
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    for spec in settings.resources.tables:
        attrs = {spec.pk: "S"}
        keys = [{"AttributeName": spec.pk, "KeyType": "HASH"}]
        if spec.sk:
            attrs[spec.sk] = "S"
            keys.append({"AttributeName": spec.sk, "KeyType": "RANGE"})
        gsis = []
        for ix in spec.indexes:
            attrs[ix.pk] = "S"
            ix_keys = [{"AttributeName": ix.pk, "KeyType": "HASH"}]
            if ix.sk:
                attrs[ix.sk] = "S"
                ix_keys.append({"AttributeName": ix.sk, "KeyType": "RANGE"})
            gsis.append({"IndexName": ix.name, "KeySchema": ix_keys, "Projection": {"ProjectionType": "ALL"}})
        params: dict[str, object] = {
            "TableName": spec.name,
            "KeySchema": keys,
            "AttributeDefinitions": [{"AttributeName": k, "AttributeType": v} for k, v in attrs.items()],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if gsis:
            params["GlobalSecondaryIndexes"] = gsis
        ddb.create_table(**params)  # type: ignore[arg-type]


@pytest.fixture
def settings() -> Iterator[Settings]:
    with mock_aws():
        reset_clients()
        s = unit_settings()
        create_tables(s)
        yield s
    reset_clients()


@pytest.fixture
def repo(settings: Settings) -> ConnectionRepository:
    return ConnectionRepository(settings)


def connected(merchant: str = M1, ref: str | None = "shop-1") -> Connection:
    return Connection(
        "clover",
        merchant,
        ref=ref,
        connected_at="2026-11-23T18:00:00.000Z",
        access_expires_at=1_800_000_000,
        refresh_expires_at=1_900_000_000,
    )


def test_the_repository_is_the_sync_engines_connection_store(repo: ConnectionRepository) -> None:
    # (checked by mypy: ConnectionRepository satisfies posync.ports.ConnectionStore)
    store: ConnectionStore = repo
    assert store.list_by_status("active") == ([], None)


def test_a_saved_connection_reads_back(repo: ConnectionRepository) -> None:
    # When a merchant connects
    repo.save_connected(connected())
    # Then its record has every field
    got = repo.get("clover", M1)
    assert (got.provider, got.merchant_id, got.status, got.ref) == (
        "clover",
        M1,
        ConnectionStatus.ACTIVE,
        "shop-1",
    )
    assert (got.access_expires_at, got.refresh_expires_at) == (1_800_000_000, 1_900_000_000)
    assert got.cursor == {}
    assert got.connected_at == "2026-11-23T18:00:00.000Z"


def test_an_unknown_connection_raises(repo: ConnectionRepository) -> None:
    with pytest.raises(ConnectionNotFound):
        repo.get("clover", M2)


def test_bad_ids_never_reach_a_key(repo: ConnectionRepository) -> None:
    with pytest.raises(InvalidInput):
        repo.get("clover", "abc#poynt")
    with pytest.raises(InvalidInput):
        repo.set_status("clover#lower-case", "revoked")


def test_reconnecting_keeps_the_cursor_and_reactivates(repo: ConnectionRepository) -> None:
    # Given a connection with a committed cursor that later needed reauthorization
    conn = repo.save_connected(connected())
    repo.commit_cursor(conn, {"modified_ms": 123, "ids_at_T": ["X"]}, {"run_id": "r1"})
    repo.set_status(conn.connection_id, ConnectionStatus.NEEDS_REAUTH, "refresh refused")
    repo.record_error(conn, "boom")
    # When the merchant connects again (without a ref this time)
    again = repo.save_connected(connected(ref=None))
    # Then it is active with the same cursor and ref, and the old error is gone
    assert again.status is ConnectionStatus.ACTIVE
    assert again.cursor == {"modified_ms": 123, "ids_at_T": ["X"]}
    assert again.last_run == {"run_id": "r1"}
    assert again.ref == "shop-1"
    assert again.last_error is None
    assert repo.get("clover", M1).cursor == again.cursor


def test_a_completed_run_clears_the_last_error_and_a_checkpoint_keeps_it(
    repo: ConnectionRepository, settings: Settings
) -> None:
    # Given a connection whose last sync failed
    conn = repo.save_connected(connected())
    repo.record_error(conn, "ProviderError: clover answered 503")
    # When a later run checkpoints, the error is still the latest news
    repo.commit_cursor(conn, {"modified_ms": 5, "run": {}}, {"run_id": "r2", "status": "in_progress"})
    assert repo.get("clover", M1).last_error == "ProviderError: clover answered 503"
    # When that run completes
    repo.commit_cursor(conn, {"modified_ms": 9}, {"run_id": "r2", "status": "completed"})
    # Then the error (and its time) is gone from the record, in the same write
    assert repo.get("clover", M1).last_error is None
    assert conn.last_error is None
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=settings.connections_table, Key={"connection_id": {"S": conn.connection_id}}
    )["Item"]
    assert "last_error" not in item
    assert "last_error_at" not in item


def test_commit_cursor_needs_an_existing_connection(repo: ConnectionRepository) -> None:
    # Given a connection object whose record does not exist (deleted meanwhile)
    ghost = connected(M3)
    # When the sync engine commits a cursor for it
    with pytest.raises(ConnectionNotFound):
        repo.commit_cursor(ghost, {"modified_ms": 1}, {})
    # Then no item was created
    with pytest.raises(ConnectionNotFound):
        repo.get("clover", M3)


def test_list_by_status_pages_through_one_status(repo: ConnectionRepository) -> None:
    # Given three active connections and one needing reauthorization
    for m in (M1, M2, M3):
        repo.save_connected(connected(m))
    repo.save_connected(Connection("poynt", "0b9f1c2e-1111-4222-8333-444455556666"))
    repo.set_status("clover#" + M2, ConnectionStatus.NEEDS_REAUTH, "x")
    # When the dispatcher pages through the active ones two at a time
    seen: list[str] = []
    key = None
    pages = 0
    while True:
        page, key = repo.list_by_status("active", page_size=2, start_key=key)
        seen += [c.connection_id for c in page]
        pages += 1
        if key is None:
            break
    # Then it sees exactly the active ones
    assert sorted(seen) == sorted(
        ["clover#" + M1, "clover#" + M3, "poynt#0b9f1c2e-1111-4222-8333-444455556666"]
    )
    assert pages >= 2
    needs, _ = repo.list_by_status(ConnectionStatus.NEEDS_REAUTH)
    assert [c.merchant_id for c in needs] == [M2]


def test_the_dispatchers_segments_read_the_index_in_parts_and_marks_are_kept(
    repo: ConnectionRepository,
) -> None:
    from posync.dispatcher import SEGMENTS

    # Given active connections of both providers
    ids = ["clover#" + m for m in (M1, "ZZZZZZZZZZZZ1", "0000000000001")]
    ids.append("poynt#f0b9f1c2-1111-4222-8333-444455556666")
    for cid in ids:
        provider, mid = cid.split("#")
        repo.save_connected(Connection(provider, mid))
    # When each segment of the index is read on its own
    seen: list[str] = []
    for id_range in SEGMENTS:
        key = None
        while True:
            page, key = repo.list_by_status("active", page_size=1, start_key=key, id_range=id_range)
            assert all(id_range[0] <= c.connection_id <= id_range[1] for c in page)
            seen += [c.connection_id for c in page]
            if key is None:
                break
    # Then together they saw every connection once
    assert sorted(seen) == sorted(ids)
    # And a dispatcher's queued mark is read back with the connection
    repo.mark_queued(ids[0], "2026-11-23T18:15:00.000Z")
    assert repo.get_by_id(ids[0]).queued_at == "2026-11-23T18:15:00.000Z"
    with pytest.raises(ConnectionNotFound):
        repo.mark_queued("clover#NOSUCHMERCH01", "2026-11-23T18:15:00.000Z")


def test_status_reason_error_and_expiry_are_recorded(repo: ConnectionRepository, settings: Settings) -> None:
    conn = repo.save_connected(connected())
    repo.set_status(conn.connection_id, ConnectionStatus.REVOKED, "app uninstalled")
    repo.record_error(conn, "x" * 2000)
    repo.record_token_expiry(conn.connection_id, 111, None)
    item = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=settings.connections_table, Key={"connection_id": {"S": conn.connection_id}}
    )["Item"]
    assert item["status"]["S"] == "revoked"
    assert item["status_reason"]["S"] == "app uninstalled"
    assert len(item["last_error"]["S"]) == 500
    assert item["access_expires_at"]["N"] == "111"
    assert "refresh_expires_at" not in item
    with pytest.raises(ConnectionNotFound):
        repo.set_status("clover#" + M2, ConnectionStatus.REVOKED)


def test_a_status_write_on_a_stale_grant_is_refused(repo: ConnectionRepository) -> None:
    # Given a worker that read the connection, then the merchant reconnected (a new connected_at)
    old = repo.save_connected(connected())
    repo.save_connected(
        Connection("clover", M1, connected_at="2026-11-24T09:00:00.000Z", access_expires_at=1_800_000_500)
    )
    # When the worker flags the grant it read
    with pytest.raises(StaleWrite):
        repo.set_status(
            old.connection_id,
            ConnectionStatus.NEEDS_REAUTH,
            "refresh refused",
            expected_status=ConnectionStatus.ACTIVE,
            expected_connected_at=old.connected_at,
        )
    # Then the reconnect stands
    assert repo.get_by_id(old.connection_id).status is ConnectionStatus.ACTIVE
    # and so does the expiry copy of the new grant
    with pytest.raises(StaleWrite):
        repo.record_token_expiry(old.connection_id, 1, None, expected_connected_at=old.connected_at)
    assert repo.get_by_id(old.connection_id).access_expires_at == 1_800_000_500


def test_a_refusal_cannot_turn_an_operators_revoked_into_needs_reauth(repo: ConnectionRepository) -> None:
    conn = repo.save_connected(connected())
    repo.set_status(conn.connection_id, ConnectionStatus.REVOKED, "disconnected by an operator")
    with pytest.raises(StaleWrite):
        repo.set_status(
            conn.connection_id,
            ConnectionStatus.NEEDS_REAUTH,
            "refresh refused",
            expected_status=ConnectionStatus.ACTIVE,
            expected_connected_at=conn.connected_at,
        )
    assert repo.get_by_id(conn.connection_id).status is ConnectionStatus.REVOKED
    # A write whose expectations hold goes through; a missing connection is still not found
    repo.set_status(conn.connection_id, ConnectionStatus.ACTIVE, expected_connected_at=conn.connected_at)
    with pytest.raises(ConnectionNotFound):
        repo.set_status("clover#" + M2, ConnectionStatus.REVOKED, expected_status=ConnectionStatus.ACTIVE)
