"""App-level auth failures against the sandboxes (issue 18, item 3): the app's fault is never a
merchant's refusal. Each case is a sandbox knob (or an operator's misconfiguration of posync):
the refresh fails for the app, no merchant is flagged, one ``AppAuthFailed`` reaches the bus, and
the shared breaker keeps every other refresh of that app from reaching the provider."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import boto3
import pytest

from posync.app_credentials import AppCredentialsStore
from posync.domain import Connection, ConnectionStatus
from posync.errors import ProviderError
from posync.observability import metrics
from posync.tokens import (
    AppCircuitOpen,
    DynamoAppBreaker,
    DynamoLeases,
    SecretsManagerTokenStore,
    TokenService,
    breaker_key,
    build_token_service,
)
from posync_local.runtime import LocalRuntime
from tests.integration.auth_flow import (
    Secrets,
    bus_events,
    bus_listener,
    connection,
    poynt_of,
    sandbox_of,
    stored_tokens,
)
from tests.integration.test_token_refresh import connected

pytestmark = pytest.mark.usefixtures("empty_sync_queue")


@pytest.fixture(autouse=True)
def _closed_breakers(rt: LocalRuntime) -> Iterator[None]:
    yield
    for provider in ("clover", "poynt"):
        boto3.client("dynamodb").delete_item(
            TableName=rt.settings.control_table, Key={"pk": {"S": breaker_key(provider)}}
        )


def expire_stored(rt: LocalRuntime, provider: str, merchant: str) -> None:
    """Make posync see the stored access token as expiring in 30 s (inside the leeway)."""
    store = SecretsManagerTokenStore(rt.settings)
    tokens = store.read(provider, merchant)
    store.save(
        provider,
        merchant,
        tokens.renewed(tokens.access_token, int(time.time()) + 30, None, None, time.time()),
    )


def misconfigure_clover_client_id(rt: LocalRuntime) -> Callable[[], None]:
    store = AppCredentialsStore(rt.settings)
    good = store.clover().client_id
    store.save("clover", {"client_id": "NOTOURCLIENT1"})

    def undo() -> None:
        AppCredentialsStore(rt.settings).save("clover", {"client_id": good})

    return undo


def poynt_knob(**knobs: object) -> Callable[[LocalRuntime], Callable[[], None]]:
    def apply(rt: LocalRuntime) -> Callable[[], None]:
        sb = sandbox_of(rt, "poynt")
        sb.knobs.refresh_client_auth = "verified"
        for k, v in knobs.items():
            setattr(sb.knobs, k, v)

        def undo() -> None:
            sb.knobs.refresh_client_auth = "ignored"
            sb.knobs.jwt_audience = None
            sb.knobs.clock_skew_s = 0.0

        return undo

    return apply


def rotate_poynt_key(rt: LocalRuntime) -> Callable[[], None]:
    sb = poynt_of(rt)
    sb.knobs.refresh_client_auth = "verified"
    registered = sb.apps[sb.app_id]
    sb.rotate_app_key()

    def undo() -> None:
        sb.apps[sb.app_id] = registered
        sb.knobs.refresh_client_auth = "ignored"

    return undo


CASES: list[tuple[str, str, str, Callable[[LocalRuntime], Callable[[], None]]]] = [
    ("clover-wrong-client-id", "clover", "credentials", misconfigure_clover_client_id),
    ("poynt-rotated-key-pair", "poynt", "key", rotate_poynt_key),
    ("poynt-wrong-aud", "poynt", "audience", poynt_knob(jwt_audience="https://services-eu.poynt.net")),
    ("poynt-clock-skew-600s", "poynt", "clock", poynt_knob(clock_skew_s=600.0)),
]


@pytest.mark.parametrize(("case", "provider", "kind", "fault"), CASES, ids=[c[0] for c in CASES])
def test_an_app_level_failure_flags_no_merchant_raises_one_event_and_opens_the_breaker(
    rt: LocalRuntime,
    seen: Secrets,
    case: str,
    provider: str,
    kind: str,
    fault: Callable[[LocalRuntime], Callable[[], None]],
) -> None:
    # Given two merchants of one app whose tokens are due for refresh, and the app's fault
    merchants = [connected(rt, seen, provider) for _ in range(2)]
    for m in merchants:
        expire_stored(rt, provider, m)
    listener = bus_listener(rt.settings, "AppAuthFailed", f"app-{case}"[:70])
    sb = sandbox_of(rt, provider)
    undo = fault(rt)
    metrics.clear_metrics()
    try:
        # When two workers (their own containers) ask for each merchant's token in turn
        requests_seen = []
        tokens = []
        for m in merchants:
            tokens.append(build_token_service(rt.settings).access_token(Connection(provider, m)))
            requests_seen.append(sum(sb.stats.snapshot()["requests"].values()))
    finally:
        undo()
    # Then each still-valid token serves, and no merchant is flagged
    assert tokens == [stored_tokens(rt.settings, provider, m).access_token for m in merchants]
    for m in merchants:
        record = connection(rt.settings, provider, m)
        assert record is not None and record.status is ConnectionStatus.ACTIVE, case
    # And one app-level event reached the bus, naming the kind of fault
    events = bus_events(listener)
    assert [(e["detail-type"], e["detail"]["kind"]) for e in events] == [("AppAuthFailed", kind)]
    assert metrics.metric_set["AppAuthFailures"]["Value"] == [1.0]
    # And the second merchant's refresh never reached the provider: the breaker is shared
    assert requests_seen[1] == requests_seen[0]


def test_a_token_endpoint_5xx_storm_opens_the_breaker_and_flags_nobody(
    rt: LocalRuntime, seen: Secrets
) -> None:
    # Given three Clover merchants due for refresh and a token endpoint answering 503
    merchants = [connected(rt, seen) for _ in range(3)]
    for m in merchants:
        expire_stored(rt, "clover", m)
    sb = sandbox_of(rt, "clover")
    sb.knobs.fail_next(10, 503, path_prefix="/oauth/v2/refresh")
    listener = bus_listener(rt.settings, "AppAuthFailed", "app-clover-5xx-storm")
    from posync.connections import ConnectionRepository
    from posync.events import put_event
    from posync.providers import build_providers

    def service() -> TokenService:
        return TokenService(
            rt.settings,
            refreshers=build_providers(rt.settings, AppCredentialsStore(rt.settings)),
            store=SecretsManagerTokenStore(rt.settings),
            leases=DynamoLeases(rt.settings),
            connections=ConnectionRepository(rt.settings),
            events=lambda t, d: put_event(rt.settings, t, d),
            breaker=DynamoAppBreaker(rt.settings, storm_threshold=2),
        )

    try:
        # When two refreshes fail with 503 (the still-valid tokens serve)
        for m in merchants[:2]:
            service().access_token(Connection("clover", m))
        # Then the breaker is open: the third merchant's expired token pauses its sync without a call
        store = SecretsManagerTokenStore(rt.settings)
        t = store.read("clover", merchants[2])
        store.save(
            "clover", merchants[2], t.renewed(t.access_token, int(time.time()) - 1, None, None, time.time())
        )
        calls = sb.stats.snapshot()["refresh_calls"].get(merchants[2], 0)
        with pytest.raises(AppCircuitOpen):
            service().access_token(Connection("clover", merchants[2]))
        assert sb.stats.snapshot()["refresh_calls"].get(merchants[2], 0) == calls
    finally:
        sb.knobs.clear_failures()
    assert isinstance(AppCircuitOpen("x"), ProviderError)  # the sync redelivers, it does not give up
    for m in merchants:
        record = connection(rt.settings, "clover", m)
        assert record is not None and record.status is ConnectionStatus.ACTIVE
    assert [(e["detail-type"], e["detail"]["kind"]) for e in bus_events(listener)] == [
        ("AppAuthFailed", "outage")
    ]
