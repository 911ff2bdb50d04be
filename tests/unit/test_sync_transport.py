"""The provider transport's retry policy: Retry-After respected (never less), capped backoff, 401, budget."""

from __future__ import annotations

import email.utils
import json
import random
import threading
from typing import Any

import pytest
from urllib3 import HTTPHeaderDict

from posync.domain import Connection
from posync.errors import ProviderError, RateLimited
from posync.ratelimit import BudgetExhausted, Deadline, RequestLimiter, TokenLimiter
from posync.transport import (
    PROFILES,
    HttpReply,
    HttpTimeout,
    HttpUnreachable,
    RetryPolicy,
    Transport,
    parse_json,
    parse_retry_after,
)

MERCHANT = "ABCDEFGHJK123"
POYNT_BIZ = "2f4a3a1e-3b4c-4d5e-8f90-1234567890ab"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + (self.now - 1000.0)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> HttpReply:
    content = b"" if body is None else json.dumps(body).encode()
    return HttpReply(status, HTTPHeaderDict(headers or {}), content)


Step = HttpReply | type[Exception] | Exception


class ScriptedSession:
    """Answers GETs from a script; records what was sent (URL, params, headers)."""

    def __init__(self, script: list[Step], clock: FakeClock | None = None) -> None:
        self.script = list(script)
        self.sent: list[dict[str, Any]] = []
        self.sent_at: list[float] = []
        self.clock = clock

    def get(self, url: str, **kwargs: Any) -> HttpReply:
        self.sent.append({"url": url, **kwargs})
        if self.clock is not None:
            self.sent_at.append(self.clock.now)
        step = self.script.pop(0)
        if isinstance(step, HttpReply):
            return step
        if isinstance(step, Exception):
            raise step
        raise step()


class FakeTokens:
    def __init__(self) -> None:
        self.issued = 0
        self.refreshes = 0
        self.lock = threading.Lock()

    def access_token(self, conn: Connection) -> str:
        self.issued += 1
        return "secret-access-token-1"

    def after_unauthorized(self, conn: Connection, rejected: str) -> str:
        with self.lock:
            self.refreshes += 1
        return "secret-access-token-2"


class RecordingApp:
    def __init__(self) -> None:
        self.paused: list[float] = []

    def acquire(self, deadline: Deadline) -> None:
        return None

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)

    def settle(self) -> None:
        return None


def make(
    script: list[Step],
    *,
    provider: str = "clover",
    policy: RetryPolicy | None = None,
    clock: FakeClock | None = None,
    limiter: RequestLimiter | None = None,
) -> tuple[Transport, ScriptedSession, FakeClock, FakeTokens]:
    clock = clock or FakeClock()
    sess = ScriptedSession(script, clock)
    tokens = FakeTokens()
    merchant = MERCHANT if provider == "clover" else POYNT_BIZ
    conn = Connection(provider=provider, merchant_id=merchant)
    lim = limiter or RequestLimiter(TokenLimiter(16, 5, clock))
    t = Transport(
        conn,
        "https://api.example.test",
        tokens,
        lim,
        http=sess,
        clock=clock,
        policy=policy,
        rng=random.Random(7),
    )
    return t, sess, clock, tokens


def far(clock: FakeClock) -> Deadline:
    return Deadline.after(10_000, clock)


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0.25", 0.25), (" 7 ", 7.0), ("", None), ("soon", None), ("-2", None), (None, None)],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, 1_800_000_000.0) == expected


def test_retry_after_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 12, usegmt=True), now) == pytest.approx(12.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0


@pytest.mark.parametrize("retry_after", ["1", "3", "4"])
def test_429_waits_at_least_retry_after_then_succeeds(retry_after: str) -> None:
    # Given a provider that answers 429 Retry-After: N, then 200
    t, sess, clock, _ = make([response(429, {}, {"Retry-After": retry_after}), response(200, {"ok": 1})])
    # When we GET
    reply = t.get("/v3/merchants/X/orders", deadline=far(clock))
    # Then the retry went no sooner than N seconds after the 429 (jitter only adds)
    assert reply.body == {"ok": 1}
    gap = sess.sent_at[1] - sess.sent_at[0]
    assert float(retry_after) <= gap <= float(retry_after) + RetryPolicy().jitter_429_s + 0.07
    assert t.stats.rate_limited == 1


def test_429_with_an_http_date_waits_until_that_date() -> None:
    clock = FakeClock()
    date = email.utils.formatdate(clock.time() + 6, usegmt=True)
    t, sess, clock, _ = make([response(429, {}, {"Retry-After": date}), response(200, {})], clock=clock)
    t.get("/x", deadline=far(clock))
    # HTTP dates have one-second resolution: never earlier than the second named
    assert sess.sent_at[1] - sess.sent_at[0] >= 5.0


def test_429_pauses_the_whole_token_not_just_the_call() -> None:
    # Given two transports (two fetch threads) sharing the connection's limiter
    clock = FakeClock()
    limiter = RequestLimiter(TokenLimiter(16, 5, clock))
    a, _, _, _ = make(
        [response(429, {}, {"Retry-After": "5"}), response(200, {})], clock=clock, limiter=limiter
    )
    b, sess_b, _, _ = make([response(200, {})], clock=clock, limiter=limiter)
    # When a gets a 429 and is retried
    a.get("/x", deadline=far(clock))
    limiter.pause(5)  # a fresh 429 seen just now, as a's thread would report it
    paused_at = clock.now
    # Then b's next call, too, waits for the pause
    b.get("/y", deadline=far(clock))
    assert sess_b.sent_at[0] >= paused_at + 5


def test_app_wide_429_pauses_the_app() -> None:
    clock = FakeClock()
    app = RecordingApp()
    limiter = RequestLimiter(TokenLimiter(16, 5, clock), app)
    t, _, _, _ = make(
        [response(429, {}, {"Retry-After": "2", "X-RateLimit-Type": "app-rps"}), response(200, {})],
        clock=clock,
        limiter=limiter,
    )
    t.get("/x", deadline=far(clock))
    assert len(app.paused) == 1
    assert app.paused[0] >= 2


def test_429_without_retry_after_waits_the_default() -> None:
    t, sess, clock, _ = make([response(429, {}), response(200, {})])
    t.get("/x", deadline=far(clock))
    assert sess.sent_at[1] - sess.sent_at[0] >= RetryPolicy().default_retry_after_s


def test_endless_429s_give_up_with_rate_limited() -> None:
    policy = RetryPolicy(max_rate_limited=3)
    t, sess, clock, _ = make([response(429, {}, {"Retry-After": "1"})] * 4, policy=policy)
    with pytest.raises(RateLimited):
        t.get("/x", deadline=far(clock))
    assert len(sess.sent) == 4


def test_retry_after_past_the_deadline_raises_budget_exhausted_without_sleeping() -> None:
    # Given a run with 20 s left and a provider asking for 60 s
    t, sess, clock, _ = make([response(429, {}, {"Retry-After": "60"})])
    deadline = Deadline.after(20, clock)
    # When / Then: the budget is exhausted at once (checkpoint and continue later)
    with pytest.raises(BudgetExhausted):
        t.get("/x", deadline=deadline)
    assert clock.sleeps == []
    assert len(sess.sent) == 1
    # and the token stays paused for the next invocation in this container
    assert t.limiter.token.paused_for() >= 60


# --------------------------------------------------------------------------- 5xx, timeouts


def test_server_errors_back_off_with_capped_full_jitter_then_raise() -> None:
    # Given a provider that fails every time
    policy = RetryPolicy(max_attempts=6, base_s=1.0, cap_s=4.0)
    t, sess, clock, _ = make([response(503, {})] * 6, policy=policy)
    # When / Then: bounded attempts, then ProviderError naming the failure
    with pytest.raises(ProviderError, match="failed 6 times") as info:
        t.get("/x", deadline=far(clock))
    assert info.value.status == 503
    assert len(sess.sent) == 6
    # and every backoff stayed within the cap (full jitter: anywhere from 0 to the cap)
    backoffs = [s for s in clock.sleeps if s > 0.07]
    assert len(backoffs) >= 3
    assert all(0 <= s <= 4.0 for s in clock.sleeps)


def test_timeouts_and_connection_errors_are_retried() -> None:
    t, _, clock, _ = make([HttpTimeout, HttpUnreachable, response(502, {}), response(200, {"n": 3})])
    assert t.get("/x", deadline=far(clock)).body == {"n": 3}
    assert t.stats.retries == 3


def test_a_503_retry_after_is_honoured() -> None:
    t, sess, clock, _ = make([response(503, {}, {"Retry-After": "9"}), response(200, {})])
    t.get("/x", deadline=far(clock))
    assert sess.sent_at[1] - sess.sent_at[0] >= 9


def test_backoff_past_the_deadline_raises_budget_exhausted() -> None:
    policy = RetryPolicy(base_s=30, cap_s=30)
    t, _, clock, _ = make([response(500, {})] * 3, policy=policy)
    with pytest.raises(BudgetExhausted):
        # rng(7)'s first backoff is well above 1 s
        t.get("/x", deadline=Deadline.after(1.0, clock))


def test_client_errors_are_not_retried() -> None:
    t, sess, clock, _ = make([response(400, {"message": "expand takes at most 3"})])
    with pytest.raises(ProviderError) as info:
        t.get("/x", deadline=far(clock))
    assert info.value.status == 400
    assert len(sess.sent) == 1


def test_no_request_starts_after_the_deadline() -> None:
    t, sess, clock, _ = make([response(200, {})])
    with pytest.raises(BudgetExhausted):
        t.get("/x", deadline=Deadline.after(0, clock))
    assert sess.sent == []


# --------------------------------------------------------------------------- 401


def test_401_refreshes_once_and_retries_with_the_new_token() -> None:
    t, sess, clock, tokens = make([response(401, {"message": "401 Unauthorized"}), response(200, {"ok": 1})])
    assert t.get("/x", deadline=far(clock)).body == {"ok": 1}
    assert tokens.refreshes == 1
    assert sess.sent[0]["headers"]["Authorization"] == "Bearer secret-access-token-1"
    assert sess.sent[1]["headers"]["Authorization"] == "Bearer secret-access-token-2"


def test_a_second_401_is_an_error_not_a_loop() -> None:
    t, _, clock, tokens = make([response(401, {}), response(401, {})])
    with pytest.raises(ProviderError) as info:
        t.get("/x", deadline=far(clock))
    assert info.value.status == 401
    assert tokens.refreshes == 1


def test_concurrent_401s_refresh_once() -> None:
    # Given 5 threads whose first call all get 401 with the same token
    clock = FakeClock()
    tokens = FakeTokens()
    gate = threading.Barrier(5)

    class Sess:
        def get(self, url: str, **kwargs: Any) -> HttpReply:
            if kwargs["headers"]["Authorization"].endswith("-1"):
                gate.wait(timeout=5)
                return response(401, {})
            return response(200, {})

    conn = Connection(provider="clover", merchant_id=MERCHANT)
    t = Transport(
        conn, "https://api.example.test", tokens, RequestLimiter(TokenLimiter(None, None)), http=Sess()
    )
    errors: list[BaseException] = []

    def call() -> None:
        try:
            t.get("/x", deadline=Deadline.after(30))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # Then every call succeeded and the token was refreshed exactly once
    assert errors == []
    assert tokens.refreshes == 1
    assert tokens.issued == 1
    assert clock.sleeps == []


# --------------------------------------------------------------------------- provider quirks, safety


def test_poynt_requests_carry_api_version_and_a_request_id() -> None:
    t, sess, clock, _ = make([response(200, {}), response(200, {})], provider="poynt")
    t.get("/businesses/x/orders", deadline=far(clock))
    t.get("/businesses/x/orders", deadline=far(clock))
    h0, h1 = sess.sent[0]["headers"], sess.sent[1]["headers"]
    assert h0["api-version"] == "1.2"
    assert h0["POYNT-REQUEST-ID"] != h1["POYNT-REQUEST-ID"]


def test_timeouts_are_connect_5_read_30_and_never_past_the_budget() -> None:
    t, sess, clock, _ = make([response(200, {}), response(200, {})])
    t.get("/x", deadline=far(clock))
    t.get("/x", deadline=Deadline.after(12, clock))
    assert sess.sent[0]["timeout"] == (5.0, 30.0)
    assert sess.sent[1]["timeout"][1] <= 12


def test_links_off_the_api_host_are_refused() -> None:
    t, sess, clock, _ = make([response(200, {})])
    with pytest.raises(ProviderError, match="off the provider's API host"):
        t.get("https://evil.example.test/steal", deadline=far(clock))
    assert sess.sent == []
    t.get("https://api.example.test/businesses/x/orders?startOffset=100", deadline=far(clock))
    assert sess.sent[0]["url"] == "https://api.example.test/businesses/x/orders?startOffset=100"


def test_304_is_an_empty_body() -> None:
    t, _, clock, _ = make([response(304)])
    reply = t.get("/x", deadline=far(clock))
    assert (reply.status, reply.body) == (304, {})


def test_logs_never_carry_the_token(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    script: list[Step] = [
        response(401, {}),
        response(429, {}, {"Retry-After": "1"}),
        response(500, {}),
        response(200, {}),
    ]
    t, _, clock, _ = make(script)
    t.get("/v3/merchants/X/orders", params={"filter": "modifiedTime>=1"}, deadline=far(clock))
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert "rate limited" in text  # the logs were captured
    assert "secret-access-token" not in text
    assert "Bearer" not in text


def test_a_429_naming_the_token_limit_teaches_the_limiter() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(TokenLimiter(16, 5, clock))
    headers = {"Retry-After": "1", "X-RateLimit-Type": "token-rps", "X-RateLimit-Limit": "4"}
    t, _, _, _ = make([response(429, {}, headers), response(200, {})], clock=clock, limiter=limiter)
    t.get("/x", deadline=far(clock))
    assert limiter.token.interval >= 0.25


def test_the_read_timeout_is_configurable_and_reaches_every_request() -> None:
    # Given a worker configured with a 0.25 s read timeout (the chaos suite's "slow provider")
    from posync.sync import SourceFactory, SyncConfig
    from tests.unit.oauth_fakes import unit_settings

    config = SyncConfig.from_env({"POSYNC_SYNC_READ_TIMEOUT_SECONDS": "0.25"})
    assert config.read_timeout_s == 0.25
    assert SyncConfig.from_env({}).read_timeout_s == 30.0
    with pytest.raises(Exception, match="POSYNC_SYNC_READ_TIMEOUT_SECONDS"):
        SyncConfig.from_env({"POSYNC_SYNC_READ_TIMEOUT_SECONDS": "0"})
    # When the source factory builds a connection's transport
    factory = SourceFactory(unit_settings(), FakeTokens(), config)
    source = factory(Connection(provider="clover", merchant_id=MERCHANT), Deadline.after(60))
    # Then its requests carry that read timeout (the connect timeout stays 5 s)
    assert source.transport.read_timeout_s == 0.25
    t, sess, clock, _ = make([response(200, {})])
    t.read_timeout_s = 0.25
    t.get("/x", deadline=far(clock))
    assert sess.sent[0]["timeout"] == (5.0, 0.25)


# --------------------------------------------------------------------------- unparsed bodies


def test_parse_false_returns_the_bytes_and_parse_json_reads_them_later() -> None:
    t, _, clock, _ = make([response(200, {"elements": [{"id": "A"}]}), response(503), response(200)])
    reply = t.get("/v3/merchants/M/orders", deadline=far(clock), parse=False)
    assert reply.body == b'{"elements": [{"id": "A"}]}'
    assert parse_json(reply.body) == {"elements": [{"id": "A"}]}
    # retries work as for parsed replies; an empty body is an empty object
    empty = t.get("/v3/merchants/M/orders", deadline=far(clock), parse=False)
    assert empty.body == b""
    assert parse_json(empty.body) == {}


def test_parse_json_names_a_body_that_is_not_json() -> None:
    with pytest.raises(ProviderError, match="non-JSON body") as info:
        parse_json(b"<html>gateway</html>", 200)
    assert info.value.status == 200


# --------------------------------------------------------------------------- Clover's 429 headers


def test_clovers_rate_429s_without_retry_after_wait_a_second_then_twice_as_long() -> None:
    # Given Clover answering two 429s naming its per-token rate limit, without Retry-After
    named = {"X-RateLimit-tokenLimit": "16"}
    t, sess, clock, _ = make([response(429, {}, named), response(429, {}, named), response(200, {})])
    # When the call is made, then it waits a second, then two (plus jitter), then succeeds
    assert t.get("/x", deadline=far(clock)).status == 200
    first, second = sess.sent_at[1] - sess.sent_at[0], sess.sent_at[2] - sess.sent_at[1]
    assert 1.0 <= first < 1.3
    assert 2.0 <= second < 2.3


@pytest.mark.parametrize(
    ("header", "kind", "app_wide"),
    [
        ("X-RateLimit-tokenLimit", "token-rps", False),
        ("X-RateLimit-tokenConcurrentLimit", "token-concurrency", False),
        ("X-RateLimit-crossTokenLimit", "app-rps", True),
        ("X-RateLimit-crossTokenConcurrentLimit", "app-concurrency", True),
    ],
)
def test_clovers_429_header_names_say_which_limit(header: str, kind: str, app_wide: bool) -> None:
    # Given a Clover 429 that names its limit in the header's name (any case), value the limit
    profile = PROFILES["clover"]
    headers = {header.lower(): "4"}
    # Then posync reads the limit, and whether it is the app's
    assert profile.limit_named(headers) == (kind, 4.0)
    assert profile.app_wide(headers) is app_wide


def test_a_clover_429_naming_the_token_limits_teaches_the_limiter() -> None:
    clock = FakeClock()
    limiter = RequestLimiter(TokenLimiter(16, 5, clock))
    t, _, _, _ = make(
        [
            response(429, {}, {"X-RateLimit-tokenLimit": "4"}),
            response(429, {}, {"X-RateLimit-tokenConcurrentLimit": "2", "Retry-After": "1"}),
            response(200, {}),
        ],
        clock=clock,
        limiter=limiter,
    )
    t.get("/x", deadline=far(clock))
    assert limiter.token.interval >= 0.25
    assert limiter.token.concurrency == 2


def test_a_clover_cross_token_429_pauses_the_app() -> None:
    clock = FakeClock()
    app = RecordingApp()
    limiter = RequestLimiter(TokenLimiter(16, 5, clock), app)
    t, _, _, _ = make(
        [response(429, {}, {"X-RateLimit-crossTokenLimit": "50"}), response(200, {})],
        clock=clock,
        limiter=limiter,
    )
    t.get("/x", deadline=far(clock))
    assert len(app.paused) == 1 and app.paused[0] >= 1
    assert limiter.token.interval < 0.25  # the app's limit is not the token's
