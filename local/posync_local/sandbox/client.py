"""Small HTTP helpers that play the merchant and the app against a sandbox (tests, demo, benchmarks).

They do over real HTTP what a browser and posync would: post the consent form, exchange the
code. They return the provider's token replies; nothing is logged.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

from posync_local.sandbox.clover import CloverSandbox
from posync_local.sandbox.keys import app_assertion
from posync_local.sandbox.poynt import PoyntSandbox

DEFAULT_REDIRECT = "http://127.0.0.1:9/oauth/callback"
TIMEOUT = 10


def query_of(location: str) -> dict[str, str]:
    """The query parameters of a redirect ``Location`` (first value of each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def clover_code(
    clover: CloverSandbox, merchant_id: str, redirect_uri: str = DEFAULT_REDIRECT, **extra: str
) -> str:
    """Approve the default app for ``merchant_id`` on the consent page; return the code."""
    form = {
        "client_id": clover.client_id,
        "redirect_uri": redirect_uri,
        "state": "sandbox",
        "merchant_id": merchant_id,
        "decision": "approve",
        **extra,
    }
    r = requests.post(f"{clover.url}/oauth/v2/authorize", data=form, allow_redirects=False, timeout=TIMEOUT)
    if r.status_code != 302:
        raise RuntimeError(f"consent failed with HTTP {r.status_code}")
    return query_of(r.headers["Location"])["code"]


def clover_connect(clover: CloverSandbox, merchant_id: str) -> dict[str, Any]:
    """Consent and code exchange: Clover's token reply (``access_token``, ``refresh_token``, ...)."""
    code = clover_code(clover, merchant_id)
    r = requests.post(
        f"{clover.url}/oauth/v2/token",
        json={"client_id": clover.client_id, "client_secret": clover.client_secret, "code": code},
        timeout=TIMEOUT,
    )
    if r.status_code != 200:
        raise RuntimeError(f"code exchange failed with HTTP {r.status_code}")
    body: dict[str, Any] = r.json()
    return body


def poynt_assertion(poynt: PoyntSandbox, audience: str | None = None, **kw: Any) -> str:
    """A self-signed JWT of the sandbox's default app (``keys.app_assertion`` options apply)."""
    return app_assertion(poynt.app_id, poynt.app_private_key_pem, audience or poynt.url, **kw)


def poynt_code(poynt: PoyntSandbox, business_id: str, redirect_uri: str = DEFAULT_REDIRECT) -> str:
    form = {
        "client_id": poynt.app_id,
        "redirect_uri": redirect_uri,
        "context": "sandbox",
        "business_id": business_id,
        "decision": "approve",
    }
    r = requests.post(
        f"{poynt.url}/applications/authorize", data=form, allow_redirects=False, timeout=TIMEOUT
    )
    if r.status_code != 302:
        raise RuntimeError(f"consent failed with HTTP {r.status_code}")
    return query_of(r.headers["Location"])["code"]


def poynt_connect(poynt: PoyntSandbox, business_id: str) -> dict[str, Any]:
    """Consent and code exchange: Poynt's token reply (``accessToken``, ``refreshToken``, ...)."""
    code = poynt_code(poynt, business_id)
    r = requests.post(
        f"{poynt.url}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": poynt.app_id,
            "redirect_uri": DEFAULT_REDIRECT,
        },
        headers={"Authorization": f"Bearer {poynt_assertion(poynt)}"},
        timeout=TIMEOUT,
    )
    if r.status_code != 200:
        raise RuntimeError(f"code exchange failed with HTTP {r.status_code}")
    body: dict[str, Any] = r.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def poynt_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"BEARER {token}", "api-version": "1.2"}
