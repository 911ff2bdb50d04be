"""SQS (FIFO sync queue) -> one sync run per message, partial batch failures reported.

Each record gets its own deadline from the invocation's remaining time; a run that cannot
finish in it checkpoints and queues its own continuation. A record whose run raises (the
provider kept failing, a write failed, a malformed message) is reported in
``batchItemFailures`` and redelivered by SQS (then dead-lettered after maxReceiveCount);
the other records of the batch are not affected.

``BatchProcessor`` (not the FIFO processor that stops at the first failure) is deliberate:
a message is only a trigger, the connection's cursor says what to read, so a later message
of the same connection running before a redelivered earlier one reads nothing twice and
skips nothing.
"""

from __future__ import annotations

from posync.gcpolicy import tune_for_sync

# Pages of orders are acyclic: collect rarely (see posync.gcpolicy). Applied before the
# imports below: under CPython's default thresholds importing them ran about a hundred
# collections, each walking the (long-lived) objects imported so far; now one runs.
tune_for_sync()

import os
from dataclasses import asdict
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.config import Settings
from posync.observability import logger, metrics
from posync.ratelimit import Deadline
from posync.sync import SyncConfig, build_sync_service
from posync.syncqueue import SyncRequest

SETTINGS = Settings.from_env()
CONFIG = SyncConfig.from_env(os.environ, SETTINGS)
SERVICE = build_sync_service(SETTINGS, CONFIG)
PROCESSOR = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> dict[str, Any]:
    request = SyncRequest.from_json(record.body, message_id=record.message_id)
    deadline = Deadline.after(lambda_context.get_remaining_time_in_millis() / 1000)
    result = SERVICE.run(request, deadline)
    return asdict(result)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    return process_partial_response(
        event=event, record_handler=record_handler, processor=PROCESSOR, context=context
    )
