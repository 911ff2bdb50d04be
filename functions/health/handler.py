"""GET /health: the API is up and the stage's settings are valid (``posync.http.health_response``).

The settings are parsed at cold start as every handler parses them; when they do not parse,
the answer is a 503 without detail (the reason is logged once). Credentials are not checked.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.config import ConfigError, Settings
from posync.http import health_response
from posync.observability import logger

try:
    Settings.from_env()
    SETTINGS_ERROR: str | None = None
except ConfigError as exc:
    SETTINGS_ERROR = str(exc)
    logger.error("the stage's settings are invalid", extra={"error": SETTINGS_ERROR})


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if SETTINGS_ERROR is not None:
        logger.error("health: settings invalid", extra={"error": SETTINGS_ERROR})
    return health_response(settings_valid=SETTINGS_ERROR is None)
