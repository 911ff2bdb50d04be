"""Tables, queues, bucket and bus match posync.resources; encryption, recovery and bucket policy."""

from __future__ import annotations

from typing import Any

from infra.describe import expected_resources, template_resources
from posync.resources import resources
from tests.infra.support import Synth


def key_id(synth: Synth) -> str:
    (lid,) = synth.resources("AWS::KMS::Key")
    return lid


def exports_bucket(synth: Synth) -> tuple[str, dict[str, Any]]:
    ((lid, r),) = [
        (lid, r) for lid, r in synth.resources("AWS::S3::Bucket").items() if "BucketName" in r["Properties"]
    ]
    return lid, r["Properties"]


def test_template_resources_match_posync_resources(synth: Synth) -> None:
    # Given the template read in the comparable form, with the local runtime's account and region
    described = template_resources(synth.template)
    # Then names, keys, GSIs, TTL, FIFO, DLQ redrive and visibility are what posync.resources says
    assert described == expected_resources(resources("dev"))


def test_names_follow_the_account_and_region_they_deploy_to(synth: Synth) -> None:
    described = template_resources(synth.template, account="123456789012", region="eu-west-1")
    assert described == expected_resources(resources("dev", account="123456789012", region="eu-west-1"))


def test_tables_are_on_demand_cmk_encrypted_with_point_in_time_recovery(synth: Synth) -> None:
    tables = synth.props("AWS::DynamoDB::Table")
    assert len(tables) == 3
    for t in tables:
        assert t["BillingMode"] == "PAY_PER_REQUEST"
        assert t["SSESpecification"]["SSEEnabled"] is True
        assert t["SSESpecification"]["SSEType"] == "KMS"
        assert t["SSESpecification"]["KMSMasterKeyId"] == {"Fn::GetAtt": [key_id(synth), "Arn"]}
        assert t["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert t["DeletionProtectionEnabled"] is True
    for r in synth.resources("AWS::DynamoDB::Table").values():
        assert r["DeletionPolicy"] == "Retain"


def test_bucket_is_kms_encrypted_versioned_and_private(synth: Synth) -> None:
    _, b = exports_bucket(synth)
    (rule,) = b["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": [key_id(synth), "Arn"]},
    }
    assert b["VersioningConfiguration"] == {"Status": "Enabled"}
    assert b["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert b["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    # Server access logs go to the separate log bucket.
    log_bucket = b["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    assert "BucketName" not in synth.resources("AWS::S3::Bucket")[log_bucket]["Properties"]


def bucket_policy_statements(synth: Synth, bucket_lid: str) -> list[dict[str, Any]]:
    (policy,) = [p for p in synth.props("AWS::S3::BucketPolicy") if p["Bucket"] == {"Ref": bucket_lid}]
    statements: list[dict[str, Any]] = policy["PolicyDocument"]["Statement"]
    return statements


def test_bucket_policy_denies_plain_http_and_old_tls(synth: Synth) -> None:
    lid, _ = exports_bucket(synth)
    statements = bucket_policy_statements(synth, lid)
    denies = [s for s in statements if s["Effect"] == "Deny"]
    ssl = [s for s in denies if s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    tls = [s for s in denies if s.get("Condition") == {"NumericLessThan": {"s3:TlsVersion": 1.2}}]
    for found in (ssl, tls):
        assert len(found) == 1
        assert found[0]["Action"] == "s3:*"
        assert found[0]["Principal"] == {"AWS": "*"}
        # Both the bucket and every object in it.
        assert len(found[0]["Resource"]) == 2
    # No statement in the policy allows anything to anyone.
    assert not [s for s in statements if s["Effect"] == "Allow"]


def test_bucket_lifecycle(synth: Synth) -> None:
    _, b = exports_bucket(synth)
    rules = {r["Id"]: r for r in b["LifecycleConfiguration"]["Rules"]}
    assert all(r["Status"] == "Enabled" for r in rules.values())
    ia = rules["exports-to-infrequent-access"]
    assert ia["Prefix"] == "exports/"
    assert ia["Transitions"] == [{"StorageClass": "STANDARD_IA", "TransitionInDays": 30}]
    assert rules["quarantine-expiry"]["Prefix"] == "quarantine/"
    assert rules["quarantine-expiry"]["ExpirationInDays"] > 0
    versions = rules["noncurrent-versions-and-uploads"]
    assert "Prefix" not in versions  # the whole bucket
    assert versions["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
    assert versions["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] > 0


def test_access_log_bucket_accepts_only_s3_log_delivery_over_tls(synth: Synth) -> None:
    exports_lid, exports = exports_bucket(synth)
    log_lid = exports["LoggingConfiguration"]["DestinationBucketName"]["Ref"]
    statements = bucket_policy_statements(synth, log_lid)
    allows = [s for s in statements if s["Effect"] == "Allow"]
    assert [s["Principal"] for s in allows] == [{"Service": "logging.s3.amazonaws.com"}]
    assert allows[0]["Action"] == "s3:PutObject"
    assert allows[0]["Condition"]["ArnLike"]["aws:SourceArn"] == {"Fn::GetAtt": [exports_lid, "Arn"]}
    assert any(s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}} for s in statements)


def test_queues_are_kms_encrypted_and_tls_only(synth: Synth) -> None:
    for q in synth.props("AWS::SQS::Queue"):
        assert q["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id(synth), "Arn"]}
    policies = synth.props("AWS::SQS::QueuePolicy")
    assert len(policies) == 2
    for p in policies:
        (deny,) = p["PolicyDocument"]["Statement"]
        assert deny["Effect"] == "Deny"
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_event_bus_has_the_resources_name(synth: Synth) -> None:
    (bus,) = synth.props("AWS::Events::EventBus")
    assert bus["Name"] == "posync-dev"
