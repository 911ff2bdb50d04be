"""The S3 export contract against the embedded AWS: parts, manifest, event, and manifested reads."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from posync import aws
from posync.config import Settings
from posync.exports import ExportIntegrityError, ExportWriter, latest, manifest_key, read_manifested
from posync.store import OrderRepository
from tests.integration.canonical_orders import merchant, order


def s3_bytes(settings: Settings, key: str) -> bytes:
    data: bytes = aws.client("s3").get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    return data


@pytest.fixture
def exported_events(settings: Settings) -> Iterator[str]:
    """An SQS queue receiving every OrdersExported event of the stage's bus (rule + target)."""
    sqs, events = aws.client("sqs"), aws.client("events")
    name = f"exported-{secrets.token_hex(4)}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name=name,
        EventBusName=settings.event_bus,
        EventPattern=json.dumps({"source": ["posync"], "detail-type": ["OrdersExported"]}),
    )
    events.put_targets(Rule=name, EventBusName=settings.event_bus, Targets=[{"Id": "q", "Arn": arn}])
    yield url
    events.remove_targets(Rule=name, EventBusName=settings.event_bus, Ids=["q"])
    events.delete_rule(Name=name, EventBusName=settings.event_bus)
    sqs.delete_queue(QueueUrl=url)


def receive_all(url: str, want: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        reply = aws.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        got += [json.loads(m["Body"]) for m in reply.get("Messages", [])]
        if len(got) < want:
            time.sleep(0.05)
    return got


def test_the_manifest_lists_every_part_with_its_checksum_and_count_and_the_event_follows(
    settings: Settings, exported_events: str
) -> None:
    # Given a run over two dates with a malformed order, checkpointed once and then finished
    mid = merchant()
    w = ExportWriter(settings, f"man-{mid.lower()}", "clover", mid)
    orders = [order(mid, f"O{i}", f"2026-09-{20 + i % 2}T08:00:00.{i:03d}Z") for i in range(30)]
    for o in orders[:20]:
        w.add(o)
    w.quarantine({"id": "BROKEN", "total": "abc"}, "total: not an integer")
    w.checkpoint()
    for o in orders[20:]:
        w.add(o)
    # When it finishes
    key = w.finish({"modified_ms": 0}, {"modified_ms": 99}, {"pages": 2})
    # Then the manifest lists every part, each matching the stored bytes and its record count
    manifest = json.loads(s3_bytes(settings, key))
    assert key == manifest_key(w.run_id)
    assert sum(f["records"] for f in manifest["files"]) == 30 == manifest["record_count"]
    assert {f["dt"] for f in manifest["files"]} == {"2026-09-20", "2026-09-21"}
    assert len(manifest["files"]) == 4  # two dates x (checkpoint, finish)
    seen: list[dict[str, Any]] = []
    s3 = aws.client("s3")
    for f in manifest["files"]:
        data = s3_bytes(settings, f["key"])
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (f["sha256"], f["bytes"])
        lines = gzip.decompress(data).decode().splitlines()
        assert len(lines) == f["records"]
        seen += [json.loads(line) for line in lines]
        head = s3.head_object(Bucket=settings.bucket, Key=f["key"], ChecksumMode="ENABLED")
        assert head["ContentEncoding"] == "gzip" and head["ContentType"] == "application/x-ndjson"
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(f["sha256"])).decode()
    assert sorted(seen, key=lambda o: o["order_id"]) == sorted(orders, key=lambda o: o["order_id"])
    q = manifest["quarantine"]
    assert len(q) == 1 and json.loads(s3_bytes(settings, q[0]["key"]))[0]["raw"]["id"] == "BROKEN"
    assert manifest["counts"] == {"pages": 2, "exported": 30, "quarantined": 1}
    # And exactly one OrdersExported event arrived on the bus, naming that manifest
    (event,) = receive_all(exported_events, 1)
    assert event["source"] == "posync" and event["detail-type"] == "OrdersExported"
    assert event["detail"]["manifest_key"] == key
    assert event["detail"]["counts"] == {"orders": 30, "files": 4, "quarantined": 1}


def test_a_reader_never_sees_a_run_in_flight(settings: Settings, exported_events: str) -> None:
    # Given a finished run A and a run B whose parts are uploaded (checkpointed) but not manifested
    mid = merchant()
    repo = OrderRepository(settings)
    conn = f"clover#{mid}"
    a = ExportWriter(settings, f"fa-{mid.lower()}", "clover", mid)
    for o in repo.write(conn, a.run_id, [order(mid, "A1", "2026-09-21T08:00:00.000Z")], ledger=a):
        a.add(o)
    a.finish()
    b = ExportWriter(settings, f"fb-{mid.lower()}", "clover", mid)
    page = [order(mid, "A1", "2026-09-21T09:00:00.000Z"), order(mid, "B1", "2026-09-21T09:00:00.000Z")]
    for o in repo.write(conn, b.run_id, page, ledger=b):
        b.add(o)
    parts = b.checkpoint()
    assert parts and all(aws.client("s3").head_object(Bucket=settings.bucket, Key=p.key) for p in parts)
    # When a consumer reads the manifested exports
    during = list(read_manifested(settings, merchant_id=mid))
    # Then it sees run A only; no event was put for B yet
    assert [(o["order_id"], o["modified_at"]) for o in during] == [("A1", "2026-09-21T08:00:00.000Z")]
    assert len(receive_all(exported_events, 2, timeout_s=0.5)) == 1
    # When B finishes, Then B appears whole, and the latest view holds the newest A1
    b.finish()
    after = list(read_manifested(settings, merchant_id=mid))
    assert len(after) == 3
    assert [(o["order_id"], o["modified_at"]) for o in latest(after)] == [
        ("A1", "2026-09-21T09:00:00.000Z"),
        ("B1", "2026-09-21T09:00:00.000Z"),
    ]


def test_a_part_altered_after_its_manifest_is_refused_by_the_reader(settings: Settings) -> None:
    mid = merchant()
    w = ExportWriter(settings, f"alt-{mid.lower()}", "clover", mid)
    w.add(order(mid, "X", "2026-09-21T08:00:00.000Z"))
    key = w.finish()
    part = json.loads(s3_bytes(settings, key))["files"][0]["key"]
    aws.client("s3").put_object(
        Bucket=settings.bucket,
        Key=part,
        Body=gzip.compress(json.dumps(order(mid, "Y", "2026-09-21T08:00:00.000Z")).encode()),
    )
    with pytest.raises(ExportIntegrityError):
        list(read_manifested(settings, merchant_id=mid))
