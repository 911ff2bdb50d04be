"""S3 exports: gzip JSON Lines parts, run manifests, the ``OrdersExported`` event, and the reader.

Layout (the consumer-facing contract is docs/exports.md; change it only with a version bump)::

    exports/orders/v1/provider={p}/merchant_id={m}/dt={YYYY-MM-DD}/{run_id}-{n}.jsonl.gz
    exports/manifests/v1/provider={p}/merchant_id={m}/dt={run's start date}/{run_id}.json
                                                  written last: lists every part of the run
    exports/manifests/v1/{run_id}.json            the same, written before contract 1.1 (read only)
    quarantine/provider={p}/merchant_id={m}/dt={YYYY-MM-DD}/{run_id}-{n}.json

A run's parts become visible to consumers only through its manifest, which is written
after every part is durable; the event follows the manifest. A consumer that reads only
manifested files (:func:`read_manifested`) never sees a partial run.

Exactly-once bookkeeping: the writer hands out an *export epoch* reference
(:attr:`ExportWriter.write_ref`, ``{run_id}/{k}-{nonce}``) that the order repository
stamps on every order version it returns for export. An epoch is committed once its
parts are uploaded and a checkpoint record (control table, ``pk =
exportrun#{run_id}#{k}``) says so, or once the run is finished and its manifest lists it
(the run header ``exportrun#{run_id}`` records that right after the manifest). A version
stamped by an epoch that never committed (the process died before its parts were
durable) is exported again by whichever run reads it next. The checkpoint records are
where a run's part list survives between continuations; they and the headers carry a
TTL, after which the S3 manifests (permanent, never rewritten) answer. Parts and
manifests are written create-only (``If-None-Match: *``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import check_merchant_id, check_provider
from posync.errors import PosyncError
from posync.observability import logger
from posync.serialized import to_json

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

SCHEMA_VERSION = 1  # canonical order schema carried by the parts
MANIFEST_VERSION = 1
ORDERS_PREFIX = "exports/orders/v1"
MANIFEST_PREFIX = "exports/manifests/v1"
QUARANTINE_PREFIX = "quarantine"
EVENT_DETAIL_TYPE = "OrdersExported"
DEFAULT_MAX_PART_BYTES = 64 * 1024 * 1024  # a part this big (compressed) is uploaded without waiting
# Open parts at once (each holds a ~256 KiB deflate state): past it, the least recently written
# one is uploaded. A backfill reads each slice in modified-time order, so a date it left is
# rarely written again; 16 covers the 5 slices in flight several times over.
DEFAULT_MAX_OPEN_PARTS = 16
# Uploaded parts not yet in a checkpoint record past which the writer asks for a checkpoint:
# the record lists them (about 250 bytes each) and a DynamoDB item holds 400 KB.
MAX_UNRECORDED_PARTS = 500
# A finished run's records expire this long after it finished (manifests are forever). A run in
# progress has no expiry at all: one paused for months (a connection in needs_reauth) resumes
# with every checkpoint it made, and its manifest lists every part.
RUN_RECORD_TTL_S = 90 * 24 * 3600
# Parts' deflate level. Measured on the bench's canonical Clover orders (1.3 KB of JSON each):
# level 6 (zlib's default) 18 us and 129 bytes per order, level 1 6.4 us and 174 bytes. The
# sync's CPU per order is what bounds a worker; a third more bytes of S3 is not (17 MB per
# 100,000 orders).
GZIP_LEVEL = 1
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

PutEvent = Callable[[Settings, str, Mapping[str, Any]], str]


class ExportError(PosyncError):
    """Writing or reading the exports failed."""


class ExportIntegrityError(ExportError):
    """A manifested file does not match its manifest (checksum, size or record count)."""


class RunAlreadyFinished(ExportError):
    """Another writer wrote this run's manifest first (two writers on one run)."""


# --------------------------------------------------------------------------- helpers


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ExportError("run_id must be 1-100 characters of letters, digits and ._- (no leading symbol)")
    return run_id


def parse_time(ts: str) -> datetime:
    """An RFC 3339 time with an offset (``Z`` included) as an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(ts)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"not an RFC 3339 time: {str(ts)[:40]!r}") from exc
    if value.tzinfo is None:
        raise ExportError(f"time without an offset: {ts[:40]!r}")
    return value.astimezone(UTC)


def modified_ms(ts: str) -> int:
    """Epoch milliseconds of an RFC 3339 time (the newest-wins comparison key)."""
    return (parse_time(ts) - _EPOCH) // _MS


def utc_date(ts: str) -> str:
    """``YYYY-MM-DD``: the UTC date of an RFC 3339 time (the ``dt`` partition)."""
    return parse_time(ts).date().isoformat()


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def order_key(provider: str, merchant_id: str, dt: str, run_id: str, n: int) -> str:
    return f"{ORDERS_PREFIX}/provider={provider}/merchant_id={merchant_id}/dt={dt}/{run_id}-{n}.jsonl.gz"


def quarantine_key(provider: str, merchant_id: str, dt: str, run_id: str, n: int) -> str:
    return f"{QUARANTINE_PREFIX}/provider={provider}/merchant_id={merchant_id}/dt={dt}/{run_id}-{n}.json"


_POSYNC_RUN = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})(?P<d>\d{2})T\d{6}Z-(?P<p>clover|poynt)-(?P<m>.+)-[0-9a-f]{6}(?:-r\d+)?$"
)


def run_partition(run_id: str) -> tuple[str, str, str] | None:
    """(provider, merchant_id, UTC start date) encoded in a posync run id (``sync.new_run_id``,
    roll-overs ``-rN`` included), or None for another id (tests, tools)."""
    found = _POSYNC_RUN.fullmatch(run_id)
    if found is None:
        return None
    return found["p"], found["m"], f"{found['y']}-{found['mo']}-{found['d']}"


def manifest_prefix(provider: str, merchant_id: str | None = None, day: str | None = None) -> str:
    """The manifest partition of a provider, of one merchant, or of one merchant-day (``/``-ended)."""
    prefix = f"{MANIFEST_PREFIX}/provider={provider}/"
    if merchant_id is not None:
        prefix += f"merchant_id={merchant_id}/"
        if day is not None:
            prefix += f"dt={day}/"
    return prefix


def legacy_manifest_key(run_id: str) -> str:
    """Where contract 1.0 wrote every manifest (a bucket may still hold them: readers read both)."""
    return f"{MANIFEST_PREFIX}/{run_id}.json"


def manifest_key(run_id: str) -> str:
    """A run's manifest key: partitioned by provider, merchant and the run's UTC start date.

    Derived from the run id alone (it encodes all three), so every finisher of a run aims at
    the same key (create-only) and the ledger finds a manifest from an epoch reference.
    A run id not in posync's format keeps the flat 1.0 key.
    """
    part = run_partition(run_id)
    if part is None:
        return legacy_manifest_key(run_id)
    provider, merchant_id, day = part
    return f"{manifest_prefix(provider, merchant_id, day)}{run_id}.json"


def _ref_run(ref: str) -> str:
    return ref.split("/", 1)[0]


def _is_missing(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _sse(settings: Settings) -> dict[str, Any]:
    return {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": settings.resources.kms_alias,
        "BucketKeyEnabled": True,
    }


@dataclass(frozen=True)
class PartInfo:
    """One uploaded file: its key, partition, part number, record count, size and SHA-256 (hex)."""

    key: str
    dt: str
    part: int
    records: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "dt": self.dt,
            "part": self.part,
            "records": self.records,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PartInfo:
        return cls(
            key=str(d["key"]),
            dt=str(d["dt"]),
            part=int(d["part"]),
            records=int(d["records"]),
            bytes=int(d["bytes"]),
            sha256=str(d["sha256"]),
        )


class _Spool:
    """One file being written to a temp file: gzip (parts) or plain (quarantine), hashed as it goes."""

    def __init__(self, dt: str, part: int, *, gzip: bool, tmpdir: str | None) -> None:
        self.dt = dt
        self.part = part
        self.records = 0
        self.size = 0
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 - closed by close()
        self._sha = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31) if gzip else None

    def _emit(self, data: bytes) -> None:
        if data:
            self.file.write(data)
            self._sha.update(data)
            self._md5.update(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        self._emit(self._z.compress(data) if self._z is not None else data)

    def seal(self, trailer: bytes = b"") -> tuple[str, str, str]:
        """Finish the stream; return (sha256 hex, sha256 base64, md5 base64) of the stored bytes."""
        if trailer:
            self.write(trailer)
        if self._z is not None:
            self._emit(self._z.flush())
            self._z = None
        self.file.flush()
        self.file.seek(0)
        sha = self._sha.digest()
        return sha.hex(), base64.b64encode(sha).decode(), base64.b64encode(self._md5.digest()).decode()

    def close(self) -> None:
        self.file.close()


# --------------------------------------------------------------------------- commit ledger


class RunLedger:
    """Answers "is the order version stamped with this epoch reference already exported?".

    Yes when the epoch's checkpoint record exists (its parts are durable and the run's
    manifest will list them), or when the run is finished and its manifest, or the
    manifest of one of its roll-overs (``{run}-r1``...), lists the epoch. "Finished" is
    read from the run's header in the control table (written right after the manifest);
    when the header does not say so (expired, or the process died between the manifest
    and the header update), from the S3 manifest itself. A reference without an
    epoch part (``{run_id}`` alone: a repository used without a writer) counts as exported
    once that run is finished. Answers are cached per instance.
    """

    def __init__(
        self, settings: Settings, *, s3: S3Client | None = None, dynamodb: DynamoDBClient | None = None
    ):
        self._settings = settings
        self._s3: S3Client = s3 if s3 is not None else client("s3")
        self._ddb: DynamoDBClient = dynamodb if dynamodb is not None else client("dynamodb")
        self._known: set[str] = set()
        self._unknown: set[str] = set()  # asked and not committed (a dead epoch stays dead)
        self._finished: dict[str, frozenset[str] | None] = {}

    def mark(self, ref: str) -> None:
        self._known.add(ref)
        self._unknown.discard(ref)

    def committed(self, ref: str) -> bool:
        if ref in self._known:
            return True
        if ref in self._unknown:
            return False
        run, sep, epoch = ref.partition("/")
        yes = bool(sep) and self._record_ref(run, epoch) == ref
        candidate, i = run, 0
        while not yes:
            epochs = self.finished_epochs(candidate)
            if epochs is None:
                break
            yes = ref in epochs or not sep
            i += 1
            candidate = f"{run}-r{i}"
        (self._known if yes else self._unknown).add(ref)
        return yes

    def _record_ref(self, run: str, epoch: str) -> str | None:
        try:
            k = int(epoch.split("-", 1)[0])
        except ValueError:
            return None
        reply = self._ddb.get_item(
            TableName=self._settings.control_table,
            Key={"pk": {"S": f"exportrun#{run}#{k:05d}"}},
            ConsistentRead=True,
            ProjectionExpression="#r",
            ExpressionAttributeNames={"#r": "ref"},
        )
        item = reply.get("Item")
        return item["ref"].get("S") if item and "ref" in item else None

    def header(self, run: str) -> dict[str, Any]:
        """The run's header item in the control table ({} when absent). Never cached."""
        reply = self._ddb.get_item(
            TableName=self._settings.control_table, Key={"pk": {"S": f"exportrun#{run}"}}, ConsistentRead=True
        )
        return dict(reply.get("Item") or {})

    def finished_epochs(self, run: str) -> frozenset[str] | None:
        """The epochs a finished run's manifest lists; None while the run is not finished."""
        if run in self._finished:
            return self._finished[run]
        header = self.header(run)
        epochs: frozenset[str] | None = None
        if "manifest_key" in header:
            epochs = frozenset(header.get("epochs", {}).get("SS", []))
        else:
            # Never checkpointed, the header expired, or the process died between the manifest
            # and the header update: the S3 manifest decides.
            doc = self.manifest(run)
            epochs = None if doc is None else frozenset(str(e) for e in doc.get("epochs", []))
        if epochs is not None:
            self._finished[run] = epochs  # a finished run stays finished
        return epochs

    def manifest(self, run: str) -> dict[str, Any] | None:
        """A run's manifest from S3, or None when there is none.

        Without ``s3:ListBucket`` S3 answers 403 rather than 404 for a missing key: both
        count as missing here (the worst outcome is an order version exported twice).
        """
        keys = dict.fromkeys((manifest_key(run), legacy_manifest_key(run)))  # 1.1 first, then 1.0
        for key in keys:
            try:
                body = self._s3.get_object(Bucket=self._settings.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if _is_missing(exc) or code in ("403", "AccessDenied"):
                    continue
                raise
            doc: dict[str, Any] = json.loads(body)
            return doc
        return None


def event_detail(manifest: Mapping[str, Any], key: str) -> dict[str, Any]:
    """The ``OrdersExported`` detail for a manifest."""
    return {
        "run_id": manifest["run_id"],
        "provider": manifest["provider"],
        "merchant_id": manifest["merchant_id"],
        "bucket": manifest["bucket"],
        "manifest_key": key,
        "schema_version": manifest["schema_version"],
        "manifest_version": manifest["manifest_version"],
        "counts": {
            "orders": int(manifest["record_count"]),
            "files": len(manifest["files"]),
            "quarantined": sum(int(q["records"]) for q in manifest["quarantine"]),
        },
    }


# --------------------------------------------------------------------------- writer


class ExportWriter:
    """Writes one run's exports for one connection.

    ``add(order)`` appends a canonical order to its ``dt`` partition's gzip part (spooled to
    a temp file: memory does not grow with the number of orders). At most
    ``max_open_parts`` parts are open at once: opening one more first uploads the least
    recently written one (memory does not grow with the number of partitions either; the
    part is recorded by the next checkpoint, like every part of the epoch, and asks for no
    checkpoint of its own). ``checkpoint()`` uploads
    the open parts (one PUT each) and records them durably so a continuation of the same
    run can list them in the manifest, then the caller may commit its cursor;
    ``finish(...)`` uploads what is left, writes the manifest covering every part of the
    run (all continuations), then puts the ``OrdersExported`` event.

    Pass the writer to ``OrderRepository.write(..., ledger=writer)``: its :attr:`write_ref`
    and :meth:`exported` give the repository the exactly-once bookkeeping.

    S3 PUTs per run: one per partition per checkpoint (plus one per quarantine partition
    per checkpoint), one more each time a partition is reopened after it was evicted, and
    one manifest. Checkpoint rarely: at the end of an invocation, or when
    :attr:`should_checkpoint` says a part grew past ``max_part_bytes``.

    If this run id already has a manifest (a crash between ``finish`` and the caller's
    cursor commit), the writer continues as run ``{run_id}-r1`` (``-r2``...) so the earlier
    manifest is never overwritten; :attr:`run_id` tells which.
    """

    def __init__(
        self,
        settings: Settings,
        run_id: str,
        provider: str,
        merchant_id: str,
        *,
        s3: S3Client | None = None,
        dynamodb: DynamoDBClient | None = None,
        put_event: PutEvent | None = None,
        max_part_bytes: int = DEFAULT_MAX_PART_BYTES,
        max_open_parts: int = DEFAULT_MAX_OPEN_PARTS,
        clock: Callable[[], float] = time.time,
        tmpdir: str | None = None,
    ) -> None:
        self._settings = settings
        self._base_run = check_run_id(run_id)
        self.provider = check_provider(provider)
        self.merchant_id = check_merchant_id(provider, merchant_id)
        self._s3: S3Client = s3 if s3 is not None else client("s3")
        self._ddb: DynamoDBClient = dynamodb if dynamodb is not None else client("dynamodb")
        if put_event is None:
            from posync.events import put_event as default_put_event

            put_event = default_put_event
        self._put_event: PutEvent = put_event
        self._max_part_bytes = max_part_bytes
        if max_open_parts < 1:
            raise ExportError("max_open_parts must be at least 1")
        self._max_open_parts = max_open_parts
        self._clock = clock
        self._tmpdir = tmpdir
        self._ledger = RunLedger(settings, s3=self._s3, dynamodb=self._ddb)

        self._opened = False
        self._closed = False
        self._failed = False
        self._run = self._base_run
        self._k_open = 0  # checkpoints recorded by earlier invocations of this run
        self._k = 0  # the open epoch's checkpoint number
        self._rollover = 0  # N when writing as {run_id}-rN
        self._ref = ""
        self._next_part = 1
        self._started_at = _now_iso(clock)
        self._parts: dict[str, _Spool] = {}  # least recently written first
        self._quarantine: dict[str, _Spool] = {}
        self._unrecorded: list[PartInfo] = []  # uploaded, not yet in a checkpoint record
        self._unrecorded_q: list[PartInfo] = []
        self._full = False  # a part went up at the size threshold: ask for a checkpoint
        self._recorded: list[PartInfo] = []  # in this writer's own checkpoint records
        self._recorded_q: list[PartInfo] = []
        self._recorded_refs: list[str] = []
        self.records_added = 0
        self.records_quarantined = 0

    # ---- identity and ledger

    @property
    def run_id(self) -> str:
        """The run id the exports are written under (the given one, or ``{run_id}-rN``)."""
        self._open()
        return self._run

    @property
    def started_at(self) -> str:
        self._open()
        return self._started_at

    @property
    def write_ref(self) -> str:
        """The open export epoch: the repository stamps it on the versions it returns."""
        self._open()
        return self._ref

    def exported(self, ref: str) -> bool:
        """Is a version stamped with ``ref`` in the exports (or in this writer's open parts)?"""
        self._open()
        return ref == self._ref or self._ledger.committed(ref)

    @property
    def should_checkpoint(self) -> bool:
        """True when a part was uploaded early at the size threshold and wants a checkpoint record.

        Parts uploaded because too many were open do not ask (a checkpoint uploads every open
        part: asking each time would multiply small parts), unless so many wait for a record
        that it would grow too big.
        """
        return self._full or len(self._unrecorded) + len(self._unrecorded_q) >= MAX_UNRECORDED_PARTS

    def _new_ref(self) -> str:
        return f"{self._run}/{self._k:05d}-{secrets.token_hex(4)}"

    def _open(self) -> None:
        if self._opened:
            return
        self._settle_run(0)
        self._ref = self._new_ref()
        self._opened = True

    def _settle_run(self, i: int) -> None:
        """Take roll-over ``i`` of the run (0: the run itself), or the first unfinished one after it."""
        finished: dict[str, Any] | None = None
        run = self._base_run if i == 0 else f"{self._base_run}-r{i}"
        while True:
            header = self._ledger.header(run)
            if "manifest_key" not in header:
                break
            # Finished already (a crash between finish and the caller's cursor commit): go on
            # under a new run id, so the manifest is never rewritten.
            finished = header
            i += 1
            run = f"{self._base_run}-r{i}"
        if finished is not None:
            self._put_event_again(finished)  # it may never have been put (events: at least once)
        self._run = run
        self._rollover = i
        self._k_open = self._k = int(header["checkpoints"]["N"]) if "checkpoints" in header else 0
        self._next_part = max(self._next_part, int(header["next_part"]["N"]) if "next_part" in header else 1)
        if "started_at" in header:
            self._started_at = str(header["started_at"]["S"])

    def _put_event_again(self, header: Mapping[str, Any]) -> None:
        if "event" not in header:
            return
        detail = json.loads(header["event"]["S"])
        try:
            self._put_event(self._settings, EVENT_DETAIL_TYPE, detail)
        except (PosyncError, ClientError) as exc:
            logger.warning(
                "could not put the OrdersExported event again",
                extra={"manifest_key": detail.get("manifest_key"), "error": type(exc).__name__},
            )

    def write_failed(self) -> None:
        """The repository stored versions under the open epoch and could not hand them over.

        That epoch must never commit: from now on the writer refuses to add, checkpoint or
        finish, so the invocation ends without a checkpoint and the retry exports them.
        """
        self._failed = True

    def _writable(self) -> None:
        if self._closed:
            raise ExportError("this export writer is finished or closed")
        if self._failed:
            raise ExportError("a storage write failed part-way: end this invocation without a checkpoint")
        self._open()

    # ---- writing

    def add(self, order: Mapping[str, Any]) -> None:
        """Append one canonical order to its partition (``dt`` = UTC date of ``modified_at``)."""
        self._writable()
        dt = utc_date(str(order["modified_at"]))
        if self._parts and next(reversed(self._parts)) == dt:  # the partition written last
            spool = self._parts[dt]
        else:
            found = self._parts.pop(dt, None)
            if found is None:
                while len(self._parts) >= self._max_open_parts:
                    # The least recently written part goes up now (recorded at the next checkpoint).
                    self._unrecorded.append(self._upload_part(self._parts.pop(next(iter(self._parts)))))
                found = _Spool(dt, self._alloc_part(), gzip=True, tmpdir=self._tmpdir)
            spool = self._parts[dt] = found  # (re)inserted last: the most recently written
        spool.write(to_json(order).encode() + b"\n")
        spool.records += 1
        self.records_added += 1
        if spool.size >= self._max_part_bytes:
            del self._parts[dt]
            self._unrecorded.append(self._upload_part(spool))
            self._full = True

    def quarantine(self, raw: Mapping[str, Any], reason: str) -> None:
        """Keep a provider order that could not be normalized, with its reason (uploaded at checkpoint)."""
        self._writable()
        now = _now_iso(self._clock)
        dt = now[:10]
        spool = self._quarantine.get(dt)
        first = spool is None
        if spool is None:
            spool = self._quarantine[dt] = _Spool(dt, self._alloc_part(), gzip=False, tmpdir=self._tmpdir)
        entry = {"reason": str(reason)[:500], "quarantined_at": now, "raw": raw}
        spool.write(
            (b"[" if first else b",\n") + json.dumps(entry, separators=(",", ":"), default=str).encode()
        )
        spool.records += 1
        self.records_quarantined += 1

    def _alloc_part(self) -> int:
        n = self._next_part
        self._next_part += 1
        return n

    def _put(
        self, spool: _Spool, key_for: Callable[[int], str], content_type: str, encoding: str | None
    ) -> PartInfo:
        """Upload a sealed spool under a key no one has used (parts are write-once).

        A part number already taken (an earlier invocation's orphan, or a manifested part of
        a predecessor that died before recording it) answers 412: take the next number.
        """
        trailer = b"]\n" if encoding is None else b""
        extra: dict[str, Any] = {"ContentEncoding": encoding} if encoding else {}
        try:
            sha_hex, sha_b64, md5_b64 = spool.seal(trailer)
            for _ in range(100):
                key = key_for(spool.part)
                try:
                    self._s3.put_object(
                        Bucket=self._settings.bucket,
                        Key=key,
                        Body=spool.file,
                        ContentType=content_type,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=sha_b64,
                        ContentMD5=md5_b64,
                        IfNoneMatch="*",
                        Metadata={"records": str(spool.records), "run-id": self._run},
                        **_sse(self._settings),
                        **extra,
                    )
                except ClientError as exc:
                    if str(exc.response.get("Error", {}).get("Code")) not in ("PreconditionFailed", "412"):
                        raise
                    spool.part = self._alloc_part()
                    spool.file.seek(0)
                    continue
                return PartInfo(
                    key=key,
                    dt=spool.dt,
                    part=spool.part,
                    records=spool.records,
                    bytes=spool.size,
                    sha256=sha_hex,
                )
            raise ExportError(f"run {self._run}: no free part number after 100 tries")
        except BaseException:
            # The spool's orders are gone with it: the open epoch must never commit now.
            self._failed = True
            raise
        finally:
            spool.close()

    def _upload_part(self, spool: _Spool) -> PartInfo:
        def key_for(n: int) -> str:
            return order_key(self.provider, self.merchant_id, spool.dt, self._run, n)

        return self._put(spool, key_for, "application/x-ndjson", "gzip")

    def _upload_open(self) -> None:
        while self._parts:
            dt = min(self._parts)
            self._unrecorded.append(self._upload_part(self._parts.pop(dt)))
        while self._quarantine:
            dt = min(self._quarantine)
            spool = self._quarantine.pop(dt)

            def key_for(n: int, dt: str = dt) -> str:
                return quarantine_key(self.provider, self.merchant_id, dt, self._run, n)

            self._unrecorded_q.append(self._put(spool, key_for, "application/json", None))

    def checkpoint(self) -> list[PartInfo]:
        """Upload the open parts and record them durably; return the parts uploaded since the last one.

        After it returns, the orders added so far are durable and will be in the run's
        manifest: the caller may commit its cursor. Nothing open: no call at all.
        """
        self._writable()
        self._upload_open()
        if not self._unrecorded and not self._unrecorded_q:
            return []
        now = _now_iso(self._clock)
        table = self._settings.control_table
        self._ddb.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": table,
                        "Item": {
                            "pk": {"S": f"exportrun#{self._run}#{self._k:05d}"},
                            "ref": {"S": self._ref},
                            "parts": {"S": json.dumps([p.to_dict() for p in self._unrecorded])},
                            "quarantine": {"S": json.dumps([p.to_dict() for p in self._unrecorded_q])},
                            "at": {"S": now},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Update": {
                        "TableName": table,
                        "Key": {"pk": {"S": f"exportrun#{self._run}"}},
                        "UpdateExpression": (
                            "SET #c = :k1, #np = :np, #s = if_not_exists(#s, :s), #p = :p, #m = :m REMOVE #e"
                        ),
                        "ConditionExpression": "attribute_not_exists(pk) OR #c = :k",
                        "ExpressionAttributeNames": {
                            "#c": "checkpoints",
                            "#np": "next_part",
                            "#s": "started_at",
                            "#p": "provider",
                            "#m": "merchant_id",
                            "#e": "expires_at",
                        },
                        "ExpressionAttributeValues": {
                            ":k": {"N": str(self._k)},
                            ":k1": {"N": str(self._k + 1)},
                            ":np": {"N": str(self._next_part)},
                            ":s": {"S": self._started_at},
                            ":p": {"S": self.provider},
                            ":m": {"S": self.merchant_id},
                        },
                    }
                },
            ]
        )
        uploaded = list(self._unrecorded)
        self._recorded.extend(self._unrecorded)
        self._recorded_q.extend(self._unrecorded_q)
        self._recorded_refs.append(self._ref)
        self._ledger.mark(self._ref)
        self._unrecorded.clear()
        self._unrecorded_q.clear()
        self._full = False
        self._k += 1
        self._ref = self._new_ref()
        return uploaded

    def _earlier_records(self) -> list[dict[str, Any]]:
        """Checkpoint records of earlier invocations of this run (k < k_open), in order."""
        table = self._settings.control_table
        wanted = [f"exportrun#{self._run}#{k:05d}" for k in range(self._k_open)]
        found: dict[str, dict[str, Any]] = {}
        for i in range(0, len(wanted), 100):
            keys: list[dict[str, Any]] = [{"pk": {"S": pk}} for pk in wanted[i : i + 100]]
            request: dict[str, Any] = {table: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(10):
                reply = self._ddb.batch_get_item(RequestItems=request)
                for item in reply.get("Responses", {}).get(table, []):
                    found[item["pk"]["S"]] = item
                request = dict(reply.get("UnprocessedKeys") or {})
                if not request:
                    break
                time.sleep(min(1.0, 0.05 * 2**attempt))
            if request:
                raise ExportError("could not read the run's checkpoint records (throttled)")
        missing = [pk for pk in wanted if pk not in found]
        if missing:
            raise ExportError(f"run {self._run}: {len(missing)} checkpoint record(s) missing (expired?)")
        return [found[pk] for pk in wanted]

    def finish(
        self, cursor_from: Any = None, cursor_to: Any = None, counts: Mapping[str, int] | None = None
    ) -> str:
        """Upload what is open, write the run's manifest (every part of every continuation), put the event.

        Returns the manifest key. ``cursor_from``/``cursor_to`` are any JSON (the
        connection's cursor before and after the run); ``counts`` are the caller's own
        tallies (pages, fetched...), kept in the manifest beside the writer's.
        """
        self._writable()
        self._upload_open()
        files: list[PartInfo] = []
        quarantined: list[PartInfo] = []
        epochs: list[str] = []
        for rec in self._earlier_records():
            files.extend(PartInfo.from_dict(p) for p in json.loads(rec["parts"]["S"]))
            quarantined.extend(PartInfo.from_dict(p) for p in json.loads(rec["quarantine"]["S"]))
            epochs.append(rec["ref"]["S"])
        own = (self._recorded + self._unrecorded, self._recorded_q + self._unrecorded_q)
        own_epochs = [*self._recorded_refs, self._ref]
        for _ in range(3):
            manifest = self._manifest(
                files + own[0],
                quarantined + own[1],
                epochs + own_epochs,
                cursor_from=cursor_from,
                cursor_to=cursor_to,
                counts=counts,
            )
            key = manifest_key(self._run)
            if self._put_manifest(key, manifest):
                break
            # An earlier finisher of this run wrote its manifest and died before recording it:
            # record it now, and write this writer's own parts as the next roll-over.
            self._adopt_manifest(key)
            self._settle_run(self._rollover + 1)
            files, quarantined, epochs = [], [], []
        else:
            raise RunAlreadyFinished(f"run {self._base_run}: manifests keep appearing under us")
        detail = event_detail(manifest, key)
        self._mark_finished(key, manifest, detail)
        self._closed = True
        self._put_event(self._settings, EVENT_DETAIL_TYPE, detail)
        return key

    def _manifest(
        self,
        files: list[PartInfo],
        quarantined: list[PartInfo],
        epochs: list[str],
        *,
        cursor_from: Any,
        cursor_to: Any,
        counts: Mapping[str, int] | None,
    ) -> dict[str, Any]:
        files = sorted(files, key=lambda p: (p.dt, p.part))
        records = sum(p.records for p in files)
        return {
            "manifest_version": MANIFEST_VERSION,
            "schema_version": SCHEMA_VERSION,
            "run_id": self._run,
            "provider": self.provider,
            "merchant_id": self.merchant_id,
            "bucket": self._settings.bucket,
            "started_at": self._started_at,
            "finished_at": _now_iso(self._clock),
            "cursor": {"from": cursor_from, "to": cursor_to},
            "record_count": records,
            "counts": {
                **dict(counts or {}),
                "exported": records,
                "quarantined": sum(p.records for p in quarantined),
            },
            "files": [p.to_dict() for p in files],
            "quarantine": [p.to_dict() for p in quarantined],
            "epochs": epochs,
        }

    def _put_manifest(self, key: str, manifest: Mapping[str, Any]) -> bool:
        """Create the manifest; False when one exists already (S3 conditional write)."""
        body = json.dumps(manifest, separators=(",", ":"), default=str).encode()
        sha = hashlib.sha256(body).digest()
        try:
            self._s3.put_object(
                Bucket=self._settings.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(sha).decode(),
                ContentMD5=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                IfNoneMatch="*",
                **_sse(self._settings),
            )
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def _adopt_manifest(self, key: str) -> None:
        existing = self._ledger.manifest(self._run)
        if existing is None:
            raise RunAlreadyFinished(f"run {self._run}: the manifest exists but cannot be read")
        detail = event_detail(existing, key)
        self._mark_finished(key, existing, detail)
        self._put_event_again({"event": {"S": json.dumps(detail)}})

    def _mark_finished(self, key: str, manifest: Mapping[str, Any], detail: Mapping[str, Any]) -> None:
        """Record in the run's header that it is finished (what the ledger and a resumed writer read)."""
        self._ddb.update_item(
            TableName=self._settings.control_table,
            Key={"pk": {"S": f"exportrun#{manifest['run_id']}"}},
            UpdateExpression="SET #k = :k, #ep = :ep, #ev = :ev, #f = :f, #p = :p, #m = :m, #e = :e",
            ExpressionAttributeNames={
                "#k": "manifest_key",
                "#ep": "epochs",
                "#ev": "event",
                "#f": "finished_at",
                "#p": "provider",
                "#m": "merchant_id",
                "#e": "expires_at",
            },
            ExpressionAttributeValues={
                ":k": {"S": key},
                ":ep": {"SS": sorted({str(e) for e in manifest["epochs"]})},
                ":ev": {"S": json.dumps(dict(detail), separators=(",", ":"))},
                ":f": {"S": str(manifest["finished_at"])},
                ":p": {"S": self.provider},
                ":m": {"S": self.merchant_id},
                ":e": {"N": str(int(self._clock()) + RUN_RECORD_TTL_S)},
            },
        )
        self._expire_records(str(manifest["run_id"]))

    def _expire_records(self, run: str) -> None:
        """The finished run's checkpoint records expire with its header (best effort: a record
        left without an expiry costs a few hundred bytes, never a wrong answer)."""
        expires = {"N": str(int(self._clock()) + RUN_RECORD_TTL_S)}
        for k in range(self._k):
            try:
                self._ddb.update_item(
                    TableName=self._settings.control_table,
                    Key={"pk": {"S": f"exportrun#{run}#{k:05d}"}},
                    UpdateExpression="SET #e = :e",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeNames={"#e": "expires_at"},
                    ExpressionAttributeValues={":e": expires},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    logger.warning(
                        "a finished run's checkpoint record keeps no expiry", extra={"run_id": run}
                    )

    def close(self) -> None:
        """Drop open temp files without uploading (an abandoned invocation)."""
        self._closed = True
        for spool in (*self._parts.values(), *self._quarantine.values()):
            spool.close()
        self._parts.clear()
        self._quarantine.clear()

    def __enter__(self) -> ExportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- reader


# A manifest is written at its run's finish (S3's LastModified) and after every order it
# lists was fetched; this margin absorbs the provider's, Lambda's and S3's clock skew.
_SINCE_MARGIN = timedelta(days=1)


def _list(
    s3c: S3Client, bucket: str, prefix: str, *, delimiter: str | None = None
) -> Iterator[tuple[str, datetime]]:
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if delimiter is not None:
        kwargs["Delimiter"] = delimiter
    for page in s3c.get_paginator("list_objects_v2").paginate(**kwargs):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".json"):
                yield obj["Key"], obj["LastModified"]


def iter_manifest_items(
    settings: Settings,
    provider: str | None = None,
    merchant_id: str | None = None,
    *,
    day: str | None = None,
    since: str | None = None,
    legacy: bool = True,
    s3: S3Client | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, manifest) of run manifests (optionally of one provider / merchant / start ``day``).

    Lists only the asked partition (``provider=/merchant_id=/dt=``, contract 1.1): one
    merchant-day costs one LIST page per 1,000 of its manifests and one GET each, however
    long the history. ``since`` (RFC 3339 or ``YYYY-MM-DD``) skips manifests S3 stored
    more than a day before it (a run that started earlier but finished after ``since`` is
    kept: its start-date partition is listed, its manifest is fetched). ``legacy`` also
    reads the flat 1.0 prefix (manifests written before 1.1; one delimited LIST of them,
    and a GET only of those whose run id matches the filters).
    """
    s3c: S3Client = s3 if s3 is not None else client("s3")
    bucket = settings.bucket
    if day is not None and (provider is None or merchant_id is None):
        raise ExportError("day needs a provider and a merchant_id")
    if day is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ExportError(f"day must be YYYY-MM-DD, not {day[:20]!r}")
    floor: datetime | None = None
    if since:
        floor = parse_time(f"{since}T00:00:00Z" if len(since) == 10 else since) - _SINCE_MARGIN
    if provider is not None:
        prefix = manifest_prefix(provider, merchant_id, day)
    else:
        prefix = f"{MANIFEST_PREFIX}/provider="
    keys: list[Iterator[tuple[str, datetime]]] = [_list(s3c, bucket, prefix)]
    if legacy:
        keys.append(_list(s3c, bucket, f"{MANIFEST_PREFIX}/", delimiter="/"))
    for listing in keys:
        for key, stored_at in listing:
            if floor is not None and stored_at < floor:
                continue
            run = key.rsplit("/", 1)[1][: -len(".json")]
            part = run_partition(run)
            if part is not None and not _matches(part, provider, merchant_id, day):
                continue
            manifest: dict[str, Any] = json.loads(s3c.get_object(Bucket=bucket, Key=key)["Body"].read())
            if provider is not None and manifest.get("provider") != provider:
                continue
            if merchant_id is not None and manifest.get("merchant_id") != merchant_id:
                continue
            if day is not None and part is None and str(manifest.get("started_at", ""))[:10] != day:
                continue
            yield key, manifest


def iter_manifests(
    settings: Settings,
    provider: str | None = None,
    merchant_id: str | None = None,
    *,
    day: str | None = None,
    since: str | None = None,
    legacy: bool = True,
    s3: S3Client | None = None,
) -> Iterator[dict[str, Any]]:
    """The manifests of :func:`iter_manifest_items`, without their keys."""
    for _, manifest in iter_manifest_items(
        settings, provider, merchant_id, day=day, since=since, legacy=legacy, s3=s3
    ):
        yield manifest


def _matches(
    part: tuple[str, str, str], provider: str | None, merchant_id: str | None, day: str | None
) -> bool:
    return (
        (provider is None or part[0] == provider)
        and (merchant_id is None or part[1] == merchant_id)
        and (day is None or part[2] == day)
    )


def _verified_copy(s3c: S3Client, bucket: str, part: PartInfo, tmpdir: str | None) -> IO[bytes]:
    """Download a manifested file to a temp file, checking its size and SHA-256 first."""
    out = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 - returned to the caller, who closes it
    sha = hashlib.sha256()
    size = 0
    try:
        body = s3c.get_object(Bucket=bucket, Key=part.key)["Body"]
        for chunk in body.iter_chunks(1024 * 1024):
            sha.update(chunk)
            out.write(chunk)
            size += len(chunk)
    except BaseException:
        out.close()
        raise
    if size != part.bytes or sha.hexdigest() != part.sha256:
        out.close()
        raise ExportIntegrityError(f"{part.key} does not match its manifest (size or SHA-256)")
    out.seek(0)
    return out


def _gunzip_lines(f: IO[bytes]) -> Iterator[bytes]:
    z = zlib.decompressobj(31)
    rest = b""
    while True:
        chunk = f.read(1024 * 1024)
        if not chunk:
            break
        data = rest + z.decompress(chunk)
        *lines, rest = data.split(b"\n")
        yield from lines
        while z.unused_data:  # concatenated gzip members
            tail = z.unused_data
            z = zlib.decompressobj(31)
            data = rest + z.decompress(tail)
            *lines, rest = data.split(b"\n")
            yield from lines
    rest += z.flush()
    if rest.strip():
        yield rest


def read_manifested(
    settings: Settings,
    since: str | None = None,
    provider: str | None = None,
    merchant_id: str | None = None,
    *,
    s3: S3Client | None = None,
    tmpdir: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream canonical orders from manifested files only (checksums verified before reading).

    ``since`` (an RFC 3339 time or a ``YYYY-MM-DD`` date, UTC) keeps orders whose
    ``modified_at`` is at or after it, and skips partitions before its date. The stream is
    the change log: an order may appear in several versions; fold with :func:`latest`.
    """
    since_ms: int | None = None
    since_dt = ""
    if since:
        text = f"{since}T00:00:00Z" if len(since) == 10 else since
        since_ms = modified_ms(text)
        since_dt = datetime.fromtimestamp(since_ms / 1000, UTC).date().isoformat()
    s3c: S3Client = s3 if s3 is not None else client("s3")
    for manifest in iter_manifests(settings, provider, merchant_id, since=since, s3=s3c):
        if int(manifest.get("manifest_version", 0)) != MANIFEST_VERSION:
            continue  # a later contract version: a reader for it lives elsewhere
        bucket = str(manifest.get("bucket") or settings.bucket)
        for entry in manifest.get("files", []):
            part = PartInfo.from_dict(entry)
            if part.dt < since_dt:
                continue
            with contextlib.closing(_verified_copy(s3c, bucket, part, tmpdir)) as f:
                seen = 0
                for line in _gunzip_lines(f):
                    if not line.strip():
                        continue
                    seen += 1
                    order: dict[str, Any] = json.loads(line)
                    if since_ms is None or modified_ms(str(order["modified_at"])) >= since_ms:
                        yield order
                if seen != part.records:
                    raise ExportIntegrityError(f"{part.key}: {seen} records, manifest says {part.records}")


def latest(orders: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Fold a change log to the newest ``modified_at`` per (provider, merchant_id, order_id).

    On equal ``modified_at`` the later one in the stream wins. Sorted by that key.
    """
    best: dict[tuple[str, str, str], tuple[int, Mapping[str, Any]]] = {}
    for order in orders:
        k = (str(order["provider"]), str(order["merchant_id"]), str(order["order_id"]))
        ms = modified_ms(str(order["modified_at"]))
        cur = best.get(k)
        if cur is None or ms >= cur[0]:
            best[k] = (ms, order)
    return [dict(best[k][1]) for k in sorted(best)]
