"""GET /connect/{provider}: 302 to the provider's consent page with a signed state.

Query: ``ref`` (the operator's own id for this merchant, travels inside the state) and, for
Clover App Market entries, ``merchant_id`` (preselects the merchant).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.answers import answers, path_param, query
from posync.authorization import build_connect_service
from posync.config import Settings
from posync.http import redirect
from posync.observability import logger, metrics

SETTINGS = Settings.from_env()
SERVICE = build_connect_service(SETTINGS)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
@answers("page")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    params = query(event)
    url = SERVICE.authorize_url(
        path_param(event, "provider"), ref=params.get("ref"), merchant_id=params.get("merchant_id")
    )
    return redirect(url)
