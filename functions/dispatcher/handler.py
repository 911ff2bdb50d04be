"""EventBridge schedules -> the due syncs within the app's budget, or a reconcile pass (posync.dispatcher)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.config import Settings
from posync.dispatcher import build_dispatcher, event_kind, event_time
from posync.observability import logger, metrics
from posync.ratelimit import Deadline

SETTINGS = Settings.from_env()
DISPATCHER = build_dispatcher(SETTINGS)
STOP_MARGIN_S = 10.0  # stop sending this long before the Lambda timeout (the report must get out)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deadline = Deadline.after(context.get_remaining_time_in_millis() / 1000 - STOP_MARGIN_S)
    report = DISPATCHER.dispatch(event_time(event), deadline, event_kind(event))
    report.emit_metrics()
    return report.as_dict()
