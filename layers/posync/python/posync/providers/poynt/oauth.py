"""GoDaddy Poynt OAuth: consent URL, callback, code exchange, refresh and the app's own token.

- The app authenticates with a **self-signed RS256 JWT**: ``iss = sub = <app id>``,
  ``aud = <API base>`` (``POSYNC_POYNT_API_BASE``, see ``posync.config``), ``iat``, ``exp``
  (``APP_JWT_TTL_S`` later, under Poynt's 300 s cap) and a fresh random ``jti`` every time
  (Poynt rejects a reused one), signed with the app's private key.
- Consent: ``{authorize_base}/applications/authorize?client_id=<app id>&redirect_uri&context``;
  our signed state travels as ``context``. The callback gets ``code``, ``status`` and
  ``context``. ``status``'s values are not documented (PNT-CONSENT-STATUS; Poynt's own sample
  app only checks that ``code`` came back): a ``code`` without an ``error`` is an approval
  whatever ``status`` says, unless ``status`` is a recognizable denial (``DENIAL_WORDS``).
  The business is never taken from the redirect (its ``businessId`` is deprecated): it is the
  access token's ``poynt.biz``, else the code's (PNT-CONSENT-BIZ).
- Exchange: POST ``{api_base}/token`` with ``Authorization: Bearer <self-signed JWT>`` and
  form ``grant_type=authorization_code&code&client_id&redirect_uri`` -> ``accessToken``
  (a JWT whose ``poynt.biz`` claim is the merchant's business id), ``refreshToken``,
  ``expiresIn`` (seconds).
- Refresh: POST ``{api_base}/token`` form ``grantType=REFRESH_TOKEN&refreshToken=...``
  (with the self-signed JWT as client authentication); 400/401/403 are refusals, blamed on
  the merchant only after a fresh app-token grant succeeds (else ``AppAuthFailed``: key, aud
  or clock) and the reply's ``Date`` is within 300 s of ours.
- App token: ``grantType=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>``
  for app-level calls, cached per container until shortly before it expires.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from posync.app_credentials import PoyntAppCredentials
from posync.config import ProviderHosts
from posync.domain import MERCHANT_ID_PATTERNS
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
from posync.tokens import AppAuthFailed, RefreshRefused, TokenSet

if TYPE_CHECKING:
    import requests

API_VERSION = "1.2"
APP_JWT_TTL_S = 240  # Poynt accepts at most 300 s between iat and exp
APP_TOKEN_MARGIN_S = 120  # re-fetch the cached app token this long before it expires
DEFAULT_EXPIRES_IN_S = 86400
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


# Words that, in a ``status`` value, can only mean "not approved" (matched as whole words of the
# value, case-insensitively: ``DENIED``, ``access_denied``, ``USER_CANCELLED``, ``declined``...).
DENIAL_WORDS = frozenset(
    {
        "denied",
        "deny",
        "declined",
        "decline",
        "rejected",
        "reject",
        "cancelled",
        "canceled",
        "cancel",
        "refused",
        "error",
        "failed",
        "failure",
        "unauthorized",
        "forbidden",
        "aborted",
    }
)


def is_denial(status: str) -> bool:
    """Is this ``status`` value a recognizable denial? (An unknown or empty value is not.)"""
    words = {w for w in re.split(r"[^a-z]+", status.lower()) if w}
    return bool(words & DENIAL_WORDS)


def business_id_of(access_token: str) -> str:
    """The ``poynt.biz`` claim of a Poynt merchant access token.

    The signature is deliberately not verified here: the token is not user input. It is the
    body of the reply to a POST we made ourselves, over TLS, to the configured Poynt token
    endpoint, authenticated with our app's key, so its origin is already established; the
    claim is then checked against the business-id pattern before it is used anywhere.
    Verifying would also need Poynt's signing keys, which posync has no other use for.
    """
    import jwt  # PyJWT (and cryptography) load on first Poynt use, not at every cold start

    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ProviderError("poynt access token is not a JWT") from exc
    biz = claims.get("poynt.biz")
    if not isinstance(biz, str) or not MERCHANT_ID_PATTERNS["poynt"].fullmatch(biz):
        raise ProviderError("poynt access token carries no valid business id")
    return biz


class PoyntOAuth(UsesSession):
    name = "poynt"

    def __init__(
        self,
        hosts: ProviderHosts,
        credentials: Callable[[], PoyntAppCredentials],
        session: requests.Session | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hosts = hosts
        self._credentials = credentials
        self._given_session = session
        self._clock = clock
        self._app_token: tuple[str, float] | None = None
        self._app_token_lock = threading.Lock()

    # -- the app's own credentials ---------------------------------------------------------

    def self_signed_jwt(self) -> str:
        import jwt  # on first Poynt use (see business_id_of)

        creds = self._credentials()
        now = int(self._clock())
        claims = {
            "iss": creds.app_id,
            "sub": creds.app_id,
            "aud": self._hosts.api_base,
            "iat": now,
            "exp": now + APP_JWT_TTL_S,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, creds.private_key, algorithm="RS256")

    def _headers(self, bearer: str | None = None) -> dict[str, str]:
        headers = {"api-version": API_VERSION, "POYNT-REQUEST-ID": str(uuid.uuid4())}
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return headers

    def app_id(self) -> str:
        return self._credentials().app_id

    def forget_app_token(self, rejected: str) -> None:
        """Poynt answered 401 to ``rejected``: the next call fetches a new app token."""
        with self._app_token_lock:
            if self._app_token is not None and self._app_token[0] == rejected:
                self._app_token = None

    def app_access_token(self) -> str:
        """The app's own access token (JWT bearer grant), cached until near its expiry."""
        with self._app_token_lock:
            now = self._clock()
            if self._app_token is not None and self._app_token[1] - APP_TOKEN_MARGIN_S > now:
                return self._app_token[0]
            what = "poynt token endpoint (app token)"
            resp = post(
                self._session,
                f"{self._hosts.api_base}/token",
                what=what,
                form={"grantType": JWT_BEARER, "assertion": self.self_signed_jwt()},
                headers=self._headers(),
            )
            if resp.status_code != 200:
                raise ProviderError(
                    f"{what} refused the app assertion ({resp.status_code}: {error_text(resp)})",
                    status=resp.status_code,
                )
            body = json_object(resp, what)
            token = body.get("accessToken")
            if not isinstance(token, str) or not token:
                raise ProviderError(f"{what} answered without an access token")
            self._app_token = (token, now + float(body.get("expiresIn") or DEFAULT_EXPIRES_IN_S))
            return token

    # -- merchant consent ------------------------------------------------------------------

    def authorize_url(self, redirect_uri: str, state: str, merchant_hint: str | None = None) -> str:
        query = {"client_id": self._credentials().client_id, "redirect_uri": redirect_uri, "context": state}
        return f"{self._hosts.authorize_base}/applications/authorize?{urlencode(query)}"

    def read_callback(self, params: Mapping[str, str]) -> CallbackParams:
        status = (params.get("status") or "").strip()
        code = params.get("code") or None
        error = (params.get("error") or "").strip()
        approved = code is not None and not error and not is_denial(status)
        return CallbackParams(
            state=params.get("context") or None,
            code=code,
            denied=not approved,
            merchant_id=None,
            error=None if approved else scrub(error or status or "no authorization code"),
        )

    def _tokens(self, body: Mapping[str, Any], now: float, what: str) -> TokenSet:
        access = body.get("accessToken")
        if not isinstance(access, str) or not access:
            raise ProviderError(f"{what} answered without an access token")
        refresh = body.get("refreshToken")
        try:
            expires_in = int(body.get("expiresIn") or DEFAULT_EXPIRES_IN_S)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN_S
        return TokenSet(
            access_token=access,
            access_expires_at=int(now) + expires_in,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            refresh_expires_at=None,  # Poynt does not say
            obtained_at=int(now),
            token_type=str(body.get("tokenType") or "BEARER"),
        )

    def exchange_code(self, callback: CallbackParams, redirect_uri: str) -> Grant:
        what = "poynt token endpoint"
        if not callback.code:
            raise ExchangeRefused("no authorization code")
        now = self._clock()
        resp = post(
            self._session,
            f"{self._hosts.api_base}/token",
            what=what,
            form={
                "grant_type": "authorization_code",
                "code": callback.code,
                "client_id": self._credentials().client_id,
                "redirect_uri": redirect_uri,
            },
            headers=self._headers(bearer=self.self_signed_jwt()),
        )
        tokens = self._tokens(exchange_reply(resp, "poynt", what), now, what)
        try:
            biz = business_id_of(tokens.access_token)
        except ProviderError:
            biz = business_id_of(callback.code)  # the code is a JWT carrying poynt.biz too
        name = self._business_name(biz, tokens.access_token)
        return Grant(merchant_id=biz, tokens=tokens, business_name=name)

    def _business_name(self, biz: str, access_token: str) -> str | None:
        """``GET /businesses/{id}``'s ``doingBusinessAs`` (else ``legalName``), for the success
        page only: any failure (or no time left) is None, never a failed connect."""
        what = "poynt business read"
        try:
            timeout = token_timeout(what)
            with reaching(what):
                resp = self._session.get(
                    f"{self._hosts.api_base}/businesses/{biz}",
                    headers=self._headers(bearer=access_token),
                    timeout=timeout,
                    allow_redirects=False,
                )
            body = json_object(resp, what) if resp.status_code == 200 else {}
        except ProviderError:
            return None
        for key in ("doingBusinessAs", "legalName"):
            if isinstance(body.get(key), str) and body[key].strip():
                return str(body[key]).strip()[:120]
        return None

    def refresh(self, tokens: TokenSet) -> TokenSet:
        what = "poynt token endpoint (refresh)"
        if not tokens.refresh_token:
            raise RefreshRefused("no poynt refresh token stored; the merchant must reconnect")
        now = self._clock()
        resp = post(
            self._session,
            f"{self._hosts.api_base}/token",
            what=what,
            form={"grantType": "REFRESH_TOKEN", "refreshToken": tokens.refresh_token},
            headers=self._headers(bearer=self.self_signed_jwt()),
        )
        if resp.status_code == 200:
            fresh = self._tokens(json_object(resp, what), now, what)
            return tokens.renewed(fresh.access_token, fresh.access_expires_at, fresh.refresh_token, None, now)
        raise_unless_refusal(resp, what)
        check_clock(resp, now, what)
        self._probe_app()
        raise RefreshRefused(
            f"poynt refused the refresh token ({resp.status_code}: {error_text(resp) or 'no detail'}); "
            "the merchant must reconnect"
        )

    def _probe_app(self) -> None:
        """Before a refusal is blamed on the merchant: does Poynt still accept the app itself?

        A fresh JWT-bearer grant (PNT-TOKEN-04) fails with 401 when the key pair was rotated,
        the ``aud`` is wrong for the region or our clock is off: ``AppAuthFailed``. A 5xx or a
        timeout is ``ProviderError`` (unsure: the caller flags nobody).
        """
        what = "poynt token endpoint (app check)"
        now = self._clock()
        resp = post(
            self._session,
            f"{self._hosts.api_base}/token",
            what=what,
            form={"grantType": JWT_BEARER, "assertion": self.self_signed_jwt()},
            headers=self._headers(),
        )
        if resp.status_code == 200:
            return
        raise_unless_refusal(resp, what)
        check_clock(resp, now, what)
        text = error_text(resp).lower()
        kind = (
            "audience"
            if "audience" in text or "aud" in text.split()
            else "clock"
            if "expired" in text or "iat" in text or "future" in text
            else "key"
            if "signature" in text or "unknown application" in text
            else "credentials"
        )
        raise AppAuthFailed(kind, f"poynt refused the app's own assertion ({resp.status_code}, {kind})")
