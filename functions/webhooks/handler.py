"""POST /webhooks/{provider}: verify the provider's signature, then queue syncs or revoke.

Answers 200 ``{"ok": true}`` for every authentic message (known merchant or not), 401 for a
bad signature, 413 for a body over 256 KiB.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.answers import answers, body_bytes, path_param
from posync.config import Settings
from posync.http import json_response
from posync.observability import logger, metrics
from posync.webhooks import MAX_BODY_BYTES, build_webhook_service

SETTINGS = Settings.from_env()
SERVICE = build_webhook_service(SETTINGS)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
@answers("json")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    provider = path_param(event, "provider")
    body = body_bytes(event, MAX_BODY_BYTES)
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    SERVICE.handle(provider, headers, body)
    return json_response(200, {"ok": True})
