"""Each alarm of issue 18 driven past its threshold: the real code emits the metric (captured
from Powertools' metric set), the synthesized alarm evaluates it (``alarm_eval``).

AWS-emitted metrics (API Gateway's 5xx, the DLQ's oldest-message age) cannot be produced
offline: their alarms are driven with the datapoints those services publish.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from posync.answers import answers
from posync.dispatcher import Dispatcher
from posync.errors import InvalidInput, ProviderError
from posync.observability import NAMESPACE, metrics
from tests.infra.alarm_eval import breaches
from tests.infra.support import Synth
from tests.infra.test_monitoring import alarms
from tests.unit.test_sync_dispatcher import QUEUE, Connections, FakeSQS

SLOT_S = 15 * 60


def emitted(run: Callable[[], Any]) -> dict[str, list[float]]:
    """What ``run`` published through Powertools (name -> values), on the default dimensions."""
    metrics.clear_metrics()
    try:
        run()
        return {name: list(m["Value"]) for name, m in metrics.metric_set.items()}
    finally:
        metrics.clear_metrics()


def posync(name: str) -> tuple[str, str]:
    return (NAMESPACE, name)


class Ctx:
    aws_request_id = "req-1"


def failing_handler(exc: Exception) -> Callable[[], Any]:
    @answers("page")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise exc

    return lambda: handler({}, Ctx())  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [RuntimeError("bug"), ProviderError("clover token endpoint answered 500")])
def test_a_5xx_answer_fires_api_server_errors(synth: Synth, exc: Exception) -> None:
    # Given the alarm and an API handler whose exception becomes a 5xx answer (never a Lambda error)
    alarm = alarms(synth)["ApiServerErrors"]
    got = emitted(failing_handler(exc))
    # Then the answer is counted, and one such answer in the period fires the alarm
    assert got == {"ApiServerErrors": [1.0]}
    assert breaches(alarm, {posync("ApiServerErrors"): [sum(got["ApiServerErrors"])]})
    # And a 4xx answer is not counted; no data is not an alarm
    assert emitted(failing_handler(InvalidInput("bad"))) == {}
    assert not breaches(alarm, {posync("ApiServerErrors"): [None]})


def test_api_gateway_5xx_fires_on_what_no_function_answered(synth: Synth) -> None:
    alarm = alarms(synth)["ApiGateway5xx"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("AWS/ApiGateway", "5xx", "Sum")
    (api_id,) = synth.resources("AWS::ApiGatewayV2::Api")
    assert alarm["Dimensions"] == [{"Name": "ApiId", "Value": {"Ref": api_id}}]
    assert breaches(alarm, {("AWS/ApiGateway", "5xx"): [1.0]})
    assert not breaches(alarm, {("AWS/ApiGateway", "5xx"): [0.0]})


def dispatch(conns: Connections) -> dict[str, list[float]]:
    d = Dispatcher(conns, FakeSQS(), QUEUE, 15, sleep=lambda _s: None)
    return emitted(lambda: d.dispatch(datetime(2026, 12, 8, 1, 0, tzinfo=UTC)).emit_metrics())


def test_needs_reauth_connections_counted_by_the_dispatcher_fire_the_alarm(synth: Synth) -> None:
    # Given 3 active connections and 9 needing the merchant to reconnect
    alarm = alarms(synth)["NeedsReauth"]
    got = dispatch(Connections(3, needs_reauth=9))
    # Then the dispatcher's tick publishes the gauge, and it fires the alarm
    assert got["ConnectionsNeedingReauth"] == [9.0] and got["ConnectionsActive"] == [3.0]
    assert breaches(alarm, {posync("ConnectionsNeedingReauth"): got["ConnectionsNeedingReauth"]})
    # And none needing reauth (and no refresh failure) is no alarm
    zero = dispatch(Connections(3))
    assert not breaches(alarm, {posync("ConnectionsNeedingReauth"): zero["ConnectionsNeedingReauth"]})


def test_a_dispatcher_silent_for_two_periods_fires(synth: Synth) -> None:
    alarm = alarms(synth)["DispatcherNotRunning"]
    assert alarm["Period"] == SLOT_S
    beat = dispatch(Connections(0))["DispatcherRuns"]
    assert beat == [1.0]  # one heartbeat per tick, even with no connections
    key = posync("DispatcherRuns")
    # Ticking: fine. One missed slot: not yet. Two missed slots: alarm (missing data breaches).
    assert not breaches(alarm, {key: [1.0, 1.0, 1.0]})
    assert not breaches(alarm, {key: [1.0, 1.0, None]})
    assert breaches(alarm, {key: [1.0, None, None]})
    assert breaches(alarm, {key: [None, None]})


def test_sync_lag_fires_on_a_big_lag_and_on_silence_while_connections_exist(synth: Synth) -> None:
    alarm = alarms(synth)["SyncLag"]
    limit = 2 * SLOT_S
    assert alarm["Threshold"] == limit
    active = dispatch(Connections(2))["ConnectionsActive"]
    lag, act = posync("SyncLagSeconds"), posync("ConnectionsActive")
    # Runs reporting a lag within two periods: fine; past it: alarm
    assert not breaches(alarm, {act: active, lag: [120.0]})
    assert breaches(alarm, {act: active, lag: [limit + 60.0]})
    # Active connections but no run reported any lag (the worker is not running): alarm
    assert breaches(alarm, {act: active, lag: [None]})
    # No connections at all: silence is normal
    none = dispatch(Connections(0))["ConnectionsActive"]
    assert not breaches(alarm, {act: none, lag: [None]})


def test_the_dlq_oldest_message_fires_after_two_days(synth: Synth) -> None:
    alarm = alarms(synth)["SyncDlqOldestMessage"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        "Maximum",
    )
    (dim,) = alarm["Dimensions"]
    dlq = synth.resources("AWS::SQS::Queue")[dim["Value"]["Fn::GetAtt"][0]]
    assert dlq["Properties"]["QueueName"] == "posync-dev-sync-dlq.fifo"
    key = ("AWS/SQS", "ApproximateAgeOfOldestMessage")
    assert not breaches(alarm, {key: [3600.0]})
    assert breaches(alarm, {key: [2 * 86400 + 1.0]})
