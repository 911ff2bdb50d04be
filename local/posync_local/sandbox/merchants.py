"""What both sandboxes share above HTTP: merchants and their orders, grants and tokens, codes.

Tokens are opaque to this module (each sandbox makes its own strings); a :class:`Grant` is one
merchant's (or, for Poynt app tokens, one app's) authorization, holding its current access token
and its one live refresh token. A refresh token works once: using it retires it and issues a new
pair, while the access tokens issued before stay valid until they expire. ``revoke`` kills a
merchant's grants (API 401, refresh refused); ``expire_access_tokens`` only ends the access tokens
(a refresh then works).
"""

from __future__ import annotations

import html
import json
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from posync_local.sandbox.data import (
    DAY_MS,
    MerchantProfile,
    OrderFactory,
    derive_seed,
    make_profile,
    skeleton,
)
from posync_local.sandbox.orderbook import FragmentCache, OrderBook, OrderRec, OrderState, Query
from posync_local.sandbox.server import (
    Request,
    Response,
    SandboxKnobs,
    SandboxServer,
    html_response,
    json_response,
)

CODE_TTL_S = 600
YEAR_S = 365 * 86_400


# ---------------------------------------------------------------------------------------------
# Grants and tokens


@dataclass
class Grant:
    app_id: str
    merchant_id: str | None  # None: a Poynt app token
    revoked: bool = False
    access: list[AccessToken] = field(default_factory=list)
    refresh: RefreshToken | None = None

    @property
    def current_access(self) -> AccessToken | None:
        return self.access[-1] if self.access else None

    @property
    def current_refresh(self) -> RefreshToken | None:
        return self.refresh


@dataclass
class AccessToken:
    token: str
    grant: Grant
    expires_at: int  # Unix seconds

    def valid(self, now: float) -> bool:
        return not self.grant.revoked and now < self.expires_at


@dataclass
class RefreshToken:
    token: str
    grant: Grant
    expires_at: int
    used: bool = False
    issued_at: int = 0
    parent: RefreshToken | None = None  # the refresh token spent to issue this one (Clover's recovery token)


@dataclass(frozen=True)
class Issued:
    access_token: str
    access_expires_at: int
    refresh_token: str
    refresh_expires_at: int
    expires_in: int


class TokenAuthority:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._grants: list[Grant] = []

    def new_grant(self, app_id: str, merchant_id: str | None) -> Grant:
        g = Grant(app_id, merchant_id)
        with self.lock:
            self._grants.append(g)
        return g

    def issue(self, grant: Grant, access: str, refresh: str, access_ttl: int, refresh_ttl: int) -> Issued:
        now = int(time.time())
        a = AccessToken(access, grant, now + access_ttl)
        spent = grant.refresh if grant.refresh is not None and grant.refresh.used else None
        r = RefreshToken(refresh, grant, now + refresh_ttl, issued_at=now, parent=spent)
        with self.lock:
            grant.access.append(a)
            grant.refresh = r
            self._access[access] = a
            self._refresh[refresh] = r
        return Issued(access, a.expires_at, refresh, r.expires_at, access_ttl)

    def add_access(self, grant: Grant, token: str, expires_at: int) -> AccessToken:
        """An access token without a refresh token (a Clover merchant API token)."""
        a = AccessToken(token, grant, expires_at)
        with self.lock:
            grant.access.append(a)
            self._access[token] = a
        return a

    def access(self, token: str | None) -> AccessToken | None:
        """The access token if it is known and still valid."""
        if not token:
            return None
        a = self._access.get(token)
        if a is None or not a.valid(time.time()):
            return None
        return a

    def find_refresh(self, token: str | None) -> RefreshToken | None:
        return self._refresh.get(token) if token else None

    def refresh_problem(self, r: RefreshToken) -> str | None:
        """Why this refresh token cannot be used now (None: it can)."""
        if r.used:
            return "used"
        if r.grant.revoked:
            return "revoked"
        if time.time() >= r.expires_at:
            return "expired"
        return None

    def consume(self, r: RefreshToken) -> bool:
        """Retire a refresh token; False if another caller got there first (or it is unusable)."""
        with self.lock:
            if self.refresh_problem(r) is not None:
                return False
            r.used = True
            return True

    def recovery_problem(self, recovery: RefreshToken, window_s: int) -> str | None:
        """Why ``recovery`` cannot recover its grant now (None: it can). Clover's rule: it must be
        the refresh token spent to issue the grant's current one, which is still unused, and the
        current one must be younger than ``window_s``."""
        current = recovery.grant.current_refresh
        if recovery.grant.revoked:
            return "revoked"
        if current is None or current.parent is not recovery or current.used:
            return "not the immediately preceding refresh token"
        if time.time() >= current.issued_at + window_s:
            return "expired"
        return None

    def retire_current(self, grant: Grant) -> bool:
        """Recovery: the lost current refresh token dies; False if it was used meanwhile."""
        with self.lock:
            current = grant.current_refresh
            if current is None or current.used:
                return False
            current.used = True
            return True

    def grants_of(self, merchant_id: str) -> list[Grant]:
        with self.lock:
            return [g for g in self._grants if g.merchant_id == merchant_id]

    def authorized(self, app_id: str, merchant_id: str) -> bool:
        with self.lock:
            return any(g.app_id == app_id and not g.revoked for g in self.grants_of(merchant_id))

    def expire_access(self, merchant_id: str) -> int:
        now = int(time.time())
        n = 0
        with self.lock:
            for g in self.grants_of(merchant_id):
                for a in g.access:
                    if a.expires_at > now - 1:
                        a.expires_at = now - 1
                        n += 1
        return n

    def revoke(self, merchant_id: str) -> int:
        with self.lock:
            grants = self.grants_of(merchant_id)
            for g in grants:
                g.revoked = True
            return len(grants)

    def issued(self) -> list[str]:
        """Every access and refresh token ever issued (read-only; for tests that scan for leaks)."""
        with self.lock:
            return [*self._access, *self._refresh]


@dataclass
class AuthCode:
    code: str
    client_id: str
    merchant_id: str
    redirect_uri: str
    expires_at: float
    challenge: str | None = None
    challenge_method: str | None = None
    used: bool = False


class CodeStore:
    """Authorization codes: random, single use, 10 minutes, bound to the app and the merchant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, AuthCode] = {}

    def issue(
        self,
        client_id: str,
        merchant_id: str,
        redirect_uri: str,
        *,
        challenge: str | None = None,
        challenge_method: str | None = None,
    ) -> str:
        code = secrets.token_urlsafe(24)
        rec = AuthCode(
            code, client_id, merchant_id, redirect_uri, time.time() + CODE_TTL_S, challenge, challenge_method
        )
        with self._lock:
            now = time.time()
            for k in [k for k, c in self._codes.items() if c.expires_at < now - CODE_TTL_S]:
                del self._codes[k]
            self._codes[code] = rec
        return code

    def peek(self, code: str | None) -> AuthCode | None:
        """The code if it exists, is unused and has not expired."""
        rec = self._codes.get(code) if code else None
        if rec is None or rec.used or time.time() >= rec.expires_at:
            return None
        return rec

    def consume(self, rec: AuthCode) -> bool:
        with self._lock:
            if rec.used or time.time() >= rec.expires_at:
                return False
            rec.used = True
            return True

    def issued(self) -> list[str]:
        """The authorization codes still on record (read-only; for tests that scan for leaks)."""
        with self._lock:
            return list(self._codes)


# ---------------------------------------------------------------------------------------------
# Merchants and orders


@dataclass
class Merchant:
    id: str
    profile: MerchantProfile
    factory: OrderFactory
    book: OrderBook
    rng: random.Random  # picks the orders that modify_orders(n) / modify_during_paging change


def with_query(url: str, params: dict[str, str | None]) -> str:
    """``url`` with ``params`` appended to its query string (None values left out)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    if not query:
        return url
    return f"{url}{'&' if urlsplit(url).query else '?'}{query}"


def redirect_ok(uri: str | None) -> bool:
    if not uri:
        return False
    parts = urlsplit(uri)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class OrderSandbox(SandboxServer):
    """A sandbox with merchants, seeded orders, an order book per merchant and OAuth state.

    ``cache_mb``: byte budget of the serialized-order cache shared by all merchants (default
    32 MiB, 0 disables it; a scan over more orders than fit simply renders them, ~10 us each).
    ``anchor_ms``: the time the seeded orders count back from (default: now, to the minute).
    """

    factory_cls: type[OrderFactory] = OrderFactory
    default_access_ttl = 1800
    default_refresh_ttl = YEAR_S

    def __init__(
        self,
        port: int = 0,
        knobs: SandboxKnobs | None = None,
        seed: int = 7,
        *,
        cache_mb: int = 32,
        anchor_ms: int | None = None,
    ) -> None:
        super().__init__(port, knobs, seed)
        self.anchor_ms = anchor_ms
        self._merchants: dict[str, Merchant] = {}
        self._mlock = threading.RLock()
        self._id_rng = random.Random(derive_seed(seed, self.provider, "merchant-ids"))  # noqa: S311
        self.cache = FragmentCache(cache_mb << 20)
        self.tokens = TokenAuthority()
        self.codes = CodeStore()
        self.set_up()

    # to be provided by each provider ------------------------------------------------------------

    def set_up(self) -> None:
        """The provider's apps, keys and routes (called last by ``__init__``)."""
        raise NotImplementedError

    def new_merchant_id(self, rng: random.Random) -> str:
        raise NotImplementedError

    def check_merchant_id(self, merchant_id: str) -> None:
        raise NotImplementedError

    def new_order_id(self, rng: random.Random) -> str:
        raise NotImplementedError

    def new_factory(self, prof: MerchantProfile) -> OrderFactory:
        """A merchant's order factory (a hook: the Clover sandbox hands it its profile)."""
        return self.factory_cls(prof)

    # lifecycle ----------------------------------------------------------------------------------

    def _on_start(self) -> None:
        with self._mlock:
            for m in self._merchants.values():
                m.factory.base = self.url

    @property
    def access_ttl(self) -> int:
        return self.knobs.access_ttl_s if self.knobs.access_ttl_s is not None else self.default_access_ttl

    @property
    def refresh_ttl(self) -> int:
        return self.knobs.refresh_ttl_s if self.knobs.refresh_ttl_s is not None else self.default_refresh_ttl

    # merchants ----------------------------------------------------------------------------------

    def add_merchant(
        self, merchant_id: str | None = None, orders: int = 50, currency: str = "USD", days: int = 120
    ) -> str:
        """Add a merchant with ``orders`` seeded orders created over the last ``days`` days.

        The id is drawn from the sandbox seed unless given. The same seed and the same calls give
        the same merchants and orders; their times count back from the sandbox's ``anchor_ms``
        when it was given, else from now rounded down to the minute (so two sandboxes made in
        the same minute agree to the millisecond). Currencies: USD, CAD, EUR, GBP, JPY.
        """
        if orders < 0 or days < 1:
            raise ValueError("orders must be >= 0 and days >= 1")
        with self._mlock:
            n = len(self._merchants)
            if merchant_id is None:
                merchant_id = self.new_merchant_id(self._id_rng)
                while merchant_id in self._merchants:
                    merchant_id = self.new_merchant_id(self._id_rng)
            else:
                self.check_merchant_id(merchant_id)
                if merchant_id in self._merchants:
                    raise ValueError(f"merchant {merchant_id} already exists")
            prof = make_profile(self.provider, merchant_id, currency, self.seed, n)
            factory = self.new_factory(prof)
            factory.base = self.url if self.running else ""
            book = OrderBook(self.cache)
            anchor = (
                self.anchor_ms if self.anchor_ms is not None else SandboxServer.now_ms() // 60_000 * 60_000
            )
            book.load(skeleton(self.provider, prof, orders, days, anchor))
            rng = random.Random(derive_seed(prof.seed, "modifications"))  # noqa: S311
            self._merchants[merchant_id] = Merchant(merchant_id, prof, factory, book, rng)
            return merchant_id

    @property
    def merchants(self) -> list[str]:
        with self._mlock:
            return list(self._merchants)

    def merchant(self, merchant_id: str) -> Merchant:
        m = self._merchants.get(merchant_id)
        if m is None:
            raise KeyError(f"unknown merchant {merchant_id!r}")
        return m

    def merchant_name(self, merchant_id: str) -> str:
        return self.merchant(merchant_id).profile.name

    def ensure_merchant(self) -> str:
        """The first merchant, creating one (50 orders) if there is none yet."""
        with self._mlock:
            if not self._merchants:
                return self.add_merchant()
            return next(iter(self._merchants))

    def orders(self, merchant_id: str) -> list[dict[str, Any]]:
        """Ground truth: every order's current version, complete (no nested list cut), by modified
        time then id."""
        m = self.merchant(merchant_id)
        return [m.factory.full(st) for st in m.book.states()]

    def order(self, merchant_id: str, order_id: str) -> dict[str, Any]:
        m = self.merchant(merchant_id)
        rec = m.book.get(order_id)
        if rec is None:
            raise KeyError(f"unknown order {order_id!r}")
        return m.factory.full(rec.state)

    def order_ids(self, merchant_id: str) -> list[str]:
        return [st.id for st in self.merchant(merchant_id).book.states()]

    def create_orders(self, merchant_id: str, n: int) -> list[str]:
        """``n`` new orders, created (and modified) now."""
        m = self.merchant(merchant_id)
        now = SandboxServer.now_ms()
        ids = []
        with m.book.lock:
            for _ in range(n):
                oid = self.new_order_id(m.rng)
                while m.book.get(oid) is not None:
                    oid = self.new_order_id(m.rng)
                m.book.add(OrderState(m.book.next_seq, oid, now, now, now))
                ids.append(oid)
        return ids

    def modify_orders(self, merchant_id: str, n_or_ids: int | Sequence[str]) -> list[str]:
        """Modify orders now (a new version, ``modified`` bumped to now): ``n`` seeded-random ones,
        or the given ids. An open order is closed (paid) by its first modification."""
        m = self.merchant(merchant_id)
        with m.book.lock:
            if isinstance(n_or_ids, int):
                all_ids = sorted(m.book.by_id)
                ids = m.rng.sample(all_ids, min(n_or_ids, len(all_ids)))
            else:
                ids = list(n_or_ids)
                for oid in ids:
                    if m.book.get(oid) is None:
                        raise KeyError(f"unknown order {oid!r}")
            now = SandboxServer.now_ms()
            for oid in ids:
                m.book.touch(oid, now)
        return ids

    def expire_access_tokens(self, merchant_id: str) -> int:
        """End every access token of the merchant now (the API answers 401; refresh still works)."""
        return self.tokens.expire_access(merchant_id)

    def revoke(self, merchant_id: str) -> int:
        """Revoke the merchant's authorizations: API 401 and refresh refused, until it reconnects."""
        return self.tokens.revoke(merchant_id)

    def app_secrets(self) -> list[str]:
        """The app's own secret values (client secret, private key, webhook secrets)."""
        return []

    def secrets(self) -> list[str]:
        """Every secret value this sandbox holds or handed out: tokens, codes and the app's secrets.

        Read-only, for tests that scan logs and HTTP answers: none of these may ever appear there.
        """
        return [*self.tokens.issued(), *self.codes.issued(), *self.app_secrets()]

    # consent ------------------------------------------------------------------------------------
    # The consent page (GET) and its form (POST) are the same flow on both providers; each says
    # how it reads its parameters, checks the app, approves and denies.

    consent_title = ""
    consent_action = ""
    consent_field = "merchant_id"  # the merchant's parameter (a hidden select on the page)
    consent_unknown_merchant = "Unknown merchant."

    def consent_params(self, get: Callable[[str], str | None]) -> dict[str, str | None]:
        raise NotImplementedError

    def consent_app(self, params: dict[str, str | None]) -> Any:
        """The app the consent is for (it has a ``name``), or the error page to answer with."""
        raise NotImplementedError

    def approve(self, app: Any, merchant_id: str, params: dict[str, str | None]) -> Response:
        raise NotImplementedError

    def deny(self, params: dict[str, str | None]) -> Response:
        raise NotImplementedError

    def consent_get(self, req: Request, _: Any) -> Response:
        """The consent page; the ``auto_deny`` / ``auto_approve`` knobs redirect at once instead."""
        params = self.consent_params(req.arg)
        app = self.consent_app(params)
        if isinstance(app, Response):
            return app
        first = self.ensure_merchant()
        wanted = params[self.consent_field]
        selected = wanted if wanted in self.merchants else first
        if self.knobs.auto_deny:
            return self.deny(params)
        if self.knobs.auto_approve:
            return self.approve(app, selected, params)
        return html_response(
            200,
            consent_page(
                title=self.consent_title,
                action=self.consent_action,
                app_name=app.name,
                hidden={k: v for k, v in params.items() if k != self.consent_field},
                merchants=[(mid, self.merchant_name(mid)) for mid in self.merchants],
                selected=selected,
                field_name=self.consent_field,
            ),
        )

    def consent_post(self, req: Request, _: Any) -> Response:
        """The consent form's Approve or Deny."""
        form = req.form()
        params = self.consent_params(form.get)
        app = self.consent_app(params)
        if isinstance(app, Response):
            return app
        decision = form.get("decision")
        if decision == "deny":
            return self.deny(params)
        if decision != "approve":
            return html_response(400, error_page("Bad request", "Choose Approve or Deny."))
        mid = params[self.consent_field]
        if mid is None or mid not in self.merchants:
            return html_response(400, error_page("Bad request", self.consent_unknown_merchant))
        return self.approve(app, mid, params)

    # tokens -------------------------------------------------------------------------------------

    def issue_tokens(self, grant: Grant) -> Issued:
        """A new access and refresh token for ``grant`` (each provider makes its own strings)."""
        raise NotImplementedError

    def token_body(self, issued: Issued) -> dict[str, Any]:
        """The provider's JSON answer carrying ``issued``."""
        raise NotImplementedError

    def token_response(self, grant: Grant) -> Response:
        """200 with new tokens for ``grant``."""
        return json_response(200, self.token_body(self.issue_tokens(grant)))

    # serving ------------------------------------------------------------------------------------

    def fragments(
        self, m: Merchant, recs: list[OrderRec], states: list[OrderState], key: object
    ) -> list[bytes]:
        cache = self.cache
        out = []
        for rec, st in zip(recs, states, strict=True):
            ck = (key, st.version)
            frag = cache.get(rec, ck)
            if frag is None:
                frag = m.factory.render(st, key).encode()
                if rec.state.version == st.version:
                    cache.put(rec, ck, frag)
            out.append(frag)
        return out

    def after_page(self, m: Merchant, q: Query, served: int) -> None:
        """The ``modify_during_paging`` knob: modify that many orders at positions before the
        offset the client will ask for next (those just served included)."""
        k = self.knobs.modify_during_paging
        if k <= 0 or served <= 0:
            return
        with m.book.lock:
            prefix = m.book.served_prefix(q, q.offset + served)
            ids = m.rng.sample(prefix, min(k, len(prefix)))
            now = SandboxServer.now_ms()
            for oid in ids:
                m.book.touch(oid, now)
        self.stats.add_paging_modified(ids)


def consent_page(
    *,
    title: str,
    action: str,
    app_name: str,
    hidden: dict[str, str | None],
    merchants: list[tuple[str, str]],
    selected: str,
    field_name: str,
) -> str:
    """The consent page: a merchant select and Approve / Deny buttons, every value escaped."""
    esc = html.escape
    inputs = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in hidden.items() if v is not None
    )
    options = "".join(
        f'<option value="{esc(mid)}"{" selected" if mid == selected else ""}>'
        f"{esc(name)} ({esc(mid)})</option>"
        for mid, name in merchants
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}"
        "button{font-size:1rem;margin-right:1rem;padding:.5rem 1.5rem}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f"<p><strong>{esc(app_name)}</strong> would like to read your orders, payments and refunds.</p>"
        f'<form method="post" action="{esc(action)}">{inputs}'
        f'<p><label for="{esc(field_name)}">Merchant</label> '
        f'<select id="{esc(field_name)}" name="{esc(field_name)}">{options}</select></p>'
        '<p><button id="approve" name="decision" value="approve" type="submit">Approve</button>'
        '<button id="deny" name="decision" value="deny" type="submit">Deny</button></p>'
        "</form></body></html>"
    )


def error_page(title: str, message: str) -> str:
    esc = html.escape
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title></head><body><h1>{esc(title)}</h1><p>{esc(message)}</p></body></html>"
    )


def page_body(elements: list[bytes], extra: dict[str, Any]) -> bytes:
    """``{"elements": [...fragments], ...extra}`` without re-serializing the fragments."""
    tail = json.dumps(extra, separators=(",", ":"))[1:]
    if tail != "}":
        tail = "," + tail
    return b'{"elements":[' + b",".join(elements) + b"]" + tail.encode()


def window_cut(lo: int, hi: int, now_ms: int, max_days: int = 90) -> int:
    """Clover's silent cut: the lower bound of a range wider than ``max_days`` (measured from its
    upper bound, or now when it has none) moves up to ``max_days`` before that upper bound."""
    upper = hi if hi < (1 << 62) else now_ms
    span = max_days * DAY_MS
    return max(lo, upper - span)
