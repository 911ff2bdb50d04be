"""Faults in AWS: DynamoDB throttling, S3 and EventBridge errors, SQS sends refused, replies lost.

The faults are botocore ``before-call`` / ``after-call`` hooks on posync's own clients
(see the conftest): botocore raises its modeled ``ClientError`` for the injected answer,
exactly as for AWS's. "Reply lost" faults let the call succeed and then fail it: the write
is durable but posync was told it failed (a timeout after commit, a dropped connection).
"""

from __future__ import annotations

import pytest

from tests.chaos.conftest import Chaos, Fault

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

TWI = "TransactWriteItems"  # the checkpoint record
PUT = "PutItem"  # an order's conditional put
THROTTLED = "ThrottlingException"


def test_dynamodb_throttling_is_retried_or_redelivered_and_loses_nothing(chaos: Chaos) -> None:
    # Given DynamoDB throttling the order puts (and refusing two with no stored item to show, as
    # for an item deleted meanwhile), the checkpoint record, the cursor commit and the app's
    # concurrency lease
    chaos.merchant("clover", orders=60)
    chaos.merchant("poynt", orders=60)
    add = chaos.faults.add
    add(Fault("ddb_throttle", "dynamodb", PUT, target="-orders", error=THROTTLED))
    add(
        Fault(
            "ddb_throttle",
            "dynamodb",
            PUT,
            target="-orders",
            error="ConditionalCheckFailedException",
            skip=2,
            times=2,
        )
    )
    add(
        Fault(
            "ddb_throttle",
            "dynamodb",
            "TransactWriteItems",
            target="-control",
            error="ProvisionedThroughputExceededException",
        )
    )
    add(Fault("ddb_throttle", "dynamodb", "UpdateItem", target="-connections", error=THROTTLED))
    add(Fault("ddb_throttle", "dynamodb", "UpdateItem", target="-control", error=THROTTLED, skip=3))
    # When the backfills run
    chaos.drain()
    # Then every fault struck, and the cursors claim only what is durable
    assert chaos.faults.fired()["ddb_throttle"] == 6
    for p, m in chaos.merchants:
        chaos.assert_cursor_covers(p, m)
    chaos.settle()
    chaos.verify()


def test_an_order_write_whose_reply_is_lost_is_still_exported_once(chaos: Chaos) -> None:
    # Given DynamoDB storing an order but the reply never reaching posync (botocore and posync
    # then send the same put again, and find the version stored under their own epoch)
    m = chaos.merchant("clover", orders=60)
    chaos.faults.add(
        Fault(
            "ddb_reply_lost",
            "dynamodb",
            PUT,
            when="after",
            target="-orders",
            error="InternalServerError",
            status=500,
            skip=1,
        )
    )
    # When the backfill runs
    chaos.drain()
    assert chaos.faults.fired()["ddb_reply_lost"] == 1
    chaos.assert_cursor_covers("clover", m)
    # Then, once the schedule has run again, every version stored is in the exports, once
    chaos.settle()
    chaos.verify()


def test_s3_failures_on_parts_and_manifests_are_redelivered_and_lose_nothing(chaos: Chaos) -> None:
    # Given S3 failing export part uploads (500, 503), a manifest upload, and losing the reply
    # of a part upload that did succeed
    chaos.merchant("clover", orders=60)
    chaos.merchant("poynt", orders=60)
    add = chaos.faults.add
    add(Fault("s3_failure", "s3", "PutObject", target="/exports/orders/", error="InternalError", status=500))
    add(
        Fault(
            "s3_failure",
            "s3",
            "PutObject",
            target="/exports/orders/",
            error="ServiceUnavailable",
            status=503,
            skip=1,
        )
    )
    add(
        Fault(
            "s3_failure",
            "s3",
            "PutObject",
            target="/exports/manifests/",
            error="ServiceUnavailable",
            status=503,
        )
    )
    add(
        Fault(
            "s3_reply_lost",
            "s3",
            "PutObject",
            when="after",
            target="/exports/orders/",
            error="InternalError",
            status=500,
            skip=4,
        )
    )
    # When the backfills run
    report = chaos.drain()
    # Then every fault struck and cost a redelivery, not an order
    fired = chaos.faults.fired()
    assert (fired["s3_failure"], fired["s3_reply_lost"]) == (3, 1)
    assert report.failures >= 4
    for p, m in chaos.merchants:
        chaos.assert_cursor_covers(p, m)
    chaos.settle()
    chaos.verify()


def test_refused_continuations_and_a_lost_event_lose_no_message(chaos: Chaos) -> None:
    # Given runs long enough to continue in new messages (invocations of 2 s at 60 ms a call),
    # an SQS that refuses one continuation and loses the reply of another it did enqueue, and
    # EventBridge failing the first OrdersExported event
    chaos.merchant("clover", orders=80)
    chaos.merchant("poynt", orders=80)
    for p in ("clover", "poynt"):
        chaos.sandbox(p).knobs.latency_ms = 60
    add = chaos.faults.add
    add(Fault("sqs_send_failure", "sqs", "SendMessage", target="-sync.fifo", error="InternalError"))
    add(
        Fault(
            "sqs_send_reply_lost",
            "sqs",
            "SendMessage",
            when="after",
            target="-sync.fifo",
            error="ServiceUnavailable",
            status=503,
        )
    )
    add(Fault("events_failure", "events", "PutEvents", error="InternalException", status=500))
    # When the backfills run
    chaos.drain(worker_timeout_s=2.0)
    # Then the faults struck; the runs went on from their committed progress
    fired = chaos.faults.fired()
    assert fired["sqs_send_failure"] == 1
    assert fired["sqs_send_reply_lost"] == 1
    assert fired["events_failure"] == 1
    for p, m in chaos.merchants:
        chaos.assert_cursor_covers(p, m)
    chaos.settle()
    chaos.verify()
