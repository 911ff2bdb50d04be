"""Least privilege, the parts test_iam / test_storage / test_functions leave implicit.

- one role per function, used by nothing else, and no role that can hand out or assume roles;
- a ``*`` resource only for actions AWS cannot scope, each with its written reason here, and
  never for a data service;
- one customer-managed key behind every store (tables, secrets, queues, topic, exports), the
  same alias the code names, and the secrets the callback creates at run time use it too;
- every bucket private, encrypted (the customer key wherever data lives) and TLS-only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

import posync.aws
from posync.config import Settings
from posync.resources import FUNCTIONS, resources
from posync.tokens import SecretsManagerTokenStore, TokenSet
from tests.infra.support import Synth
from tests.infra.test_iam import as_list, render, statements_by_role

pytestmark = pytest.mark.infra

# Actions granted on Resource "*", and why AWS leaves no choice. Anything else on "*" fails.
STAR_RESOURCE_REASONS = {
    "xray:PutTraceSegments": "X-Ray segment upload has no resource type (active tracing on every function)",
    "xray:PutTelemetryRecords": "X-Ray telemetry upload has no resource type (active tracing)",
}
DATA_SERVICES = ("dynamodb:", "s3:", "secretsmanager:", "sqs:", "kms:", "events:", "sns:")
ESCALATION = ("iam:", "sts:", "lambda:", "cloudformation:", "organizations:")


def functions_and_roles(synth: Synth) -> dict[str, str]:
    return {
        str(r["Properties"]["FunctionName"]): r["Properties"]["Role"]["Fn::GetAtt"][0]
        for r in synth.resources("AWS::Lambda::Function").values()
    }


def key_ref(synth: Synth) -> dict[str, Any]:
    (lid,) = synth.resources("AWS::KMS::Key")
    return {"Fn::GetAtt": [lid, "Arn"]}


def test_each_function_has_a_role_of_its_own_that_nothing_else_uses(synth: Synth) -> None:
    roles = functions_and_roles(synth)
    assert len(roles) == len(FUNCTIONS)
    # No two functions share a role, and every role in the stack belongs to exactly one function
    assert Counter(roles.values()).most_common(1)[0][1] == 1
    assert set(roles.values()) == set(synth.resources("AWS::IAM::Role"))
    # Each role's policies are attached to that role only
    for p in synth.props("AWS::IAM::Policy"):
        assert len(p["Roles"]) == 1
        assert "Users" not in p and "Groups" not in p


def test_no_role_can_hand_out_assume_or_rewrite_permissions(synth: Synth) -> None:
    for role, statements in statements_by_role(synth).items():
        for s in statements:
            if s["Effect"] != "Allow":
                continue
            for action in as_list(s["Action"]):
                assert not action.lower().startswith(ESCALATION), f"{role}: {action}"


def test_star_resources_only_with_a_written_reason_and_never_for_data(synth: Synth) -> None:
    seen: set[str] = set()
    for role, statements in statements_by_role(synth).items():
        for s in statements:
            resources_ = [render(r) for r in as_list(s["Resource"])]
            actions = as_list(s["Action"])
            for action in actions:
                assert not action.startswith(DATA_SERVICES) or "*" not in resources_, f"{role}: {action} on *"
            if "*" in resources_:
                # a "*" statement holds nothing but reasoned actions, and names no other resource
                assert resources_ == ["*"], role
                for action in actions:
                    assert STAR_RESOURCE_REASONS.get(action), f"{role}: {action} on * has no reason"
                    seen.add(action)
    # the table is not stale: every reason is for an action really granted on "*"
    assert seen == set(STAR_RESOURCE_REASONS)


def test_one_customer_key_behind_every_store_under_the_alias_the_code_names(synth: Synth) -> None:
    key = key_ref(synth)
    (alias,) = synth.props("AWS::KMS::Alias")
    assert alias["AliasName"] == resources("dev").kms_alias
    assert alias["TargetKeyId"] == key
    assert all(t["SSESpecification"]["KMSMasterKeyId"] == key for t in synth.props("AWS::DynamoDB::Table"))
    assert all(s["KmsKeyId"] == key for s in synth.props("AWS::SecretsManager::Secret"))
    assert all(q["KmsMasterKeyId"] == key for q in synth.props("AWS::SQS::Queue"))
    assert all(t["KmsMasterKeyId"] == key for t in synth.props("AWS::SNS::Topic"))
    (k,) = synth.props("AWS::KMS::Key")
    assert k["EnableKeyRotation"] is True


@pytest.fixture
def stubbed_secretsmanager() -> Iterator[Stubber]:
    posync.aws.reset_clients()
    client = posync.aws.client("secretsmanager")
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()
    posync.aws.reset_clients()


def test_connection_secrets_created_at_run_time_use_the_customer_key(
    synth: Synth, stubbed_secretsmanager: Stubber
) -> None:
    # Given the callback storing a merchant's first tokens (the stack cannot declare these secrets)
    settings = Settings.from_env({"POSYNC_STAGE": "dev", "AWS_DEFAULT_REGION": "us-east-1"})
    tokens = TokenSet(
        "access-token-value", 1_800_000_000, "refresh-token-value", 1_900_000_000, 1_799_999_000
    )
    (alias,) = synth.props("AWS::KMS::Alias")
    stubbed_secretsmanager.add_response(
        "create_secret",
        {"ARN": "arn:aws:secretsmanager:us-east-1:000000000000:secret:x", "Name": "x"},
        {
            "Name": settings.connection_secret_name("clover", "ABCDEFGHJK123"),
            "SecretString": tokens.to_secret("clover", "ABCDEFGHJK123"),
            "KmsKeyId": alias["AliasName"],
            "Description": "posync clover merchant ABCDEFGHJK123: OAuth tokens",
            "Tags": [{"Key": "posync:stage", "Value": "dev"}, {"Key": "posync:provider", "Value": "clover"}],
        },
    )
    # Then the secret is created under the stack's customer key (the alias the template declares)
    SecretsManagerTokenStore(settings).store_new("clover", "ABCDEFGHJK123", tokens)


def bucket_policy(synth: Synth, bucket_lid: str) -> list[dict[str, Any]]:
    (p,) = [p for p in synth.props("AWS::S3::BucketPolicy") if p["Bucket"] == {"Ref": bucket_lid}]
    statements: list[dict[str, Any]] = p["PolicyDocument"]["Statement"]
    return statements


def test_every_bucket_is_private_encrypted_and_tls_only(synth: Synth) -> None:
    key = key_ref(synth)
    buckets = synth.resources("AWS::S3::Bucket")
    assert buckets
    for lid, r in buckets.items():
        b = r["Properties"]
        assert b["PublicAccessBlockConfiguration"] == dict.fromkeys(
            ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True
        ), lid
        assert b["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}, lid
        (rule,) = b["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        default = rule["ServerSideEncryptionByDefault"]
        if "BucketName" in b:  # the exports bucket: order data, under the customer key
            assert default == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}, lid
        else:  # the access-log bucket: S3 log delivery writes only SSE-S3 targets
            assert default == {"SSEAlgorithm": "AES256"}, lid
        denies = [s for s in bucket_policy(synth, lid) if s["Effect"] == "Deny"]
        tls = [s for s in denies if s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
        assert len(tls) == 1, lid
        assert tls[0]["Principal"] == {"AWS": "*"} and tls[0]["Action"] == "s3:*"
        covered = json.dumps(tls[0]["Resource"])
        assert "/*" in covered and len(tls[0]["Resource"]) == 2, lid  # the bucket and its objects
        assert not [s for s in bucket_policy(synth, lid) if s["Effect"] == "Allow" and s["Principal"] == "*"]
