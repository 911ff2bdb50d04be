"""GET /connect/{provider}: 302 to the provider's consent page with a signed state, and the
browser-binding cookie the callback will require.

Query: ``ref``, ``exp``, ``sig`` (an operator-signed link from ``posync connect-link``: the
ref travels inside the state onto the connection) and, for Clover App Market entries,
``merchant_id`` (preselects the merchant). An unsigned, forged or expired ``ref`` gets a page.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.answers import answers, path_param, query
from posync.authorization import build_connect_service
from posync.config import Settings
from posync.http import redirect
from posync.oauth_state import cookie_value
from posync.observability import logger, metrics

SETTINGS = Settings.from_env()
SERVICE = build_connect_service(SETTINGS)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
@answers("page")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    consent = SERVICE.begin(path_param(event, "provider"), query(event), cookie_value(event.get("cookies")))
    return redirect(consent.url, cookies=[consent.set_cookie])
