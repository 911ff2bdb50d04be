"""HTTP to the providers' APIs: pooled sessions, rate limits, retries, token refresh on 401.

One :class:`Transport` serves one connection (one access token) during a sync run:

- **Pooling:** one :class:`PooledHttp` per container and provider, its pool sized for the
  worker's concurrency; timeouts are 5 s to connect and 30 s to read (``read_timeout_s``,
  ``POSYNC_SYNC_READ_TIMEOUT_SECONDS``; never more than the run has left). It is urllib3,
  which botocore already loads with boto3, rather than requests on top of it: the worker's
  cold start is about 20 ms shorter (``make bench``: 1.50x -> 1.39x of a bare handler), and
  what requests would add here (following redirects, cookies) a provider call must not do.
  Only the OAuth token calls (a refresh, now and then) load requests.
- **Rate limits:** every request holds a slot of the connection's :class:`RequestLimiter`.
  A 429 waits for ``Retry-After`` (seconds or an HTTP date; never less, plus a little
  jitter; without one, a second, doubling with each further 429 of the call) and tells the
  limiter, which pauses the whole token (and, if the provider names an app-wide limit,
  every worker of the app) rather than just this call.
- **Transient failures** (5xx, timeouts, connection errors): capped exponential backoff with
  full jitter, a bounded number of attempts, then :class:`~posync.errors.ProviderError`.
- **401:** ``tokens.after_unauthorized`` once (single-flight across the run's threads), then
  the call is retried; a second 401 is a ProviderError.
- **Time budget:** no wait and no request runs past the run's :class:`Deadline`;
  :class:`~posync.ratelimit.BudgetExhausted` is raised instead, and the sync checkpoints
  and continues in a new invocation.

Provider quirks (Poynt's ``api-version`` and ``POYNT-REQUEST-ID`` headers) live in small
per-provider profiles. Nothing here logs a token, a header or a query string.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import random
import re
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import msgspec
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from posync.domain import Connection
from posync.errors import ProviderError, RateLimited
from posync.observability import logger
from posync.ports import AccessTokens
from posync.ratelimit import SYSTEM_CLOCK, BudgetExhausted, Clock, Deadline, RequestLimiter

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one provider call tries: attempts, backoff and 429s tolerated."""

    max_attempts: int = 5  # per call, for 5xx / timeouts / connection errors
    base_s: float = 0.5  # backoff: uniform(0, min(cap, base * 2**attempt)) ("full jitter")
    cap_s: float = 20.0
    max_rate_limited: int = 10  # 429s tolerated per call before giving up with RateLimited
    jitter_429_s: float = 0.25  # added on top of Retry-After (never subtracted)
    default_retry_after_s: float = 1.0  # a 429 without a usable Retry-After


@dataclass
class TransportStats:
    """Counters for metrics (thread-safe increments)."""

    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    server_errors: int = 0
    unauthorized: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


@dataclass(frozen=True)
class Reply:
    """A provider's successful answer: status, body and headers."""

    status: int
    body: Any  # parsed JSON ({} for 304 / empty bodies), or the bytes (b"") if asked not to parse
    headers: Mapping[str, str]


class ProviderProfile:
    """Per-provider request decoration and 429 interpretation (the default is Clover's)."""

    provider = "clover"

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json"}

    def limit_named(self, reply_headers: Mapping[str, str]) -> tuple[str, float | None] | None:
        """The limit a 429 names, as (``token-rps`` | ``token-concurrency`` | ``app-rps`` |
        ``app-concurrency``, its value or None), or None if it names none.

        Clover names it in the header's name (CLV-429-1): ``X-RateLimit-tokenLimit``,
        ``-crossTokenLimit``, ``-tokenConcurrentLimit``, ``-crossTokenConcurrentLimit``, the
        value being the limit. Otherwise ``X-RateLimit-Type`` and ``X-RateLimit-Limit``.
        """
        lowered = {k.lower(): v for k, v in reply_headers.items()}
        for name, kind in CLOVER_LIMIT_HEADERS:
            if name in lowered:
                return kind, _limit_value(lowered[name])
        kind = lowered.get("x-ratelimit-type", "") or lowered.get("x-ratelimit-scope", "")
        if not kind:
            return None
        return kind.lower(), _limit_value(lowered.get("x-ratelimit-limit", ""))

    def app_wide(self, reply_headers: Mapping[str, str]) -> bool:
        """Did the 429 name the app's limit (rather than the token's)?"""
        named = self.limit_named(reply_headers)
        return named is not None and named[0].startswith("app")


CLOVER_LIMIT_HEADERS = (
    ("x-ratelimit-tokenlimit", "token-rps"),
    ("x-ratelimit-crosstokenlimit", "app-rps"),
    ("x-ratelimit-tokenconcurrentlimit", "token-concurrency"),
    ("x-ratelimit-crosstokenconcurrentlimit", "app-concurrency"),
)


def _limit_value(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class PoyntProfile(ProviderProfile):
    provider = "poynt"

    def headers(self) -> dict[str, str]:
        return {"Accept": "application/json", "api-version": "1.2", "POYNT-REQUEST-ID": str(uuid.uuid4())}


PROFILES: dict[str, ProviderProfile] = {"clover": ProviderProfile(), "poynt": PoyntProfile()}


class HttpTimeout(Exception):
    """No answer (or no connection) within the timeout."""


class HttpUnreachable(Exception):
    """The connection failed: refused, reset, cut mid-body, TLS."""


@dataclass(frozen=True)
class HttpReply:
    """What :class:`Http` got back: status, headers and the (decoded) body's bytes."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes


class Http(Protocol):
    """One GET: raises :class:`HttpTimeout` or :class:`HttpUnreachable`, never retries or redirects."""

    def get(
        self, url: str, *, params: Any, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> HttpReply: ...


def with_query(url: str, params: Any) -> str:
    """``url`` with ``params`` (a mapping or pairs) appended to its query string."""
    if not params:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(params, doseq=True)


# NO_PROXY's reading, as the standard library (and requests) apply it; typeshed leaves it out.
_bypass_proxy: Callable[[str, Mapping[str, str]], bool] = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


class PooledHttp:
    """GETs over a urllib3 pool: no retries and no redirects (:class:`Transport` decides).

    TLS is verified against the CA bundle botocore verifies AWS with (certifi's, where it is
    installed), not whatever the runtime's OpenSSL was built to look for. ``HTTPS_PROXY``,
    ``HTTP_PROXY`` and ``NO_PROXY`` are honoured as requests and botocore honour them.
    """

    def __init__(self, pool_size: int = 16, proxies: Mapping[str, str] | None = None) -> None:
        from botocore.httpsession import get_cert_path  # loaded with the first AWS client anyway

        self._pool_kw: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": pool_size,
            "retries": False,
            "cert_reqs": "CERT_REQUIRED",
            "ca_certs": get_cert_path(True),
        }
        self.pool = urllib3.PoolManager(**self._pool_kw)
        self.proxies = dict(urllib.request.getproxies() if proxies is None else proxies)
        self._via: dict[str, urllib3.ProxyManager] = {}
        self._lock = threading.Lock()

    def manager(self, url: str) -> urllib3.PoolManager:
        """The direct pool, or the pool through the proxy the environment names for ``url``."""
        parts = urlsplit(url)
        proxy = self.proxies.get(parts.scheme)
        if not proxy or _bypass_proxy(parts.hostname or "", self.proxies):
            return self.pool
        with self._lock:
            via = self._via.get(proxy)
            if via is None:
                via = self._via[proxy] = urllib3.ProxyManager(proxy, **self._pool_kw)
            return via

    def get(
        self, url: str, *, params: Any, headers: Mapping[str, str], timeout: tuple[float, float]
    ) -> HttpReply:
        try:
            resp = self.manager(url).request(
                "GET",
                with_query(url, params),
                headers={"Accept-Encoding": "gzip", **headers},
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                retries=False,
                redirect=False,
            )
        except NewConnectionError as exc:  # a subclass of urllib3's TimeoutError, but a refusal
            raise HttpUnreachable(type(exc).__name__) from None
        except Urllib3Timeout as exc:
            raise HttpTimeout(type(exc).__name__) from None
        except HTTPError as exc:
            raise HttpUnreachable(type(exc).__name__) from None
        return HttpReply(resp.status, resp.headers, resp.data)


@functools.cache
def session(provider: str, pool_size: int = 16) -> PooledHttp:
    """The container's pooled connections to one provider."""
    return PooledHttp(pool_size)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds (int or float) or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now_wall)
    if math.isnan(seconds) or seconds < 0:
        return None
    return seconds


class Transport:
    """GET JSON from one provider's API for one connection, within the run's budget."""

    def __init__(
        self,
        conn: Connection,
        api_base: str,
        tokens: AccessTokens,
        limiter: RequestLimiter,
        *,
        http: Http | None = None,
        clock: Clock = SYSTEM_CLOCK,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        stats: TransportStats | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.conn = conn
        self.api_base = api_base.rstrip("/")
        self.tokens = tokens
        self.limiter = limiter
        self.profile = PROFILES[conn.provider]
        self.http: Http = http if http is not None else session(conn.provider)
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.stats = stats if stats is not None else TransportStats()
        self.read_timeout_s = read_timeout_s
        self._token: str | None = None
        self._token_lock = threading.Lock()

    # ------------------------------------------------------------------ tokens

    def _current_token(self) -> str:
        with self._token_lock:
            if self._token is None:
                self._token = self.tokens.access_token(self.conn)
            return self._token

    def _replace_token(self, rejected: str) -> None:
        """Single-flight: the first thread that saw ``rejected`` refused refreshes; the rest reuse."""
        with self._token_lock:
            if self._token == rejected:
                self._token = self.tokens.after_unauthorized(self.conn, rejected)

    # ------------------------------------------------------------------ URLs

    def url(self, path_or_url: str) -> str:
        """A path on the API base, or an absolute URL that must lie on the API base (never elsewhere)."""
        if path_or_url.startswith(("http://", "https://")):
            base = urlsplit(self.api_base)
            target = urlsplit(path_or_url)
            if (target.scheme, target.netloc) != (base.scheme, base.netloc):
                raise ProviderError("refusing to follow a link off the provider's API host")
            return path_or_url
        if not path_or_url.startswith("/"):
            path_or_url = "/" + path_or_url
        return self.api_base + path_or_url

    def _adopt(self, headers: Mapping[str, str]) -> None:
        """Learn the token's real limit from a 429 that names it (kept under from then on)."""
        named = self.profile.limit_named(headers)
        if named is None:
            return
        kind, limit = named
        if limit is None:
            return
        if kind.startswith("token") and self.limiter.token.adopt_limit(kind, limit):
            logger.info("adopted the provider's limit", extra={"limit": kind, "value": limit})

    # ------------------------------------------------------------------ the call

    def get(
        self,
        path: str,
        params: Any = None,
        *,
        deadline: Deadline,
        headers: Mapping[str, str] | None = None,
        parse: bool = True,
    ) -> Reply:
        """GET ``path`` (JSON). Raises ProviderError, RateLimited, BudgetExhausted, AuthorizationRevoked.

        ``parse=False``: the reply's body is the response's bytes, for the caller to parse
        with :func:`parse_json` or :func:`iter_json_list` when it chooses (a page's bytes
        are a fifth of its objects).
        """
        url = self.url(path)
        log_path = urlsplit(url).path
        failures = 0
        limited = 0
        refreshed = False
        while True:
            token = self._current_token()
            remaining = deadline.remaining()
            if remaining <= 0:
                raise BudgetExhausted("no time left for another provider request")
            req_headers = {**self.profile.headers(), **(headers or {}), "Authorization": f"Bearer {token}"}
            timeout = (min(CONNECT_TIMEOUT_S, remaining), min(self.read_timeout_s, max(0.5, remaining)))
            error: str
            retry_after: float | None = None
            with self.limiter.slot(deadline):
                self.stats.bump("requests")
                try:
                    resp = self.http.get(url, params=params, headers=req_headers, timeout=timeout)
                except HttpTimeout:
                    resp = None
                    error = "timeout"
                except HttpUnreachable:
                    resp = None
                    error = "connection error"
            if resp is not None:
                status = resp.status
                if status < 300 or status == 304:
                    content = b"" if status == 304 else resp.content
                    return Reply(status, parse_json(content, status) if parse else content, resp.headers)
                if status == 401 and not refreshed:
                    self.stats.bump("unauthorized")
                    refreshed = True
                    logger.info("provider answered 401; refreshing the token once", extra={"path": log_path})
                    self._replace_token(token)
                    continue
                if status == 429:
                    self.stats.bump("rate_limited")
                    limited += 1
                    given = parse_retry_after(resp.headers.get("Retry-After"), self.clock.time())
                    if given is None:  # Clover's rate 429s: pause a second, then back off exponentially
                        given_or_backoff = min(
                            self.policy.cap_s, self.policy.default_retry_after_s * 2 ** (limited - 1)
                        )
                    else:
                        given_or_backoff = given
                    wait = given_or_backoff + self.rng.uniform(0, self.policy.jitter_429_s)
                    app_wide = self.profile.app_wide(resp.headers)
                    if not app_wide:
                        self._adopt(resp.headers)
                    logger.warning(
                        "rate limited by the provider",
                        extra={
                            "path": log_path,
                            "retry_after_s": given,
                            "limit": (self.profile.limit_named(resp.headers) or ("unnamed",))[0],
                            "app_wide": app_wide,
                        },
                    )
                    if limited > self.policy.max_rate_limited:
                        raise RateLimited(
                            f"{self.conn.provider} kept answering 429 ({limited} times)",
                            status=429,
                            retry_after_s=given,
                        )
                    # Pause the token for everyone first, then check the budget: if the wait does
                    # not fit, the pause still protects the next invocation in this container.
                    self.limiter.pause(wait, app_wide=app_wide)
                    deadline.check_wait(wait, "Retry-After")
                    self.stats.bump("retries")
                    continue  # the limiter's pause makes the retry wait
                if status < 500:
                    raise ProviderError(
                        f"{self.conn.provider} answered {status} on {log_path}", status=status
                    )
                self.stats.bump("server_errors")
                error = f"HTTP {status}"
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.clock.time())
            failures += 1
            if failures >= self.policy.max_attempts:
                raise ProviderError(
                    f"{self.conn.provider} failed {failures} times on {log_path} (last: {error})",
                    status=resp.status if resp is not None else None,
                )
            backoff = self.rng.uniform(0, min(self.policy.cap_s, self.policy.base_s * (2**failures)))
            if retry_after is not None:
                backoff = max(backoff, retry_after)
            logger.info(
                "retrying a provider request",
                extra={"path": log_path, "error": error, "attempt": failures, "wait_s": round(backoff, 3)},
            )
            deadline.check_wait(backoff, "retry backoff")
            self.stats.bump("retries")
            self.clock.sleep(backoff)


def parse_json(body: bytes, status: int = 200) -> Any:
    """A reply's bytes (``get(..., parse=False)``) as JSON; ``{}`` for an empty body."""
    if not body:
        return {}
    try:
        return _ANY.decode(_utf8(body))
    except (ValueError, msgspec.DecodeError) as exc:
        raise _not_json(status) from exc


# msgspec (C): some 4x faster than the standard library's parser on a provider's page.
# ``Raw`` is a member's JSON text, kept as a slice of the body (checked, not parsed).
_ANY = msgspec.json.Decoder()
_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])
_WSB = re.compile(rb"[ \t\n\r]*")  # JSON's whitespace
_NAME = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a member name (the body is valid JSON by then)


def _utf8(body: bytes) -> bytes:
    """The body as UTF-8 (JSON's encodings: UTF-8, with or without a BOM, -16 or -32)."""
    encoding = json.detect_encoding(body)
    if encoding == "utf-8":
        return body
    if encoding == "utf-8-sig":
        return body[3:]
    return body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")


def iter_json_list(
    body: bytes,
    key: str,
    *,
    what: str,
    status: int = 200,
    rest: dict[str, Any] | None = None,
    required: bool = True,
) -> Iterator[Any]:
    """The items of the list under ``key`` in a JSON object reply, parsed one at a time.

    The same JSON as :func:`parse_json` reads: the whole body is checked before the first
    item (trailing data included), but only one item exists as objects at a time while the
    caller iterates (the others stay slices of the body): a Clover page of 1,000 expanded
    orders is some 13 MiB of objects parsed at once, one order some 13 KiB. ``rest`` (if
    given) receives the object's other members. Raises ProviderError for a body that is
    not JSON, not an object, or has no list (or two) under ``key`` (none is an empty list
    if not ``required``; so is an empty body, which :func:`parse_json` reads as ``{}``).
    """
    no_list = ProviderError(f"{what} reply without an {key} list", status=status)
    if not body:
        if required:
            raise no_list
        return
    try:
        body = _utf8(body)
        members = _OBJECT.decode(body)
        twice = _repeated_names(body, members)
        others = {name: _ANY.decode(raw) for name, raw in members.items() if name != key}
    except msgspec.ValidationError as exc:  # JSON, but not an object
        if _is_json(body):
            raise ProviderError(f"{what} reply is not a JSON object", status=status) from exc
        raise _not_json(status) from exc
    except (ValueError, msgspec.DecodeError) as exc:
        raise _not_json(status) from exc
    if key in twice:
        raise no_list
    if twice:  # which of its values is meant? (json.loads would keep the last silently)
        raise ProviderError(f"{what} reply repeats a member ({min(twice)[:40]!r})", status=status)
    if rest is not None:
        rest.update(others)
    raw_list = members.pop(key, None)
    del members
    if raw_list is None:
        if required:
            raise no_list
        return
    try:
        items = _ARRAY.decode(raw_list)
    except msgspec.ValidationError:
        raise no_list from None
    del raw_list
    items.reverse()  # popped from the end: an item's slice is dropped as it is parsed
    try:
        while items:
            item = _ANY.decode(items.pop())
            yield item
            del item
    except msgspec.DecodeError as exc:  # a string that is not UTF-8, a number out of range
        raise _not_json(status) from exc


def _ws(body: bytes, i: int) -> int:
    """Where the JSON whitespace at ``i`` ends."""
    m = _WSB.match(body, i)
    return i if m is None else m.end()


def _is_json(body: bytes) -> bool:
    try:
        _ANY.decode(body)
    except msgspec.DecodeError:
        return False
    return True


def _repeated_names(body: bytes, members: dict[str, msgspec.Raw]) -> set[str]:
    """The top-level member names that occur more than once (``members`` keeps the last).

    ``body`` is known to be one valid JSON object: walk its members, each value's extent
    being its ``Raw`` slice. A value that is not its name's last one means the name repeats
    (the walk stops at the first repeated name: one is enough to refuse the reply).
    """
    seen: set[str] = set()
    i = _ws(body, _ws(body, 0) + 1)  # past '{'
    while body[i : i + 1] == b'"':
        m = _NAME.match(body, i)
        if m is None:  # pragma: no cover - the body was checked
            break
        name: str = _ANY.decode(m.group())
        if name in seen:
            return {name}
        seen.add(name)
        i = _ws(body, _ws(body, m.end()) + 1)  # past ':'
        value = bytes(members[name])  # a copy, but compared at memcmp's speed (a memoryview's is 30x slower)
        if not body.startswith(value, i):
            return {name}  # an earlier value of the name
        i = _ws(body, i + len(value))
        if body[i : i + 1] == b",":
            i = _ws(body, i + 1)
    return set()


def _not_json(status: int) -> ProviderError:
    return ProviderError(f"provider sent a non-JSON body ({status})", status=status)
