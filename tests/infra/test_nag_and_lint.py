"""cdk-nag AwsSolutions: zero unacknowledged findings, every acknowledgment has a reason; cfn-lint passes."""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cfnlint.api import ManualArgs, lint_file

from infra.nag import MIN_REASON_LENGTH, acknowledge, apply_checks
from tests.infra.support import Synth

# cfn-lint findings we accept, each with the reason. Nothing else may appear.
LINT_ACCEPTED = {
    # CDK puts the execution role in a function's DependsOn although the function also GetAtt's it
    # (so the default policy is attached before the function is created): redundant, harmless.
    "W3005",
}


def test_synth_passed_the_nag_pack_with_nothing_left(synth: Synth) -> None:
    # cdk-nag 3 is a policy-validation plugin: any finding (error or warning) fails the synth
    # and writes validation-report.json. The session synth succeeded, so: no report, no findings.
    report = synth.outdir / "validation-report.json"
    if report.exists():
        violations = [v for p in json.loads(report.read_text())["pluginReports"] for v in p["violations"]]
        assert violations == []


def test_every_acknowledgment_is_recorded_with_a_reason(synth: Synth) -> None:
    # Given the cdk_nag metadata the app writes into the template (audit trail)
    acknowledged = {
        lid: r["Metadata"]["cdk_nag"]["rules_to_suppress"]
        for lid, r in synth.template["Resources"].items()
        if "cdk_nag" in r.get("Metadata", {})
    }
    # Then the checks ran on this app, and each acknowledged rule carries a real reason
    assert acknowledged
    rules = set()
    for lid, entries in acknowledged.items():
        for entry in entries:
            assert len(entry["reason"].strip()) >= MIN_REASON_LENGTH, (lid, entry)
            rules.add(entry["id"].split("[")[0])
    # And only these rules are acknowledged anywhere
    assert rules == {
        "AwsSolutions-IAM5",  # X-Ray "*" and the designed ARN patterns
        "AwsSolutions-L1",  # python3.12 pinned (cp312 layer)
        "AwsSolutions-APIG4",  # public routes by design
        "AwsSolutions-SMG4",  # provider-issued credentials / state key
        "AwsSolutions-S1",  # the access-log bucket itself
    }


def test_an_unacknowledged_finding_fails_the_synth(tmp_path: Path) -> None:
    # Given an app with the same checks and a bucket that breaks AwsSolutions rules
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "Bad")
    s3.Bucket(stack, "Plain")
    apply_checks(app)
    # When it is synthesized, Then the synth fails and the report names the rule
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    rules = {v["ruleName"] for p in report["pluginReports"] for v in p["violations"]}
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules


def test_acknowledging_needs_a_reason() -> None:
    stack = cdk.Stack(cdk.App(), "S")
    with pytest.raises(ValueError, match="real reason"):
        acknowledge(stack, "AwsSolutions-S1", "because")


def test_cfn_lint_passes(synth: Synth) -> None:
    # Given the synthesized template on disk, linted for two regions
    matches = lint_file(synth.template_path, ManualArgs(regions=["us-east-1", "eu-west-1"]))
    # Then there is no error and no warning beyond the accepted ones
    found = [(m.rule.id, m.message) for m in matches if m.rule.id not in LINT_ACCEPTED]
    assert found == []
