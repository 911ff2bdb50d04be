"""GET /oauth/{provider}/callback: verify the state and the browser, exchange the code, store,
queue the backfill. The provider calls share a deadline from the invocation's remaining time.

Never log the event: its query string carries the authorization code.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.answers import answers, path_param, query
from posync.authorization import build_callback_service, provider_title, success_location
from posync.config import Settings
from posync.http import page, redirect
from posync.oauth_state import cookie_value
from posync.observability import logger, metrics

SETTINGS = Settings.from_env()
SERVICE = build_callback_service(SETTINGS)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
@answers("page")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    connected = SERVICE.complete(
        path_param(event, "provider"),
        query(event),
        cookie=cookie_value(event.get("cookies")),
        remaining_s=context.get_remaining_time_in_millis() / 1000,
    )
    location = success_location(SETTINGS, connected)
    if location:
        return redirect(location)
    name = provider_title(connected.provider)
    who = (
        f"{connected.business_name} ({name} merchant {connected.merchant_id})"
        if connected.business_name
        else f"Your {name} merchant {connected.merchant_id}"
    )
    return page(
        200,
        f"{name} connected",
        f"{who} is connected. Your orders are being copied now; you can close this page.",
    )
