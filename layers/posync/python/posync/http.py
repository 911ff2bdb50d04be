"""Shaping API Gateway (HTTP API, payload v2) responses: HTML pages, JSON, redirects."""

from __future__ import annotations

import html
import json
from typing import Any

SECURITY_HEADERS: dict[str, str] = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def json_response(status: int, body: Any) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {**SECURITY_HEADERS, "Content-Type": "application/json"},
        "body": json.dumps(body, separators=(",", ":")),
    }


def redirect(location: str, status: int = 302, cookies: list[str] | None = None) -> dict[str, Any]:
    """A redirect; ``cookies`` are ``Set-Cookie`` values (API Gateway v2's ``cookies`` list)."""
    answer: dict[str, Any] = {
        "statusCode": status,
        "headers": {**SECURITY_HEADERS, "Location": location},
        "body": "",
    }
    if cookies:
        answer["cookies"] = list(cookies)
    return answer


def page(status: int, title: str, message: str, link: tuple[str, str] | None = None) -> dict[str, Any]:
    """A small self-contained HTML page. Every value is escaped; callers pass plain text."""
    link_html = ""
    if link is not None:
        href, text = link
        link_html = f'<p><a href="{html.escape(href, quote=True)}">{html.escape(text)}</a></p>'
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}"
        "h1{font-size:1.5rem}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{link_html}</body></html>"
    )
    return {
        "statusCode": status,
        "headers": {**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"},
        "body": body,
    }


def health_response(settings_valid: bool = True) -> dict[str, Any]:
    """``/health``: 200 ``ok`` when the function's settings parsed, else 503 ``unavailable`` (no
    detail: the reason is in the function's log). App credentials and providers are not checked
    here (a public, unauthenticated route with no secret access): ``posync app-credentials
    show`` checks those."""
    if not settings_valid:
        return json_response(503, {"status": "unavailable"})
    return json_response(200, {"status": "ok"})
