"""Rate limits: a per-token limiter inside the worker and the per-app limit shared by all workers.

Clover allows 16 requests/s and 5 concurrent requests per token and 50 requests/s and 10
concurrent requests per app; a request over a limit gets 429 with ``Retry-After``, and
retrying early makes the wait longer. posync keeps under the ceilings instead of bouncing
off them:

- :class:`TokenLimiter` (one per connection, i.e. per token, per container) spaces request
  starts evenly at ``rps`` with a small safety factor (so that no one-second window, sliding
  or fixed, ever holds more than ``rps`` starts even with a few ms of network jitter) and
  caps requests in flight with a semaphore. Pipelined and concurrent fetches therefore
  reach the ceiling but not beyond. A 429 pauses the whole token, not just the call that
  got it (:meth:`TokenLimiter.pause`).
- The per-app limit is held across Lambda containers in the DynamoDB control table:
  :class:`DynamoAppRate` is a shared token bucket (``pk = ratelimit#<provider>#app``)
  taken from with optimistic conditional updates, several tokens per call so DynamoDB is
  not the bottleneck (one write per ``batch`` requests); :class:`DynamoAppSlots` leases
  shares of the app's concurrency to workers (``pk = ratelimit#<provider>#slots``), each
  lease expiring on its own shortly after the worker's deadline so a crashed worker
  cannot hold slots. The SQS event source's ``maxConcurrency`` (infra) bounds the number
  of workers on top of that.

Every wait is bounded by the run's :class:`Deadline`: a wait that would end past it raises
:class:`BudgetExhausted` at once (the sync checkpoints and continues in a new invocation)
instead of sleeping into the Lambda timeout.

Limits are configuration (:meth:`Limits.from_env`): ``POSYNC_<PROVIDER>_TOKEN_RPS``,
``_TOKEN_CONCURRENCY``, ``_APP_RPS``, ``_APP_CONCURRENCY``; ``0`` disables a limit.
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from botocore.exceptions import ClientError

from posync.errors import PosyncError

# --------------------------------------------------------------------------- clock and deadline


class Clock(Protocol):
    """Time as the limiter sees it. Tests inject a fake one whose ``sleep`` advances time."""

    def monotonic(self) -> float: ...

    def time(self) -> float:
        """Wall-clock Unix seconds (shared across containers: only used for DynamoDB items)."""
        ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


SYSTEM_CLOCK: Clock = SystemClock()


class BudgetExhausted(PosyncError):
    """A wait would run past the run's deadline: checkpoint now and continue in a new invocation."""


@dataclass(frozen=True)
class Deadline:
    """The point (on ``clock.monotonic()``) by which the current invocation must have stopped work.

    Build it from the Lambda's remaining time minus a safety margin; every wait checks it.
    """

    at: float
    clock: Clock = SYSTEM_CLOCK

    @classmethod
    def after(cls, seconds: float, clock: Clock = SYSTEM_CLOCK) -> Deadline:
        return cls(clock.monotonic() + seconds, clock)

    def remaining(self) -> float:
        return self.at - self.clock.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def check_wait(self, seconds: float, what: str) -> None:
        """Raise BudgetExhausted if waiting ``seconds`` would pass the deadline."""
        if seconds > self.remaining():
            raise BudgetExhausted(f"{what}: waiting {seconds:.2f}s would pass the run's deadline")


NO_DEADLINE = Deadline(math.inf)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Limits:
    """One provider's limits. ``None`` means unlimited."""

    token_rps: float | None
    token_concurrency: int | None
    app_rps: float | None
    app_concurrency: int | None

    # Public figures: Clover's developer docs (16/s and 5 concurrent per token, 50/s and 10 per
    # app). Poynt publishes no per-token figure; these conservative defaults stay under what its
    # API gateway accepts in practice and are overridable like Clover's.
    DEFAULTS = {
        "clover": (16.0, 5, 50.0, 10),
        "poynt": (10.0, 5, 50.0, 10),
    }

    @classmethod
    def from_env(cls, provider: str, env: Mapping[str, str]) -> Limits:
        from posync.config import ConfigError

        d = cls.DEFAULTS[provider]
        up = provider.upper()

        def num(suffix: str, default: float) -> float | None:
            name = f"POSYNC_{up}_{suffix}"
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError as exc:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from exc
            if not (0 <= value <= 100_000) or math.isnan(value):
                raise ConfigError(f"{name} must be between 0 and 100000, got {raw!r}")
            return None if value == 0 else value

        def whole(value: float | None) -> int | None:
            return None if value is None else max(1, int(value))

        return cls(
            token_rps=num("TOKEN_RPS", d[0]),
            token_concurrency=whole(num("TOKEN_CONCURRENCY", d[1])),
            app_rps=num("APP_RPS", d[2]),
            app_concurrency=whole(num("APP_CONCURRENCY", d[3])),
        )


# --------------------------------------------------------------------------- per token


class TokenLimiter:
    """Rate (evenly spaced starts) + concurrency (semaphore) + pause, for one access token.

    Thread-safe. ``safety`` widens the spacing a little (3 % by default) so that a sliding
    one-second window on the provider's side never counts ``rps + 1`` starts, even when a
    request's packets arrive a few ms early or late.
    """

    def __init__(
        self,
        rps: float | None,
        concurrency: int | None,
        clock: Clock = SYSTEM_CLOCK,
        safety: float = 0.03,
    ) -> None:
        self.clock = clock
        self.safety = safety
        self.interval = 0.0 if not rps else (1.0 / rps) * (1.0 + safety)
        self.concurrency = concurrency
        self._cond = threading.Condition()
        self._in_flight = 0
        self._next_start = -math.inf
        self._paused_until = -math.inf
        self.acquired = 0  # requests let through (for tests and metrics)
        self.pauses = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def adopt_limit(self, kind: str, limit: float) -> bool:
        """A 429 named the limit it enforced (``X-RateLimit-Type``/``-Limit``): never exceed it again.

        Only ever lowers this token's rate or concurrency (for the container's lifetime).
        Returns whether anything changed.
        """
        if not (limit > 0) or math.isinf(limit):
            return False
        with self._cond:
            if kind.endswith("rps"):
                interval = (1.0 / limit) * (1.0 + self.safety)
                if interval > self.interval:
                    self.interval = interval
                    return True
            elif kind.endswith("concurrency"):
                cap = max(1, int(limit))
                if self.concurrency is None or cap < self.concurrency:
                    self.concurrency = cap
                    return True
        return False

    def set_concurrency(self, concurrency: int | None) -> None:
        with self._cond:
            self.concurrency = concurrency
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        """Stop every request on this token for ``seconds`` (a 429's Retry-After plus jitter)."""
        with self._cond:
            until = self.clock.monotonic() + max(0.0, seconds)
            self._paused_until = max(self._paused_until, until)
            self._next_start = max(self._next_start, self._paused_until)
            self.pauses += 1

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self.clock.monotonic())

    def _take_concurrency(self, deadline: Deadline) -> None:
        with self._cond:
            while self.concurrency is not None and self._in_flight >= self.concurrency:
                if deadline.expired():
                    raise BudgetExhausted("no request slot free before the run's deadline")
                # Real-time wait on the condition; released slots notify. Bounded so a fake clock
                # in tests still sees the deadline checked.
                self._cond.wait(timeout=min(0.05, max(0.001, deadline.remaining())))
            self._in_flight += 1

    def _release_concurrency(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    def _reserve_start(self, deadline: Deadline) -> float:
        """Reserve the next start time; returns how long to wait for it."""
        with self._cond:
            now = self.clock.monotonic()
            start = max(now, self._next_start, self._paused_until)
            wait = start - now
            deadline.check_wait(wait, "token rate limit")
            self._next_start = start + self.interval
            self.acquired += 1
            return wait

    @contextmanager
    def permit(self, deadline: Deadline = NO_DEADLINE) -> Iterator[None]:
        """Hold a concurrency slot and start at a rate-conforming time. Raises BudgetExhausted."""
        self._take_concurrency(deadline)
        try:
            wait = self._reserve_start(deadline)
            if wait > 0:
                self.clock.sleep(wait)
            # A 429 seen by another thread while we slept pauses us too.
            while (extra := self.paused_for()) > 0:
                deadline.check_wait(extra, "token paused after a 429")
                self.clock.sleep(extra)
            yield
        finally:
            self._release_concurrency()


class TokenLimiters:
    """One TokenLimiter per connection, per container (a 429's pause outlives one invocation)."""

    def __init__(self, limits: Limits, clock: Clock = SYSTEM_CLOCK) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[str, TokenLimiter] = {}

    def get(self, key: str) -> TokenLimiter:
        with self._lock:
            lim = self._by_key.get(key)
            if lim is None:
                lim = TokenLimiter(self.limits.token_rps, self.limits.token_concurrency, self.clock)
                self._by_key[key] = lim
            return lim


# --------------------------------------------------------------------------- per app


class AppRate(Protocol):
    """The per-app request rate, shared by every worker of the app."""

    def acquire(self, deadline: Deadline) -> None:
        """One request's worth of the app's rate. Raises BudgetExhausted."""
        ...

    def pause(self, seconds: float) -> None:
        """An app-level 429: every worker of the app waits ``seconds``."""
        ...

    def settle(self) -> None:
        """A run ends: hand back what it took and did not use (no token is discarded)."""
        ...


class AppSlots(Protocol):
    """The per-app concurrency, shared by every worker of the app."""

    def lease(self, want: int, deadline: Deadline) -> int:
        """Lease up to ``want`` concurrent request slots; returns how many (>= 1). Raises BudgetExhausted."""
        ...

    def keep(self, in_flight: int) -> int | None:
        """Before a request: renew the lease when due; the concurrency to keep to now (None: unchanged)."""
        ...

    def release(self) -> None: ...


class UnlimitedApp:
    """No per-app limit (tests, or an app whose limit is handled elsewhere)."""

    def acquire(self, deadline: Deadline) -> None:
        return None

    def pause(self, seconds: float) -> None:
        return None

    def settle(self) -> None:
        return None

    def lease(self, want: int, deadline: Deadline) -> int:
        return want

    def keep(self, in_flight: int) -> int | None:
        return None

    def release(self) -> None:
        return None


class LocalAppRate:
    """The app's rate inside one process (the local runtime, the benchmark): evenly spaced starts."""

    def __init__(self, rps: float | None, clock: Clock = SYSTEM_CLOCK) -> None:
        self._limiter = TokenLimiter(rps, None, clock)

    def acquire(self, deadline: Deadline) -> None:
        with self._limiter.permit(deadline):
            pass

    def pause(self, seconds: float) -> None:
        self._limiter.pause(seconds)

    def settle(self) -> None:
        return None


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _num(item: Mapping[str, Any], name: str, default: float = 0.0) -> float:
    raw = item.get(name)
    if raw is None:
        return default
    if isinstance(raw, dict) and "N" in raw:
        return float(raw["N"])
    return float(raw)


class DynamoAppRate:
    """A token bucket shared by all workers, in the control table (``pk = ratelimit#<provider>#app``).

    The bucket refills at ``rps - batch`` tokens per second and holds at most ``batch`` tokens,
    so refill plus burst stay within ``rps`` in a one-second window. A worker takes tokens with
    a conditional UpdateItem (optimistic on the item's ``ts``; a lost race returns the current
    item with ``ALL_OLD`` and is retried from it, so the normal case is one DynamoDB call per
    ``batch`` requests and no reads). A run's first take is one token, the next ones ``batch``:
    a caught-up poll needs one request, and taking five would spend four of the app's for
    nothing. What a run holds unused when it ends goes back to the bucket (:meth:`settle`), as
    do tokens held locally past ``MAX_LOCAL_AGE_S`` (never spent late); nothing is discarded.
    An app-level 429 writes ``paused_until`` into the item so every worker, including a
    continuation in another container, waits for it.
    """

    MAX_LOCAL_AGE_S = 1.0

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        provider: str,
        rps: float,
        *,
        batch: int = 5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ddb = dynamodb
        self.table = table
        self.key = {"pk": {"S": f"ratelimit#{provider}#app"}}
        self.batch = max(1, min(batch, int(rps)))
        self.capacity = float(self.batch)
        self.rate = max(0.5, rps - self.batch)
        self.clock = clock
        self._lock = threading.Lock()
        self._local = 0
        self._local_at = -math.inf
        self._seen: dict[str, float] | None = None  # last known item: tokens, ts, paused_until
        self._paused_until_wall = 0.0
        self._next_take = 1  # a run's first take is one token, the next ones batch
        self._rng = random.Random()  # noqa: S311 - jitter
        self.calls = 0  # DynamoDB calls made (for the budget test)
        self.returned = 0  # tokens handed back unused

    def acquire(self, deadline: Deadline) -> None:
        with self._lock:
            while True:
                now_m = self.clock.monotonic()
                if self._local > 0 and now_m - self._local_at <= self.MAX_LOCAL_AGE_S:
                    self._local -= 1
                    return
                self._give_back()
                wait = self._take_batch()
                if wait <= 0:
                    continue
                # Jittered: workers that computed the same refill time do not all write at once.
                wait *= self._rng.uniform(1.0, 1.02)
                deadline.check_wait(wait, "app rate limit")
                self.clock.sleep(wait)

    def settle(self) -> None:
        """The run ends: tokens it took and did not use go back to the bucket; the next run starts slow."""
        with self._lock:
            self._give_back()
            self._next_take = 1

    def _give_back(self) -> None:
        """Hand unused local tokens back (lock held): as if never taken (the bucket's cap still
        bounds any burst). One ADD on the count: a race with a taker that overwrites the count
        loses them, which only ever errs on the side of fewer requests."""
        n, self._local = self._local, 0
        if n <= 0:
            return
        try:
            self.calls += 1
            self.ddb.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression="ADD #t :n",
                ConditionExpression="attribute_exists(#t)",
                ExpressionAttributeNames={"#t": "tokens"},
                ExpressionAttributeValues={":n": {"N": str(n)}},
            )
            self.returned += n
            if self._seen is not None and "tokens" in self._seen:
                self._seen["tokens"] = min(self.capacity, self._seen["tokens"] + n)
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise

    def _take_batch(self) -> float:
        """One attempt to move tokens from the shared bucket; returns seconds to wait (0 = got some)."""
        now = self.clock.time()
        item = self._seen
        if item is None:
            item = self._read()
        paused = item.get("paused_until", 0.0)
        if paused > now:
            return paused - now
        ts = item.get("ts")
        tokens = self.capacity if ts is None else item["tokens"]
        if ts is not None:
            tokens = min(self.capacity, tokens + max(0.0, now - ts) * self.rate)
        # Wait for a whole take: taking single tokens as they trickle in would cost one write each.
        want = min(self.batch, self._next_take)
        take = min(want, math.floor(tokens + 1e-9))
        if take < want:
            self._seen = item
            return (want - tokens) / self.rate
        new_tokens = tokens - take
        names = {"#t": "tokens", "#ts": "ts", "#exp": "expires_at", "#p": "paused_until"}
        values: dict[str, Any] = {
            ":t": {"N": _fmt(new_tokens)},
            ":now": {"N": _fmt(now)},
            ":exp": {"N": str(int(now) + 86400)},
        }
        # A pause written by another worker makes the condition fail too (it is then read back).
        not_paused = "(attribute_not_exists(#p) OR #p <= :now)"
        if ts is None:
            condition = f"attribute_not_exists(#ts) AND {not_paused}"
        else:
            condition = f"#ts = :old AND {not_paused}"
            values[":old"] = {"N": _fmt(ts)}
        try:
            self.calls += 1
            self.ddb.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression="SET #t = :t, #ts = :now, #exp = :exp",
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            old: Mapping[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            self._seen = self._parse(old) if old else None
            return 0.0
        self._seen = {"tokens": new_tokens, "ts": now, "paused_until": paused}
        self._local = take
        self._local_at = self.clock.monotonic()
        self._next_take = self.batch
        return 0.0

    def _read(self) -> dict[str, float]:
        self.calls += 1
        reply = self.ddb.get_item(TableName=self.table, Key=self.key, ConsistentRead=True)
        return self._parse(reply.get("Item") or {})

    @staticmethod
    def _parse(item: Mapping[str, Any]) -> dict[str, float]:
        parsed: dict[str, float] = {"paused_until": _num(item, "paused_until")}
        if "ts" in item:
            parsed["ts"] = _num(item, "ts")
            parsed["tokens"] = _num(item, "tokens")
        return parsed

    def pause(self, seconds: float) -> None:
        until = self.clock.time() + max(0.0, seconds)
        with self._lock:
            self._local = 0
            if self._seen is not None:
                self._seen["paused_until"] = max(self._seen.get("paused_until", 0.0), until)
        try:
            self.calls += 1
            self.ddb.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression="SET #p = :p, #exp = :exp",
                ConditionExpression="attribute_not_exists(#p) OR #p < :p",
                ExpressionAttributeNames={"#p": "paused_until", "#exp": "expires_at"},
                ExpressionAttributeValues={
                    ":p": {"N": _fmt(until)},
                    ":exp": {"N": str(int(until) + 86400)},
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):  # someone already paused longer: fine
                raise


class DynamoAppSlots:
    """Leases of the app's concurrency, in the control table (``pk = ratelimit#<provider>#slots``).

    The item holds ``leases: {lease_id: {n, exp}}``, ``waiting: {lease_id: {n: 0, exp}}`` and a
    ``version``; every write (lease, renewal, wait, release) is conditioned on the version it
    read and bumps it, so a lost race re-reads and no write can bring back a released lease.

    - A lease is at least one slot, up to ``want`` and what is free (a fair share while others
      wait), for ``LEASE_S``; the holder renews it before its requests (:meth:`keep`, every
      ``RENEW_S``), so a crashed worker's slots come free within ``LEASE_S``.
    - A worker that finds no slot free registers in ``waiting`` and sleeps with a jittered
      backoff (``WAIT_MIN_S`` doubling to ``WAIT_MAX_S``): no fixed-interval polling of the item.
    - A holder that sees others waiting shrinks to a fair share (``capacity // (holders +
      waiters)``, at least one) at its next renewal, never below its requests in flight: two
      backfills cannot hold all the slots for minutes while a third run waits.
    """

    LEASE_S = 30.0
    RENEW_S = 10.0
    WAIT_MIN_S = 0.25
    WAIT_MAX_S = 2.0

    def __init__(
        self, dynamodb: Any, table: str, provider: str, capacity: int, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.ddb = dynamodb
        self.table = table
        self.key = {"pk": {"S": f"ratelimit#{provider}#slots"}}
        self.capacity = capacity
        self.clock = clock
        self.lease_id: str | None = None
        self.granted = 0  # slots the lease holds now
        self._next_renew = math.inf
        self._lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 - jitter
        self.calls = 0
        self.waits = 0

    def _read(self) -> tuple[int, dict[str, tuple[int, float]], dict[str, float]]:
        self.calls += 1
        item = self.ddb.get_item(TableName=self.table, Key=self.key, ConsistentRead=True).get("Item") or {}
        version = int(_num(item, "version"))
        now = self.clock.time()
        leases: dict[str, tuple[int, float]] = {}
        for lid, raw in (item.get("leases", {}).get("M") or {}).items():
            m = raw.get("M", {})
            if _num(m, "exp") > now:
                leases[lid] = (int(_num(m, "n")), _num(m, "exp"))
        waiting: dict[str, float] = {}
        for lid, raw in (item.get("waiting", {}).get("M") or {}).items():
            exp = _num(raw.get("M", {}), "exp")
            if exp > now:
                waiting[lid] = exp
        return version, leases, waiting

    def _write(
        self, version: int, leases: Mapping[str, tuple[int, float]], waiting: Mapping[str, float]
    ) -> bool:
        """Replace the item if it is still at ``version``; False if another worker wrote first."""
        horizon = max([e for _, e in leases.values()] + list(waiting.values()) + [self.clock.time()])
        try:
            self.calls += 1
            self.ddb.update_item(
                TableName=self.table,
                Key=self.key,
                UpdateExpression="SET #l = :l, #w = :w, #v = :nv, #exp = :exp",
                ConditionExpression="attribute_not_exists(#v) OR #v = :v",
                ExpressionAttributeNames={
                    "#l": "leases",
                    "#w": "waiting",
                    "#v": "version",
                    "#exp": "expires_at",
                },
                ExpressionAttributeValues={
                    ":l": {"M": {k: _lease_attr(n, e) for k, (n, e) in leases.items()}},
                    ":w": {"M": {k: _lease_attr(0, e) for k, e in waiting.items()}},
                    ":v": {"N": str(version)},
                    ":nv": {"N": str(version + 1)},
                    ":exp": {"N": str(int(horizon) + 86400)},
                },
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            return False
        return True

    def _fair(self, holders: int, waiters: int) -> int:
        return max(1, self.capacity // max(1, holders + waiters))

    def lease(self, want: int, deadline: Deadline) -> int:
        lease_id = uuid.uuid4().hex
        backoff = self.WAIT_MIN_S
        registered_until = 0.0
        while True:
            now = self.clock.time()
            version, leases, waiting = self._read()
            waiting.pop(lease_id, None)
            free = self.capacity - sum(n for n, _ in leases.values())
            if free >= 1:
                grant = min(want, free)
                if waiting:
                    grant = min(grant, self._fair(len(leases) + 1, len(waiting)))
                if not self._write(version, {**leases, lease_id: (grant, now + self.LEASE_S)}, waiting):
                    continue  # lost a race: read again
                with self._lock:
                    self.lease_id, self.granted = lease_id, grant
                    self._next_renew = self.clock.monotonic() + self.RENEW_S
                return grant
            if now >= registered_until - self.RENEW_S:
                # Say we wait, so that holders shrink to a fair share at their next renewal.
                if not self._write(version, leases, {**waiting, lease_id: now + self.LEASE_S}):
                    continue
                registered_until = now + self.LEASE_S
            self.waits += 1
            soonest = min(e for _, e in leases.values()) - now if leases else backoff
            wait = max(0.01, min(backoff, soonest)) * self._rng.uniform(0.5, 1.0)
            deadline.check_wait(wait, "app concurrency")
            self.clock.sleep(wait)
            backoff = min(self.WAIT_MAX_S, 2 * backoff)

    def keep(self, in_flight: int) -> int | None:
        with self._lock:
            if self.lease_id is None or self.clock.monotonic() < self._next_renew:
                return None
            self._next_renew = self.clock.monotonic() + self.RENEW_S
            lease_id, held = self.lease_id, self.granted
            version, leases, waiting = self._read()
            others = {k: v for k, v in leases.items() if k != lease_id}
            free = self.capacity - sum(n for n, _ in others.values())
            target = min(held, max(1, free))
            if waiting:
                target = min(target, self._fair(len(others) + 1, len(waiting)))
            # Slots in flight are in use: the lease shrinks to the target once they finish.
            n = max(target, min(in_flight, held))
            if not self._write(version, {**others, lease_id: (n, self.clock.time() + self.LEASE_S)}, waiting):
                self._next_renew = self.clock.monotonic()  # retry at the next request
                return None
            self.granted = n
            if n > target:
                self._next_renew = self.clock.monotonic() + min(self.RENEW_S, 0.5)
            return target

    def release(self) -> None:
        with self._lock:
            lease_id, self.lease_id, self.granted = self.lease_id, None, 0
            self._next_renew = math.inf
        if lease_id is None:
            return
        with contextlib.suppress(ClientError):  # if this fails, the lease expires on its own
            for _ in range(5):
                version, leases, waiting = self._read()
                if lease_id not in leases:
                    return
                leases.pop(lease_id)
                if self._write(version, leases, waiting):
                    return


def _lease_attr(n: int, exp: float) -> dict[str, Any]:
    return {"M": {"n": {"N": str(n)}, "exp": {"N": _fmt(exp)}}}


def _fmt(value: float) -> str:
    return str(Decimal(repr(round(value, 6))))


# --------------------------------------------------------------------------- composite


class RequestLimiter:
    """What the transport holds for one connection: its token's limiter, the app's rate and its
    share of the app's concurrency (renewed, and resized to a fair share, before requests)."""

    def __init__(
        self, token: TokenLimiter, app: AppRate | None = None, slots: AppSlots | None = None
    ) -> None:
        self.token = token
        self.app: AppRate = app if app is not None else UnlimitedApp()
        self.slots = slots
        self._cap = token.concurrency

    @contextmanager
    def slot(self, deadline: Deadline) -> Iterator[None]:
        if self.slots is not None:
            n = self.slots.keep(self.token.in_flight)
            if n is not None:
                self.token.set_concurrency(n if self._cap is None else min(n, self._cap))
        with self.token.permit(deadline):
            self.app.acquire(deadline)
            yield

    def pause(self, seconds: float, *, app_wide: bool = False) -> None:
        """A 429: pause the token (always) and, if the app's limit was hit, every worker of the app."""
        self.token.pause(seconds)
        if app_wide:
            self.app.pause(seconds)
