"""The Poynt sandbox: consent page, ``/token`` (JWT bearer, authorization code, refresh), orders.

Poynt serves consent on one host and the token endpoint and API on another (``posync.config``); the
sandbox serves all of them on one host (point both ``POSYNC_POYNT_*_BASE`` settings at it).

Choices where Poynt's docs are silent, or where the sandbox must pick:

- **Profiles** (:data:`PROFILES`, ``PoyntSandbox(profile=...)``; ``docs/provider-contracts.md``):
  where Poynt's record is silent, each plausible reading is one profile, and posync's tests run
  under all of them. A profile says how ``status`` is spelled on the consent redirect
  (approval and denial), what ``startAt``/``endAt`` filter (``updatedAt``, or ``createdAt`` as
  Poynt's Python SDK documents), the order rows come in, and the ``rel`` of the paging link
  (or no links at all).
- Consent ``GET /applications/authorize?client_id&redirect_uri&context`` (the older
  ``applicationId`` / ``callback`` names work too). Approval redirects to
  ``redirect_uri?code=..&status=<profile>&context=..&businessId=..`` (``businessId`` is the
  deprecated parameter Poynt still sends); denial to ``redirect_uri?status=<profile>&context=..``
  with no code. The code is a JWT whose ``poynt.biz`` is the business (as Poynt's).
- ``POST /token`` (form; ``grantType`` and ``grant_type`` are both read):
  (a) ``urn:ietf:params:oauth:grant-type:jwt-bearer`` + ``assertion``: the RS256 JWT is verified
  against the registered public key of its ``iss``; ``sub`` must equal ``iss``, ``aud`` must be
  the sandbox's URL or Poynt's public API base, ``exp`` in the future, ``exp - iat <= 300`` and
  ``jti`` never seen before. It gives an app token.
  (b) ``authorization_code`` + ``code``, ``client_id``, ``redirect_uri`` with
  ``Authorization: Bearer <app JWT>`` (verified as in (a), ``iss`` must be ``client_id``; the
  ``redirect_uri`` must be the one the consent carried) gives merchant tokens.
  (c) ``REFRESH_TOKEN`` + ``refreshToken`` gives a new pair; the old refresh token is dead from
  then on (``knobs.refresh_reuse = "survives"``: the reading where it keeps working).
  No Authorization header is needed (one sent is ignored).
  ``knobs.refresh_client_auth`` is the profile for an ``Authorization`` JWT sent on a refresh
  (not documented): ``ignored`` (default) or ``verified`` like the other grants.
  ``knobs.jwt_audience`` narrows the accepted ``aud`` to one value (a region mismatch);
  ``knobs.clock_skew_s`` moves the clock JWT times are checked against (and the ``Date``
  header); ``rotate_app_key()`` registers a new key pair for the app.
  A bad JWT -> 401 ``{"code": "UNAUTHORIZED", ...}``; a bad, used or expired code or refresh
  token, or a revoked authorization -> 400 ``{"code": "INVALID_GRANT", "error": "invalid_grant"}``.
- Access tokens are JWTs signed RS256 by the sandbox's own key (``public_key_pem``) with ``iss``
  (the sandbox URL), ``sub`` and ``aud`` (the app id), ``iat``, ``exp``, ``jti``, and for merchant
  tokens ``poynt.biz``, ``poynt.uid``, ``poynt.str`` and ``poynt.sct``. The sandbox's record of
  a token decides (``expire_access_tokens`` and ``revoke`` end tokens whose ``exp`` is still
  ahead). ``expiresIn`` is ``knobs.access_ttl_s`` (default 86400); refresh tokens are opaque and
  live ``knobs.refresh_ttl_s`` (default one year).
- ``GET /businesses/{businessId}/orders``: a merchant token of that business, or an app token of
  an app the business has authorized (and not revoked); otherwise 401 (no valid token) or 403
  (another business). A missing ``api-version`` header is tolerated (counted in
  ``stats.missing_api_version``). ``startAt`` (inclusive) and ``endAt`` (exclusive) filter on
  the profile's field (ISO 8601; no offset means UTC); ``If-Modified-Since`` (an HTTP date)
  keeps orders updated at or after it, and answers 304 when none is; ``limit`` defaults to 10
  and values above 100 act as 100; ``startOffset`` skips. Rows come in the profile's order.
  ``links`` holds a link with the profile's ``rel`` (relative, with the same query and the next
  ``startOffset``) only while more remain; the ``If-Modified-Since`` header is not part of it:
  send it again. ``count`` is the total.
- Changes to older orders: ``cancel_order`` and ``refund_order`` give an order a new version
  (``updatedAt`` now) that is cancelled (its authorization voided) or refunded (a REFUND
  transaction of the given amount, ``refundedTotals`` updated); ``strip_item_ids`` serves an
  order's items without ``id`` (Poynt's model allows it).
- On-terminal apps: ``install_app(business_id)`` installs the default app on a business (its
  app token may then read that business, no consent); ``GET /apps/{appId}/subscriptions``
  (the billing host, served here too) lists the installs as Poynt's billing API does
  (``{list: [{businessId, appId, subscriptionId, status, phase, ...}], start, count, total}``);
  ``uninstall_app`` ends one. ``send_subscription_event`` posts ``APPLICATION_SUBSCRIPTION_START``
  / ``_END``.
- Webhooks (``send_webhook``): one POST per order, an event
  ``{"eventType": "ORDER_UPDATED", "businessId", "resourceId", "resource": "/orders", ...}``
  signed with ``Poynt-Webhook-Signature`` = base64 HMAC-SHA1 of the body keyed with
  ``webhook_secret``. ``send_uninstall`` sends ``APPLICATION_SUBSCRIPTION_END``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from posync.config import provider_hosts
from posync_local.sandbox.clover import _post
from posync_local.sandbox.data import PoyntFactory, derive_seed, iso_ms, uuid4
from posync_local.sandbox.keys import generate_rsa_keypair
from posync_local.sandbox.merchants import (
    Grant,
    Issued,
    OrderSandbox,
    error_page,
    redirect_ok,
    with_query,
)
from posync_local.sandbox.orderbook import INF
from posync_local.sandbox.server import (
    Principal,
    Request,
    Response,
    html_response,
    json_response,
    redirect,
)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Poynt's public API base is also an accepted audience of app JWTs (the value apps use in production).
PUBLIC_AUDIENCE = provider_hosts("poynt", {}).api_base
MAX_ASSERTION_LIFETIME_S = 300
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BID = r"(?P<bid>[0-9a-fA-F-]+)"
_OID = r"(?P<oid>[0-9a-fA-F-]+)"


@dataclass(frozen=True)
class PoyntProfile:
    """One reading of what Poynt's docs leave open (see the module docstring)."""

    name: str
    approve_status: str | None  # ``status`` on an approval redirect (None: no status parameter)
    deny_status: str | None  # ``status`` on a denial redirect
    deny_error: str | None  # ``error`` on a denial redirect
    window_field: str  # what startAt/endAt filter: "modified" (updatedAt) | "created" (createdAt)
    row_order: str  # "updated_asc" | "updated_desc" | "created_desc" | "id"
    link_rel: str | None  # the paging link's rel (None: no links at all)


PROFILES: dict[str, PoyntProfile] = {
    p.name: p
    for p in (
        # what posync used to assume, and its sandbox confirmed
        PoyntProfile("guessed", "success", "denied", None, "modified", "updated_asc", "next"),
        # as Poynt's Python SDK documents startAt/endAt (creation time); newest created first
        PoyntProfile("sdk", "AUTHORIZED", "DENIED", None, "created", "created_desc", "NEXT"),
        # the least the docs promise: no status on approval, no links, rows by id
        PoyntProfile("sparse", None, None, "access_denied", "created", "id", None),
        # update time, newest first: a row changed while paging moves to the front
        PoyntProfile("newest-first", "OK", "CANCELED", None, "modified", "updated_desc", "self-next"),
    )
}
DEFAULT_PROFILE = "guessed"


@dataclass
class _Edit:
    """A change made to an order after it was generated (applied when it is served)."""

    kind: str  # "cancel" | "refund" | "no_item_ids"
    at_ms: int
    amount: int = 0


_SIGNING_KEYS: tuple[bytes, bytes] | None = None
_SIGNING_LOCK = threading.Lock()


def _signing_keys() -> tuple[bytes, bytes]:
    """The sandbox's own token-signing key pair: Poynt's key, made once per process."""
    global _SIGNING_KEYS  # noqa: PLW0603 (a process-wide lazy constant)
    with _SIGNING_LOCK:
        if _SIGNING_KEYS is None:
            _SIGNING_KEYS = generate_rsa_keypair()
        return _SIGNING_KEYS


@dataclass
class PoyntApp:
    app_id: str
    public_key: rsa.RSAPublicKey
    redirect_uri: str | None = None
    name: str = "posync"


_ORDERINGS: dict[str, Callable[[Any], Any]] = {
    "updated_asc": lambda st: (st.modified_ms, st.id),
    "updated_desc": lambda st: (st.modified_ms, st.id),  # reversed after sorting
    "created_desc": lambda st: (-st.created_ms, st.id),
    "id": lambda st: st.id,
}


def _apply_edit(order: dict[str, Any], e: _Edit, n: int) -> None:
    """One post-generation change to a served order (see ``PoyntSandbox.cancel_order`` & co)."""
    amounts = order["amounts"]
    txns = order.setdefault("transactions", [])
    if e.kind == "no_item_ids":
        for it in order.get("items", []):
            it.pop("id", None)
    elif e.kind == "cancel":
        order["statuses"]["status"] = "CANCELLED"
        order["statuses"]["transactionStatusSummary"] = "CANCELED"
        for t in txns:
            if t.get("action") in ("SALE", "AUTHORIZE", "CAPTURE") and t.get("status") != "VOIDED":
                t["status"] = "VOIDED"
                t["updatedAt"] = iso_ms(e.at_ms)
        captured = amounts.pop("capturedTotals", None)
        if captured:
            amounts["voidedTotals"] = captured
    elif e.kind == "refund":
        paid = next(
            t
            for t in reversed(txns)
            if t.get("action") in ("SALE", "CAPTURE") and t.get("status") != "VOIDED"
        )
        cur = amounts["currency"]
        txns.append(
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{order['id']}/refund/{n}")),
                "action": "REFUND",
                "status": "REFUNDED",
                "parentId": paid["id"],
                "amounts": {
                    "transactionAmount": e.amount,
                    "orderAmount": e.amount,
                    "tipAmount": 0,
                    "cashbackAmount": 0,
                    "currency": cur,
                },
                "fundingSource": paid.get("fundingSource", {"type": "CASH"}),
                "createdAt": iso_ms(e.at_ms),
                "updatedAt": iso_ms(e.at_ms),
            }
        )
        refunded = amounts.setdefault(
            "refundedTotals",
            {"currency": cur, "transactionAmount": 0, "orderAmount": 0, "tipAmount": 0, "cashbackAmount": 0},
        )
        refunded["transactionAmount"] += e.amount
        refunded["orderAmount"] += e.amount
        full = refunded["orderAmount"] >= amounts["capturedTotals"]["orderAmount"]
        order["statuses"]["transactionStatusSummary"] = "REFUNDED" if full else "PARTIALLY_REFUNDED"


class _Unauthorized(Exception):
    pass


class PoyntSandbox(OrderSandbox):
    """Poynt's consent, token and orders endpoints on one host (see the module docstring)."""

    provider = "poynt"
    factory_cls = PoyntFactory
    default_access_ttl = 86_400
    profile: PoyntProfile = PROFILES[DEFAULT_PROFILE]

    def use_profile(self, name: str) -> None:
        """Behave as profile ``name`` (see :data:`PROFILES`) from now on."""
        if name not in PROFILES:
            raise ValueError(f"unknown Poynt sandbox profile {name!r} (one of {', '.join(PROFILES)})")
        self.profile = PROFILES[name]

    def set_up(self) -> None:
        """The default app (seeded id, fresh keys and webhook secret) and the routes."""
        self._edits: dict[str, list[_Edit]] = {}
        self._code_of: dict[str, str] = {}  # code JWT -> the code store's code
        self.installs: dict[str, dict[str, Any]] = {}  # business id -> subscription
        rng = random.Random(derive_seed(self.seed, "poynt-app"))  # noqa: S311
        self.apps: dict[str, PoyntApp] = {}
        self._signing_key_pem, self.public_key_pem = _signing_keys()
        self.app_id = f"urn:aid:{uuid4(rng)}"
        self.app_private_key_pem, app_public = generate_rsa_keypair()
        self._rotated_keys: list[str] = []
        self.register_app(self.app_id, app_public)
        self.webhook_secret = secrets.token_urlsafe(24)
        self._jti_lock = threading.Lock()
        self._seen_jti: dict[str, int] = {}
        r = self.add_route
        r(
            "GET",
            re.compile(r"/applications/authorize"),
            "GET /applications/authorize",
            self.consent_get,
            "page",
        )
        r(
            "POST",
            re.compile(r"/applications/authorize"),
            "POST /applications/authorize",
            self.consent_post,
            "page",
        )
        r("POST", re.compile(r"/token"), "POST /token", self._token, "oauth")
        r("GET", re.compile(rf"/businesses/{_BID}"), "GET /businesses/{businessId}", self._business, "api")
        r(
            "GET",
            re.compile(rf"/businesses/{_BID}/orders"),
            "GET /businesses/{businessId}/orders",
            self._list,
            "api",
        )
        r(
            "GET",
            re.compile(r"/apps/(?P<aid>[^/]+)/subscriptions"),
            "GET /apps/{appId}/subscriptions",
            self._subscriptions,
            "oauth",
        )
        r(
            "GET",
            re.compile(rf"/businesses/{_BID}/orders/{_OID}"),
            "GET /businesses/{businessId}/orders/{orderId}",
            self._get_order,
            "api",
        )

    # ids ----------------------------------------------------------------------------------------

    def new_merchant_id(self, rng: random.Random) -> str:
        return uuid4(rng)

    def new_order_id(self, rng: random.Random) -> str:
        return uuid4(rng)

    def check_merchant_id(self, merchant_id: str) -> None:
        if not _UUID.fullmatch(merchant_id):
            raise ValueError("a Poynt business id is a lower-case UUID")

    # apps and credentials -----------------------------------------------------------------------

    def register_app(self, app_id: str, public_key_pem: bytes, redirect_uri: str | None = None) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("a Poynt app key must be RSA")
        self.apps[app_id] = PoyntApp(app_id, key, redirect_uri)

    def rotate_app_key(self) -> bytes:
        """The operator registers a new key pair for the app at Poynt (posync still signs with the
        old private key). Returns the new private key's PEM."""
        private, public = generate_rsa_keypair()
        self.register_app(self.app_id, public, self.apps[self.app_id].redirect_uri)
        self._rotated_keys.append(private.decode())
        return private

    def app_secrets(self) -> list[str]:
        """The default app's private key, the webhook secret and the sandbox's own signing key."""
        return [
            self.app_private_key_pem.decode(),
            self.webhook_secret,
            self._signing_key_pem.decode(),
            *self._code_of,
            *self._rotated_keys,
        ]

    @property
    def app_credentials(self) -> dict[str, str]:
        """The default app as posync stores it: ``{app_id, private_key_pem, webhook_secret}``."""
        return {
            "app_id": self.app_id,
            "private_key_pem": self.app_private_key_pem.decode(),
            "webhook_secret": self.webhook_secret,
        }

    def error_body(self, status: int, message: str) -> Any:
        code = {
            400: "INVALID_REQUEST",
            401: "UNAUTHORIZED",
            403: "FORBIDDEN",
            404: "RESOURCE_NOT_FOUND",
            405: "METHOD_NOT_ALLOWED",
            429: "TOO_MANY_REQUESTS",
        }.get(status, "INTERNAL_SERVER_ERROR" if status >= 500 else "ERROR")
        return {
            "code": code,
            "httpStatus": status,
            "message": message,
            "developerMessage": message,
            "requestId": str(uuid.uuid4()),
        }

    def _error(self, status: int, message: str, **extra: str) -> Response:
        return json_response(status, {**self.error_body(status, message), **extra})

    def _invalid_grant(self, why: str) -> Response:
        return self._error(400, f"invalid_grant: {why}", code="INVALID_GRANT", error="invalid_grant")

    # consent ------------------------------------------------------------------------------------

    consent_title = "Poynt sandbox: authorize application"
    consent_action = "/applications/authorize"
    consent_field = "business_id"
    consent_unknown_merchant = "Unknown business."

    def consent_params(self, get: Callable[[str], str | None]) -> dict[str, str | None]:
        return {
            "client_id": get("client_id") or get("applicationId"),
            "redirect_uri": get("redirect_uri") or get("callback"),
            "context": get("context"),
            "business_id": get("businessId") or get("business_id"),
        }

    def consent_app(self, params: dict[str, str | None]) -> PoyntApp | Response:
        app = self.apps.get(params["client_id"] or "")
        if app is None:
            return html_response(400, error_page("Unknown application", "No application has this client_id."))
        uri = params["redirect_uri"]
        if not redirect_ok(uri) or (app.redirect_uri is not None and uri != app.redirect_uri):
            return html_response(400, error_page("Bad request", "redirect_uri is missing or not registered."))
        return app

    def approve(self, app: PoyntApp, merchant_id: str, params: dict[str, str | None]) -> Response:
        code = self.codes.issue(app.app_id, merchant_id, params["redirect_uri"] or "")
        # Poynt's code is a JWT whose poynt.biz is the business: the sandbox wraps its random code so
        code_jwt = jwt.encode(
            {"poynt.biz": merchant_id, "jti": code, "iss": self.url, "iat": int(time.time())},
            self._signing_key_pem,
            algorithm="RS256",
        )
        self._code_of[code_jwt] = code
        query = {
            "code": code_jwt,
            "status": self.profile.approve_status,
            "context": params["context"],
            "businessId": merchant_id,
        }
        return redirect(with_query(params["redirect_uri"] or "", query))

    def deny(self, params: dict[str, str | None]) -> Response:
        query = {
            "status": self.profile.deny_status,
            "error": self.profile.deny_error,
            "context": params["context"],
        }
        return redirect(with_query(params["redirect_uri"] or "", query))

    # tokens -------------------------------------------------------------------------------------

    def verify_assertion(self, assertion: str | None) -> str:
        """Check an app's self-signed JWT; returns the app id or raises ``_Unauthorized``."""
        if not assertion:
            raise _Unauthorized("a self-signed JWT is required")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _Unauthorized("malformed JWT") from exc
        iss = unverified.get("iss")
        app = self.apps.get(iss) if isinstance(iss, str) else None
        if app is None:
            raise _Unauthorized("unknown application")
        audience = [self.knobs.jwt_audience] if self.knobs.jwt_audience else [self.url, PUBLIC_AUDIENCE]
        sandbox_now = time.time() + self.knobs.clock_skew_s
        try:
            claims = jwt.decode(
                assertion,
                app.public_key,
                algorithms=["RS256"],
                audience=audience,
                options={
                    "require": ["iss", "sub", "aud", "iat", "exp", "jti"],
                    "verify_exp": False,  # checked below against the sandbox's (possibly skewed) clock
                    "verify_iat": False,
                },
            )
            if int(claims["exp"]) <= sandbox_now:
                raise jwt.ExpiredSignatureError("expired")
            if int(claims["iat"]) > sandbox_now + 60:
                raise jwt.ImmatureSignatureError("iat")
        except jwt.ExpiredSignatureError as exc:
            raise _Unauthorized("JWT expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise _Unauthorized("invalid audience") from exc
        except jwt.InvalidSignatureError as exc:
            raise _Unauthorized("invalid signature") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _Unauthorized(f"missing claim {exc.claim}") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _Unauthorized("iat is in the future") from exc
        except jwt.PyJWTError as exc:
            raise _Unauthorized("invalid JWT") from exc
        if claims["sub"] != iss:
            raise _Unauthorized("sub must equal iss")
        if int(claims["exp"]) - int(claims["iat"]) > MAX_ASSERTION_LIFETIME_S:
            raise _Unauthorized(f"exp - iat must be at most {MAX_ASSERTION_LIFETIME_S} seconds")
        jti = str(claims["jti"])
        now = int(time.time())
        with self._jti_lock:
            if jti in self._seen_jti:
                raise _Unauthorized("jti already used")
            if len(self._seen_jti) > 10_000:
                self._seen_jti = {k: v for k, v in self._seen_jti.items() if v >= now}
            self._seen_jti[jti] = int(claims["exp"])
        return str(iss)

    def issue_tokens(self, grant: Grant) -> Issued:
        now = int(time.time())
        ttl = self.access_ttl
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": grant.app_id,
            "aud": grant.app_id,
            "iat": now,
            "exp": now + ttl,
            "jti": str(uuid.uuid4()),
        }
        if grant.merchant_id is not None:
            prof = self.merchant(grant.merchant_id).profile
            claims.update(
                {
                    "poynt.biz": grant.merchant_id,
                    "poynt.uid": prof.poynt_uid,
                    "poynt.str": prof.store_id,
                    "poynt.sct": "J",
                }
            )
        access = jwt.encode(claims, self._signing_key_pem, algorithm="RS256")
        refresh = "1:1:1:2:" + secrets.token_urlsafe(48)
        return self.tokens.issue(grant, access, refresh, ttl, self.refresh_ttl)

    def token_body(self, t: Issued) -> dict[str, Any]:
        return {
            "accessToken": t.access_token,
            "refreshToken": t.refresh_token,
            "expiresIn": t.expires_in,
            "scope": "ALL",
            "tokenType": "BEARER",
        }

    def _token(self, req: Request, _: Any) -> Response:
        form = req.form()
        grant_type = form.get("grantType") or form.get("grant_type") or ""
        try:
            if grant_type == JWT_BEARER:
                app_id = self.verify_assertion(form.get("assertion"))
                self.stats.incr("app_token_grants")
                return self.token_response(self.tokens.new_grant(app_id, None))
            if grant_type == "authorization_code":
                return self._exchange(req, form)
        except _Unauthorized as exc:
            return self._error(401, str(exc))
        if grant_type.upper() == "REFRESH_TOKEN":
            if self.knobs.refresh_client_auth == "verified" and req.bearer():
                try:
                    self.verify_assertion(req.bearer())
                except _Unauthorized as exc:
                    return self._error(401, str(exc))
            return self._refresh(form)
        return self._error(400, "unsupported grant type", error="unsupported_grant_type")

    def _exchange(self, req: Request, form: dict[str, str]) -> Response:
        app_id = self.verify_assertion(req.bearer())
        if form.get("client_id") != app_id:
            raise _Unauthorized("client_id does not match the JWT issuer")
        given = form.get("code") or ""
        rec = self.codes.peek(self._code_of.get(given, given))
        if rec is None or rec.client_id != app_id:
            return self._invalid_grant("the code is invalid, used or expired")
        if form.get("redirect_uri") != rec.redirect_uri:
            return self._invalid_grant("redirect_uri does not match the authorization request")
        if not self.codes.consume(rec):
            return self._invalid_grant("the code is invalid, used or expired")
        self.stats.incr("token_exchanges")
        grant = self.tokens.new_grant(app_id, rec.merchant_id)
        return self.token_response(grant)

    def _refresh(self, form: dict[str, str]) -> Response:
        rt = self.tokens.find_refresh(form.get("refreshToken") or form.get("refresh_token"))
        if rt is None:
            return self._invalid_grant("unknown refresh token")
        who = rt.grant.merchant_id or rt.grant.app_id
        self.stats.incr("refresh_calls", who)
        problem = self.tokens.refresh_problem(rt)
        if self.knobs.refresh_reuse == "survives" and problem is None:
            pass  # the reading where a used refresh token keeps working
        elif problem is not None or not self.tokens.consume(rt):
            return self._invalid_grant(f"refresh token {problem or 'used'}")
        self.stats.incr("refreshes", who)
        return self.token_response(rt.grant)

    # API ----------------------------------------------------------------------------------------

    def authenticate(self, req: Request, match: Any) -> Principal | Response:
        a = self.tokens.access(req.bearer())
        if a is None:
            return self._error(401, "access token is missing, invalid or expired")
        bid = match.group("bid")
        g = a.grant
        allowed = g.merchant_id == bid if g.merchant_id is not None else self.tokens.authorized(g.app_id, bid)
        if not allowed or bid not in self._merchants:
            return self._error(403, "the token does not grant access to this business")
        if not req.headers.get("api-version"):
            self.stats.incr("missing_api_version")
        return Principal(a.token, g.app_id, bid)

    def _business(self, req: Request, match: Any, who: Principal) -> Response:
        prof = self.merchant(match.group("bid")).profile
        store = {"id": prof.store_id, "displayName": prof.name, "currency": prof.currency}
        body = {
            "id": prof.merchant_id,
            "legalName": prof.name,
            "doingBusinessAs": prof.name,
            "stores": [store],
        }
        return json_response(200, body)

    @staticmethod
    def _parse_time(raw: str | None, name: str) -> int | None:
        if raw is None or raw == "":
            return None
        try:
            dt = datetime.fromisoformat(raw.strip().replace(" ", "+").replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"{name} must be an ISO 8601 time") from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)

    def _list(self, req: Request, match: Any, who: Principal) -> Response:
        try:
            start = self._parse_time(req.arg("startAt"), "startAt")
            end = self._parse_time(req.arg("endAt"), "endAt")
            offset = int(req.arg("startOffset") or 0)
            limit = int(req.arg("limit") or 0) or DEFAULT_LIMIT
        except ValueError as exc:
            return self._error(
                400, str(exc) if "ISO" in str(exc) else "startOffset and limit must be integers"
            )
        if offset < 0 or limit < 0:
            return self._error(400, "startOffset and limit must not be negative")
        limit = min(limit, MAX_LIMIT)
        since: int | None = None
        ims = req.headers.get("If-Modified-Since")
        if ims:
            with contextlib.suppress(TypeError, ValueError):  # an unparseable date is ignored (HTTP)
                since = int(parsedate_to_datetime(ims).timestamp() * 1000)
        lo = start if start is not None else -INF
        hi = end - 1 if end is not None else INF
        prof = self.profile
        bid = match.group("bid")
        m = self.merchant(bid)
        with m.book.lock:
            matching = [
                st
                for st in m.book.states()
                if (since is None or st.modified_ms >= since)
                and lo <= (st.modified_ms if prof.window_field == "modified" else st.created_ms) <= hi
            ]
            if since is not None and not matching:
                return Response(304, b"", "text/plain")
            matching.sort(key=_ORDERINGS[prof.row_order])
            if prof.row_order == "updated_desc":
                matching.reverse()
            total = len(matching)
            states = matching[offset : offset + limit]
            recs = [m.book.by_id[st.id] for st in states]
        frags = self.fragments(m, recs, states, None)
        links = []
        if offset + len(recs) < total and prof.link_rel is not None:
            params = {k: v[0] for k, v in req.query.items() if k != "startOffset"}
            params["startOffset"] = str(offset + len(recs))
            params.setdefault("limit", str(limit))
            href = f"/businesses/{bid}/orders?{urlencode(params)}"
            links.append({"href": href, "rel": prof.link_rel, "method": "GET"})
        body = (
            b'{"links":'
            + json.dumps(links, separators=(",", ":")).encode()
            + b',"orders":['
            + b",".join(frags)
            + b'],"count":'
            + str(total).encode()
            + b"}"
        )
        self._modify_served(m, [st.id for st in matching[: offset + len(recs)]])
        return Response(200, body)

    def _modify_served(self, m: Any, served: list[str]) -> None:
        """``modify_during_paging``: modify that many orders among those at or before the position
        the client will ask for next (in the profile's order)."""
        k = self.knobs.modify_during_paging
        if k <= 0 or not served:
            return
        with m.book.lock:
            ids = m.rng.sample(served, min(k, len(served)))
            now = self.now_ms()
            for oid in ids:
                m.book.touch(oid, now)
        self.stats.add_paging_modified(ids)

    # changes to older orders ------------------------------------------------------------------

    def _edit(self, merchant_id: str, order_id: str, edit: _Edit) -> str:
        m = self.merchant(merchant_id)
        with m.book.lock:
            if m.book.get(order_id) is None:
                raise KeyError(f"unknown order {order_id!r}")
            self._edits.setdefault(order_id, []).append(edit)
            st = m.book.touch(order_id, self.now_ms())
            self._edits[order_id][-1].at_ms = st.modified_ms
        return order_id

    def cancel_order(self, merchant_id: str, order_id: str) -> str:
        """Cancel an order now: a new version, ``CANCELLED``, its payments voided."""
        return self._edit(merchant_id, order_id, _Edit("cancel", 0))

    def refund_order(self, merchant_id: str, order_id: str, amount: int | None = None) -> str:
        """Refund ``amount`` (default: what is left) of a paid order now: a REFUND transaction."""
        order = self.order(merchant_id, order_id)
        captured = order["amounts"].get("capturedTotals")
        if not captured or order["statuses"]["status"] == "CANCELLED":
            raise ValueError("only a paid order can be refunded")
        left = captured["orderAmount"] - order["amounts"].get("refundedTotals", {}).get("orderAmount", 0)
        amount = left if amount is None else amount
        if not 0 < amount <= left:
            raise ValueError(f"a refund must be between 1 and {left}")
        return self._edit(merchant_id, order_id, _Edit("refund", 0, amount))

    def strip_item_ids(self, merchant_id: str, order_id: str) -> str:
        """Serve this order's items without ``id`` from now on (a new version)."""
        return self._edit(merchant_id, order_id, _Edit("no_item_ids", 0))

    def _edited(self, order: dict[str, Any]) -> dict[str, Any]:
        for n, e in enumerate(self._edits.get(order["id"], ())):
            _apply_edit(order, e, n)
        return order

    def fragments(self, m: Any, recs: list[Any], states: list[Any], key: object) -> list[bytes]:
        out = super().fragments(m, recs, states, key)
        for i, st in enumerate(states):
            if st.id in self._edits:
                order = self._edited(m.factory.full(st))
                out[i] = json.dumps(order, separators=(",", ":")).encode()
        return out

    def orders(self, merchant_id: str) -> list[dict[str, Any]]:
        return [self._edited(o) for o in super().orders(merchant_id)]

    def order(self, merchant_id: str, order_id: str) -> dict[str, Any]:
        return self._edited(super().order(merchant_id, order_id))

    # on-terminal installs ---------------------------------------------------------------------

    def install_app(self, business_id: str, app_id: str | None = None) -> dict[str, Any]:
        """Install ``app_id`` (default: the default app) on a business's terminal: its app token
        may read the business from now on; the billing list shows an ACTIVE subscription."""
        app = app_id or self.app_id
        self.merchant(business_id)
        now = iso_ms(self.now_ms())
        sub = {
            "createdAt": now,
            "updatedAt": now,
            "startAt": now,
            "businessId": business_id,
            "appId": app,
            "subscriptionId": str(uuid.uuid4()),
            "phase": "FULL",
            "planId": str(uuid.uuid4()),
            "status": "ACTIVE",
        }
        self.installs[business_id] = sub
        self.tokens.new_grant(app, business_id)
        return sub

    def uninstall_app(self, business_id: str) -> None:
        """Remove the app from the business's terminal: its app token loses access (403)."""
        sub = self.installs.pop(business_id, None)
        if sub is None:
            raise KeyError(f"the app is not installed on {business_id!r}")
        with self.tokens.lock:
            for g in self.tokens.grants_of(business_id):
                if g.app_id == sub["appId"] and not g.access:
                    g.revoked = True

    def _subscriptions(self, req: Request, match: Any) -> Response:
        a = self.tokens.access(req.bearer())
        if a is None or a.grant.merchant_id is not None:
            return self._error(401, "an app access token is required")
        if match.group("aid") != a.grant.app_id:
            return self._error(403, "the token is not this app's")
        try:
            start = int(req.arg("start") or 0)
            count = int(req.arg("count") or 0) or 10
        except ValueError:
            return self._error(400, "start and count must be integers")
        rows = [s for s in self.installs.values() if s["appId"] == a.grant.app_id]
        biz = req.arg("businessId")
        if biz:
            rows = [s for s in rows if s["businessId"] == biz]
        page = rows[start : start + count]
        return json_response(200, {"list": page, "start": start, "count": len(page), "total": len(rows)})

    def _get_order(self, req: Request, match: Any, who: Principal) -> Response:
        m = self.merchant(match.group("bid"))
        rec = m.book.get(match.group("oid"))
        if rec is None:
            return self._error(404, "order not found")
        return Response(200, self.fragments(m, [rec], [rec.state], None)[0])

    # webhooks -----------------------------------------------------------------------------------

    def sign_webhook(self, body: bytes) -> dict[str, str]:
        """Headers of a webhook POST: ``Poynt-Webhook-Signature`` = base64 HMAC-SHA1 of the body."""
        digest = hmac.new(self.webhook_secret.encode(), body, hashlib.sha1).digest()
        return {
            "Poynt-Webhook-Signature": base64.b64encode(digest).decode(),
            "Content-Type": "application/json",
        }

    def webhook_event(
        self, business_id: str, resource_id: str, event_type: str = "ORDER_UPDATED", resource: str = "/orders"
    ) -> dict[str, Any]:
        now = iso_ms(self.now_ms())
        return {
            "id": str(uuid.uuid4()),
            "createdAt": now,
            "updatedAt": now,
            "eventType": event_type,
            "businessId": business_id,
            "applicationId": self.app_id,
            "resource": resource,
            "resourceId": resource_id,
            "hookId": str(uuid.uuid4()),
            "deliveryCount": 0,
            "links": [
                {
                    "href": f"{self.url}/businesses/{business_id}{resource}/{resource_id}",
                    "rel": "resource",
                    "method": "GET",
                }
            ],
            "properties": {},
        }

    def post(self, url: str, payload: dict[str, Any]) -> int:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return _post(url, body, self.sign_webhook(body))

    def send_webhook(
        self, url: str, merchant_id: str, order_ids: Sequence[str], event_type: str = "ORDER_UPDATED"
    ) -> list[int]:
        """One signed event POST per order id; returns the HTTP statuses."""
        return [self.post(url, self.webhook_event(merchant_id, oid, event_type)) for oid in order_ids]

    def send_uninstall(self, url: str, business_id: str) -> int:
        event = self.webhook_event(business_id, self.app_id, "APPLICATION_SUBSCRIPTION_END", "/applications")
        return self.post(url, event)

    def send_subscription_event(self, url: str, business_id: str, event_type: str) -> tuple[int, bytes]:
        """A billing event (``APPLICATION_SUBSCRIPTION_START`` / ``_END``) for the default app;
        returns the status and the exact body (a test can deliver it again, as Poynt retries)."""
        sub = self.installs.get(business_id, {})
        event = self.webhook_event(
            business_id, sub.get("subscriptionId", self.app_id), event_type, "/subscriptions"
        )
        body = json.dumps(event, separators=(",", ":")).encode()
        return _post(url, body, self.sign_webhook(body)), body
