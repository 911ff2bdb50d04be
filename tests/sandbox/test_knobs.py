"""Run-time knobs: rate and concurrency limits (429 + Retry-After + the limit named), the early-retry
penalty, latency, random and scheduled 5xx, and the stats that count them."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import pytest
import requests

from posync_local.sandbox import CloverSandbox, PoyntSandbox
from posync_local.sandbox.client import bearer, clover_connect, poynt_connect, poynt_headers

pytestmark = pytest.mark.integration


class Client:
    """One merchant's API session against a Clover sandbox."""

    def __init__(self, clover: CloverSandbox, mid: str | None = None) -> None:
        self.mid = mid or clover.add_merchant(orders=5, days=30)
        self.url = f"{clover.url}/v3/merchants/{self.mid}/orders"
        self.session = requests.Session()
        self.session.headers.update(bearer(clover_connect(clover, self.mid)["access_token"]))

    def call(self) -> requests.Response:
        return self.session.get(self.url, params={"limit": 1}, timeout=10)


def paced(client: Client, rate: float, duration_s: float) -> list[requests.Response]:
    """Calls at ``rate`` per second, never more than ``rate`` in any trailing second (by send time)."""
    sent: deque[float] = deque()
    out = []
    end = time.monotonic() + duration_s
    interval = 1.0 / rate
    last = -1e9
    while time.monotonic() < end:
        now = time.monotonic()
        wait = max(last + interval - now, 0.0)
        if len(sent) >= rate:
            wait = max(wait, sent[-int(rate)] + 1.0 - now)
        if wait > 0:
            time.sleep(wait)
        last = time.monotonic()
        sent.append(last)
        out.append(client.call())
    return out


def test_a_client_at_the_per_token_rate_is_never_refused(make_clover: Callable[..., CloverSandbox]) -> None:
    # Given Clover's real per-token limit, 16/s (and the per-app one, 50/s)
    clover = make_clover()
    client = Client(clover)
    # When a client keeps exactly 16 calls per second for 2 seconds
    answers = paced(client, 16, 2.0)
    # Then every call is served, and each says how much of the limit is left
    assert len(answers) >= 30
    assert [r.status_code for r in answers] == [200] * len(answers)
    assert answers[0].headers["X-RateLimit-Limit"] == "16"
    assert int(answers[0].headers["X-RateLimit-Remaining"]) == 15
    assert clover.stats.rate_limited == 0


def test_a_client_above_the_per_token_rate_gets_429_naming_the_limit(
    make_clover: Callable[..., CloverSandbox],
) -> None:
    # Given the real per-token limit
    clover = make_clover()
    client = Client(clover)
    # When a client sends 20 calls per second
    answers = paced(client, 20, 1.2)
    statuses = [r.status_code for r in answers]
    # Then the first 16 pass and then it is refused with 429
    assert statuses[:16] == [200] * 16
    assert 429 in statuses[16:]
    refused = next(r for r in answers if r.status_code == 429)
    # naming the limit in the header's name, as Clover does (its value: the limit), and
    # without Retry-After (Clover sends it with the concurrency 429s only)
    assert refused.headers["X-RateLimit-tokenLimit"] == "16"
    assert "Retry-After" not in refused.headers
    assert "X-RateLimit-Type" not in refused.headers
    assert clover.stats.rate_limited_by["token-rps"] >= 1


class PoyntClient:
    """One business's API session against a Poynt sandbox (whose 429s carry the generic headers,
    Retry-After included: the limiter's penalty box is read from them)."""

    def __init__(self, poynt: PoyntSandbox) -> None:
        bid = poynt.add_merchant(orders=3)
        self.url = f"{poynt.url}/businesses/{bid}/orders"
        self.session = requests.Session()
        self.session.headers.update(poynt_headers(poynt_connect(poynt, bid)["accessToken"]))

    def call(self) -> requests.Response:
        return self.session.get(self.url, timeout=10)


def test_generic_429s_name_the_limit_and_the_reset(poynt: PoyntSandbox) -> None:
    poynt.knobs.per_token_rps = 2
    client = PoyntClient(poynt)
    client.call()
    client.call()
    refused = client.call()
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Type"] == "token-rps"
    assert refused.headers["X-RateLimit-Limit"] == "2"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert int(refused.headers["Retry-After"]) >= 1
    assert int(refused.headers["X-RateLimit-Reset"]) >= int(time.time())


def test_retry_after_is_honest_and_retrying_early_makes_the_wait_longer(poynt: PoyntSandbox) -> None:
    # Given a 2/s token limit and float Retry-After (fast tests)
    poynt.knobs.per_token_rps = 2
    poynt.knobs.retry_after_ms = 300
    client = PoyntClient(poynt)
    assert [client.call().status_code for _ in range(2)] == [200, 200]
    # When the limit is passed
    refused = client.call()
    assert refused.status_code == 429
    wait = float(refused.headers["Retry-After"])
    assert wait >= 0.3
    # Then an immediate retry is refused again and restarts the wait
    early = client.call()
    assert early.status_code == 429
    assert float(early.headers["Retry-After"]) >= 0.3
    assert poynt.stats.early_retries == 1
    # And a retry after the (new) Retry-After is served
    time.sleep(float(early.headers["Retry-After"]) + 0.02)
    assert client.call().status_code == 200


def test_without_the_penalty_an_early_retry_does_not_extend_the_wait(poynt: PoyntSandbox) -> None:
    poynt.knobs.per_token_rps = 2
    poynt.knobs.retry_after_ms = 400
    poynt.knobs.retry_early_penalty = False
    client = PoyntClient(poynt)
    client.call()
    client.call()
    first = float(client.call().headers["Retry-After"])
    time.sleep(0.2)
    second = float(client.call().headers["Retry-After"])
    assert second < first - 0.1


def test_concurrency_limit_per_token(clover: CloverSandbox) -> None:
    # Given at most 2 calls in flight per token and 300 ms latency
    clover.knobs.per_token_concurrency = 2
    clover.knobs.latency_ms = 300
    client = Client(clover)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def call() -> None:
        r = client.call()
        with lock:
            results.append(r)

    # When 3 calls are made at once
    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join()
    # Then one is refused for concurrency
    refused = [r for r in results if r.status_code == 429]
    assert len(refused) == 1
    assert refused[0].headers["X-RateLimit-tokenConcurrentLimit"] == "2"
    assert refused[0].headers["Retry-After"] == "1"
    # And once they are done, calls pass again
    assert client.call().status_code == 200


def test_app_limits_count_every_token_of_the_app(clover: CloverSandbox) -> None:
    clover.knobs.per_app_rps = 3
    a, b = Client(clover), Client(clover)
    assert [a.call().status_code, b.call().status_code, a.call().status_code] == [200, 200, 200]
    refused = b.call()
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-crossTokenLimit"] == "3"
    assert "Retry-After" not in refused.headers
    clover.knobs.per_app_rps = None
    clover.knobs.per_app_concurrency = 1
    clover.knobs.latency_ms = 250
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(a.call().status_code))
    t.start()
    time.sleep(0.08)
    other = b.call()
    t.join()
    assert results == [200]
    assert other.status_code == 429
    assert other.headers["X-RateLimit-crossTokenConcurrentLimit"] == "1"
    assert other.headers["Retry-After"] == "1"


def test_oauth_endpoints_are_not_rate_limited(clover: CloverSandbox) -> None:
    clover.knobs.per_token_rps = 1
    clover.knobs.per_app_rps = 1
    mid = clover.add_merchant(orders=1)
    for _ in range(3):
        clover_connect(clover, mid)
    assert clover.stats.rate_limited == 0


def test_latency_is_added_to_api_calls(clover: CloverSandbox) -> None:
    client = Client(clover)
    t0 = time.perf_counter()
    client.call()
    base = time.perf_counter() - t0
    clover.knobs.latency_ms = 200
    t0 = time.perf_counter()
    assert client.call().status_code == 200
    slow = time.perf_counter() - t0
    assert slow >= 0.2
    assert slow >= base + 0.15


def test_oauth_latency_is_a_separate_knob(clover: CloverSandbox) -> None:
    clover.knobs.latency_ms = 1000
    clover.knobs.oauth_latency_ms = 150
    mid = clover.add_merchant(orders=1)
    t0 = time.perf_counter()
    clover_connect(clover, mid)
    elapsed = time.perf_counter() - t0
    assert 0.15 <= elapsed < 1.0


def test_error_rate_answers_a_seeded_fraction_with_5xx(make_clover: Callable[..., CloverSandbox]) -> None:
    # Given two sandboxes with the same seed and a 30% error rate
    runs = []
    for _ in range(2):
        clover = make_clover(seed=3, error_rate=0.3, per_token_rps=None, per_app_rps=None)
        client = Client(clover)
        # When 60 calls are made
        runs.append([client.call().status_code for _ in range(60)])
        # Then some fail with 500/502/503, the rest pass, and the stats count the failures
        errors = [s for s in runs[-1] if s != 200]
        assert 6 <= len(errors) <= 36
        assert set(errors) <= {500, 502, 503}
        assert clover.stats.server_errors == len(errors)
    # And the same seed gives the same sequence
    assert runs[0] == runs[1]


def test_error_statuses_choose_what_error_rate_answers(clover: CloverSandbox) -> None:
    clover.knobs.error_rate = 1.0
    clover.knobs.error_statuses = (504,)
    client = Client(clover)
    assert {client.call().status_code for _ in range(5)} == {504}
    clover.knobs.error_rate = 0.0
    assert client.call().status_code == 200


def test_rate_tolerance_sets_the_window_length(clover: CloverSandbox) -> None:
    # Given 2 calls per window and a 600 ms tolerance: a 400 ms window
    clover.knobs.per_token_rps = 2
    clover.knobs.retry_after_ms = 10
    clover.knobs.rate_tolerance_ms = 600
    client = Client(clover)
    assert [client.call().status_code, client.call().status_code] == [200, 200]
    # When the third call comes 550 ms later, it is admitted
    time.sleep(0.55)
    assert client.call().status_code == 200
    # But with the default tolerance (a 900 ms window) the same pattern is refused
    clover.knobs.rate_tolerance_ms = 100
    clover.limiter.reset()
    assert [client.call().status_code, client.call().status_code] == [200, 200]
    time.sleep(0.55)
    assert client.call().status_code == 429


def test_fail_next_fails_exactly_the_next_calls(clover: CloverSandbox) -> None:
    client = Client(clover)
    clover.fail_next(2, status=503)
    assert [client.call().status_code for _ in range(3)] == [503, 503, 200]
    assert clover.knobs.pending_failures == 0
    # scoped to a path: the token endpoint fails once, other calls are untouched, and the code survives
    mid = clover.add_merchant(orders=1)
    from posync_local.sandbox.client import clover_code

    code = clover_code(clover, mid)
    clover.knobs.fail_next(1, status=500, path_prefix="/oauth/v2/token")
    assert client.call().status_code == 200
    body = {"client_id": clover.client_id, "client_secret": clover.client_secret, "code": code}
    first = requests.post(f"{clover.url}/oauth/v2/token", json=body, timeout=10)
    assert first.status_code == 500
    assert requests.post(f"{clover.url}/oauth/v2/token", json=body, timeout=10).status_code == 200


def test_fail_next_and_limits_work_on_poynt_too(poynt: PoyntSandbox) -> None:
    bid = poynt.add_merchant(orders=3)
    token = poynt_connect(poynt, bid)["accessToken"]
    url = f"{poynt.url}/businesses/{bid}/orders"
    poynt.fail_next(1, status=502)
    first = requests.get(url, headers=poynt_headers(token), timeout=10)
    assert first.status_code == 502
    assert first.json()["code"] == "INTERNAL_SERVER_ERROR"
    poynt.knobs.per_token_rps = 2  # the 502 call was admitted: it counts
    poynt.knobs.retry_after_ms = 50
    assert requests.get(url, headers=poynt_headers(token), timeout=10).status_code == 200
    refused = requests.get(url, headers=poynt_headers(token), timeout=10)
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Type"] == "token-rps"
    assert refused.json()["code"] == "TOO_MANY_REQUESTS"


def test_stats_count_requests_by_route(clover: CloverSandbox) -> None:
    client = Client(clover)
    client.call()
    client.call()
    snap = clover.stats.snapshot()
    assert snap["requests"]["GET /v3/merchants/{mId}/orders"] == 2
    assert snap["requests"]["POST /oauth/v2/token"] == 1
    assert snap["token_exchanges"] == 1
    clover.stats.reset()
    assert clover.stats.snapshot()["requests"] == {}


def test_stop_closes_the_port_and_keep_alive_connections(make_clover: Callable[..., CloverSandbox]) -> None:
    clover = make_clover(per_token_rps=None)
    client = Client(clover)
    assert client.call().status_code == 200  # a keep-alive connection is open now
    clover.stop()
    with pytest.raises(requests.ConnectionError):
        client.call()
