"""OrderRepository: the exact DynamoDB calls (botocore Stubber), ALL_OLD handling, retries.

Stubbed repositories put one order at a time (``put_threads=1``: a Stubber answers calls in
the order it was given them); the threaded path runs against moto below and in
tests/integration/test_store.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from posync.config import Settings
from posync.serialized import Serialized
from posync.store import MAX_INLINE_PAYLOAD, MAX_SETTLE_ROUNDS, OrderRepository, StoreError

SETTINGS = Settings.from_env({"POSYNC_STAGE": "unit"})
CONN = "clover#ABCDEFGHIJKLM"
RUN = "run-b"
NOW = 1_790_000_000.0
NOW_ISO = "2026-09-21T14:13:20.000Z"
REF = "run-b/00000-cafe"


class FakeLedger:
    """The export side as the repository sees it: an open epoch and a set of committed ones."""

    def __init__(self, committed: set[str] | None = None) -> None:
        self.write_ref = REF
        self.committed = committed or set()
        self.asked: list[str] = []

    def exported(self, ref: str) -> bool:
        self.asked.append(ref)
        return ref == self.write_ref or ref in self.committed


def order(oid: str, modified_at: str = "2026-09-21T10:00:00.000Z", **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "provider": "clover",
        "merchant_id": "ABCDEFGHIJKLM",
        "order_id": oid,
        "modified_at": modified_at,
        **extra,
    }


def ms(ts: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def put(o: dict[str, Any], *, old_ref: str | None = None, ref: str = REF) -> dict[str, Any]:
    """The PutItem we expect for one order: the full item, the condition, ALL_OLD."""
    item = {
        "connection_id": {"S": CONN},
        "order_id": {"S": o["order_id"]},
        "modified_at": {"S": o["modified_at"]},
        "modified_ms": {"N": str(ms(o["modified_at"]))},
        "state": {"S": "deleted" if o.get("state") == "deleted" else "live"},
        "run_id": {"S": RUN},
        "export_ref": {"S": ref},
        "updated_at": {"S": NOW_ISO},
        "payload": {"S": json.dumps(o, separators=(",", ":"))},
    }
    p: dict[str, Any] = {
        "TableName": SETTINGS.orders_table,
        "Item": item,
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    if old_ref is None:
        p["ConditionExpression"] = "attribute_not_exists(#oid) OR #m < :m"
        p["ExpressionAttributeNames"] = {"#oid": "order_id", "#m": "modified_ms"}
        p["ExpressionAttributeValues"] = {":m": {"N": str(ms(o["modified_at"]))}}
    else:
        p["ConditionExpression"] = "#m = :m AND #ref = :oldref"
        p["ExpressionAttributeNames"] = {"#m": "modified_ms", "#ref": "export_ref"}
        p["ExpressionAttributeValues"] = {":m": {"N": str(ms(o["modified_at"]))}, ":oldref": {"S": old_ref}}
    return p


def stored(o: dict[str, Any], ref: str, modified_at: str | None = None) -> dict[str, Any]:
    m = modified_at or o["modified_at"]
    return {
        "connection_id": {"S": CONN},
        "order_id": {"S": o["order_id"]},
        "modified_at": {"S": m},
        "modified_ms": {"N": str(ms(m))},
        "run_id": {"S": ref.split("/", maxsplit=1)[0]},
        "export_ref": {"S": ref},
    }


def accepted(stub: Stubber, params: dict[str, Any]) -> None:
    stub.add_response("put_item", {}, params)


def refused(stub: Stubber, params: dict[str, Any], item: dict[str, Any] | None) -> None:
    """A failed condition, with the stored item as ALL_OLD returns it (none when it is gone)."""
    fields: dict[str, Any] = {"message": "The conditional request failed"}
    if item is not None:
        fields["Item"] = item
    stub.add_client_error(
        "put_item",
        service_error_code="ConditionalCheckFailedException",
        service_message="The conditional request failed",
        http_status_code=400,
        modeled_fields=fields,
        expected_params=params,
    )


@pytest.fixture
def ddb() -> Iterator[tuple[Any, Stubber]]:
    c = boto3.client("dynamodb", region_name="us-east-1")
    with Stubber(c) as stub:
        yield c, stub
        stub.assert_no_pending_responses()


def repo_for(c: Any, sleeps: list[float] | None = None, s3: Any = None, **kw: Any) -> OrderRepository:
    recorded = sleeps if sleeps is not None else []
    kw.setdefault("put_threads", 1)
    return OrderRepository(SETTINGS, dynamodb=c, s3=s3, sleep=recorded.append, clock=lambda: NOW, **kw)


def test_new_orders_are_written_with_one_conditioned_put_each_and_all_returned(
    ddb: tuple[Any, Stubber],
) -> None:
    # Given three orders the table has never seen
    c, stub = ddb
    orders = [order("A"), order("B"), order("C", "2026-09-21T11:00:00.000Z")]
    for o in orders:
        accepted(stub, put(o))
    # When the page is written
    repo = repo_for(c)
    out = repo.write(CONN, RUN, orders, ledger=FakeLedger())
    # Then each went in one non-transactional put with the newest-wins condition, and all are to export
    assert out == orders
    assert repo.calls == 3


def test_serialized_orders_are_written_as_their_text_and_returned_as_they_came(
    ddb: tuple[Any, Stubber],
) -> None:
    # Given a page of orders serialized once by the sync (one with text that is not ASCII)
    c, stub = ddb
    orders = [order("A", note="crème brûlée"), order("B")]
    page = [Serialized.of(o) for o in orders]
    # whose items are exactly those of the same orders as dicts
    for o in orders:
        expected = put(o)
        expected["Item"]["payload"] = {"S": json.dumps(o, separators=(",", ":"), ensure_ascii=False)}
        accepted(stub, expected)
    # When the page is written
    out = repo_for(c).write(CONN, RUN, page, ledger=FakeLedger())
    # Then the serialized orders themselves go on to the exports (not parsed back)
    assert all(a is b for a, b in zip(out, page, strict=True))


def test_duplicate_ids_in_a_page_keep_the_newest(ddb: tuple[Any, Stubber]) -> None:
    # Given a page where order A appears twice, the later copy being older
    c, stub = ddb
    newer = order("A", "2026-09-21T12:00:00.000Z", note="newer")
    older = order("A", "2026-09-21T09:00:00.000Z", note="older")
    accepted(stub, put(newer))
    # When it is written
    out = repo_for(c).write(CONN, RUN, [newer, older], ledger=FakeLedger())
    # Then only the newest version went to DynamoDB and to the export
    assert out == [newer]


def test_one_stored_version_refuses_only_its_own_order(ddb: tuple[Any, Stubber]) -> None:
    # Given: A is new; B is stored newer; C is stored at the same version by a committed epoch; D is new
    c, stub = ddb
    a, b, cc, d = order("A"), order("B"), order("C"), order("D")
    ledger = FakeLedger(committed={"run-a/00000-beef"})
    accepted(stub, put(a))
    refused(stub, put(b), stored(b, "run-a/00000-beef", "2026-09-21T10:00:00.001Z"))
    refused(stub, put(cc), stored(cc, "run-a/00000-beef"))
    accepted(stub, put(d))
    # When the page is written
    repo = repo_for(c)
    out = repo.write(CONN, RUN, [a, b, cc, d], ledger=ledger)
    # Then A and D are stored and exported with one put each: B's and C's refusals cancelled nothing
    # and nothing was sent twice
    assert out == [a, d]
    assert repo.calls == 4
    assert ledger.asked == ["run-a/00000-beef"]  # B (stored newer) needed no ledger question


def test_equal_version_from_an_uncommitted_epoch_is_taken_over_and_exported(ddb: tuple[Any, Stubber]) -> None:
    # Given order A stored at this very version by run-a's epoch that never committed (crash)
    c, stub = ddb
    a, b = order("A"), order("B")
    crashed = "run-a/00001-dead"
    refused(stub, put(a), stored(a, crashed))
    # Then the retry conditions A on exactly that stored version and epoch
    accepted(stub, put(a, old_ref=crashed))
    accepted(stub, put(b))
    out = repo_for(c).write(CONN, RUN, [a, b], ledger=FakeLedger(committed={"run-a/00000-beef"}))
    assert out == [a, b]


def test_equal_version_stamped_with_the_open_epoch_is_not_exported_twice(ddb: tuple[Any, Stubber]) -> None:
    # Given A was written and returned earlier in this same epoch (a lookback overlap inside one invocation)
    c, stub = ddb
    a = order("A")
    accepted(stub, put(a))
    repo = repo_for(c)
    ledger = FakeLedger()
    assert repo.write(CONN, RUN, [a], ledger=ledger) == [a]
    # When the same version comes again
    refused(stub, put(a), stored(a, REF))
    # Then it is not returned again
    assert repo.write(CONN, RUN, [a], ledger=ledger) == []
    assert repo.calls == 2


def test_a_write_committed_whose_reply_was_lost_is_still_returned_for_export(
    ddb: tuple[Any, Stubber],
) -> None:
    # Given DynamoDB stores A but the reply is lost (a 500 after the write), so the retry
    # finds A already stored at this version under the open epoch
    c, stub = ddb
    a, b = order("A"), order("B")
    stub.add_client_error(
        "put_item", service_error_code="InternalServerError", http_status_code=500, expected_params=put(a)
    )
    refused(stub, put(a), stored(a, REF))
    # Then it is taken over (conditioned on this epoch) and returned: it must reach the export
    accepted(stub, put(a, old_ref=REF))
    accepted(stub, put(b))
    repo = repo_for(c)
    assert repo.write(CONN, RUN, [a, b], ledger=FakeLedger()) == [a, b]
    assert repo.calls == 4


def test_a_stored_version_older_than_ours_after_a_race_is_retried_with_the_plain_condition(
    ddb: tuple[Any, Stubber],
) -> None:
    c, stub = ddb
    a = order("A")
    refused(stub, put(a), stored(a, "run-x/00000-0000", "2026-09-21T09:00:00.000Z"))
    accepted(stub, put(a))
    assert repo_for(c).write(CONN, RUN, [a], ledger=FakeLedger()) == [a]


def test_a_takeover_refused_because_the_item_vanished_goes_back_to_the_plain_condition(
    ddb: tuple[Any, Stubber],
) -> None:
    # Given A's uncommitted version is taken over, but the item was deleted meanwhile (no ALL_OLD item)
    c, stub = ddb
    a = order("A")
    crashed = "run-a/00001-dead"
    refused(stub, put(a), stored(a, crashed))
    refused(stub, put(a, old_ref=crashed), None)
    accepted(stub, put(a))
    assert repo_for(c).write(CONN, RUN, [a], ledger=FakeLedger()) == [a]


def test_an_item_that_keeps_changing_under_us_gives_up_with_a_clear_error(ddb: tuple[Any, Stubber]) -> None:
    c, stub = ddb
    a = order("A")
    for i in range(MAX_SETTLE_ROUNDS + 1):
        refused(stub, put(a), stored(a, f"run-x/{i:05d}-0000", "2026-09-21T09:00:00.000Z"))
    with pytest.raises(StoreError, match="did not settle"):
        repo_for(c).write(CONN, RUN, [a], ledger=FakeLedger())


def test_throttling_is_retried_with_capped_backoff(ddb: tuple[Any, Stubber]) -> None:
    # Given DynamoDB throttles the call twice (real error codes), then accepts it
    c, stub = ddb
    a = order("A")
    for code in ("ThrottlingException", "ProvisionedThroughputExceededException"):
        stub.add_client_error(
            "put_item", service_error_code=code, http_status_code=400, expected_params=put(a)
        )
    accepted(stub, put(a))
    sleeps: list[float] = []
    # When the page is written
    out = repo_for(c, sleeps, backoff_base_s=0.1, backoff_cap_s=0.3).write(
        CONN, RUN, [a], ledger=FakeLedger()
    )
    # Then it got through after two waits that grow but stay under the cap
    assert out == [a]
    assert len(sleeps) == 2
    assert all(0 < s <= 0.3 for s in sleeps)
    assert sleeps[1] >= 0.1  # attempt 2: base * 4 = 0.4 capped to 0.3, jittered to >= half


def test_throttling_that_never_ends_raises_the_client_error(ddb: tuple[Any, Stubber]) -> None:
    c, stub = ddb
    a = order("A")
    for _ in range(3):
        stub.add_client_error("put_item", service_error_code="ThrottlingException", http_status_code=400)
    sleeps: list[float] = []
    with pytest.raises(ClientError) as info:
        repo_for(c, sleeps, max_attempts=3).write(CONN, RUN, [a], ledger=FakeLedger())
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    assert len(sleeps) == 2


def test_a_validation_error_is_not_retried(ddb: tuple[Any, Stubber]) -> None:
    c, stub = ddb
    a = order("A")
    stub.add_client_error("put_item", service_error_code="ValidationException", http_status_code=400)
    with pytest.raises(StoreError, match="ValidationException"):
        repo_for(c).write(CONN, RUN, [a], ledger=FakeLedger())


def test_other_client_errors_propagate_untouched(ddb: tuple[Any, Stubber]) -> None:
    c, stub = ddb
    stub.add_client_error("put_item", service_error_code="ResourceNotFoundException")
    with pytest.raises(ClientError):
        repo_for(c).write(CONN, RUN, [order("A")], ledger=FakeLedger())


class FailingLedger(FakeLedger):
    failed = 0

    def write_failed(self) -> None:
        self.failed += 1


def test_a_failure_after_part_of_the_page_was_stored_tells_the_ledger(ddb: tuple[Any, Stubber]) -> None:
    # Given a page of 3: the first put goes through, the second is refused by an error
    c, stub = ddb
    orders = [order(f"O{i:03d}") for i in range(3)]
    accepted(stub, put(orders[0]))
    stub.add_client_error("put_item", service_error_code="ResourceNotFoundException")
    ledger = FailingLedger()
    # When it is written, Then the error surfaces, the third put is never sent, and the ledger
    # learns its epoch holds unreturned versions
    with pytest.raises(ClientError):
        repo_for(c).write(CONN, RUN, orders, ledger=ledger)
    assert ledger.failed == 1


def test_a_failure_before_anything_was_stored_leaves_the_ledger_alone(ddb: tuple[Any, Stubber]) -> None:
    c, stub = ddb
    stub.add_client_error("put_item", service_error_code="ResourceNotFoundException")
    ledger = FailingLedger()
    with pytest.raises(ClientError):
        repo_for(c).write(CONN, RUN, [order("A")], ledger=ledger)
    assert ledger.failed == 0


def test_an_order_without_a_valid_modified_at_is_refused_before_any_call(ddb: tuple[Any, Stubber]) -> None:
    c, _ = ddb
    with pytest.raises(StoreError, match="order A"):
        repo_for(c).write(CONN, RUN, [order("A", "yesterday")], ledger=FakeLedger())


def test_an_order_over_350_kb_goes_to_s3_raw_with_a_pointer(ddb: tuple[Any, Stubber]) -> None:
    # Given an order whose JSON is bigger than a DynamoDB item should be
    c, stub = ddb
    big = order("BIG", note="x" * (MAX_INLINE_PAYLOAD + 10))
    s3 = boto3.client("s3", region_name="us-east-1")
    key = f"raw/orders/clover/ABCDEFGHIJKLM/BIG/{ms(big['modified_at'])}.json"
    expected = put(big)
    del expected["Item"]["payload"]
    expected["Item"]["payload_s3"] = {"S": key}
    with Stubber(s3) as s3stub:
        s3stub.add_response(
            "put_object",
            {},
            {
                "Bucket": SETTINGS.bucket,
                "Key": key,
                "Body": ANY,
                "ContentType": "application/json",
                "ServerSideEncryption": "aws:kms",
                "SSEKMSKeyId": SETTINGS.resources.kms_alias,
                "BucketKeyEnabled": True,
            },
        )
        accepted(stub, expected)
        # When it is written
        out = repo_for(c, s3=s3).write(CONN, RUN, [big], ledger=FakeLedger())
        # Then the payload went to S3 first and the item only points at it
        s3stub.assert_no_pending_responses()
    assert out == [big]


def test_without_a_writer_a_run_counts_as_exported_once_it_is_finished(ddb: tuple[Any, Stubber]) -> None:
    # Given versions stored by runs used without a writer (run-level references):
    # run-a is finished (its header says so), run-y's header expired but its manifest is in S3,
    # run-z never finished (no header; S3 answers 403, as it does without s3:ListBucket)
    c, stub = ddb
    a, y, z = order("A"), order("Y"), order("Z")
    s3 = boto3.client("s3", region_name="us-east-1")

    def header(run: str, item: dict[str, Any] | None) -> None:
        stub.add_response(
            "get_item",
            {"Item": item} if item else {},
            {
                "TableName": SETTINGS.control_table,
                "Key": {"pk": {"S": f"exportrun#{run}"}},
                "ConsistentRead": True,
            },
        )

    refused(stub, put(a, ref=RUN), stored(a, "run-a"))
    header("run-a", {"pk": {"S": "exportrun#run-a"}, "manifest_key": {"S": "k"}, "epochs": {"SS": ["run-a"]}})
    refused(stub, put(y, ref=RUN), stored(y, "run-y"))
    header("run-y", None)
    refused(stub, put(z, ref=RUN), stored(z, "run-z"))
    header("run-z", None)
    accepted(stub, put(z, old_ref="run-z", ref=RUN))
    with Stubber(s3) as s3stub:
        s3stub.add_response(
            "get_object",
            {"Body": _body(b'{"epochs":["run-y"]}')},
            {"Bucket": SETTINGS.bucket, "Key": "exports/manifests/v1/run-y.json"},
        )
        s3stub.add_client_error(
            "get_object",
            service_error_code="AccessDenied",
            http_status_code=403,
            expected_params={"Bucket": SETTINGS.bucket, "Key": "exports/manifests/v1/run-z.json"},
        )
        # When the same versions are read again by run-b without a writer
        out = repo_for(c, s3=s3).write(CONN, RUN, [a, y, z])
        s3stub.assert_no_pending_responses()
    # Then A and Y (finished runs) are dropped and Z (never finished) is exported again
    assert out == [z]


def _body(data: bytes) -> Any:
    import io

    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))
