"""The machinery both provider sandboxes share: knobs, stats, the rate limiter and the HTTP server.

A sandbox is a ``ThreadingHTTPServer`` (daemon threads, HTTP/1.1 keep-alive) on 127.0.0.1 that
hands every request to :meth:`SandboxServer.dispatch`. Routes come in three kinds:

- ``page``: the HTML consent pages. No latency, no faults, no rate limit.
- ``oauth``: token endpoints. ``knobs.oauth_latency_ms`` and ``fail_next`` apply (so a test can make
  the code exchange answer 500), ``error_rate`` and rate limits do not.
- ``api``: the REST API. In order: the bearer token is checked (401/403), the rate and concurrency
  limits admit the call or answer 429, ``latency_ms`` is slept while holding the concurrency slot,
  then ``fail_next`` / ``error_rate`` may answer 5xx, then the handler runs.

Rate limits (:class:`RateLimiter`) are sliding windows over admitted calls, per access token and per
app: a call is admitted while fewer than ``rps`` calls were admitted in the trailing
``1000 - rate_tolerance_ms`` milliseconds (default 900 ms). The tolerance absorbs the timing jitter
of threads on a busy machine: a client that keeps at most ``rps`` calls in any trailing second (by
its own clock) is never refused unless a call reaches the server 100 ms later than the one ``rps``
calls after it; a client that sends ``rps + 2`` or more per second is refused within its first
second (20/s against 16 is refused at its 17th call). Concurrency limits count calls in flight
(latency included). A refused call gets 429 with

- ``Retry-After``: integer seconds, at least 1, rounded up (what real providers send). With
  ``knobs.retry_after_ms`` set the value is float seconds instead (``"0.250"``): the larger of
  that many milliseconds and the real wait, so fast tests need not sleep whole seconds.
- ``X-RateLimit-Limit`` (the limit that was hit), ``X-RateLimit-Remaining: 0``,
  ``X-RateLimit-Reset`` (Unix seconds, rounded up, when a call would be admitted again) and
  ``X-RateLimit-Type``: ``token-rps``, ``token-concurrency``, ``app-rps`` or ``app-concurrency``.
  These are the generic headers (the Poynt sandbox's: Poynt documents no 429); the Clover
  sandbox sends Clover's instead (``refusal_headers``, see its module).

A rate-limit refusal opens a penalty box for that token (or app) until the Retry-After has passed;
with ``retry_early_penalty`` a call made during it is refused too and restarts the wait from that
call ("retrying early makes the wait longer"). Concurrency refusals open no penalty box: the wait
is unknown, so they say ``Retry-After: 1``. Admitted API calls carry ``X-RateLimit-Limit`` and
``X-RateLimit-Remaining`` of the per-token rate limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from posync_local.httpserver import TrackedHTTPServer

logger = logging.getLogger("posync_local.sandbox")

MAX_BODY = 1 << 20  # request bodies over 1 MiB are refused with 413


# ---------------------------------------------------------------------------------------------
# Knobs


@dataclass
class _Failure:
    remaining: int
    status: int
    path_prefix: str | None


@dataclass
class SandboxKnobs:
    """Run-time behaviour of a sandbox. Every field may be changed while the server runs.

    The rate limits default to Clover's published ones (16 calls/s and 5 in flight per token, 50/s
    and 10 in flight per app); the Poynt sandbox uses the same defaults. ``None`` disables a limit.
    ``access_ttl_s`` / ``refresh_ttl_s`` of ``None`` mean the provider's default (Clover: 1800 s
    and one year; Poynt: 86400 s and one year).
    """

    latency_ms: float = 0.0  # added to every API call (slept while holding the concurrency slot)
    oauth_latency_ms: float = 0.0  # added to token/refresh calls
    per_token_rps: float | None = 16
    per_token_concurrency: int | None = 5
    per_app_rps: float | None = 50
    per_app_concurrency: int | None = 10
    rate_tolerance_ms: float = 100.0  # the rate window is 1000 ms minus this much (absorbs jitter)
    retry_after_ms: int | None = None  # float-seconds Retry-After (fast tests); None: integer seconds
    retry_early_penalty: bool = True  # a call during an active Retry-After restarts the wait
    error_rate: float = 0.0  # fraction of API calls answered with one of error_statuses (seeded RNG)
    error_statuses: tuple[int, ...] = (500, 502, 503)
    access_ttl_s: int | None = None
    refresh_ttl_s: int | None = None
    auto_approve: bool = False  # the consent GET redirects at once, approving the default merchant
    auto_deny: bool = False  # the consent GET redirects at once with a denial
    refuse_early_refresh: bool = False  # Clover: 400 "access_token not expired" while > 60 s remain
    modify_during_paging: int = 0  # orders modified after each list page (see the orders module)
    # Clover deletions and later refunds, where Clover's record is silent: one knob per reading
    # (the profiles of posync_local.sandbox.clover.LIFECYCLE_PROFILES). Set before deleting.
    deleted_in_lists: str = "never"  # never | always | filtered (only a deletedTime filter lists them)
    deleted_by_id: str = "404"  # 404 | order (the order, with deletedTimestamp)
    delete_moves_modified: bool = False  # a deletion moves the order's modifiedTime to it
    refund_moves_modified: bool = False  # a refund added later moves the order's modifiedTime
    # App-level faults (issue 18): the sandbox's clock runs this far ahead of the caller's (its Date
    # header and, in Poynt's, the times app JWTs are checked against); negative: behind.
    clock_skew_s: float = 0.0
    # Clover: the app is high-trust (``/oauth/v2/recovery`` works); False answers recovery with 403.
    recovery_enabled: bool = True
    recovery_window_s: int = 14 * 86_400
    # Poynt: what the token endpoint does with an ``Authorization`` JWT on a refresh (not documented:
    # Poynt's docs send none). "ignored" or "verified" (a bad JWT is refused as on the other grants).
    refresh_client_auth: str = "ignored"
    # Poynt: whether a refresh token dies once used (not documented): "dies" or "survives" (it keeps
    # working until the grant is revoked; each refresh still answers a new pair).
    refresh_reuse: str = "dies"
    # Poynt: the one ``aud`` app JWTs must carry (None: the sandbox URL or Poynt's public API base).
    jwt_audience: str | None = None
    _failures: list[_Failure] = field(default_factory=list, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fail_next(self, n: int = 1, status: int = 500, path_prefix: str | None = None) -> None:
        """Answer the next ``n`` matching calls with ``status``.

        With ``path_prefix`` (e.g. ``"/oauth/v2/token"`` or ``"/v3/merchants/X/orders"``) only calls
        whose path starts with it count; without one, any API or token/refresh call does (the HTML
        consent pages never fail). Several ``fail_next`` calls queue up in order.
        """
        if n < 1:
            raise ValueError("n must be at least 1")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status")
        with self._lock:
            self._failures.append(_Failure(n, status, path_prefix))

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    @property
    def pending_failures(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._failures)

    def take_failure(self, path: str) -> int | None:
        """The status to fail this call with, consuming one queued failure; None if none applies."""
        with self._lock:
            for f in self._failures:
                if f.path_prefix is None or path.startswith(f.path_prefix):
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._failures.remove(f)
                    return f.status
        return None


# ---------------------------------------------------------------------------------------------
# Stats


class SandboxStats:
    """Counters a test can assert on. Thread-safe; ``snapshot()`` gives a consistent copy.

    - ``requests``: calls by route name (e.g. ``"GET /v3/merchants/{mId}/orders"``), refused ones
      included.
    - ``refresh_calls``: refresh-grant calls by merchant (every call that names a known refresh
      token, refused ones included); ``refreshes``: refreshes that issued a new pair, by merchant.
      (Poynt app-token refreshes count under the app id.)
    - ``token_exchanges``: authorization codes exchanged for tokens (plus Poynt app-token grants
      under ``app_token_grants``).
    - ``rate_limited`` (429s sent) and ``rate_limited_by`` (by ``X-RateLimit-Type``),
      ``early_retries`` (calls made while their Retry-After was still running).
    - ``server_errors``: 5xx sent by ``error_rate``/``fail_next`` (and by a crashing handler).
    - ``paging_modified``: ids the ``modify_during_paging`` knob modified, in order.
    - ``missing_api_version``: Poynt API calls without an ``api-version`` header.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zero()

    def _zero(self) -> None:
        self.requests: Counter[str] = Counter()
        self.refresh_calls: Counter[str] = Counter()
        self.refreshes: Counter[str] = Counter()
        self.recovery_calls: Counter[str] = Counter()
        self.recoveries: Counter[str] = Counter()
        self.token_exchanges = 0
        self.app_token_grants = 0
        self.rate_limited = 0
        self.rate_limited_by: Counter[str] = Counter()
        self.early_retries = 0
        self.server_errors = 0
        self.paging_modified: list[str] = []
        self.missing_api_version = 0

    def incr(self, name: str, key: str | None = None, n: int = 1) -> None:
        with self._lock:
            if key is None:
                setattr(self, name, getattr(self, name) + n)
            else:
                getattr(self, name)[key] += n

    def add_paging_modified(self, ids: list[str]) -> None:
        with self._lock:
            self.paging_modified.extend(ids)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "refresh_calls": dict(self.refresh_calls),
                "recovery_calls": dict(self.recovery_calls),
                "recoveries": dict(self.recoveries),
                "refreshes": dict(self.refreshes),
                "token_exchanges": self.token_exchanges,
                "app_token_grants": self.app_token_grants,
                "rate_limited": self.rate_limited,
                "rate_limited_by": dict(self.rate_limited_by),
                "early_retries": self.early_retries,
                "server_errors": self.server_errors,
                "paging_modified": list(self.paging_modified),
                "missing_api_version": self.missing_api_version,
            }

    def reset(self) -> None:
        with self._lock:
            self._zero()


# ---------------------------------------------------------------------------------------------
# Rate limiting


@dataclass
class _Bucket:
    window: deque[float] = field(default_factory=deque)
    inflight: int = 0
    blocked_until: float = 0.0
    block_duration: float = 0.0


@dataclass(frozen=True)
class Refusal:
    kind: str  # token-rps | token-concurrency | app-rps | app-concurrency
    limit: float
    wait_s: float  # what Retry-After says
    retry_after: str  # the header value

    def headers(self) -> dict[str, str]:
        return {
            "Retry-After": self.retry_after,
            "X-RateLimit-Type": self.kind,
            "X-RateLimit-Limit": _num(self.limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(math.ceil(time.time() + self.wait_s)),
        }


@dataclass(frozen=True)
class Admission:
    token_key: str
    app_key: str
    token_limit: float | None
    token_remaining: int | None

    def headers(self) -> dict[str, str]:
        if self.token_limit is None or self.token_remaining is None:
            return {}
        return {
            "X-RateLimit-Limit": _num(self.token_limit),
            "X-RateLimit-Remaining": str(max(0, self.token_remaining)),
        }


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class RateLimiter:
    """Per-token and per-app sliding windows and in-flight counts (see the module docstring)."""

    def __init__(
        self, knobs: SandboxKnobs, stats: SandboxStats, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._knobs = knobs
        self._stats = stats
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _bucket(self, kind: str, key: str) -> _Bucket:
        b = self._buckets.get((kind, key))
        if b is None:
            b = self._buckets[(kind, key)] = _Bucket()
        return b

    def _retry_after(self, wait: float) -> tuple[float, str]:
        ms = self._knobs.retry_after_ms
        if ms is None:
            secs = max(1, math.ceil(wait - 1e-9))
            return float(secs), str(secs)
        d = max(wait, ms / 1000.0)
        return d, f"{d:.3f}"

    def admit(self, token_key: str, app_key: str) -> Admission | Refusal:
        k = self._knobs
        limits = (
            ("token", token_key, k.per_token_rps, k.per_token_concurrency),
            ("app", app_key, k.per_app_rps, k.per_app_concurrency),
        )
        window_s = max(0.001, 1.0 - k.rate_tolerance_ms / 1000.0)
        with self._lock:
            now = self._clock()
            buckets = [self._bucket(kind, key) for kind, key, _, _ in limits]
            # 1. an active Retry-After (penalty box)
            for (kind, _, rps, _), b in zip(limits, buckets, strict=True):
                if rps is not None and b.blocked_until > now:
                    self._stats.incr("early_retries")
                    if k.retry_early_penalty:
                        b.blocked_until = max(b.blocked_until, now + b.block_duration)
                    wait = b.blocked_until - now
                    header = str(max(1, math.ceil(wait))) if k.retry_after_ms is None else f"{wait:.3f}"
                    return self._refuse(Refusal(f"{kind}-rps", rps or 0, wait, header))
            # 2. concurrency
            for (kind, _, _, conc), b in zip(limits, buckets, strict=True):
                if conc is not None and b.inflight >= conc:
                    wait, header = self._retry_after(0.0)
                    return self._refuse(Refusal(f"{kind}-concurrency", conc, wait, header))
            # 3. rate
            for (kind, _, rps, _), b in zip(limits, buckets, strict=True):
                w = b.window
                horizon = now - window_s
                while w and w[0] <= horizon:
                    w.popleft()
                if rps is not None and len(w) >= rps:
                    # admitted once the j oldest calls have left the window, j = len - rps + 1
                    j = math.floor(len(w) - rps) + 1
                    wait = max(0.001, w[j - 1] + window_s - now)
                    d, header = self._retry_after(wait)
                    b.blocked_until = now + d
                    b.block_duration = d
                    return self._refuse(Refusal(f"{kind}-rps", rps, d, header))
            for b in buckets:
                b.window.append(now)
                b.inflight += 1
            remaining = None
            if k.per_token_rps is not None:
                remaining = math.floor(k.per_token_rps) - len(buckets[0].window)
            return Admission(token_key, app_key, k.per_token_rps, remaining)

    def reset(self) -> None:
        """Forget every window, in-flight count and penalty box."""
        with self._lock:
            self._buckets.clear()

    def _refuse(self, r: Refusal) -> Refusal:
        self._stats.incr("rate_limited")
        self._stats.incr("rate_limited_by", r.kind)
        return r

    def release(self, a: Admission) -> None:
        with self._lock:
            for kind, key in (("token", a.token_key), ("app", a.app_key)):
                b = self._buckets.get((kind, key))
                if b is not None and b.inflight > 0:
                    b.inflight -= 1


# ---------------------------------------------------------------------------------------------
# Requests and responses


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes
    raw_query: str = ""

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def form(self) -> dict[str, str]:
        """The body as a form (``application/x-www-form-urlencoded``) or a JSON object."""
        ctype = (self.headers.get("Content-Type") or "").lower()
        if "json" in ctype or self.body[:1] == b"{":
            try:
                obj = json.loads(self.body or b"{}")
            except ValueError:
                return {}
            if not isinstance(obj, dict):
                return {}
            return {str(k): str(v) for k, v in obj.items() if v is not None}
        parsed = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def bearer(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), headers=dict(headers or {}))


def html_response(status: int, text: str) -> Response:
    return Response(
        status,
        text.encode(),
        "text/html; charset=utf-8",
        {"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def redirect(location: str) -> Response:
    return Response(302, b"", "text/plain", {"Location": location, "Cache-Control": "no-store"})


@dataclass(frozen=True)
class Principal:
    """Who an API call is from: the rate-limit keys and the merchant the token is for."""

    token_key: str
    app_key: str
    merchant_id: str | None


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: Any  # re.Pattern[str]
    name: str
    handler: Handler
    kind: str  # page | oauth | api


# ---------------------------------------------------------------------------------------------
# The HTTP server


class _HTTPServer(TrackedHTTPServer):
    allow_reuse_address = True
    request_queue_size = 128  # bursts of concurrent clients must not wait for SYN retries

    def __init__(self, addr: tuple[str, int], app: SandboxServer) -> None:
        self.app = app
        super().__init__(addr, _RequestHandler)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    timeout = 120  # idle keep-alive connections are closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines carry codes and tokens in query strings."""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(json_response(413, {"message": "Request body too large"}))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        req = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
            raw_query=parts.query,
        )
        self._send(self.server.app.dispatch(req))

    def setup(self) -> None:
        super().setup()
        # no Nagle: a small response must not wait for the client's delayed ACK (40 ms a call)
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, off by the ``clock_skew_s`` knob."""
        from email.utils import formatdate

        now = time.time() if timestamp is None else timestamp
        return formatdate(now + self.server.app.knobs.clock_skew_s, usegmt=True)

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        body = resp.body if self.command != "HEAD" else b""
        if len(body) <= 65536:
            # headers and a small body in one write (what end_headers does, plus the body)
            buffer: list[bytes] = self._headers_buffer  # type: ignore[attr-defined]
            buffer.append(b"\r\n" + body)
            self.flush_headers()
            return
        self.end_headers()
        self.wfile.write(body)

    do_GET = _handle  # noqa: N815 (http.server's naming)
    do_POST = _handle  # noqa: N815
    do_PUT = _handle  # noqa: N815
    do_DELETE = _handle  # noqa: N815
    do_HEAD = _handle  # noqa: N815


class SandboxServer:
    """Base class of :class:`CloverSandbox` and :class:`PoyntSandbox`."""

    provider = "sandbox"

    def __init__(self, port: int = 0, knobs: SandboxKnobs | None = None, seed: int = 7) -> None:
        self.port = port
        self.knobs = knobs if knobs is not None else SandboxKnobs()
        self.seed = seed
        self.stats = SandboxStats()
        self.limiter = RateLimiter(self.knobs, self.stats)
        self._fault_rng = random.Random(f"{seed}:faults")  # noqa: S311 (seeded fault injection)
        self._fault_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[Route] = []

    # lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", self.port), self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._on_start()
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self.provider}-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"the {self.provider} sandbox is not started")
        return f"http://127.0.0.1:{self.port}"

    def _on_start(self) -> None:
        """Hook: the URL is known from here on."""

    # routing -----------------------------------------------------------------------------------

    def add_route(self, method: str, pattern: Any, name: str, handler: Handler, kind: str) -> None:
        self._routes.append(Route(method, pattern, name, handler, kind))

    def authenticate(self, req: Request, match: Any) -> Principal | Response:
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> Any:
        return {"message": message}

    def refusal_headers(self, refusal: Refusal) -> dict[str, str]:
        """A 429's headers (the generic ones; the Clover sandbox sends Clover's own)."""
        return refusal.headers()

    def fail_next(self, n: int = 1, status: int = 500, path_prefix: str | None = None) -> None:
        """Shorthand for ``knobs.fail_next``."""
        self.knobs.fail_next(n, status, path_prefix)

    def _find(self, req: Request) -> tuple[Route, Any] | int:
        status = 404
        for r in self._routes:
            m = r.pattern.fullmatch(req.path)
            if m is None:
                continue
            if r.method == req.method or (r.method == "GET" and req.method == "HEAD"):
                return r, m
            status = 405
        return status

    def dispatch(self, req: Request) -> Response:
        found = self._find(req)
        if isinstance(found, int):
            message = "Not Found" if found == 404 else "Method Not Allowed"
            return json_response(found, self.error_body(found, message))
        route, match = found
        self.stats.incr("requests", route.name)
        try:
            if route.kind == "page":
                return route.handler(req, match)
            if route.kind == "oauth":
                if self.knobs.oauth_latency_ms > 0:
                    time.sleep(self.knobs.oauth_latency_ms / 1000.0)
                status = self.knobs.take_failure(req.path)
                if status is not None:
                    return self._server_error(status)
                return route.handler(req, match)
            return self._api(route, req, match)
        except Exception:
            logger.exception("sandbox handler failed: %s %s", req.method, route.name)
            self.stats.incr("server_errors")
            return json_response(500, self.error_body(500, "Internal Server Error"))

    def _api(self, route: Route, req: Request, match: Any) -> Response:
        who = self.authenticate(req, match)
        if isinstance(who, Response):
            return who
        adm = self.limiter.admit(who.token_key, who.app_key)
        if isinstance(adm, Refusal):
            body = self.error_body(429, "Too Many Requests")
            return json_response(429, body, self.refusal_headers(adm))
        try:
            if self.knobs.latency_ms > 0:
                time.sleep(self.knobs.latency_ms / 1000.0)
            status = self.knobs.take_failure(req.path)
            if status is None and self.knobs.error_rate > 0:
                with self._fault_lock:
                    if self._fault_rng.random() < self.knobs.error_rate:
                        status = self._fault_rng.choice(self.knobs.error_statuses)
            if status is not None:
                return self._server_error(status)
            resp = route.handler(req, match, who)
        finally:
            self.limiter.release(adm)
        resp.headers.update(adm.headers())
        return resp

    def _server_error(self, status: int) -> Response:
        if status >= 500:
            self.stats.incr("server_errors")
        reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
        return json_response(status, self.error_body(status, reason.get(status, "Error")))

    # helpers for subclasses ---------------------------------------------------------------------

    @staticmethod
    def now_ms() -> int:
        return time.time_ns() // 1_000_000
