"""The per-token limiter and the shared per-app limits, deterministic with an injected clock."""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import ANY, Stubber

from posync.config import ConfigError
from posync.ratelimit import (
    BudgetExhausted,
    Deadline,
    DynamoAppRate,
    Limits,
    LocalAppRate,
    RequestLimiter,
    TokenLimiter,
)


class FakeClock:
    """Monotonic and wall time that only move when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall0 = 1_800_000_000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall0 + (self.now - 1000.0)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += max(0.0, seconds)


def starts(limiter: TokenLimiter, clock: FakeClock, n: int, deadline: Deadline | None = None) -> list[float]:
    out = []
    for _ in range(n):
        with limiter.permit(deadline or Deadline(clock.now + 10_000, clock)):
            out.append(clock.now)
    return out


# --------------------------------------------------------------------------- configuration


def test_limits_default_to_the_published_clover_figures() -> None:
    # Given no overrides / When read / Then Clover's real limits
    limits = Limits.from_env("clover", {})
    assert (limits.token_rps, limits.token_concurrency, limits.app_rps, limits.app_concurrency) == (
        16.0,
        5,
        50.0,
        10,
    )


def test_limits_are_configuration_and_zero_disables() -> None:
    env = {
        "POSYNC_CLOVER_TOKEN_RPS": "4",
        "POSYNC_CLOVER_APP_RPS": "0",
        "POSYNC_POYNT_TOKEN_CONCURRENCY": "2",
    }
    assert Limits.from_env("clover", env).token_rps == 4.0
    assert Limits.from_env("clover", env).app_rps is None
    assert Limits.from_env("poynt", env).token_concurrency == 2


@pytest.mark.parametrize("bad", ["fast", "-1", "nan", "1e9"])
def test_limits_reject_nonsense(bad: str) -> None:
    with pytest.raises(ConfigError, match="POSYNC_CLOVER_TOKEN_RPS"):
        Limits.from_env("clover", {"POSYNC_CLOVER_TOKEN_RPS": bad})


# --------------------------------------------------------------------------- per token: rate


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - window + 1e-12:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_token_rate_never_puts_more_than_rps_starts_in_any_one_second_window() -> None:
    # Given a 16 req/s token
    clock = FakeClock()
    limiter = TokenLimiter(16, 5, clock)
    # When 100 requests go as fast as the limiter allows
    times = starts(limiter, clock, 100)
    # Then no closed one-second window holds 17 starts, and the pace is close to the ceiling
    assert max_in_any_window(times) <= 16
    assert 100 / (times[-1] - times[0]) > 15.0
    # and even a window widened by 25 ms of network jitter holds no more than 16
    assert max_in_any_window(times, 1.0 + 0.025) <= 16


def test_first_request_does_not_wait() -> None:
    clock = FakeClock()
    limiter = TokenLimiter(16, 5, clock)
    starts(limiter, clock, 1)
    assert clock.sleeps == []


def test_unlimited_token_never_sleeps() -> None:
    clock = FakeClock()
    starts(TokenLimiter(None, None, clock), clock, 50)
    assert clock.sleeps == []


def test_pause_stops_the_whole_token_for_at_least_the_given_time() -> None:
    # Given a token that just got a 429 with Retry-After 2 s
    clock = FakeClock()
    limiter = TokenLimiter(16, 5, clock)
    starts(limiter, clock, 3)
    paused_at = clock.now
    limiter.pause(2.0)
    # When the next request asks for a slot
    (t,) = starts(limiter, clock, 1)
    # Then it starts no earlier than the pause's end
    assert t >= paused_at + 2.0


def test_a_wait_past_the_deadline_raises_budget_exhausted_without_sleeping() -> None:
    # Given a token paused for 30 s and a run with 5 s left
    clock = FakeClock()
    limiter = TokenLimiter(16, 5, clock)
    limiter.pause(30.0)
    deadline = Deadline.after(5.0, clock)
    # When a request asks for a slot / Then the budget is exhausted at once, no time spent
    with pytest.raises(BudgetExhausted):
        starts(limiter, clock, 1, deadline)
    assert clock.sleeps == []
    assert limiter.in_flight == 0


# --------------------------------------------------------------------------- per token: concurrency


def test_concurrency_never_exceeds_the_cap_and_reaches_it() -> None:
    # Given a token with 5 concurrent requests and no rate limit (real clock, real threads)
    limiter = TokenLimiter(None, 5)
    peak = 0
    current = 0
    lock = threading.Lock()
    deadline = Deadline.after(30)

    def call() -> None:
        nonlocal peak, current
        with limiter.permit(deadline):
            with lock:
                current += 1
                peak = max(peak, current)
            time.sleep(0.02)
            with lock:
                current -= 1

    # When 20 threads call at once
    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then at most 5 ran together, and 5 did
    assert peak == 5
    assert limiter.in_flight == 0


def test_concurrency_wait_respects_the_deadline() -> None:
    limiter = TokenLimiter(None, 1)
    release = threading.Event()

    def hold() -> None:
        with limiter.permit(Deadline.after(10)):
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.05)
    try:
        with pytest.raises(BudgetExhausted), limiter.permit(Deadline.after(0.1)):
            pass
    finally:
        release.set()
        holder.join()


def test_pipelined_requests_reach_the_rate_ceiling_with_latency() -> None:
    # Given 16 req/s, 5 concurrent, and requests that take 200 ms (real clock, fast enough: ~1.3 s)
    limiter = TokenLimiter(16, 5)
    deadline = Deadline.after(30)
    done: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for _ in range(n):
            with limiter.permit(deadline):
                time.sleep(0.2)
            with lock:
                done.append(time.monotonic())

    # When 5 threads each make 4 requests
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(4,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    # Then 20 requests took about 20/16 s plus one latency, far less than the sequential 4 s
    assert len(done) == 20
    assert elapsed < 3.0  # sequential: 4 s; ideal: 20/16 s + 0.2 s


# --------------------------------------------------------------------------- composite


class RecordingApp:
    def __init__(self) -> None:
        self.acquired = 0
        self.paused: list[float] = []

    def acquire(self, deadline: Deadline) -> None:
        self.acquired += 1

    def pause(self, seconds: float) -> None:
        self.paused.append(seconds)

    def settle(self) -> None:
        return None


def test_request_limiter_takes_the_app_rate_and_pauses_app_wide_only_when_told() -> None:
    clock = FakeClock()
    app = RecordingApp()
    lim = RequestLimiter(TokenLimiter(16, 5, clock), app)
    with lim.slot(Deadline.after(10, clock)):
        pass
    lim.pause(1.5)
    lim.pause(2.5, app_wide=True)
    assert app.acquired == 1
    assert app.paused == [2.5]
    assert lim.token.paused_for() >= 2.5


def test_local_app_rate_spaces_requests_across_tokens() -> None:
    # Given an app limit of 10/s shared by two tokens' requests in one process
    clock = FakeClock()
    app = LocalAppRate(10, clock)
    times = []
    for _ in range(30):
        app.acquire(Deadline.after(100, clock))
        times.append(clock.now)
    assert max_in_any_window(times) <= 10


# --------------------------------------------------------------------------- shared app bucket (DynamoDB)


class FakeDynamo:
    """Just enough of DynamoDB's conditional UpdateItem for the bucket and the slot leases.

    Conditions are evaluated on the few shapes those classes use; a failure raises the real
    ``ClientError`` with ``ConditionalCheckFailedException`` and the ALL_OLD item when asked.
    """

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def get_item(self, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append("get_item")
            item = self.items.get(kw["Key"]["pk"]["S"])
            return {"Item": dict(item)} if item else {}

    def update_item(self, **kw: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append("update_item")
            pk = kw["Key"]["pk"]["S"]
            item = self.items.get(pk)
            names = kw.get("ExpressionAttributeNames", {})
            values = kw.get("ExpressionAttributeValues", {})
            cond = kw.get("ConditionExpression")
            if cond and not self._holds(cond, item or {}, names, values):
                resp: dict[str, Any] = {"Error": {"Code": "ConditionalCheckFailedException", "Message": "no"}}
                if kw.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and item:
                    resp["Item"] = dict(item)
                raise ClientError(resp, "UpdateItem")  # type: ignore[arg-type]
            new = dict(item or {"pk": {"S": pk}})
            expr = kw["UpdateExpression"]
            if expr.startswith("SET "):
                for part in expr[4:].split(", "):
                    left, right = part.split(" = ")
                    new[names[left]] = values[right]
            elif expr.startswith("REMOVE "):
                path = expr[7:].split(".")
                if len(path) == 2 and names[path[0]] in new:
                    new[names[path[0]]]["M"].pop(names[path[1]], None)
            self.items[pk] = new
            return {}

    @staticmethod
    def _n(item: dict[str, Any], name: str) -> float | None:
        return float(item[name]["N"]) if name in item else None

    def _holds(self, cond: str, item: dict[str, Any], names: dict[str, str], values: dict[str, Any]) -> bool:
        for clause in cond.split(" AND "):
            clause = clause.strip("() ")
            alternatives = [c.strip("() ") for c in clause.split(" OR ")]
            if not any(self._atom(a, item, names, values) for a in alternatives):
                return False
        return True

    def _atom(self, atom: str, item: dict[str, Any], names: dict[str, str], values: dict[str, Any]) -> bool:
        if atom.startswith("attribute_not_exists("):
            return names[atom[len("attribute_not_exists(") :].rstrip(")")] not in item
        for op in (" <= ", " < ", " = "):
            if op in atom:
                left, right = atom.split(op)
                have = self._n(item, names[left])
                want = float(values[right]["N"])
                if have is None:
                    return False
                return {" <= ": have <= want, " < ": have < want, " = ": have == want}[op]
        raise AssertionError(atom)


def test_shared_bucket_batches_tokens_so_dynamodb_is_not_the_bottleneck() -> None:
    # Given an app limit of 50/s with 5 tokens per DynamoDB call
    clock = FakeClock()
    ddb = FakeDynamo()
    app = DynamoAppRate(ddb, "control", "clover", 50, batch=5, clock=clock)
    # When 200 requests take the app's rate
    times = []
    for _ in range(200):
        app.acquire(Deadline.after(1000, clock))
        times.append(clock.now)
    # Then about one write per 5 requests (the slow start's 1, 2, 4 first; plus the first read),
    # never more than 50 starts a second, at about the bucket's provable rate (5 + 45 / 1.25 = 41/s)
    writes = ddb.calls.count("update_item")
    assert writes <= 200 / 5 + 4
    assert ddb.calls.count("get_item") == 1
    assert max_in_any_window(times) <= 50
    assert 200 / (times[-1] - times[0]) > 38


def test_shared_bucket_is_shared_between_workers() -> None:
    # Given two workers (two containers) on the same table
    clock = FakeClock()
    ddb = FakeDynamo()
    a = DynamoAppRate(ddb, "control", "clover", 20, batch=4, clock=clock)
    b = DynamoAppRate(ddb, "control", "clover", 20, batch=4, clock=clock)
    # When they alternate, each with a stale view of the bucket
    times = []
    for i in range(120):
        (a if i % 2 else b).acquire(Deadline.after(1000, clock))
        times.append(clock.now)
    # Then together they keep under the app's limit (lost races are retried from ALL_OLD)
    assert max_in_any_window(times) <= 20


def test_app_wide_pause_reaches_other_workers() -> None:
    clock = FakeClock()
    ddb = FakeDynamo()
    a = DynamoAppRate(ddb, "control", "clover", 50, clock=clock)
    b = DynamoAppRate(ddb, "control", "clover", 50, clock=clock)
    b.acquire(Deadline.after(10, clock))
    paused_at = clock.now
    # When worker a sees an app-level 429 with Retry-After 3 s
    a.pause(3.0)
    # Then worker b's next request (once its local batch is spent) waits for the pause
    for _ in range(10):
        b.acquire(Deadline.after(100, clock))
    assert clock.now >= paused_at + 3.0


def test_shared_bucket_wait_past_deadline_raises() -> None:
    clock = FakeClock()
    ddb = FakeDynamo()
    app = DynamoAppRate(ddb, "control", "clover", 50, clock=clock)
    app.pause(60)
    with pytest.raises(BudgetExhausted):
        app.acquire(Deadline.after(5, clock))


KEY = {"pk": {"S": "ratelimit#clover#app"}}


def test_shared_bucket_writes_are_conditional_and_expire() -> None:
    # The exact first call matters: create-if-absent and a TTL on the control item.
    clock = FakeClock()
    ddb = boto3.client("dynamodb", region_name="us-east-1")
    app = DynamoAppRate(ddb, "posync-dev-control", "clover", 50, batch=5, clock=clock)
    with Stubber(ddb) as stub:
        stub.add_response(
            "get_item",
            {},
            {
                "TableName": "posync-dev-control",
                "Key": {"pk": {"S": "ratelimit#clover#app"}},
                "ConsistentRead": True,
            },
        )
        stub.add_response(
            "update_item",
            {},
            {
                "TableName": "posync-dev-control",
                "Key": KEY,
                "UpdateExpression": "SET #t = :t, #ts = :now, #exp = :exp",
                "ConditionExpression": (
                    "attribute_not_exists(#ts) AND (attribute_not_exists(#p) OR #p <= :now)"
                ),
                "ExpressionAttributeNames": ANY,
                "ExpressionAttributeValues": ANY,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            },
        )
        app.acquire(Deadline.after(10, clock))  # the slow start: a first take of one token
        stub.assert_no_pending_responses()


# --------------------------------------------------------------------------- shared app slots


def test_a_named_limit_from_a_429_is_adopted_and_only_ever_lowers() -> None:
    # Given a limiter configured for 16/s and 5 concurrent
    clock = FakeClock()
    limiter = TokenLimiter(16, 5, clock)
    # When the provider says the token's limits are 4/s and 2 concurrent (and later claims 100/s)
    assert limiter.adopt_limit("token-rps", 4)
    assert limiter.adopt_limit("token-concurrency", 2)
    assert not limiter.adopt_limit("token-rps", 100)
    assert not limiter.adopt_limit("token-rps", float("nan"))
    # Then requests keep to 4 per second from now on
    times = starts(limiter, clock, 20)
    assert max_in_any_window(times) <= 4
    assert limiter.concurrency == 2
