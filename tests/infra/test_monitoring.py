"""Alarms (to an encrypted SNS topic) and the dashboard."""

from __future__ import annotations

import json
from typing import Any

from posync.resources import FUNCTIONS
from tests.infra.support import Synth


def alarms(synth: Synth) -> dict[str, dict[str, Any]]:
    """Alarms keyed by the construct id part of their logical id (e.g. 'SyncLag')."""
    out = {}
    for lid, r in synth.resources("AWS::CloudWatch::Alarm").items():
        # Logical ids are the construct path plus an 8-character hash.
        out[lid.removeprefix("Monitoring")[:-8]] = r["Properties"]
    return out


def topic_id(synth: Synth) -> str:
    (lid,) = synth.resources("AWS::SNS::Topic")
    return lid


def test_topic_is_kms_encrypted_and_tls_only(synth: Synth) -> None:
    (topic,) = synth.props("AWS::SNS::Topic")
    (key,) = synth.resources("AWS::KMS::Key")
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": [key, "Arn"]}
    (policy,) = synth.props("AWS::SNS::TopicPolicy")
    (deny,) = policy["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    # Nobody is subscribed unless the alarmEmail context names someone.
    assert not synth.props("AWS::SNS::Subscription")


def test_every_alarm_notifies_the_topic(synth: Synth) -> None:
    found = alarms(synth)
    assert found
    for name, a in found.items():
        assert a["AlarmActions"] == [{"Ref": topic_id(synth)}], name
        assert a["OKActions"] == [{"Ref": topic_id(synth)}], name
    # Silence is the failure only for the dispatcher's heartbeat (test_alarms_fire drives each alarm)
    silent = {n for n, a in found.items() if a["TreatMissingData"] == "breaching"}
    assert silent == {"DispatcherNotRunning"}
    assert found["DispatcherNotRunning"]["ComparisonOperator"] == "LessThanThreshold"


def test_dlq_depth_alarm(synth: Synth) -> None:
    a = alarms(synth)["SyncDlqDepth"]
    assert a["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert a["Namespace"] == "AWS/SQS"
    (dim,) = a["Dimensions"]
    dlq = synth.resources("AWS::SQS::Queue")[dim["Value"]["Fn::GetAtt"][0]]
    assert dlq["Properties"]["QueueName"] == "posync-dev-sync-dlq.fifo"
    assert a["Threshold"] == 0


def test_sync_lag_alarm_is_two_schedule_periods(synth: Synth) -> None:
    a = alarms(synth)["SyncLag"]
    stats = {m["Id"]: m["MetricStat"] for m in a["Metrics"] if "MetricStat" in m}
    assert {s["Metric"]["MetricName"] for s in stats.values()} == {"SyncLagSeconds", "ConnectionsActive"}
    for s in stats.values():
        assert s["Metric"]["Dimensions"] == [{"Name": "service", "Value": "posync"}]
        assert (s["Stat"], s["Period"]) == ("Maximum", 15 * 60)
    assert a["Threshold"] == 2 * 15 * 60


def test_reauth_alarm_watches_refresh_failures_and_reauth_gauge(synth: Synth) -> None:
    a = alarms(synth)["NeedsReauth"]
    metrics = {m["Id"]: m for m in a["Metrics"]}
    names = {m["MetricStat"]["Metric"]["MetricName"] for m in metrics.values() if "MetricStat" in m}
    assert names == {"RefreshFailures", "ConnectionsNeedingReauth"}
    (expr,) = [m for m in metrics.values() if "Expression" in m]
    assert "refresh" in expr["Expression"] and "reauth" in expr["Expression"]
    assert expr.get("ReturnData", True) is True
    assert a["Threshold"] == 0


def test_quarantine_alarm(synth: Synth) -> None:
    a = alarms(synth)["QuarantineGrowth"]
    assert (a["Namespace"], a["MetricName"], a["Statistic"]) == ("posync", "OrdersQuarantined", "Sum")


def test_discrepancies_alarm_fires_on_any_flagged_order(synth: Synth) -> None:
    # Given the synthesized stack, then one flagged order in an hour is enough to alarm
    a = alarms(synth)["Discrepancies"]
    assert (a["Namespace"], a["MetricName"], a["Statistic"]) == ("posync", "OrdersWithDiscrepancies", "Sum")
    assert (a["Threshold"], a["Period"]) == (0, 3600)
    assert a["Dimensions"] == [{"Name": "service", "Value": "posync"}]


def test_an_errors_alarm_per_function(synth: Synth) -> None:
    found = alarms(synth)
    fn_ids = {
        r["Properties"]["FunctionName"]: lid for lid, r in synth.resources("AWS::Lambda::Function").items()
    }
    for spec in FUNCTIONS:
        a = found[f"{spec.name.capitalize()}Errors"]
        assert (a["Namespace"], a["MetricName"]) == ("AWS/Lambda", "Errors")
        assert a["Dimensions"] == [
            {"Name": "FunctionName", "Value": {"Ref": fn_ids[f"posync-dev-{spec.name}"]}}
        ]


def test_dashboard_shows_the_operational_metrics(synth: Synth) -> None:
    (dash,) = synth.props("AWS::CloudWatch::Dashboard")
    assert dash["DashboardName"] == "posync-dev"
    body = dash["DashboardBody"]
    text = "".join(p if isinstance(p, str) else json.dumps(p) for p in body["Fn::Join"][1])
    for metric in (
        "OrdersSynced",
        "SyncLagSeconds",
        "RateLimited",
        "RefreshFailures",
        "OrdersQuarantined",
        "OrdersWithDiscrepancies",
        "PagesFetched",
        "RunDurationMs",
        "ApproximateNumberOfMessagesVisible",
    ):
        assert f'"{metric}"' in text, metric
