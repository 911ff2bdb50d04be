"""EventBridge schedule -> one sync message per active connection (see posync.dispatcher)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.config import Settings
from posync.dispatcher import build_dispatcher, event_time
from posync.observability import logger, metrics

SETTINGS = Settings.from_env()
DISPATCHER = build_dispatcher(SETTINGS)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = DISPATCHER.dispatch(event_time(event))
    report.emit_metrics()
    return report.as_dict()
