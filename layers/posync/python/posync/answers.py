"""Domain exceptions become HTTP answers here, in one place, for every API handler.

``@answers("page")`` (browser routes: connect, callback) answers with small HTML pages;
``@answers("json")`` (webhooks) with JSON. Messages shown are the exceptions' own safe texts
or fixed wording; an unexpected exception is logged with its trace and answered with a
generic 500 that carries only the request id. Every 5xx answered here is counted
(``ApiServerErrors``): the exception never reaches Lambda, so its ``Errors`` metric cannot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from posync.app_credentials import AppNotConfigured
from posync.authorization import CallbackFailed
from posync.errors import InvalidInput, InvalidState, PosyncError, ProviderError, UnknownProvider
from posync.http import json_response, page
from posync.oauth_state import InvalidLink, StateKeyUnavailable
from posync.observability import logger, metrics
from posync.webhooks import PayloadTooLarge, VerificationRateLimited, WebhookUnauthorized

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]
Kind = Literal["page", "json"]


def _answer(
    kind: Kind, status: int, title: str, message: str, link: tuple[str, str] | None = None
) -> dict[str, Any]:
    if kind == "json":
        return json_response(status, {"error": title, "message": message})
    return page(status, title, message, link)


def answer_for(exc: Exception, kind: Kind, request_id: str) -> dict[str, Any]:
    """The HTTP answer for ``exc``."""
    if isinstance(exc, CallbackFailed):
        link = (exc.retry_url, "Start again") if exc.retry_url else None
        return _answer(kind, exc.status, exc.title, exc.message, link)
    if isinstance(exc, InvalidLink):
        if exc.reason == "expired":
            return _answer(
                kind, 400, "This connect link has expired", "Ask whoever sent it to you for a new link."
            )
        return _answer(
            kind,
            400,
            "This connect link is not valid",
            "It was altered or not issued by posync's operator, so nothing was started. "
            "Ask whoever sent it to you for a new link.",
        )
    if isinstance(exc, UnknownProvider):
        return _answer(kind, 404, "Not found", "There is no such provider here.")
    if isinstance(exc, WebhookUnauthorized):
        return json_response(401, {"error": "unauthorized"})
    if isinstance(exc, VerificationRateLimited):
        return _answer(kind, 429, "Too many requests", str(exc))
    if isinstance(exc, PayloadTooLarge):
        return _answer(kind, 413, "Payload too large", str(exc))
    if isinstance(exc, InvalidState):
        return _answer(
            kind, 400, "Invalid sign-in link", "The sign-in link is not valid. Please start again."
        )
    if isinstance(exc, InvalidInput):
        return _answer(kind, 400, "Bad request", str(exc))
    if isinstance(exc, AppNotConfigured | StateKeyUnavailable):
        logger.error("service not configured", extra={"error": str(exc)})
        return _answer(
            kind, 503, "Not available yet", "This service is not fully set up yet. Please try again later."
        )
    if isinstance(exc, ProviderError):
        return _answer(
            kind, 502, "Provider not responding", "The provider did not answer. Please try again later."
        )
    if isinstance(exc, PosyncError):
        logger.error("unhandled domain error", extra={"error": type(exc).__name__})
    else:
        logger.exception("unexpected error")
    return _answer(kind, 500, "Something went wrong", f"Please try again later (request {request_id}).")


def answers(kind: Kind) -> Callable[[Handler], Handler]:
    """Wrap a handler so any exception becomes an answer (see ``answer_for``)."""

    def decorate(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def wrapper(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            try:
                return fn(event, context)
            except Exception as exc:  # noqa: BLE001 (this is the one place errors become answers)
                request_id = str(getattr(context, "aws_request_id", "") or "unknown")
                answer = answer_for(exc, kind, request_id)
                if int(answer["statusCode"]) >= 500:
                    metrics.add_metric(name="ApiServerErrors", unit=MetricUnit.Count, value=1)
                return answer

        return wrapper

    return decorate


def path_param(event: dict[str, Any], name: str) -> str:
    value = (event.get("pathParameters") or {}).get(name)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"missing path parameter {name}")
    return value


def query(event: dict[str, Any]) -> dict[str, str]:
    """Query parameters (API Gateway joins a repeated one with commas; patterns then refuse it)."""
    params: dict[str, str] = {}
    for key, value in (event.get("queryStringParameters") or {}).items():
        params[str(key)] = str(value)
    return params


def body_bytes(event: dict[str, Any], limit: int) -> bytes:
    """The raw request body (base64 decoded when API Gateway encoded it), at most ``limit`` bytes."""
    import base64
    import binascii

    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        if len(raw) > (limit * 4) // 3 + 8:
            raise PayloadTooLarge(f"bodies are limited to {limit} bytes")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput("the body is not valid base64") from exc
    else:
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > limit:
        raise PayloadTooLarge(f"bodies are limited to {limit} bytes")
    return data
