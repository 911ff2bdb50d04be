"""EventBridge schedules -> one sync (or reconcile) message per active connection (posync.dispatcher)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.config import Settings
from posync.dispatcher import build_dispatcher, event_kind, event_time
from posync.observability import logger, metrics

SETTINGS = Settings.from_env()
DISPATCHER = build_dispatcher(SETTINGS)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = DISPATCHER.dispatch(event_time(event), event_kind(event))
    metrics.add_metric(name="SyncsDispatched", unit=MetricUnit.Count, value=report.sent)
    metrics.add_metric(name="SyncsNotDispatched", unit=MetricUnit.Count, value=report.failed)
    return report.as_dict()
