"""Provider OAuth adapters: consent URL, callback parameters, code exchange and refresh.

Each provider's quirks live in its adapter (``clover.oauth``, ``poynt.oauth``); the
authorization and token services only speak ``OAuthProvider``. Hosts come from
``posync.config`` only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from posync.errors import PosyncError, ProviderError, RateLimited

if TYPE_CHECKING:
    import requests

    from posync.app_credentials import AppCredentialsStore
    from posync.config import Settings
    from posync.tokens import TokenSet  # annotations only: importing posync.providers stays light

# Token calls: connect 5 s, read 15 s. Well under the 30 s refresh lease, so a lease never
# expires under a caller that is still waiting for the provider.
TOKEN_TIMEOUT: tuple[float, float] = (5.0, 15.0)

# Token endpoint statuses that mean "no" for good; anything else unexpected is a (transient) provider error.
REFUSALS = (400, 401, 403)

# A provider call is not started with less time than this left before the shared deadline.
MIN_CALL_S = 0.5
_Deadline = tuple[float, Callable[[], float]]
_deadline: ContextVar[_Deadline | None] = ContextVar("provider_deadline", default=None)

_TOKENISH = re.compile(r"[A-Za-z0-9._~+/=-]{20,}")


class ExchangeRefused(PosyncError):
    """The provider refused the authorization code (used, expired, or not ours)."""


@dataclass(frozen=True)
class CallbackParams:
    """What the provider's redirect to our callback carried."""

    state: str | None
    code: str | None = field(default=None, repr=False)
    denied: bool = False
    merchant_id: str | None = None  # Clover sends it; Poynt's comes from the access token
    error: str | None = None  # short, scrubbed


@dataclass(frozen=True)
class Grant:
    """What an authorization code was exchanged for: the merchant and its tokens."""

    merchant_id: str
    tokens: TokenSet
    business_name: str | None = None  # shown on the success page; None when the provider did not say


class OAuthProvider(Protocol):
    name: str

    def authorize_url(self, redirect_uri: str, state: str, merchant_hint: str | None = None) -> str:
        """The provider's consent page for this app, carrying our signed ``state``."""
        ...

    def read_callback(self, params: Mapping[str, str]) -> CallbackParams: ...

    def exchange_code(self, callback: CallbackParams, redirect_uri: str) -> Grant:
        """Tokens for the code. Raises ExchangeRefused (4xx) or ProviderError (5xx, timeout)."""
        ...

    def refresh(self, tokens: TokenSet) -> TokenSet:
        """A new pair. Raises RefreshRefused, RefreshNotDue or ProviderError."""
        ...


def scrub(text: str, limit: int = 120) -> str:
    """A provider's error text made safe to log and store: no token-like runs, bounded length."""
    return _TOKENISH.sub("[redacted]", text)[:limit]


def error_text(resp: requests.Response) -> str:
    """The provider's own error message, scrubbed (Clover ``message``, Poynt ``developerMessage``)."""
    try:
        body: Any = resp.json()
    except ValueError:
        return scrub(resp.text or "")
    if isinstance(body, dict):
        for key in ("message", "developerMessage", "error_description", "error", "code"):
            if isinstance(body.get(key), str) and body[key]:
                return scrub(body[key])
    return ""


@contextmanager
def deadline(at: float, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Every provider call inside shares one deadline (``clock()`` value): its timeouts are cut
    to the time left, and a call with less than ``MIN_CALL_S`` left is not started."""
    token = _deadline.set((at, clock))
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left() -> float | None:
    """Seconds before the shared deadline (None: no deadline set)."""
    current = _deadline.get()
    return None if current is None else current[0] - current[1]()


def token_timeout(what: str) -> tuple[float, float]:
    """``TOKEN_TIMEOUT`` cut to the shared deadline; ProviderError when too little time is left."""
    left = time_left()
    if left is None:
        return TOKEN_TIMEOUT
    if left < MIN_CALL_S:
        raise ProviderError(f"{what} not called: the request's deadline has passed")
    return (min(TOKEN_TIMEOUT[0], left), min(TOKEN_TIMEOUT[1], left))


@contextmanager
def reaching(what: str) -> Iterator[None]:
    """Timeouts and connection errors of a request to ``what`` become ProviderError (naming only ``what``)."""
    import requests  # loaded with the first provider call: the connect and webhook handlers never make one

    try:
        yield
    except requests.Timeout as exc:
        raise ProviderError(f"{what} timed out") from exc
    except requests.RequestException as exc:
        raise ProviderError(f"{what} could not be reached ({type(exc).__name__})") from exc


def post(
    session: requests.Session,
    url: str,
    *,
    what: str,
    json_body: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """POST to a token endpoint. 5xx, 429, timeouts and connection errors raise ProviderError.

    Messages name the endpoint (``what``) only: never the URL's query, the body or headers.
    """
    timeout = token_timeout(what)
    with reaching(what):
        resp = session.post(
            url, json=json_body, data=form, headers=headers, timeout=timeout, allow_redirects=False
        )
    if resp.status_code == 429:
        retry = resp.headers.get("Retry-After", "")
        raise RateLimited(
            f"{what} answered 429",
            status=429,
            retry_after_s=float(retry) if retry.replace(".", "", 1).isdigit() else None,
        )
    if resp.status_code >= 500:
        raise ProviderError(f"{what} answered {resp.status_code}", status=resp.status_code)
    return resp


def json_object(resp: requests.Response, what: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as exc:
        raise ProviderError(
            f"{what} answered {resp.status_code} without JSON", status=resp.status_code
        ) from exc
    if not isinstance(body, dict):
        raise ProviderError(f"{what} answered an unexpected JSON shape", status=resp.status_code)
    return body


MAX_CLOCK_SKEW_S = 300  # Poynt rejects app JWTs whose iat/exp are further off than this


def clock_skew_s(resp: requests.Response, now: float) -> float | None:
    """The provider's clock minus ours, from the reply's ``Date`` header (None: no usable header)."""
    from email.utils import parsedate_to_datetime

    raw = resp.headers.get("Date")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw).timestamp() - now
    except (TypeError, ValueError):
        return None


def check_clock(resp: requests.Response, now: float, what: str) -> None:
    """A refusal that came with a ``Date`` more than 300 s from our clock is our clock's fault:
    ``AppAuthFailed("clock")``, never a merchant's refusal (CLV-TOKEN-06, PNT-TOKEN-05)."""
    from posync.tokens import AppAuthFailed

    skew = clock_skew_s(resp, now)
    if skew is not None and abs(skew) > MAX_CLOCK_SKEW_S:
        raise AppAuthFailed("clock", f"{what}: our clock is {skew:+.0f} s off the provider's")


def raise_unless_refusal(resp: requests.Response, what: str) -> None:
    """A token endpoint's non-200 answer: a refusal (400, 401, 403) returns, anything else is a
    ProviderError (the caller raises the refusal its own way)."""
    if resp.status_code not in REFUSALS:
        raise ProviderError(f"{what} answered {resp.status_code}", status=resp.status_code)


def exchange_reply(resp: requests.Response, provider: str, what: str) -> dict[str, Any]:
    """The JSON object of a 200 code-exchange reply; a refusal raises ExchangeRefused (with the
    provider's scrubbed reason), any other status ProviderError."""
    if resp.status_code != 200:
        raise_unless_refusal(resp, what)
        raise ExchangeRefused(
            f"{provider} refused the authorization code ({resp.status_code}: {error_text(resp)})"
        )
    return json_object(resp, what)


_session: requests.Session | None = None


def shared_session() -> requests.Session:
    """One pooled session per container for token calls."""
    global _session  # noqa: PLW0603 (a per-container singleton)
    if _session is None:
        import requests

        _session = requests.Session()
        _session.headers["User-Agent"] = "posync/0.1"
    return _session


class UsesSession:
    """A provider adapter's HTTP session: the one it was given, else the container's shared one,
    created on first use (the connect handler builds adapters but never calls a provider)."""

    _given_session: requests.Session | None = None

    @property
    def _session(self) -> requests.Session:
        given = self._given_session
        return given if given is not None else shared_session()


def build_providers(
    settings: Settings,
    credentials: AppCredentialsStore,
    session: requests.Session | None = None,
    clock: Callable[[], float] = time.time,
) -> dict[str, OAuthProvider]:
    from posync.providers.clover.oauth import CloverOAuth
    from posync.providers.poynt.oauth import PoyntOAuth

    # session None: the container's shared one, created with the first provider call
    return {
        "clover": CloverOAuth(settings.clover, credentials.clover, session, clock),
        "poynt": PoyntOAuth(settings.poynt, credentials.poynt, session, clock),
    }
