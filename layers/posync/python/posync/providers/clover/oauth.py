"""Clover OAuth v2 (expiring tokens): consent URL, callback, code exchange, refresh.

Register rows relied on (``docs/provider-contracts.md``): CLV-HOST-1, CLV-OAUTH-1,
CLV-OAUTH-2, CLV-OAUTH-3.

- Consent: ``{authorize_base}/oauth/v2/authorize?client_id&redirect_uri&state[&merchant_id]``;
  the merchant id preselects the merchant for App Market entries.
- Callback: ``merchant_id``, ``client_id``, ``code``, ``state``; a denial carries
  ``error=access_denied``.
- Exchange: POST ``{oauth_base}/oauth/v2/token`` JSON ``{client_id, client_secret, code}``
  -> ``access_token``, ``access_token_expiration``, ``refresh_token``,
  ``refresh_token_expiration`` (Unix seconds). The reply does not name the merchant, so
  ``GET {api_base}/v3/merchants/{merchant_id}`` with the new token must answer 200 before the
  callback's merchant_id is believed (a rewritten merchant_id is refused).
- Refresh: POST ``{oauth_base}/oauth/v2/refresh`` JSON ``{client_id, refresh_token}``. A
  refresh token works once. Clover may refuse a refresh while the access token is still
  valid (400 ``access_token not expired``): that is ``RefreshNotDue``, not a revocation.
  Any other 4xx (invalid, used or revoked refresh token) is ``RefreshRefused``; one whose
  message names the client id or secret, or whose ``Date`` is > 300 s off, is the app's
  (``AppAuthFailed``).
- Recovery (high-trust apps): POST ``{oauth_base}/oauth/v2/recovery`` JSON ``{client_id,
  client_secret, recovery_token}``, the recovery token being the refresh token spent to issue
  the lost one, within two weeks; the reply is a refresh reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from posync.app_credentials import CloverAppCredentials
from posync.config import ProviderHosts
from posync.domain import check_merchant_id
from posync.errors import ProviderError
from posync.providers import (
    CallbackParams,
    ExchangeRefused,
    Grant,
    UsesSession,
    check_clock,
    error_text,
    exchange_reply,
    json_object,
    post,
    raise_unless_refusal,
    reaching,
    scrub,
    token_timeout,
)
from posync.tokens import AppAuthFailed, RefreshNotDue, RefreshRefused, TokenSet

if TYPE_CHECKING:
    import requests

# Used only when a reply omits an expiry (Clover always sends them): assume short lives.
FALLBACK_ACCESS_TTL_S = 600


def _expiry(body: Mapping[str, Any], key: str, fallback: int | None) -> int | None:
    raw = body.get(key)
    try:
        return int(raw) if raw is not None else fallback
    except (TypeError, ValueError):
        return fallback


class CloverOAuth(UsesSession):
    name = "clover"

    def __init__(
        self,
        hosts: ProviderHosts,
        credentials: Callable[[], CloverAppCredentials],
        session: requests.Session | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hosts = hosts
        self._credentials = credentials
        self._given_session = session
        self._clock = clock

    def authorize_url(self, redirect_uri: str, state: str, merchant_hint: str | None = None) -> str:
        query = {"client_id": self._credentials().client_id, "redirect_uri": redirect_uri, "state": state}
        if merchant_hint:
            query["merchant_id"] = check_merchant_id("clover", merchant_hint)
        return f"{self._hosts.authorize_base}/oauth/v2/authorize?{urlencode(query)}"

    def read_callback(self, params: Mapping[str, str]) -> CallbackParams:
        error = params.get("error")
        return CallbackParams(
            state=params.get("state") or None,
            code=params.get("code") or None,
            denied=bool(error) or not params.get("code"),
            merchant_id=params.get("merchant_id") or None,
            error=scrub(error) if error else (None if params.get("code") else "no authorization code"),
        )

    def _tokens(self, body: Mapping[str, Any], now: float, what: str) -> TokenSet:
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ProviderError(f"{what} answered without an access token")
        refresh = body.get("refresh_token")
        return TokenSet(
            access_token=access,
            access_expires_at=_expiry(body, "access_token_expiration", int(now) + FALLBACK_ACCESS_TTL_S) or 0,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            refresh_expires_at=_expiry(body, "refresh_token_expiration", None),
            obtained_at=int(now),
        )

    def exchange_code(self, callback: CallbackParams, redirect_uri: str) -> Grant:
        what = "clover token endpoint"
        if not callback.code:
            raise ExchangeRefused("no authorization code")
        merchant_id = check_merchant_id("clover", callback.merchant_id or "")
        creds = self._credentials()
        resp = post(
            self._session,
            f"{self._hosts.oauth_base}/oauth/v2/token",
            what=what,
            json_body={
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
                "code": callback.code,
            },
        )
        tokens = self._tokens(exchange_reply(resp, "clover", what), self._clock(), what)
        name = self._check_merchant(merchant_id, tokens.access_token)
        return Grant(merchant_id=merchant_id, tokens=tokens, business_name=name)

    def _check_merchant(self, merchant_id: str, access_token: str) -> str | None:
        """Clover's token reply does not say whose token it is, and the callback's merchant_id is a
        query parameter anyone can rewrite: ask the API whether the token opens that merchant, so a
        token of one merchant is never stored under (and never takes over) another."""
        what = "clover merchant check"
        timeout = token_timeout(what)
        with reaching(what):
            resp = self._session.get(
                f"{self._hosts.api_base}/v3/merchants/{merchant_id}",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=timeout,
                allow_redirects=False,
            )
        if resp.status_code in (401, 403, 404):
            raise ExchangeRefused(
                f"the authorization code was not issued for this merchant ({resp.status_code})"
            )
        if resp.status_code != 200:
            raise ProviderError(f"{what} answered {resp.status_code}", status=resp.status_code)
        name = json_object(resp, what).get("name")  # the merchant's business name (success page)
        return (name.strip()[:120] or None) if isinstance(name, str) else None

    def refresh(self, tokens: TokenSet) -> TokenSet:
        what = "clover refresh endpoint"
        if not tokens.refresh_token:
            raise RefreshRefused(
                "no refresh token stored (legacy non-expiring token?); the merchant must reconnect"
            )
        now = self._clock()
        if tokens.refresh_expires_at is not None and tokens.refresh_expires_at <= now:
            raise RefreshRefused("the clover refresh token has expired; the merchant must reconnect")
        resp = post(
            self._session,
            f"{self._hosts.oauth_base}/oauth/v2/refresh",
            what=what,
            json_body={"client_id": self._credentials().client_id, "refresh_token": tokens.refresh_token},
        )
        if resp.status_code == 200:
            fresh = self._tokens(json_object(resp, what), now, what)
            return tokens.renewed(
                fresh.access_token,
                fresh.access_expires_at,
                fresh.refresh_token,
                fresh.refresh_expires_at,
                now,
            )
        raise_unless_refusal(resp, what)
        message = error_text(resp)
        # Clover tells an early refresh apart only by its message; this adapter is the one
        # place that knows it.
        if resp.status_code == 400 and "not expired" in message.lower():
            raise RefreshNotDue("clover: access_token not expired")
        self._app_refusal(resp, message, now, what)
        raise RefreshRefused(
            f"clover refused the refresh token ({resp.status_code}: {message or 'no detail'}); "
            "it was revoked, already used, or its reply was lost and recovery did not mend it: "
            "the merchant must reconnect"
        )

    def _app_refusal(self, resp: requests.Response, message: str, now: float, what: str) -> None:
        """A refusal of the app, not of the grant: our clock, or a client id or secret Clover does
        not know (Clover has no error codes: its message names the field, CLV-TOKEN-05)."""
        check_clock(resp, now, what)
        text = message.lower()
        if "client_id" in text or "client_secret" in text or "client id" in text or "client secret" in text:
            raise AppAuthFailed("credentials", f"{what} refused the app's credentials ({resp.status_code})")

    def recover(self, tokens: TokenSet, recovery_token: str) -> TokenSet:
        """Clover's recovery (high-trust apps, CLV-TOKEN-03): POST ``/oauth/v2/recovery`` JSON
        ``{client_id, client_secret, recovery_token}`` with the refresh token that was spent to
        issue the lost one (up to two weeks old) -> a new pair, as a refresh answers."""
        what = "clover recovery endpoint"
        now = self._clock()
        creds = self._credentials()
        resp = post(
            self._session,
            f"{self._hosts.oauth_base}/oauth/v2/recovery",
            what=what,
            json_body={
                "client_id": creds.client_id,
                "client_secret": creds.client_secret,
                "recovery_token": recovery_token,
            },
        )
        if resp.status_code == 200:
            fresh = self._tokens(json_object(resp, what), now, what)
            return replace(
                fresh,
                connected_at=tokens.connected_at,
                previous_refresh_token=None,  # the lost token's predecessor recovers nothing any more
                previous_refresh_until=None,
            )
        raise_unless_refusal(resp, what)
        message = error_text(resp)
        self._app_refusal(resp, message, now, what)
        raise RefreshRefused(
            f"clover refused the recovery token ({resp.status_code}: {message or 'no detail'})"
        )
