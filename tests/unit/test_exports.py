"""ExportWriter, the manifest and the reader, against moto in-process (no socket)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import itertools
import json
import secrets
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from moto import mock_aws

from posync import aws
from posync.config import Settings
from posync.exports import (
    ExportError,
    ExportIntegrityError,
    ExportWriter,
    PartInfo,
    RunLedger,
    iter_manifests,
    latest,
    manifest_key,
    read_manifested,
    run_partition,
    utc_date,
)
from posync.serialized import Serialized
from posync.sync import new_run_id

MID = "ABCDEFGHIJKLM"
NOW = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def order(oid: str, modified_at: str, **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "provider": "clover",
        "merchant_id": MID,
        "order_id": oid,
        "modified_at": modified_at,
        "totals": {"total": 1234},
        **extra,
    }


def provision(s: Settings) -> None:
    """The tables, bucket and bus the writer uses (moto does not check the KMS alias)."""
    ddb = aws.client("dynamodb")
    ddb.create_table(
        TableName=s.control_table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws.client("s3").create_bucket(Bucket=s.bucket)
    aws.client("events").create_event_bus(Name=s.event_bus)


@pytest.fixture(scope="module")
def _moto() -> Iterator[None]:
    """moto in-process for the module; no endpoint from the environment may redirect the clients."""
    with pytest.MonkeyPatch.context() as mp, mock_aws():
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_DYNAMODB"):
            mp.delenv(name, raising=False)
        aws.reset_clients()
        yield
    aws.reset_clients()


_stages = itertools.count()


@pytest.fixture
def settings(_moto: None) -> Settings:
    """A fresh stage per test: its own tables, bucket and bus in the module's moto."""
    s = Settings.from_env({"POSYNC_STAGE": f"ux{next(_stages)}"})
    provision(s)
    return s


class Events:
    """put_event stand-in that records what was put, and whether the manifest existed then."""

    def __init__(self) -> None:
        self.put: list[tuple[str, dict[str, Any]]] = []
        self.manifest_existed: list[bool] = []

    def __call__(self, settings: Settings, detail_type: str, detail: Mapping[str, Any]) -> str:
        try:
            aws.client("s3").head_object(Bucket=settings.bucket, Key=detail["manifest_key"])
            self.manifest_existed.append(True)
        except Exception:
            self.manifest_existed.append(False)
        self.put.append((detail_type, dict(detail)))
        return "event-id"


def writer(s: Settings, run_id: str = "run-1", events: Events | None = None, **kw: Any) -> ExportWriter:
    return ExportWriter(s, run_id, "clover", MID, put_event=events or Events(), clock=lambda: NOW, **kw)


@pytest.fixture
def s3_calls(_moto: None) -> Iterator[Callable[[str], list[dict[str, Any]]]]:
    """Record the params of every call of an S3 operation made through posync's cached client."""
    registered: list[tuple[str, Callable[..., None]]] = []

    def capture(operation: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []

        def hook(params: dict[str, Any], **_: Any) -> None:
            seen.append(dict(params))

        name = f"provide-client-params.s3.{operation}"
        aws.client("s3").meta.events.register(name, hook)
        registered.append((name, hook))
        return seen

    yield capture
    for name, hook in registered:
        aws.client("s3").meta.events.unregister(name, hook)


def get_bytes(s: Settings, key: str) -> bytes:
    body: bytes = aws.client("s3").get_object(Bucket=s.bucket, Key=key)["Body"].read()
    return body


def test_parts_are_gzip_jsonl_per_utc_date_with_checksums_and_kms(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    # Given orders on two UTC dates (one written with a +02:00 offset that is still the 20th in UTC)
    puts = s3_calls("PutObject")
    w = writer(settings)
    a = order("A", "2026-09-20T23:59:59.999Z")
    b = order("B", "2026-09-21T00:00:00.000Z")
    c = order("C", "2026-09-21T01:30:00.000+02:00")
    for o in (a, b, c):
        w.add(o)
    # When the writer checkpoints
    parts = w.checkpoint()
    # Then there is one part per date, numbered in increasing order, with exactly its orders
    assert [(p.dt, p.part, p.records) for p in parts] == [("2026-09-20", 1, 2), ("2026-09-21", 2, 1)]
    lines = gzip.decompress(get_bytes(settings, parts[0].key)).decode().splitlines()
    assert [json.loads(x) for x in lines] == [a, c]
    assert parts[1].key == (
        f"exports/orders/v1/provider=clover/merchant_id={MID}/dt=2026-09-21/{w.run_id}-2.jsonl.gz"
    )
    # And every PUT carried the content headers, SHA-256 and MD5 of the bytes, and SSE-KMS with the alias
    assert len(puts) == 2
    for p, info in zip(puts, parts, strict=True):
        data = get_bytes(settings, info.key)
        assert hashlib.sha256(data).hexdigest() == info.sha256 and len(data) == info.bytes
        assert p["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
        assert p["ContentMD5"] == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert (p["ContentType"], p["ContentEncoding"]) == ("application/x-ndjson", "gzip")
        assert (p["ServerSideEncryption"], p["SSEKMSKeyId"]) == ("aws:kms", settings.resources.kms_alias)
        head = aws.client("s3").head_object(Bucket=settings.bucket, Key=info.key)
        assert head["ServerSideEncryption"] == "aws:kms"


def test_a_serialized_order_is_written_as_the_same_line_as_its_dict(settings: Settings) -> None:
    # Given the same order (text that is not ASCII) added as a dict and serialized once
    a = order("A", "2026-09-20T10:00:00.000Z", note="crème brûlée")
    w = writer(settings)
    w.add(a)
    w.add(Serialized.of(a))
    # When the part goes up
    (part,) = w.checkpoint()
    # Then both lines are the same compact UTF-8 JSON
    lines = gzip.decompress(get_bytes(settings, part.key)).decode().splitlines()
    assert lines == [json.dumps(a, separators=(",", ":"), ensure_ascii=False)] * 2


def test_checkpoint_with_nothing_open_uploads_nothing(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    puts = s3_calls("PutObject")
    w = writer(settings)
    assert w.checkpoint() == []
    w.add(order("A", "2026-09-21T10:00:00.000Z"))
    assert len(w.checkpoint()) == 1
    assert w.checkpoint() == []
    assert len(puts) == 1


def test_manifest_lists_every_part_of_every_continuation_then_the_event_follows(settings: Settings) -> None:
    # Given a run whose first invocation checkpointed twice and then stopped (continuation)
    events = Events()
    w1 = writer(settings, events=events)
    w1.add(order("A", "2026-09-20T10:00:00.000Z"))
    first = w1.checkpoint()
    w1.add(order("B", "2026-09-20T11:00:00.000Z"))
    w1.quarantine({"id": "BAD1"}, "payments: amount is not an integer")
    second = w1.checkpoint()
    w1.close()
    # And a continuation of the same run id adds more, with one part left open at the end
    w2 = writer(settings, events=events)
    w2.add(order("C", "2026-09-21T10:00:00.000Z"))
    third = w2.checkpoint()
    w2.add(order("D", "2026-09-21T12:00:00.000Z"))
    # When it finishes
    key = w2.finish({"modified_ms": 1}, {"modified_ms": 2}, {"pages": 3})
    # Then the manifest lists all four parts (distinct, increasing part numbers) with counts and checksums
    assert key == manifest_key("run-1")
    manifest = json.loads(get_bytes(settings, key))
    files = [PartInfo.from_dict(f) for f in manifest["files"]]
    assert [f.records for f in files] == [1, 1, 1, 1]
    assert set(first + second + third) <= set(files)
    assert len({f.part for f in files}) == 4 and len({f.key for f in files}) == 4
    for f in files:
        assert hashlib.sha256(get_bytes(settings, f.key)).hexdigest() == f.sha256
    assert manifest["manifest_version"] == 1 and manifest["schema_version"] == 1
    assert (manifest["provider"], manifest["merchant_id"], manifest["run_id"]) == ("clover", MID, "run-1")
    assert manifest["cursor"] == {"from": {"modified_ms": 1}, "to": {"modified_ms": 2}}
    assert manifest["counts"] == {"pages": 3, "exported": 4, "quarantined": 1}
    assert len(manifest["quarantine"]) == 1 and manifest["quarantine"][0]["records"] == 1
    assert manifest["started_at"] <= manifest["finished_at"]
    # And the event came once, after the manifest existed, with the run's counts
    assert events.manifest_existed == [True]
    ((detail_type, detail),) = events.put
    assert detail_type == "OrdersExported"
    assert detail["manifest_key"] == key and detail["run_id"] == "run-1"
    assert detail["counts"] == {"orders": 4, "files": 4, "quarantined": 1}


def test_a_run_paused_past_the_record_ttl_still_finishes_with_every_part(settings: Settings) -> None:
    from posync.exports import RUN_RECORD_TTL_S

    ddb = aws.client("dynamodb")

    def record(pk: str) -> dict[str, Any]:
        item: dict[str, Any] = ddb.get_item(
            TableName=settings.control_table, Key={"pk": {"S": pk}}, ConsistentRead=True
        )["Item"]
        return item

    # Given a run that checkpointed twice and then paused (its connection needs reauthorization)
    w1 = writer(settings, run_id="run-paused")
    w1.add(order("A", "2026-09-20T10:00:00.000Z"))
    w1.checkpoint()
    w1.add(order("B", "2026-09-20T11:00:00.000Z"))
    w1.checkpoint()
    w1.close()
    # Then nothing of the run in progress can expire (DynamoDB's TTL would delete it)
    for pk in ("exportrun#run-paused", "exportrun#run-paused#00000", "exportrun#run-paused#00001"):
        assert "expires_at" not in record(pk), pk
    # When it resumes 200 days later and finishes
    later = NOW + 200 * 86400
    w2 = ExportWriter(settings, "run-paused", "clover", MID, put_event=Events(), clock=lambda: later)
    w2.add(order("C", "2026-09-21T10:00:00.000Z"))
    key = w2.finish()
    # Then its manifest lists every part, and only now do its records expire, after the TTL
    manifest = json.loads(get_bytes(settings, key))
    assert sum(f["records"] for f in manifest["files"]) == 3
    for pk in ("exportrun#run-paused", "exportrun#run-paused#00000", "exportrun#run-paused#00001"):
        assert int(record(pk)["expires_at"]["N"]) == int(later) + RUN_RECORD_TTL_S, pk


def test_quarantine_is_one_put_per_date_with_reasons(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    puts = s3_calls("PutObject")
    w = writer(settings)
    for i in range(5):
        w.quarantine({"id": f"BAD{i}", "total": "12.50"}, f"total: not an integer ({i})")
    w.checkpoint()
    assert len(puts) == 1
    key = puts[0]["Key"]
    assert key == f"quarantine/provider=clover/merchant_id={MID}/dt=2026-09-21/run-1-1.json"
    doc = json.loads(get_bytes(settings, key))
    assert [d["raw"]["id"] for d in doc] == [f"BAD{i}" for i in range(5)]
    assert doc[3]["reason"] == "total: not an integer (3)"
    assert w.records_quarantined == 5


def test_a_part_past_the_size_threshold_is_uploaded_early_and_still_manifested(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    # Given a tiny part size limit
    puts = s3_calls("PutObject")
    w = writer(settings, max_part_bytes=4096)
    # When many orders that do not compress well land on one date (zlib holds some tens of KB
    # before it emits a block: enough orders for several)
    for i in range(600):
        w.add(order(f"O{i}", "2026-09-21T10:00:00.000Z", note=secrets.token_hex(200)))
    # Then parts went up before any checkpoint, and the writer asks for one
    early = len(puts)
    assert early >= 2
    assert w.should_checkpoint
    key = w.finish()
    manifest = json.loads(get_bytes(settings, key))
    assert sum(f["records"] for f in manifest["files"]) == 600
    assert len(manifest["files"]) >= early


def test_a_second_finisher_never_overwrites_the_manifest_and_goes_out_as_the_next_rollover(
    settings: Settings,
) -> None:
    # Given two writers on one run (or one whose predecessor died between manifest and record)
    events = Events()
    w1, w2 = writer(settings, events=events), writer(settings, events=events)
    w1.add(order("A", "2026-09-21T10:00:00.000Z"))
    w2.add(order("B", "2026-09-21T10:00:00.000Z"))
    key = w1.finish()
    before = get_bytes(settings, key)
    # When the second one finishes
    key2 = w2.finish()
    # Then the first manifest is untouched, the second went out as run-1-r1, and both are read once
    assert get_bytes(settings, key) == before
    assert key2 == manifest_key("run-1-r1") and w2.run_id == "run-1-r1"
    assert sorted(o["order_id"] for o in read_manifested(settings)) == ["A", "B"]
    assert [d["manifest_key"] for _, d in events.put][-1] == key2
    # And each writer's epoch counts as exported (no re-export of A or B by a later run)
    later = writer(settings, run_id="run-2")
    assert later.exported(w1.write_ref) and later.exported(w2.write_ref)
    assert not later.exported("run-1/00007-feedface")


def test_a_crash_between_the_manifest_and_its_record_loses_no_event_and_overwrites_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given run-1 wrote its manifest and died before recording it in the control table
    events = Events()
    w1 = writer(settings, events=events)
    w1.add(order("A", "2026-09-21T10:00:00.000Z"))

    def die(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("process killed")

    monkeypatch.setattr(w1, "_mark_finished", die)
    with pytest.raises(RuntimeError):
        w1.finish()
    assert events.put == []  # the event was lost with the process
    first = get_bytes(settings, manifest_key("run-1"))
    # When the redelivered message resumes run-1 (same run id) and finds one more order on the same day
    w2 = writer(settings, events=events)
    assert w2.run_id == "run-1"  # nothing recorded says it finished
    w2.add(order("B", "2026-09-21T11:00:00.000Z"))
    key = w2.finish()
    # Then run-1's manifest and parts are untouched, B went out as run-1-r1, and run-1's event was put
    assert get_bytes(settings, manifest_key("run-1")) == first
    assert key == manifest_key("run-1-r1")
    assert [d["run_id"] for _, d in events.put] == ["run-1", "run-1-r1"]
    assert sorted(o["order_id"] for o in read_manifested(settings)) == ["A", "B"]


def test_a_manifested_epoch_counts_as_exported_even_if_the_header_update_after_it_failed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given run-1 checkpointed once (its header exists), then wrote its manifest and died (or was
    # throttled) before the header said it is finished
    w1 = writer(settings)
    w1.add(order("A", "2026-09-21T10:00:00.000Z"))
    w1.checkpoint()
    w1.add(order("B", "2026-09-21T11:00:00.000Z"))
    open_epoch = w1.write_ref

    def throttled(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("ThrottlingException on UpdateItem")

    monkeypatch.setattr(w1, "_mark_finished", throttled)
    with pytest.raises(RuntimeError):
        w1.finish()
    # When the redelivered run's storage asks whether B's version (stamped with that epoch) is exported
    ledger = RunLedger(settings)
    # Then the manifest in S3 says it is: B must not be exported a second time
    assert ledger.committed(open_epoch)
    assert not ledger.committed(open_epoch.rsplit("-", 1)[0] + "-00000000")
    assert sorted(o["order_id"] for o in read_manifested(settings)) == ["A", "B"]


def test_a_writer_opened_on_an_already_manifested_run_continues_under_a_new_run_id(
    settings: Settings,
) -> None:
    # Given run-1 was manifested (and maybe its event was lost with the process)
    events = Events()
    w1 = writer(settings, events=events)
    w1.add(order("A", "2026-09-21T10:00:00.000Z"))
    w1.finish()
    # When a redelivered message opens a writer on the same run id
    w2 = writer(settings, events=events)
    # Then it goes on as run-1-r1, and run-1's event is put again (at least once)
    assert w2.run_id == "run-1-r1"
    assert [d["run_id"] for _, d in events.put] == ["run-1", "run-1"]
    assert events.put[0] == events.put[1]
    w2.add(order("B", "2026-09-21T11:00:00.000Z"))
    assert w2.finish() == manifest_key("run-1-r1")
    assert [d["run_id"] for _, d in events.put] == ["run-1", "run-1", "run-1-r1"]
    assert sorted(o["order_id"] for o in read_manifested(settings)) == ["A", "B"]


def test_a_finished_writer_refuses_more_orders(settings: Settings) -> None:
    w = writer(settings)
    w.finish()
    with pytest.raises(ExportError):
        w.add(order("A", "2026-09-21T10:00:00.000Z"))


def test_after_a_failed_storage_write_the_writer_refuses_to_commit(settings: Settings) -> None:
    # Given a writer whose open epoch was stamped on versions the repository could not hand over
    w = writer(settings)
    w.add(order("A", "2026-09-21T10:00:00.000Z"))
    w.write_failed()
    # Then nothing can make that epoch count as exported
    for attempt in (w.checkpoint, w.finish, lambda: w.add(order("B", "2026-09-21T10:00:00.000Z"))):
        with pytest.raises(ExportError, match="without a checkpoint"):
            attempt()
    w.close()
    assert list(read_manifested(settings)) == []


def test_the_reader_refuses_a_file_that_does_not_match_its_manifest(settings: Settings) -> None:
    # Given a finished run whose part was later replaced by other bytes
    w = writer(settings)
    w.add(order("A", "2026-09-21T10:00:00.000Z"))
    key = w.finish()
    part = json.loads(get_bytes(settings, key))["files"][0]["key"]
    aws.client("s3").put_object(
        Bucket=settings.bucket, Key=part, Body=gzip.compress(b'{"order_id":"EVIL"}\n')
    )
    # When it is read, Then nothing of it is yielded: the checksum fails first
    got: list[dict[str, Any]] = []
    with pytest.raises(ExportIntegrityError):
        got.extend(read_manifested(settings))
    assert got == []


def test_the_reader_filters_by_since_provider_and_merchant(settings: Settings) -> None:
    w = writer(settings)
    for oid, ts in (
        ("A", "2026-09-19T10:00:00.000Z"),
        ("B", "2026-09-21T09:00:00.000Z"),
        ("C", "2026-09-21T11:00:00.000Z"),
    ):
        w.add(order(oid, ts))
    w.finish()
    other = ExportWriter(
        settings, "run-p", "poynt", "0f0e0d0c-0b0a-4908-8706-050403020100", put_event=Events()
    )
    other.add(order("P1", "2026-09-21T11:00:00.000Z", provider="poynt"))
    other.finish()
    assert sorted(o["order_id"] for o in read_manifested(settings)) == ["A", "B", "C", "P1"]
    assert [
        o["order_id"] for o in read_manifested(settings, since="2026-09-21T10:00:00Z", provider="clover")
    ] == ["C"]
    assert [o["order_id"] for o in read_manifested(settings, since="2026-09-20", merchant_id=MID)] == [
        "B",
        "C",
    ]
    assert list(read_manifested(settings, provider="poynt", merchant_id=MID)) == []


def test_latest_keeps_the_newest_modified_at_per_order() -> None:
    old = order("A", "2026-09-21T10:00:00.000Z", v=1)
    new = order("A", "2026-09-21T10:00:00.001Z", v=2)
    other_merchant = dict(order("A", "2026-09-20T10:00:00.000Z", v=3), merchant_id="ZZZZZZZZZZZZZ")
    assert latest([new, old, other_merchant]) == [new, other_merchant]
    assert latest([old, new]) == [new]


def test_utc_date_uses_the_utc_day_of_offset_times() -> None:
    assert utc_date("2026-09-21T01:30:00.000+02:00") == "2026-09-20"
    assert utc_date("2026-09-21T23:30:00-02:00") == "2026-09-22"
    with pytest.raises(ExportError):
        utc_date("2026-09-21T10:00:00")  # no offset: ambiguous


def test_run_ids_that_could_escape_the_key_layout_are_refused(settings: Settings) -> None:
    for bad in ("../x", "a/b", "", "-lead", "x" * 101):
        with pytest.raises(ExportError):
            writer(settings, run_id=bad)


class _NullS3:
    """Accepts PUTs and forgets them: isolates the writer's own memory."""

    def put_object(self, **kw: Any) -> dict[str, Any]:
        return {}

    def get_object(self, **kw: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "no"}}, "GetObject")


class _NullDdb:
    def get_item(self, **kw: Any) -> dict[str, Any]:
        return {}

    def transact_write_items(self, **kw: Any) -> dict[str, Any]:
        return {}


def test_writer_memory_does_not_grow_with_the_number_of_orders(tmp_path: Any) -> None:
    # Given a writer (opened, nothing written) and one order dict changed in place for every add
    s = Settings.from_env({"POSYNC_STAGE": "unitm"})
    w = ExportWriter(
        s,
        "run-m",
        "clover",
        MID,
        s3=_NullS3(),  # type: ignore[arg-type]
        dynamodb=_NullDdb(),  # type: ignore[arg-type]
        put_event=Events(),
        tmpdir=str(tmp_path),
    )
    w.write_ref  # noqa: B018 - open before measuring
    stamps = [f"2026-09-{d:02d}T10:{m:02d}:00.000Z" for d in range(1, 11) for m in range(60)]
    o = order("O", stamps[0], line_items=[{"sku": "X", "qty": 1}])
    peaks: dict[int, int] = {}
    # When 50,000 orders over ten partitions are added, noting the traced peak at 10,000 and 50,000
    tracemalloc.start()
    try:
        for i in range(50_000):
            o["order_id"] = f"O{i:07d}"
            o["modified_at"] = stamps[i % 600]
            w.add(o)
            if i + 1 in (10_000, 50_000):
                peaks[i + 1] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    w.checkpoint()
    # Then the peak is flat (parts are spooled to temp files), not five times bigger
    assert w.records_added == 50_000
    assert peaks[50_000] <= 1.25 * peaks[10_000] + 256 * 1024, peaks


def test_open_parts_are_capped_and_an_evicted_part_asks_for_no_checkpoint(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    # Given a writer that keeps at most 3 parts open
    puts = s3_calls("PutObject")
    w = writer(settings, max_open_parts=3)
    days = [f"2026-09-{d:02d}T10:00:00.000Z" for d in range(1, 8)]
    # When orders arrive date after date (as a backfill reads them), 7 dates, 3 orders each
    for d, ts in enumerate(days):
        for i in range(3):
            w.add(order(f"O{d}-{i}", ts))
    # Then the least recently written parts went up early, no checkpoint is asked for
    assert len(puts) == 4 and len(w._parts) == 3
    assert not w.should_checkpoint
    # And the manifest lists one part per date with every order, each exactly once
    key = w.finish()
    manifest = json.loads(get_bytes(settings, key))
    assert sorted(f["dt"] for f in manifest["files"]) == [ts[:10] for ts in days]
    assert sum(f["records"] for f in manifest["files"]) == 21
    got = sorted(o["order_id"] for o in read_manifested(settings, provider="clover", merchant_id=MID))
    assert got == sorted(f"O{d}-{i}" for d in range(7) for i in range(3))


def test_a_recently_written_part_is_not_evicted(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    puts = s3_calls("PutObject")
    w = writer(settings, max_open_parts=2)
    w.add(order("A1", "2026-09-01T10:00:00.000Z"))
    w.add(order("B1", "2026-09-02T10:00:00.000Z"))
    w.add(order("A2", "2026-09-01T11:00:00.000Z"))  # A is the most recently written now
    w.add(order("C1", "2026-09-03T10:00:00.000Z"))  # evicts B, not A
    assert [p["Key"].split("/")[-2] for p in puts] == ["dt=2026-09-02"]
    parts = w.checkpoint()
    assert sorted((p.dt, p.records) for p in parts) == [
        ("2026-09-01", 2),
        ("2026-09-02", 1),
        ("2026-09-03", 1),
    ]


def test_a_failed_part_upload_keeps_the_epoch_from_committing(settings: Settings) -> None:
    w = writer(settings, max_open_parts=1)
    w.add(order("A", "2026-09-01T10:00:00.000Z"))
    w._settings = Settings.from_env({"POSYNC_STAGE": "nosuchstage"})  # its bucket does not exist
    with pytest.raises(Exception):  # noqa: B017 - whatever S3 answers
        w.add(order("B", "2026-09-02T10:00:00.000Z"))
    with pytest.raises(ExportError):
        w.checkpoint()


# --------------------------------------------------------------------------- manifest partitions (1.1)

DAY_S = 86_400.0


def posync_run(day: float, provider: str = "clover", merchant_id: str = MID) -> str:
    """A run id as the sync engine makes it, ``day`` days after NOW."""
    return new_run_id(provider, merchant_id, NOW + day * DAY_S)


def put_manifest_doc(s: Settings, run_id: str, provider: str = "clover", merchant_id: str = MID) -> str:
    """A finished run's manifest where the writer puts it (history without the writer's cost)."""
    key = manifest_key(run_id)
    doc = {"manifest_version": 1, "schema_version": 1, "run_id": run_id, "provider": provider}
    doc |= {"merchant_id": merchant_id, "bucket": s.bucket, "record_count": 0, "files": [], "quarantine": []}
    aws.client("s3").put_object(Bucket=s.bucket, Key=key, Body=json.dumps(doc).encode())
    return key


def test_a_posync_run_manifest_lives_in_its_provider_merchant_and_start_date_partition(
    settings: Settings,
) -> None:
    # Given a run id made by the sync engine, and a second finisher of the same run
    run = posync_run(0)
    w1, w2 = writer(settings, run_id=run), writer(settings, run_id=run)
    w1.add(order("A", "2026-09-21T10:00:00.000Z"))
    w2.add(order("B", "2026-09-21T10:00:00.000Z"))
    # When both finish
    key, key2 = w1.finish(), w2.finish()
    # Then the manifest is in the run's partition, the roll-over beside it, each read once
    assert key == f"exports/manifests/v1/provider=clover/merchant_id={MID}/dt=2026-09-21/{run}.json"
    assert key2 == key.replace(".json", "-r1.json") and run_partition(f"{run}-r1") == (
        "clover",
        MID,
        "2026-09-21",
    )
    assert sorted(o["order_id"] for o in read_manifested(settings, provider="clover", merchant_id=MID)) == [
        "A",
        "B",
    ]
    # And the ledger finds the partitioned manifest from an epoch reference alone (no header)
    ledger = RunLedger(settings)
    assert ledger.manifest(run) is not None and ledger.manifest(f"{run}-r1") is not None
    assert ledger.manifest(posync_run(1)) is None


def test_reading_one_merchant_day_costs_that_days_manifests_not_the_history(
    settings: Settings, s3_calls: Callable[[str], list[dict[str, Any]]]
) -> None:
    # Given 3 runs a day for N days for our merchant, as many for another merchant and a Poynt one,
    # and two 1.0 manifests at the old flat key (a consumer's bucket has them)
    poynt = "0f0e0d0c-0b0a-4908-8706-050403020100"
    costs: dict[int, tuple[int, int]] = {}
    ours: dict[float, str] = {}
    written = 0
    for n_days in (3, 40):
        for day in range(written, n_days):
            for hour in range(3):
                t = day + hour / 24
                ours[t] = posync_run(t)
                put_manifest_doc(settings, ours[t])
                other = new_run_id("clover", "ZYXWVUTSRQPON", NOW + t * DAY_S)
                put_manifest_doc(settings, other, merchant_id="ZYXWVUTSRQPON")
                put_manifest_doc(settings, new_run_id("poynt", poynt, NOW + t * DAY_S), "poynt", poynt)
        written = n_days
        if n_days == 3:
            legacy_ours = posync_run(1)
            for legacy_run in (legacy_ours, "run-legacy"):
                key = f"exports/manifests/v1/{legacy_run}.json"
                doc = {"manifest_version": 1, "run_id": legacy_run, "provider": "clover", "merchant_id": MID}
                aws.client("s3").put_object(Bucket=settings.bucket, Key=key, Body=json.dumps(doc).encode())
        # When one merchant-day is read
        lists, gets = s3_calls("ListObjectsV2"), s3_calls("GetObject")
        got = list(iter_manifests(settings, "clover", MID, day="2026-09-22"))
        costs[n_days] = (len(lists), len(gets))
        # Then exactly that day's three runs plus the 1.0 manifest of that day (and the one 1.0
        # manifest whose run id says nothing, fetched to be filtered) came back
        assert sorted(m["run_id"] for m in got) == sorted(
            [ours[1 + h / 24] for h in range(3)] + [legacy_ours]
        )
    # And the cost is the same with 3 days of history as with 40: 2 LISTs (the partition, the flat
    # 1.0 prefix with a delimiter), one GET per manifest of the day (+ the unreadable 1.0 one)
    assert costs == {3: (2, 5), 40: (2, 5)}
    # And without the 1.0 prefix, one LIST and a GET per manifest of that day
    lists, gets = s3_calls("ListObjectsV2"), s3_calls("GetObject")
    assert len(list(iter_manifests(settings, "clover", MID, day="2026-09-22", legacy=False))) == 3
    assert (len(lists), len(gets)) == (1, 3)
    # And a whole merchant's read fetches only that merchant's manifests
    gets = s3_calls("GetObject")
    assert len(list(iter_manifests(settings, "clover", MID))) == 40 * 3 + 2
    assert len(gets) == 40 * 3 + 2


def test_a_day_filter_needs_the_merchant_and_a_date(settings: Settings) -> None:
    with pytest.raises(ExportError, match="needs a provider"):
        list(iter_manifests(settings, "clover", day="2026-09-22"))
    with pytest.raises(ExportError, match="YYYY-MM-DD"):
        list(iter_manifests(settings, "clover", MID, day="22/09/2026"))
