"""The Clover sandbox: OAuth v2 (authorize page, token, refresh) and the v3 orders API, one host.

Choices where Clover's docs are silent, or where the sandbox must pick:

- Tokens are opaque random strings. Access tokens live ``knobs.access_ttl_s`` (default 1800 s),
  refresh tokens ``knobs.refresh_ttl_s`` (default one year); expirations are Unix seconds.
- ``POST /oauth/v2/token`` and ``/oauth/v2/refresh`` take JSON (as Clover documents) or a form.
  An unknown or used code, a wrong secret or verifier -> 401 ``{"message": ...}``. A code is
  only consumed by a successful exchange. PKCE: when the authorize call carried
  ``code_challenge`` (``code_challenge_method`` S256, or plain), ``code_verifier`` replaces the
  secret.
- An app registered with a ``site_url`` only accepts redirect URIs under it (Clover's rule); the
  default app has none and accepts any http(s) redirect URI.
- The callback gets ``merchant_id``, ``employee_id``, ``client_id``, ``code`` and ``state``.
- If no merchant exists when the authorize page is shown, one is created (50 orders), as every
  Clover developer account comes with a test merchant.
- **Profiles** (``clover_profile.py``): where Clover's record is silent or its sources
  disagree, the sandbox's :class:`CloverProfile` picks one reading (default: as documented).
  ``CloverSandbox(profile=...)`` (a preset name or a profile), or the environment's
  ``POSYNC_SANDBOX_CLOVER_PROFILE``; ``sandbox.profile = ...`` changes it (and re-renders).
- Expansion is explicit (``CloverFactory.view``): a collection not in ``expand`` is absent;
  a dotted path (``lineItems.taxRates``, ``payments.tender``) expands its parent and that
  child, and counts as one of the three fields a call may expand (a fourth -> 400). The
  order-level ``serviceCharge`` is the charge's definition ``{id, name, enabled,
  percentageDecimal}``.
- 429s name the limit in the header's name (``X-RateLimit-tokenLimit``,
  ``X-RateLimit-crossTokenLimit``, ``X-RateLimit-tokenConcurrentLimit``,
  ``X-RateLimit-crossTokenConcurrentLimit``; value: the limit); only the concurrency ones
  carry ``Retry-After``.
- Orders: ``filter`` supports ``modifiedTime`` and ``createdTime`` with ``>=``, ``>``, ``<=``, ``<``
  and ``=`` (others -> 400). The 90-day cut applies per filtered field; a request with no time
  filter at all gets the orders created in the last 90 days. ``orderBy`` without a direction is
  ascending; descending is the exact reverse of ascending (ties on the same millisecond broken by
  id). ``limit`` 0 means the default (100); above 1000 acts as 1000. ``expand`` may repeat and
  takes a comma list; at most 3 fields, dotted paths included; unknown fields count but
  change nothing.
- ``GET /v3/merchants/{mId}/orders/{orderId}/line_items`` (and ``/payments``, ``/refunds``,
  ``/discounts``) page the whole nested list: ``limit`` default 100, max 1000, ``offset``;
  ``line_items`` takes ``expand`` of ``modifications``, ``discounts``, ``taxRates`` and
  ``payments`` of ``tender``, ``cardTransaction`` (explicit as above).
- ``POST /oauth/v2/recovery`` (high-trust apps; ``knobs.recovery_enabled``) takes JSON
  ``{client_id, client_secret, recovery_token}``: the refresh token that was spent to issue the
  grant's current refresh token, while that one is unused and younger than
  ``knobs.recovery_window_s`` (two weeks). It answers like a refresh and retires the lost token.
  A wrong ``client_id`` or ``client_secret`` -> 401 naming it (as refresh does for ``client_id``).
- ``knobs.clock_skew_s`` moves the ``Date`` header; ``rotate_client_secret()`` models an operator
  rotating the secret in the dashboard.
- Webhooks (``send_webhook``) post ``{appId, merchants: {mId: [{objectId: "O:<id>", type, ts}]}}``
  with the app's fixed ``X-Clover-Auth`` code; ``send_verification`` posts the
  ``{"verificationCode": ...}`` handshake; ``send_uninstall`` posts an ``APP`` ``DELETE`` event
  (``objectId`` ``A:<appId>``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from posync_local.sandbox.clover_profile import CloverProfile, profile_named
from posync_local.sandbox.data import (
    CLOVER_NESTED,
    DAY_MS,
    NESTED_CUT,
    CloverFactory,
    MerchantProfile,
    OrderFactory,
    clover_figures,
    derive_seed,
    id13,
)
from posync_local.sandbox.merchants import (
    Grant,
    Issued,
    OrderSandbox,
    error_page,
    page_body,
    redirect_ok,
    window_cut,
    with_query,
)
from posync_local.sandbox.orderbook import INF, Query
from posync_local.sandbox.server import (
    Principal,
    Refusal,
    Request,
    Response,
    html_response,
    json_response,
    redirect,
)

_MID = r"(?P<mid>[A-Za-z0-9]+)"
_OID = r"(?P<oid>[A-Za-z0-9]+)"
_FILTER = re.compile(r"\s*(modifiedTime|createdTime|deletedTime)\s*(>=|<=|!=|=|>|<)\s*(-?\d+)\s*")
_ORDER_BY = re.compile(r"\s*(modifiedTime|createdTime)(?:\s+(ASC|DESC))?\s*", re.IGNORECASE)
_FIELDS = {"modifiedtime": "modified", "createdtime": "created", "deletedtime": "deleted"}
_CLOVER_ID = re.compile(r"[A-Z0-9]{13}")
_CONSENT_PARAMS = (
    "client_id",
    "redirect_uri",
    "state",
    "merchant_id",
    "code_challenge",
    "code_challenge_method",
)
MAX_EXPAND = 3
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
WINDOW_DAYS = 90
EARLY_REFRESH_S = 60
# Deletions and later refunds where Clover's record is silent (CLV-DEL-2/3, CLV-REFUND-1): each
# profile is one reading, set on the knobs of the same names (tests run under every one).
LIFECYCLE_PROFILES: dict[str, dict[str, Any]] = {
    "gone": {"deleted_in_lists": "never", "deleted_by_id": "404", "delete_moves_modified": False},
    "listed-stale": {"deleted_in_lists": "always", "deleted_by_id": "order", "delete_moves_modified": False},
    "listed-moved": {"deleted_in_lists": "always", "deleted_by_id": "order", "delete_moves_modified": True},
    "filtered": {"deleted_in_lists": "filtered", "deleted_by_id": "order", "delete_moves_modified": True},
}
REFUND_PROFILES: dict[str, dict[str, Any]] = {
    "silent": {"refund_moves_modified": False},
    "moves": {"refund_moves_modified": True},
}


@dataclass
class CloverApp:
    client_id: str
    client_secret: str
    site_url: str | None = None
    name: str = "posync"


class BadRequest(Exception):
    pass


class CloverSandbox(OrderSandbox):
    """Clover's OAuth v2 and v3 orders API on one host (see the module docstring)."""

    provider = "clover"
    factory_cls = CloverFactory
    default_access_ttl = 1800

    def __init__(self, *args: Any, profile: CloverProfile | str | None = None, **kwargs: Any) -> None:
        self._profile = profile if isinstance(profile, CloverProfile) else profile_named(profile)
        super().__init__(*args, **kwargs)

    @property
    def profile(self) -> CloverProfile:
        """The reading of Clover this sandbox serves (see ``clover_profile.py``)."""
        return self._profile

    @profile.setter
    def profile(self, value: CloverProfile | str) -> None:
        self._profile = value if isinstance(value, CloverProfile) else profile_named(value)
        with self._mlock:
            for m in self._merchants.values():
                assert isinstance(m.factory, CloverFactory)
                m.factory.set_profile(self._profile)
        self.cache.clear()

    def figures(self, merchant_id: str) -> dict[str, dict[str, Any]]:
        """Order id -> the figures a correct canonical order carries (``data.clover_figures``:
        the sandbox's own arithmetic, not posync's normalizer), for ground-truth checks."""
        basis = self._profile.service_charge_basis
        return {str(o["id"]): clover_figures(o, basis) for o in self.orders(merchant_id)}

    def new_factory(self, prof: MerchantProfile) -> OrderFactory:
        factory = CloverFactory(prof)
        factory.set_profile(self._profile)
        return factory

    def refusal_headers(self, refusal: Refusal) -> dict[str, str]:
        """Clover names the limit in the header's name; only concurrency 429s carry Retry-After."""
        name = {
            "token-rps": "X-RateLimit-tokenLimit",
            "app-rps": "X-RateLimit-crossTokenLimit",
            "token-concurrency": "X-RateLimit-tokenConcurrentLimit",
            "app-concurrency": "X-RateLimit-crossTokenConcurrentLimit",
        }[refusal.kind]
        headers = {name: _limit_text(refusal.limit)}
        if refusal.kind.endswith("concurrency"):
            headers["Retry-After"] = refusal.retry_after
        return headers

    def set_up(self) -> None:
        """The default app (seeded ids, a fresh secret and webhook code) and the routes."""
        rng = random.Random(derive_seed(self.seed, "clover-app"))  # noqa: S311
        self.apps: dict[str, CloverApp] = {}
        self.client_id = id13(rng)
        self.client_secret = str(uuid.uuid4())
        self.webhook_auth_code = secrets.token_hex(16)
        self.add_app(self.client_id, self.client_secret)
        r = self.add_route
        r("GET", re.compile(r"/oauth/v2/authorize"), "GET /oauth/v2/authorize", self.consent_get, "page")
        r("POST", re.compile(r"/oauth/v2/authorize"), "POST /oauth/v2/authorize", self.consent_post, "page")
        r("POST", re.compile(r"/oauth/v2/token"), "POST /oauth/v2/token", self._token, "oauth")
        r("POST", re.compile(r"/oauth/v2/refresh"), "POST /oauth/v2/refresh", self._refresh, "oauth")
        r("POST", re.compile(r"/oauth/v2/recovery"), "POST /oauth/v2/recovery", self._recover, "oauth")
        r("GET", re.compile(rf"/v3/merchants/{_MID}"), "GET /v3/merchants/{mId}", self._get_merchant, "api")
        r(
            "GET",
            re.compile(rf"/v3/merchants/{_MID}/orders"),
            "GET /v3/merchants/{mId}/orders",
            self._list,
            "api",
        )
        r(
            "GET",
            re.compile(rf"/v3/merchants/{_MID}/orders/{_OID}"),
            "GET /v3/merchants/{mId}/orders/{orderId}",
            self._get_order,
            "api",
        )
        for name, path in CLOVER_NESTED.items():
            r(
                "GET",
                re.compile(rf"/v3/merchants/{_MID}/orders/{_OID}/{path}"),
                f"GET /v3/merchants/{{mId}}/orders/{{orderId}}/{path}",
                lambda req, m, who, name=name: self._nested(req, m, who, name),
                "api",
            )

    # ids ----------------------------------------------------------------------------------------

    def new_merchant_id(self, rng: random.Random) -> str:
        return id13(rng)

    def new_order_id(self, rng: random.Random) -> str:
        return id13(rng)

    def check_merchant_id(self, merchant_id: str) -> None:
        if not _CLOVER_ID.fullmatch(merchant_id):
            raise ValueError("a Clover merchant id is 13 upper-case letters and digits")

    # apps and credentials -----------------------------------------------------------------------

    def add_app(self, client_id: str, client_secret: str, site_url: str | None = None) -> None:
        self.apps[client_id] = CloverApp(client_id, client_secret, site_url)

    def app_secrets(self) -> list[str]:
        """Every registered app's client secret and the webhook auth code."""
        return [*(app.client_secret for app in self.apps.values()), self.webhook_auth_code]

    @property
    def app_credentials(self) -> dict[str, str]:
        """The default app as posync stores it: ``{client_id, client_secret, webhook_auth_code}``."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "webhook_auth_code": self.webhook_auth_code,
        }

    def error_body(self, status: int, message: str) -> Any:
        return {"message": f"{status} {message}" if status in (401, 404, 405) else message}

    # consent ------------------------------------------------------------------------------------

    consent_title = "Clover sandbox: authorize app"
    consent_action = "/oauth/v2/authorize"
    consent_field = "merchant_id"

    def consent_params(self, get: Callable[[str], str | None]) -> dict[str, str | None]:
        return {k: get(k) for k in _CONSENT_PARAMS}

    def consent_app(self, params: dict[str, str | None]) -> CloverApp | Response:
        app = self.apps.get(params["client_id"] or "")
        if app is None:
            return html_response(400, error_page("Unknown app", "No app has this client_id."))
        redirect_uri = params["redirect_uri"]
        if not redirect_ok(redirect_uri):
            return html_response(400, error_page("Bad request", "redirect_uri must be an http(s) URL."))
        if app.site_url and not (redirect_uri or "").startswith(app.site_url):
            return html_response(
                400, error_page("Bad request", "redirect_uri must be under the app's site URL.")
            )
        return app

    def approve(self, app: CloverApp, merchant_id: str, params: dict[str, str | None]) -> Response:
        code = self.codes.issue(
            app.client_id,
            merchant_id,
            params["redirect_uri"] or "",
            challenge=params.get("code_challenge"),
            challenge_method=params.get("code_challenge_method")
            or ("S256" if params.get("code_challenge") else None),
        )
        employee = self.merchant(merchant_id).profile.employees[0]
        return redirect(
            with_query(
                params["redirect_uri"] or "",
                {
                    "merchant_id": merchant_id,
                    "employee_id": employee,
                    "client_id": app.client_id,
                    "code": code,
                    "state": params.get("state"),
                },
            )
        )

    def deny(self, params: dict[str, str | None]) -> Response:
        return redirect(
            with_query(params["redirect_uri"] or "", {"error": "access_denied", "state": params.get("state")})
        )

    # tokens -------------------------------------------------------------------------------------

    def _unauthorized(self, message: str) -> Response:
        return json_response(401, {"message": message})

    def issue_tokens(self, grant: Grant) -> Issued:
        return self.tokens.issue(
            grant, secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.access_ttl, self.refresh_ttl
        )

    def token_body(self, t: Issued) -> dict[str, Any]:
        return {
            "access_token": t.access_token,
            "access_token_expiration": t.access_expires_at,
            "refresh_token": t.refresh_token,
            "refresh_token_expiration": t.refresh_expires_at,
        }

    def _token(self, req: Request, _: Any) -> Response:
        form = req.form()
        rec = self.codes.peek(form.get("code"))
        app = self.apps.get(form.get("client_id") or "")
        if rec is None:
            return self._unauthorized("Invalid or expired authorization code")
        if app is None or rec.client_id != app.client_id:
            return self._unauthorized("Invalid client_id")
        secret = form.get("client_secret")
        verifier = form.get("code_verifier")
        if secret is not None:
            if not hmac.compare_digest(secret.encode(), app.client_secret.encode()):
                return self._unauthorized("Invalid client_secret")
        elif verifier is not None and rec.challenge:
            if rec.challenge_method == "plain":
                expected = verifier
            else:
                expected = (
                    base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                )
            if not hmac.compare_digest(expected.encode(), rec.challenge.encode()):
                return self._unauthorized("Invalid code_verifier")
        else:
            return self._unauthorized("client_secret or code_verifier is required")
        if not self.codes.consume(rec):
            return self._unauthorized("Invalid or expired authorization code")
        grant = self.tokens.new_grant(app.client_id, rec.merchant_id)
        self.stats.incr("token_exchanges")
        return self.token_response(grant)

    def _refresh(self, req: Request, _: Any) -> Response:
        form = req.form()
        rt = self.tokens.find_refresh(form.get("refresh_token"))
        if rt is None:
            return self._unauthorized("Invalid refresh token")
        mid = rt.grant.merchant_id or ""
        self.stats.incr("refresh_calls", mid)
        if form.get("client_id") != rt.grant.app_id:
            return self._unauthorized("Invalid client_id")
        problem = self.tokens.refresh_problem(rt)
        if problem == "expired":
            return self._unauthorized("Refresh token expired")
        if problem is not None:
            return self._unauthorized("Invalid refresh token")
        current = rt.grant.current_access
        if (
            self.knobs.refuse_early_refresh
            and current is not None
            and current.expires_at - time.time() > EARLY_REFRESH_S
        ):
            return json_response(400, {"message": "access_token not expired"})
        if not self.tokens.consume(rt):
            return self._unauthorized("Invalid refresh token")
        self.stats.incr("refreshes", mid)
        return self.token_response(rt.grant)

    def _recover(self, req: Request, _: Any) -> Response:
        """Clover's recovery for high-trust apps: ``{client_id, client_secret, recovery_token}``,
        the recovery token being the refresh token spent to issue the grant's current (lost, still
        unused) one, within ``knobs.recovery_window_s`` of its issue -> a new pair; the lost one dies."""
        form = req.form()
        app = self.apps.get(form.get("client_id") or "")
        if app is None:
            return self._unauthorized("Invalid client_id")
        if not hmac.compare_digest((form.get("client_secret") or "").encode(), app.client_secret.encode()):
            return self._unauthorized("Invalid client_secret")
        if not self.knobs.recovery_enabled:
            return json_response(403, {"message": "403 Forbidden: recovery is for high-trust apps"})
        rt = self.tokens.find_refresh(form.get("recovery_token"))
        if rt is None or rt.grant.app_id != app.client_id:
            return self._unauthorized("Invalid recovery token")
        mid = rt.grant.merchant_id or ""
        self.stats.incr("recovery_calls", mid)
        problem = self.tokens.recovery_problem(rt, self.knobs.recovery_window_s)
        if problem is not None or not self.tokens.retire_current(rt.grant):
            return self._unauthorized("Invalid recovery token")
        self.stats.incr("recoveries", mid)
        return self.token_response(rt.grant)

    def rotate_client_secret(self) -> str:
        """The operator rotates the app's secret in Clover's dashboard (posync still has the old one)."""
        app = self.apps[self.client_id]
        app.client_secret = str(uuid.uuid4())
        self.client_secret = app.client_secret
        return app.client_secret

    # API ----------------------------------------------------------------------------------------

    def authenticate(self, req: Request, match: Any) -> Principal | Response:
        a = self.tokens.access(req.bearer())
        mid = match.group("mid")
        if a is None or a.grant.merchant_id != mid:
            return json_response(401, {"message": "401 Unauthorized"})
        return Principal(a.token, a.grant.app_id, mid)

    def _get_merchant(self, req: Request, match: Any, who: Principal) -> Response:
        m = self.merchant(match.group("mid"))
        return json_response(
            200,
            {"href": f"{self.url}/v3/merchants/{m.id}", "id": m.id, "name": m.profile.name},
        )

    @staticmethod
    def _int_arg(req: Request, name: str, default: int) -> int:
        raw = req.arg(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError as exc:
            raise BadRequest(f"{name} must be an integer") from exc
        if value < 0:
            raise BadRequest(f"{name} must not be negative")
        return value

    @staticmethod
    def _expand(req: Request) -> frozenset[str]:
        """The ``expand`` paths, dotted ones included, each counting toward the three allowed."""
        fields: list[str] = []
        for raw in req.query.get("expand", []):
            fields += [f.strip() for f in raw.split(",") if f.strip()]
        unique = list(dict.fromkeys(fields))
        if len(unique) > MAX_EXPAND:
            raise BadRequest(f"Too many expansions: at most {MAX_EXPAND} fields may be expanded")
        return frozenset(unique)

    def _query(self, req: Request) -> Query:
        bounds: dict[str, tuple[int, int]] = {}
        for raw in req.query.get("filter", []):
            m = _FILTER.fullmatch(raw)
            if m is None:
                raise BadRequest(
                    "Unsupported filter: the sandbox filters on modifiedTime, createdTime and deletedTime"
                )
            name, op, value = _FIELDS[m.group(1).lower()], m.group(2), int(m.group(3))
            lo, hi = bounds.get(name, (-INF, INF))
            if op == ">=":
                lo = max(lo, value)
            elif op == ">":
                lo = max(lo, value + 1)
            elif op == "<=":
                hi = min(hi, value)
            elif op == "<":
                hi = min(hi, value - 1)
            elif op == "=":
                lo, hi = max(lo, value), min(hi, value)
            else:
                raise BadRequest("Unsupported filter operator !=")
            bounds[name] = (lo, hi)
        now = self.now_ms()
        if not bounds:
            bounds["created"] = (now - WINDOW_DAYS * DAY_MS, INF)
        for name, (lo, hi) in list(bounds.items()):
            bounds[name] = (window_cut(lo, hi, now, WINDOW_DAYS), hi)
        order_field, desc = "created", True
        raw_order = req.arg("orderBy")
        if raw_order:
            m = _ORDER_BY.fullmatch(raw_order)
            if m is None:
                raise BadRequest("orderBy must be modifiedTime or createdTime, ASC or DESC")
            order_field = _FIELDS[m.group(1).lower()]
            desc = (m.group(2) or "ASC").upper() == "DESC"
        limit = self._int_arg(req, "limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
        return Query(
            order_field=order_field,
            desc=desc,
            bounds=bounds,
            offset=self._int_arg(req, "offset", 0),
            limit=min(limit, MAX_LIMIT),
        )

    def _href(self, req: Request) -> str:
        return f"{self.url}{req.path}" + (f"?{req.raw_query}" if req.raw_query else "")

    def _list(self, req: Request, match: Any, who: Principal) -> Response:
        try:
            q = self._query(req)
            expand = self._expand(req)
        except BadRequest as exc:
            return json_response(400, {"message": str(exc)})
        m = self.merchant(match.group("mid"))
        if "deleted" in q.bounds and self.knobs.deleted_in_lists == "never":
            recs: list[Any] = []  # this reading: no list ever returns a deleted order
            states: list[Any] = []
        else:
            recs, states, _ = m.book.page(q)
        body = page_body(self.fragments(m, recs, states, expand), {"href": self._href(req)})
        self.after_page(m, q, len(recs))
        return Response(200, body)

    def _get_order(self, req: Request, match: Any, who: Principal) -> Response:
        try:
            expand = self._expand(req)
        except BadRequest as exc:
            return json_response(400, {"message": str(exc)})
        m = self.merchant(match.group("mid"))
        rec = m.book.get(match.group("oid"))
        if rec is None or self._hidden_deleted(rec.state):
            return json_response(404, {"message": "404 Not Found"})
        st = rec.state
        return Response(200, self.fragments(m, [rec], [st], expand)[0])

    def _hidden_deleted(self, st: Any) -> bool:
        return st.deleted_ms is not None and self.knobs.deleted_by_id == "404"

    def _nested(self, req: Request, match: Any, who: Principal, name: str) -> Response:
        m = self.merchant(match.group("mid"))
        rec = m.book.get(match.group("oid"))
        if rec is None or self._hidden_deleted(rec.state):
            return json_response(404, {"message": "404 Not Found"})
        try:
            limit = min(self._int_arg(req, "limit", NESTED_CUT) or NESTED_CUT, MAX_LIMIT)
            offset = self._int_arg(req, "offset", 0)
        except BadRequest as exc:
            return json_response(400, {"message": str(exc)})
        try:
            subs = self._expand(req)
        except BadRequest as exc:
            return json_response(400, {"message": str(exc)})
        factory = m.factory
        assert isinstance(factory, CloverFactory)
        elements = (factory.full(rec.state).get(name) or {}).get("elements", [])[offset : offset + limit]
        if name == "lineItems":
            elements = [factory.line_view(li, subs) for li in elements]
        elif name == "payments":
            elements = [factory.payment_view(p, subs) for p in elements]
        return json_response(200, {"elements": elements, "href": self._href(req)})

    # deletions, later refunds, merchant API tokens ------------------------------------------------

    def delete_orders(self, merchant_id: str, order_ids: Sequence[str]) -> list[int]:
        """Delete orders now, as the register would (read by the ``deleted_*`` knobs); their
        deletion times. Send the webhook with ``send_webhook(..., event_type="DELETE")``."""
        m = self.merchant(merchant_id)
        out = []
        with m.book.lock:
            for oid in order_ids:
                if m.book.get(oid) is None:
                    raise KeyError(f"unknown order {oid!r}")
                st = m.book.delete(
                    oid,
                    self.now_ms(),
                    move_modified=self.knobs.delete_moves_modified,
                    keep_listed=self.knobs.deleted_in_lists == "always",
                )
                out.append(int(st.deleted_ms or 0))
        return out

    def refund_later(self, merchant_id: str, order_id: str, amount: int) -> dict[str, Any]:
        """A refund of ``amount`` on the order's first payment, now; it moves the order's
        ``modifiedTime`` only under the ``refund_moves_modified`` knob. Returns the refund."""
        m = self.merchant(merchant_id)
        with m.book.lock:
            rec = m.book.get(order_id)
            if rec is None:
                raise KeyError(f"unknown order {order_id!r}")
            full = m.factory.full(rec.state)
            payments = (full.get("payments") or {}).get("elements") or []
            if not payments:
                raise ValueError(f"order {order_id} has no payment to refund")
            now = self.now_ms()
            later = m.factory.later_refunds.setdefault(order_id, [])
            refund = {
                "id": f"R{order_id[1:10]}{len(later):03d}",
                "orderRef": {"id": order_id},
                "amount": amount,
                "taxAmount": 0,
                "tipAmount": 0,
                "createdTime": now,
                "clientCreatedTime": now,
                "payment": {"id": payments[0]["id"]},
            }
            later.append(refund)
            paid = sum(int(p.get("amount") or 0) for p in payments if p.get("result", "SUCCESS") == "SUCCESS")
            refunds = (full.get("refunds") or {}).get("elements") or []
            refunded = sum(int(r.get("amount") or 0) for r in refunds) + amount
            m.factory.later_payment_state[order_id] = "REFUNDED" if refunded >= paid else "PARTIALLY_REFUNDED"
            if self.knobs.refund_moves_modified:
                m.book.touch(order_id, now)
            self.cache.drop(rec)
        return refund

    def issue_merchant_api_token(self, merchant_id: str) -> str:
        """A merchant API token, as the sandbox Merchant Dashboard makes one: no expiry, no
        refresh token; it answers 401 once ``revoke(merchant_id)`` ran."""
        self.merchant(merchant_id)
        grant = self.tokens.new_grant(self.client_id, merchant_id)
        token = str(uuid.uuid4())
        self.tokens.add_access(grant, token, expires_at=1 << 40)
        return token

    # webhooks -----------------------------------------------------------------------------------

    def sign_webhook(self, body: bytes) -> dict[str, str]:
        """Headers of a webhook POST: Clover's fixed ``X-Clover-Auth`` code (the body is not signed)."""
        return {"X-Clover-Auth": self.webhook_auth_code, "Content-Type": "application/json"}

    def webhook_payload(
        self, merchant_id: str, order_ids: Sequence[str], event_type: str = "UPDATE"
    ) -> dict[str, Any]:
        ts = self.now_ms()
        return {
            "appId": self.client_id,
            "merchants": {
                merchant_id: [{"objectId": f"O:{oid}", "type": event_type, "ts": ts} for oid in order_ids]
            },
        }

    def post(self, url: str, payload: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        body = json.dumps(payload, separators=(",", ":")).encode()
        hdrs = headers if headers is not None else self.sign_webhook(body)
        return _post(url, body, hdrs)

    def send_webhook(
        self, url: str, merchant_id: str, order_ids: Sequence[str], event_type: str = "UPDATE"
    ) -> list[int]:
        """POST one order event message for ``order_ids``; returns the HTTP status (in a list, as
        Poynt's one-POST-per-order sender does)."""
        return [self.post(url, self.webhook_payload(merchant_id, order_ids, event_type))]

    def send_verification(self, url: str) -> str:
        """The first-time handshake: ``{"verificationCode": ...}`` (no auth header); returns the code."""
        code = str(uuid.uuid4())
        self.post(url, {"verificationCode": code}, {"Content-Type": "application/json"})
        return code

    def send_uninstall(self, url: str, merchant_id: str) -> int:
        ts = self.now_ms()
        payload = {
            "appId": self.client_id,
            "merchants": {merchant_id: [{"objectId": f"A:{self.client_id}", "type": "DELETE", "ts": ts}]},
        }
        return self.post(url, payload)


def _limit_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    if not url.startswith(("http://", "https://")):
        raise ValueError("webhook URL must be http(s)")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 (checked above)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
