"""Token lifecycle against the sandboxes and the embedded AWS: single-flight refresh across
threads and processes, refusals, 401 recovery, and no token in the logs."""

from __future__ import annotations

import multiprocessing
import threading
import time

import boto3
import pytest

import posync.providers
from posync.domain import Connection, ConnectionStatus
from posync.errors import AuthorizationRevoked
from posync.observability import metrics
from posync.tokens import SecretsManagerTokenStore, TokenService, build_token_service, refresh_lease_name
from posync_local.local_testing import LogCapture
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import (
    Secrets,
    api_accepts,
    bus_events,
    bus_listener,
    clover_of,
    connect,
    connection,
    poynt_of,
    sandbox_of,
    stored_tokens,
    token_in_child,
)

CALLERS = 20
CHILD_PROCESSES = 2
CHILD_THREADS = 6


# the callbacks' backfill messages are not under test here
pytestmark = pytest.mark.usefixtures("empty_sync_queue")


def connected(
    rt: LocalRuntime, seen: Secrets, provider: str = "clover", access_ttl_s: int | None = None
) -> str:
    """A freshly connected merchant; ``access_ttl_s`` shortens its first access token's life."""
    sandbox = sandbox_of(rt, provider)
    merchant = str(sandbox.add_merchant(orders=2))
    default_ttl = sandbox.knobs.access_ttl_s
    if access_ttl_s is not None:
        sandbox.knobs.access_ttl_s = access_ttl_s
    try:
        result = connect(rt, provider, merchant_id=merchant, secrets=seen)
    finally:
        sandbox.knobs.access_ttl_s = default_ttl
    assert result.callback.status_code == 200, result.callback.text
    seen.add_tokens(stored_tokens(rt.settings, provider, merchant))
    return merchant


def test_twenty_threads_refresh_an_expiring_clover_token_exactly_once(
    rt: LocalRuntime, seen: Secrets
) -> None:
    # Given a Clover connection whose access token expires within the refresh leeway (2 min < 5 min)
    merchant = connected(rt, seen, access_ttl_s=120)
    conn = Connection("clover", merchant)
    settings = rt.settings
    services = [build_token_service(settings) for _ in range(CALLERS)]
    start = threading.Barrier(CALLERS)
    results: list[str] = []
    errors: list[str] = []

    def call(svc: TokenService) -> None:
        start.wait(timeout=30)
        try:
            results.append(svc.access_token(conn))
        except Exception as exc:
            errors.append(repr(exc))

    # When 20 workers (each its own TokenService, as separate Lambdas would be) ask at once
    threads = [threading.Thread(target=call, args=(svc,)) for svc in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then Clover saw exactly one refresh
    stats = clover_of(rt).stats.snapshot()
    assert errors == []
    assert stats["refresh_calls"].get(merchant) == 1
    assert stats["refreshes"].get(merchant) == 1
    # And every caller holds the one new token, which the API accepts
    assert len(results) == CALLERS and len(set(results)) == 1
    new = stored_tokens(settings, "clover", merchant)
    seen.add_tokens(new)
    assert results[0] == new.access_token
    assert api_accepts(rt, "clover", merchant, results[0])
    # And the record mirrors the new expiry, and the lease is gone
    conn_after = connection(settings, "clover", merchant)
    assert conn_after is not None and conn_after.access_expires_at == new.access_expires_at
    lease = boto3.client("dynamodb").get_item(
        TableName=settings.control_table, Key={"pk": {"S": refresh_lease_name(conn.connection_id)}}
    )
    assert "Item" not in lease


def test_twenty_callers_across_processes_refresh_an_expiring_clover_token_exactly_once(
    rt: LocalRuntime, seen: Secrets
) -> None:
    # Given an expiring Clover connection and 20 callers in three processes: two spawned
    # processes of 6 threads and 8 threads here, each caller with its own TokenService against
    # the embedded AWS, all released together by one cross-process barrier. (Two children keep
    # the test fast on 2 cores: each spawned interpreter imports boto3 and Powertools afresh.)
    merchant = connected(rt, seen, access_ttl_s=120)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(CALLERS)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=token_in_child, args=("clover", merchant, CHILD_THREADS, barrier, out))
        for _ in range(CHILD_PROCESSES)
    ]
    for p in procs:
        p.start()
    local_callers = CALLERS - CHILD_PROCESSES * CHILD_THREADS
    services = [build_token_service(rt.settings) for _ in range(local_callers)]
    local: list[tuple[str, str]] = []

    def call(svc: TokenService) -> None:
        barrier.wait(timeout=120)
        try:
            local.append(("ok", svc.access_token(Connection("clover", merchant))))
        except Exception as exc:
            local.append(("error", repr(exc)))

    threads = [threading.Thread(target=call, args=(svc,)) for svc in services]
    for t in threads:
        t.start()
    # When they all ask for a token at once
    replies = [out.get(timeout=120) for _ in range(CHILD_PROCESSES * (CHILD_THREADS + 1))]
    for t in threads:
        t.join(60)
    for p in procs:
        p.join(30)
    results = local + [r for r in replies if r[0] != "logs"]
    child_logs = "\n".join(r[1] for r in replies if r[0] == "logs")
    # Then every caller got the same new token and Clover saw one refresh
    assert [r[0] for r in results] == ["ok"] * CALLERS, results
    tokens = {r[1] for r in results}
    stats = clover_of(rt).stats.snapshot()
    assert stats["refresh_calls"].get(merchant) == 1
    assert stats["refreshes"].get(merchant) == 1
    assert len(tokens) == 1
    token = tokens.pop()
    seen.add(token)
    assert token == stored_tokens(rt.settings, "clover", merchant).access_token
    assert api_accepts(rt, "clover", merchant, token)
    # And no child logged a token (their log output came back with the results)
    assert [v for v in seen.values if v in child_logs] == []


@pytest.mark.parametrize("provider", ["clover", "poynt"])
def test_a_revoked_refresh_token_moves_the_connection_to_needs_reauth(
    rt: LocalRuntime, seen: Secrets, provider: str
) -> None:
    # Given a connected merchant who revoked the app at the provider, with a token due for refresh
    merchant = connected(rt, seen, provider)
    settings = rt.settings
    listener = bus_listener(settings, "ConnectionNeedsReauth", f"reauth-{provider}-{merchant[:8].lower()}")
    sandbox = sandbox_of(rt, provider)
    sandbox.revoke(merchant)
    store = SecretsManagerTokenStore(settings)
    tokens = store.read(provider, merchant)
    store.save(
        provider,
        merchant,
        tokens.renewed(tokens.access_token, int(time.time()) + 30, None, None, time.time()),
    )
    metrics.clear_metrics()
    # When the sync asks for a token
    with pytest.raises(AuthorizationRevoked):
        build_token_service(settings).access_token(Connection(provider, merchant))
    # Then the connection needs reauthorization, with a reason
    conn = connection(settings, provider, merchant)
    assert conn is not None and conn.status is ConnectionStatus.NEEDS_REAUTH
    # And ConnectionNeedsReauth reached the bus (read back through a rule -> SQS queue)
    events = bus_events(listener)
    assert [e["detail-type"] for e in events] == ["ConnectionNeedsReauth"]
    assert events[0]["source"] == "posync"
    assert events[0]["detail"]["connection_id"] == f"{provider}#{merchant}"
    assert "reconnect" in events[0]["detail"]["reason"]
    # And the failure was counted
    assert metrics.metric_set["RefreshFailures"]["Value"] == [1.0]
    # And the connection is left out of the dispatcher's active list
    from posync.connections import ConnectionRepository

    active, _ = ConnectionRepository(settings).list_by_status("active", page_size=1000)
    assert f"{provider}#{merchant}" not in {c.connection_id for c in active}


def test_a_401_on_a_token_we_thought_valid_refreshes_once(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a connection whose token Clover expired early (the API says 401 to it)
    merchant = connected(rt, seen)
    conn = Connection("clover", merchant)
    settings = rt.settings
    worker_a, worker_b = build_token_service(settings), build_token_service(settings)
    rejected = worker_a.access_token(conn)
    assert worker_b.access_token(conn) == rejected
    clover_of(rt).expire_access_tokens(merchant)
    assert not api_accepts(rt, "clover", merchant, rejected)
    # When one worker reports the 401
    fresh = worker_a.after_unauthorized(conn, rejected)
    # Then it has a working token from one refresh
    seen.add(fresh)
    assert fresh != rejected and api_accepts(rt, "clover", merchant, fresh)
    # And the other worker's 401 is answered with that token, without a second refresh
    assert worker_b.after_unauthorized(conn, rejected) == fresh
    assert clover_of(rt).stats.snapshot()["refreshes"].get(merchant) == 1


def test_clover_refusing_an_early_refresh_keeps_the_current_token(rt: LocalRuntime, seen: Secrets) -> None:
    # Given Clover refusing refreshes while the access token has more than a minute left
    merchant = connected(rt, seen, access_ttl_s=200)
    clover_of(rt).knobs.refuse_early_refresh = True
    before = stored_tokens(rt.settings, "clover", merchant)
    # When a token is asked for inside the leeway
    svc = build_token_service(rt.settings)
    token = svc.access_token(Connection("clover", merchant))
    # Then the current token is used, the connection stays active, and Clover is not pestered
    assert token == before.access_token and api_accepts(rt, "clover", merchant, token)
    assert svc.access_token(Connection("clover", merchant)) == token
    conn = connection(rt.settings, "clover", merchant)
    assert conn is not None and conn.status is ConnectionStatus.ACTIVE
    stats = clover_of(rt).stats.snapshot()
    assert (stats["refresh_calls"].get(merchant), stats["refreshes"].get(merchant, 0)) == (1, 0)


def test_a_poynt_token_is_refreshed_and_the_new_refresh_token_saved(rt: LocalRuntime, seen: Secrets) -> None:
    # Given a Poynt connection whose token is inside the leeway
    merchant = connected(rt, seen, "poynt", access_ttl_s=100)
    before = stored_tokens(rt.settings, "poynt", merchant)
    # When it is asked for
    token = build_token_service(rt.settings).access_token(Connection("poynt", merchant))
    # Then the new pair was saved (the old refresh token is dead at Poynt) and works
    after = stored_tokens(rt.settings, "poynt", merchant)
    seen.add_tokens(after)
    assert token == after.access_token != before.access_token
    assert after.refresh_token != before.refresh_token
    assert api_accepts(rt, "poynt", merchant, token)


def test_a_lost_clover_refresh_reply_is_recovered_and_the_connection_stays_active(
    rt: LocalRuntime, seen: Secrets, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Clover connection due for refresh, and a refresh reply that never reaches us:
    # Clover processes the refresh (the old refresh token dies) after our read timeout
    merchant = connected(rt, seen, access_ttl_s=120)
    conn = Connection("clover", merchant)
    monkeypatch.setattr(posync.providers, "TOKEN_TIMEOUT", (5.0, 0.3))
    clover_of(rt).knobs.oauth_latency_ms = 900
    before = stored_tokens(rt.settings, "clover", merchant)
    # When the sync asks for a token: the refresh times out, the still-valid token is used
    assert build_token_service(rt.settings).access_token(conn) == before.access_token
    time.sleep(1.0)  # Clover has now issued a pair we never saw
    assert clover_of(rt).stats.snapshot()["refreshes"].get(merchant) == 1
    clover_of(rt).knobs.oauth_latency_ms = 0
    # And the next run retries with the stored (now spent) refresh token, and is refused
    token = build_token_service(rt.settings).access_token(conn)
    # Then posync recovered with the spent token (POST /oauth/v2/recovery) and saved the new pair
    after = stored_tokens(rt.settings, "clover", merchant)
    seen.add_tokens(after)
    assert token == after.access_token != before.access_token
    assert api_accepts(rt, "clover", merchant, token)
    assert clover_of(rt).stats.snapshot()["recoveries"].get(merchant) == 1
    assert after.previous_refresh_token is None  # nothing older recovers anything now
    # And the connection never left active
    record = connection(rt.settings, "clover", merchant)
    assert record is not None and record.status is ConnectionStatus.ACTIVE


def test_the_poynt_app_token_is_granted_once_and_cached(rt: LocalRuntime, seen: Secrets) -> None:
    # Given the Poynt adapter built as a Lambda builds it, and a business that authorized the app
    from posync.app_credentials import AppCredentialsStore
    from posync.providers import build_providers
    from posync.providers.poynt.oauth import PoyntOAuth

    merchant = connected(rt, seen, "poynt")
    poynt = build_providers(rt.settings, AppCredentialsStore(rt.settings))["poynt"]
    assert isinstance(poynt, PoyntOAuth)
    grants = poynt_of(rt).stats.snapshot()["app_token_grants"]
    # When app-level calls ask for the app token several times
    tokens = {poynt.app_access_token() for _ in range(3)}
    # Then the sandbox verified one self-signed assertion (aud, exp - iat <= 300, fresh jti) and
    # the token is reused, and it reads the business's orders
    assert len(tokens) == 1
    assert poynt_of(rt).stats.snapshot()["app_token_grants"] == grants + 1
    token = tokens.pop()
    seen.add(token)
    assert api_accepts(rt, "poynt", merchant, token)


def test_no_token_reached_the_logs(rt: LocalRuntime, seen: Secrets, captured_logs: LogCapture) -> None:
    seen.add(clover_of(rt).client_secret)
    assert len(seen.values) >= 10
    assert captured_logs.find(sorted(seen.values)) == []
    # (and the capture did see this module's log lines, so the scan means something)
    assert "token refreshed" in captured_logs.text
