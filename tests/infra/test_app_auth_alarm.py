"""The app-level auth failure alarm fires when the token service recognizes the app's fault.

The metric is driven by the real TokenService (an app-level refusal, in-memory fakes), read back
from the EMF document Powertools prints, and checked against the synthesized alarm: same
namespace, metric and dimensions, and a value past its threshold.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from posync.errors import AuthorizationRevoked
from posync.observability import metrics
from posync.tokens import AppAuthFailed, RefreshRefused
from tests.infra.support import Synth
from tests.infra.test_monitoring import alarms
from tests.unit.test_tokens_service import World


def emitted(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The EMF documents Powertools printed (one JSON object per line)."""
    docs = []
    for line in capsys.readouterr().out.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            docs.append(doc)
    return docs


def breaches(alarm: dict[str, Any], value: float) -> bool:
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    return value > float(alarm["Threshold"])


def test_an_app_level_refusal_drives_the_app_auth_alarm_past_its_threshold(
    synth: Synth, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the synthesized alarm on AppAuthFailures
    alarm = alarms(synth)["AppAuthFailures"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "posync",
        "AppAuthFailures",
        "Sum",
    )
    dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    # When a refresh meets the app's fault (Clover no longer knows our client id)
    metrics.clear_metrics()
    w = World(expires_in=10)
    w.refresher.raises = [AppAuthFailed("credentials", "clover refused the app's client id")]
    w.service().access_token(w.conn)
    metrics.flush_metrics()
    # Then the EMF document carries the alarm's metric under its namespace and dimensions
    docs = [d for d in emitted(capsys) if "AppAuthFailures" in d]
    assert docs, "no AppAuthFailures datapoint was emitted"
    total = 0.0
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == alarm["Namespace"]
        assert [sorted(dims)] == [sorted(d) for d in directive["Dimensions"]]
        assert all(doc[k] == v for k, v in dims.items())
        total += sum(
            doc["AppAuthFailures"] if isinstance(doc["AppAuthFailures"], list) else [doc["AppAuthFailures"]]
        )
    # And its sum over the alarm's period is past the threshold: the alarm fires
    assert breaches(alarm, total)
    # While a merchant's own refusal (revoked grant, recovery refused too) does not touch it
    metrics.clear_metrics()
    w = World(expires_in=10)
    w.refresher.raises = [RefreshRefused("clover refused the refresh token (401: Invalid refresh token)")]
    w.refresher.recover_refuses = {"refresh-0"}
    with pytest.raises(AuthorizationRevoked):
        w.service().access_token(w.conn)
    metrics.flush_metrics()
    assert not [d for d in emitted(capsys) if "AppAuthFailures" in d]
