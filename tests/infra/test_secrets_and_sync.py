"""The KMS key and secrets; the sync queue, its DLQ, the schedule and the worker's event source."""

from __future__ import annotations

import json
from typing import Any

from infra.constructs.secrets import APP_SECRET_FIELDS
from posync.resources import resources
from tests.infra.support import Synth


def key(synth: Synth) -> tuple[str, dict[str, Any]]:
    ((lid, r),) = synth.resources("AWS::KMS::Key").items()
    return lid, r["Properties"]


def secrets_by_name(synth: Synth) -> dict[str, dict[str, Any]]:
    return {p["Name"]: p for p in synth.props("AWS::SecretsManager::Secret")}


def test_key_rotates_and_has_the_resources_alias(synth: Synth) -> None:
    lid, k = key(synth)
    assert k["EnableKeyRotation"] is True
    (alias,) = synth.props("AWS::KMS::Alias")
    assert alias["AliasName"] == resources("dev").kms_alias
    assert alias["TargetKeyId"] == {"Fn::GetAtt": [lid, "Arn"]}


def test_key_policy_grants_cloudwatch_only_what_alarm_delivery_needs(synth: Synth) -> None:
    _, k = key(synth)
    statements = k["KeyPolicy"]["Statement"]
    services = [s for s in statements if "Service" in s["Principal"]]
    assert [s["Principal"]["Service"] for s in services] == ["cloudwatch.amazonaws.com"]
    assert sorted(services[0]["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert services[0]["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_stack_secrets_are_exactly_state_key_and_app_credentials(synth: Synth) -> None:
    # The connection secrets are created at run time, so the stack owns exactly these three.
    assert sorted(secrets_by_name(synth)) == [
        "posync/dev/app/clover",
        "posync/dev/app/poynt",
        "posync/dev/app/state-key",
    ]
    lid, _ = key(synth)
    for s in secrets_by_name(synth).values():
        assert s["KmsKeyId"] == {"Fn::GetAtt": [lid, "Arn"]}


def test_state_key_is_generated_not_written(synth: Synth) -> None:
    s = secrets_by_name(synth)["posync/dev/app/state-key"]
    assert "SecretString" not in s
    assert s["GenerateSecretString"]["PasswordLength"] >= 32
    assert s["GenerateSecretString"]["ExcludePunctuation"] is True


def test_app_secrets_are_created_empty_shaped(synth: Synth) -> None:
    for provider, fields in APP_SECRET_FIELDS.items():
        s = secrets_by_name(synth)[f"posync/dev/app/{provider}"]
        value = json.loads(s["SecretString"])
        # The shape the CLI fills, with no value in the template.
        assert sorted(value) == sorted(fields)
        assert set(value.values()) == {""}


def test_sync_queue_redrives_to_its_fifo_dlq(synth: Synth) -> None:
    queues = synth.resources("AWS::SQS::Queue")
    by_name = {r["Properties"]["QueueName"]: (lid, r["Properties"]) for lid, r in queues.items()}
    spec = resources("dev").queue("sync")
    dlq_lid, dlq = by_name["posync-dev-sync-dlq.fifo"]
    _, sync = by_name[spec.name]
    assert sync["FifoQueue"] is True and dlq["FifoQueue"] is True
    assert sync["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_lid, "Arn"]},
        "maxReceiveCount": spec.max_receive_count,
    }
    assert sync["VisibilityTimeout"] == spec.visibility_timeout_s
    assert sync["MessageRetentionPeriod"] == spec.retention_s


def test_the_reconcile_schedule_fires_the_dispatcher_daily_with_its_kind(synth: Synth) -> None:
    (rule,) = [r for r in synth.props("AWS::Events::Rule") if r["ScheduleExpression"] == "rate(1 day)"]
    (target,) = rule["Targets"]
    assert json.loads(target["Input"]) == {"kind": "reconcile"}
    fn = synth.resources("AWS::Lambda::Function")[target["Arn"]["Fn::GetAtt"][0]]
    assert fn["Properties"]["FunctionName"] == "posync-dev-dispatcher"
    assert fn["Properties"]["Environment"]["Variables"]["POSYNC_RECONCILE_DAYS"] == "7"


def test_schedule_fires_the_dispatcher_at_the_configured_rate(synth: Synth) -> None:
    (rule,) = [r for r in synth.props("AWS::Events::Rule") if "minutes" in r["ScheduleExpression"]]
    assert rule["ScheduleExpression"] == "rate(15 minutes)"
    assert rule["State"] == "ENABLED"
    (target,) = rule["Targets"]
    fn = synth.resources("AWS::Lambda::Function")[target["Arn"]["Fn::GetAtt"][0]]
    assert fn["Properties"]["FunctionName"] == "posync-dev-dispatcher"


def test_the_dispatcher_has_time_for_100000_connections_and_its_retries_stay_in_the_slot(
    synth: Synth,
) -> None:
    from posync.resources import DISPATCHER_TIMEOUT_S

    fns = synth.resources("AWS::Lambda::Function")
    (lid,) = [k for k, r in fns.items() if r["Properties"]["FunctionName"] == "posync-dev-dispatcher"]
    # the scale scenario's pass over 100,000 connections fits this timeout (bench/README.md)
    assert fns[lid]["Properties"]["Timeout"] == DISPATCHER_TIMEOUT_S >= 300
    (config,) = synth.props("AWS::Lambda::EventInvokeConfig")
    assert config["FunctionName"] == {"Ref": lid}
    assert config["MaximumRetryAttempts"] == 2
    assert config["MaximumEventAgeInSeconds"] == 15 * 60


def test_worker_drains_the_sync_queue_with_partial_batch_failures(synth: Synth) -> None:
    (esm,) = synth.props("AWS::Lambda::EventSourceMapping")
    queues = synth.resources("AWS::SQS::Queue")
    queue = queues[esm["EventSourceArn"]["Fn::GetAtt"][0]]["Properties"]
    assert queue["QueueName"] == "posync-dev-sync.fifo"
    assert esm["FunctionName"] == {
        "Ref": next(
            lid
            for lid, r in synth.resources("AWS::Lambda::Function").items()
            if r["Properties"]["FunctionName"] == "posync-dev-worker"
        )
    }
    assert esm["BatchSize"] == 10
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["ScalingConfig"] == {"MaximumConcurrency": 10}
