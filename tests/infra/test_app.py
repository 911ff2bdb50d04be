"""The app: offline and environment-agnostic, context knobs, and the outputs the CLI reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.app import build_app, cdk_json_context
from infra.context import ContextError, InfraContext
from infra.describe import expected_resources, template_resources
from posync.resources import resources
from tests.infra.support import Synth

OUTPUTS = {
    "ApiUrl",
    "ConnectUrlClover",
    "ConnectUrlPoynt",
    "ExportBucket",
    "SyncQueueUrl",
    "SyncDlqUrl",
    "EventBus",
    "ConnectionsTable",
    "OrdersTable",
    "ControlTable",
    "GlueDatabase",
    "AthenaWorkGroup",
    "AlarmTopicArn",
    "KmsKeyArn",
    "Stage",
}


def test_stack_is_environment_agnostic(synth: Synth) -> None:
    # No account or region baked in: the template deploys anywhere and synth needed no credentials.
    assert synth.stack.environment == "aws://unknown-account/unknown-region"
    text = json.dumps(synth.template)
    assert "000000000000" not in text
    assert "us-east-1" not in text


def test_outputs_the_cli_reads(synth: Synth) -> None:
    outputs = synth.template["Outputs"]
    assert set(outputs) >= OUTPUTS
    api = outputs["ApiUrl"]["Value"]
    assert api["Fn::GetAtt"][1] == "ApiEndpoint"
    assert outputs["ConnectUrlClover"]["Value"] == {"Fn::Join": ["", [api, "/connect/clover"]]}
    assert outputs["ConnectUrlPoynt"]["Value"] == {"Fn::Join": ["", [api, "/connect/poynt"]]}
    tables = {r["Properties"]["TableName"]: lid for lid, r in synth.resources("AWS::DynamoDB::Table").items()}
    res = resources("dev")
    for key, output in (
        ("connections", "ConnectionsTable"),
        ("orders", "OrdersTable"),
        ("control", "ControlTable"),
    ):
        assert outputs[output]["Value"] == {"Ref": tables[res.table(key).name]}
    assert outputs["Stage"]["Value"] == "dev"


def test_cdk_json_runs_the_app_from_the_repo_root() -> None:
    data = json.loads((Path(__file__).resolve().parents[2] / "cdk.json").read_text())
    assert data["app"] == ".venv/bin/python -m infra.app"
    assert data["output"] == "cdk.out"
    assert InfraContext.from_values(cdk_json_context().get) == InfraContext()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stage": "Prod"}, "stage"),
        ({"stage": "a" * 17}, "stage"),
        ({"providerRegion": "mars"}, "providerRegion"),
        ({"publicBaseUrl": "http://insecure.example.com"}, "publicBaseUrl"),
        ({"publicBaseUrl": "https://x.example.com/?q=1"}, "publicBaseUrl"),
        ({"scheduleMinutes": "0"}, "scheduleMinutes"),
        ({"scheduleMinutes": "soon"}, "scheduleMinutes"),
        ({"reconcileHours": "0"}, "reconcileHours"),
        ({"reconcileDays": "91"}, "reconcileDays"),
        ({"workerMaxConcurrency": 1}, "workerMaxConcurrency"),
        ({"exportsIaDays": 7}, "exportsIaDays"),
        ({"logRetentionDays": 31}, "logRetentionDays"),
        ({"alarmEmail": "not-an-address"}, "alarmEmail"),
        ({"traceCalls": "sometimes"}, "traceCalls"),
    ],
)
def test_bad_context_is_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ContextError, match=message):
        InfraContext.from_values(values.get)


def test_context_values_from_the_cli_are_strings() -> None:
    ctx = InfraContext.from_values(
        {"stage": "qa", "scheduleMinutes": "5", "publicBaseUrl": "https://pos.example.com/"}.get
    )
    assert (ctx.stage, ctx.schedule_minutes, ctx.public_base_url) == ("qa", 5, "https://pos.example.com")


# --- a second stage, with every knob turned --------------------------------------------------

KNOBS = {
    "stage": "qa",
    "providerRegion": "eu",
    "publicBaseUrl": "https://pos.example.com",
    "scheduleMinutes": "5",
    "reconcileHours": "6",
    "reconcileDays": "3",
    "workerMaxConcurrency": "4",
    "exportsIaDays": "60",
    "alarmEmail": "ops@example.com",
    "traceCalls": "true",
}


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory, deps_layer_dir: Path) -> Iterator[dict[str, Any]]:
    outdir = tmp_path_factory.mktemp("cdk.out.qa")
    built = build_app(context=KNOBS, outdir=str(outdir), deps_layer_dir=deps_layer_dir)
    assembly = built.app.synth()  # cdk-nag runs here too
    yield json.loads(
        Path(assembly.get_stack_artifact(built.stack.artifact_id).template_full_path).read_text()
    )


def of_type(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r["Properties"] for r in template["Resources"].values() if r["Type"] == kind]


def test_knobs_reach_the_template(qa: dict[str, Any]) -> None:
    # Stage: every name is the qa stage's
    assert template_resources(qa) == expected_resources(resources("qa"))
    assert sorted(s["Name"] for s in of_type(qa, "AWS::SecretsManager::Secret")) == [
        "posync/qa/app/clover",
        "posync/qa/app/poynt",
        "posync/qa/app/state-key",
    ]
    # Schedule, worker concurrency, lifecycle
    rules = sorted(of_type(qa, "AWS::Events::Rule"), key=lambda r: str(r["ScheduleExpression"]))
    assert [r["ScheduleExpression"] for r in rules] == ["rate(5 minutes)", "rate(6 hours)"]
    (esm,) = of_type(qa, "AWS::Lambda::EventSourceMapping")
    assert esm["ScalingConfig"] == {"MaximumConcurrency": 4}
    (bucket,) = [b for b in of_type(qa, "AWS::S3::Bucket") if "BucketName" in b]
    ia = next(
        r for r in bucket["LifecycleConfiguration"]["Rules"] if r["Id"] == "exports-to-infrequent-access"
    )
    assert ia["Transitions"][0]["TransitionInDays"] == 60
    # Functions: the custom domain, the provider region, the schedule
    for fn in of_type(qa, "AWS::Lambda::Function"):
        env = fn["Environment"]["Variables"]
        assert env["POSYNC_PUBLIC_BASE_URL"] == "https://pos.example.com"
        assert env["POSYNC_PROVIDER_REGION"] == "eu"
        assert env["POSYNC_SCHEDULE_MINUTES"] == "5"
        assert env["POSYNC_RECONCILE_DAYS"] == "3"
        assert env["POSYNC_STAGE"] == "qa"
        assert env["POSYNC_TRACE_CALLS"] == "true"  # X-Ray SDK subsegments, opted in
        assert fn["FunctionName"].startswith("posync-qa-")
    # Outputs: connect links on the custom domain
    assert qa["Outputs"]["ConnectUrlClover"]["Value"] == "https://pos.example.com/connect/clover"
    assert qa["Outputs"]["ApiUrl"]["Value"] == "https://pos.example.com"
    # Alarms: mailed to the operator, lag is two (shorter) schedule periods
    (sub,) = of_type(qa, "AWS::SNS::Subscription")
    assert (sub["Protocol"], sub["Endpoint"]) == ("email", "ops@example.com")
    lag = next(
        a
        for a in of_type(qa, "AWS::CloudWatch::Alarm")
        if any(
            m.get("MetricStat", {}).get("Metric", {}).get("MetricName") == "SyncLagSeconds"
            for m in a.get("Metrics", [])
        )
    )
    assert lag["Threshold"] == 2 * 5 * 60
