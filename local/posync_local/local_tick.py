"""The schedule and the SQS event source, run locally: ``tick`` and ``drain``.

``tick`` does what EventBridge does every ``schedule_minutes``: it invokes the
dispatcher with a scheduled event. ``drain`` does what Lambda's SQS event source
does for the worker: receive up to 10 messages, invoke the worker with the SQS
event, delete the records it did not report in ``batchItemFailures``, and leave
the failed ones to come back after their visibility timeout (shortened locally to
``retry_delay_s``). It loops until the queue is idle (nothing visible, in flight
or delayed) or a bound is hit, so continuations the worker enqueues are drained
too. FIFO order per MessageGroupId is SQS's own: a group with a message in flight
delivers nothing else until that message is deleted or visible again.

One batch is in flight at a time (``maxConcurrency`` 1): deterministic, and the
provider's rate limit is shared by nothing else locally.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from posync.config import Settings
from posync_local.local_aws import client
from posync_local.local_functions import FunctionHost

log = logging.getLogger(__name__)

# (function_name, event, *, timeout_s=None) -> result, e.g. FunctionHost.invoke
Invoke = Callable[..., Any]


@dataclass
class TickReport:
    """What one tick or drain did. ``messages`` counts deliveries (a redelivered message counts twice)."""

    dispatcher: Any = None  # the dispatcher's return value (tick only)
    messages: int = 0
    succeeded: int = 0
    failures: int = 0  # deliveries the worker reported failed (or the whole batch, if it raised)
    batches: int = 0
    rounds: int = 0  # receive calls, including empty polls while messages were in flight
    dead_lettered: int = 0  # messages in the dead-letter queue when the drain ended
    elapsed_s: float = 0.0
    stopped_by: str = "idle"  # "idle" | "max_rounds" | "max_seconds"

    @property
    def idle(self) -> bool:
        return self.stopped_by == "idle"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["idle"] = self.idle
        d["elapsed_s"] = round(self.elapsed_s, 3)
        return d


def scheduled_event(
    settings: Settings, at: datetime | None = None, account: str = "000000000000"
) -> dict[str, Any]:
    """The event an EventBridge schedule rule sends to its target."""
    when = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": settings.aws_region,
        "resources": [
            f"arn:aws:events:{settings.aws_region}:{account}:rule/posync-{settings.stage}-schedule"
        ],
        "detail": {},
    }


def sqs_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One SQS message (as ReceiveMessage returns it) in the shape Lambda's event source delivers."""
    attributes = dict(message.get("Attributes", {}))
    msg_attrs = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        msg_attrs[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value.get("DataType"),
        }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": attributes,
        "messageAttributes": msg_attrs,
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _queue_counts(url: str) -> int:
    attrs = client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def _failed_ids(result: Any) -> set[str]:
    if not isinstance(result, dict):
        return set()
    failures = result.get("batchItemFailures") or []
    return {str(f.get("itemIdentifier")) for f in failures if isinstance(f, dict)}


def _default_invoke(settings: Settings) -> Invoke:
    return FunctionHost(stage=settings.stage, region=settings.aws_region).invoke


def drain(
    settings: Settings,
    invoke: Invoke | None = None,
    *,
    queue_url: str | None = None,
    batch_size: int = 10,
    retry_delay_s: int = 1,
    max_rounds: int = 10_000,
    max_seconds: float = 300.0,
    worker_timeout_s: float | None = None,
    idle_checks: int = 1,
    poll_interval_s: float = 0.05,
    report: TickReport | None = None,
) -> TickReport:
    """Feed the sync queue to the worker until the queue is idle (see the module doc).

    ``worker_timeout_s`` shortens the worker's deadline (``get_remaining_time_in_millis``)
    to force continuations; ``idle_checks`` > 1 asks for that many consecutive empty
    readings of the queue's counters (they are approximate on AWS and LocalStack).
    """
    invoke = invoke or _default_invoke(settings)
    sqs = client("sqs")
    url = (
        queue_url
        or settings.sync_queue_url
        or sqs.get_queue_url(QueueName=settings.resources.queue("sync").name)["QueueUrl"]
    )
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    spec = settings.resources.queue("sync")
    visibility = int(worker_timeout_s) + 30 if worker_timeout_s is not None else spec.visibility_timeout_s
    rep = report or TickReport()
    started = time.monotonic()
    empty_in_a_row = 0
    while True:
        if time.monotonic() - started >= max_seconds:
            rep.stopped_by = "max_seconds"
            break
        if rep.rounds >= max_rounds:
            rep.stopped_by = "max_rounds"
            break
        rep.rounds += 1
        messages = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=batch_size,
            VisibilityTimeout=visibility,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            if _queue_counts(url) == 0:
                empty_in_a_row += 1
                if empty_in_a_row >= idle_checks:
                    rep.stopped_by = "idle"
                    break
            else:
                empty_in_a_row = 0
            time.sleep(poll_interval_s)
            continue
        empty_in_a_row = 0
        rep.batches += 1
        rep.messages += len(messages)
        event = {"Records": [sqs_record(m, arn, settings.aws_region) for m in messages]}
        try:
            result = invoke("worker", event, timeout_s=worker_timeout_s)
            failed = _failed_ids(result)
        except Exception:
            log.exception("worker raised: the whole batch of %d goes back to the queue", len(messages))
            failed = {m["MessageId"] for m in messages}
        done = [m for m in messages if m["MessageId"] not in failed]
        retry = [m for m in messages if m["MessageId"] in failed]
        rep.succeeded += len(done)
        rep.failures += len(retry)
        if done:
            out = sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
            for f in out.get("Failed", []):
                log.warning("could not delete a processed message: %s", f.get("Code"))
        for m in retry:
            sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=retry_delay_s
            )
    dlq_key = spec.dead_letter
    if dlq_key is not None:
        dlq_url = sqs.get_queue_url(QueueName=settings.resources.queue(dlq_key).name)["QueueUrl"]
        rep.dead_lettered = _queue_counts(dlq_url)
    rep.elapsed_s += time.monotonic() - started
    return rep


def tick(
    settings: Settings, invoke: Invoke | None = None, *, at: datetime | None = None, **drain_options: Any
) -> TickReport:
    """Fire the schedule once (the dispatcher), then drain the sync queue into the worker.

    Two ticks in the same schedule slot enqueue nothing new: the dispatcher's
    deduplication ids are per slot, as on AWS. Pass ``at`` to fire a later slot.
    """
    invoke = invoke or _default_invoke(settings)
    started = time.monotonic()
    rep = TickReport()
    rep.dispatcher = invoke("dispatcher", scheduled_event(settings, at))
    rep.elapsed_s = time.monotonic() - started
    return drain(settings, invoke, report=rep, **drain_options)
