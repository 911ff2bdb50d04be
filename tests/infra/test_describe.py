"""infra.describe.template_resources: the comparable form the local runtime also produces."""

from __future__ import annotations

from typing import Any

import pytest

from infra.describe import UnresolvableValue, expected_resources, template_resources
from posync.resources import resources


def template() -> dict[str, Any]:
    return {
        "Resources": {
            "T": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "TableName": "t1",
                    "KeySchema": [
                        {"AttributeName": "a", "KeyType": "HASH"},
                        {"AttributeName": "b", "KeyType": "RANGE"},
                    ],
                    "TimeToLiveSpecification": {"AttributeName": "exp", "Enabled": True},
                    "GlobalSecondaryIndexes": [
                        {"IndexName": "g", "KeySchema": [{"AttributeName": "s", "KeyType": "HASH"}]}
                    ],
                },
            },
            "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "d.fifo", "FifoQueue": True}},
            "Q": {
                "Type": "AWS::SQS::Queue",
                "Properties": {
                    "QueueName": "q.fifo",
                    "FifoQueue": True,
                    "VisibilityTimeout": 90,
                    "RedrivePolicy": {
                        "deadLetterTargetArn": {"Fn::GetAtt": ["Dlq", "Arn"]},
                        "maxReceiveCount": 3,
                    },
                },
            },
            "Std": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "plain"}},
            "Unnamed": {"Type": "AWS::SQS::Queue", "Properties": {}},
            "B": {
                "Type": "AWS::S3::Bucket",
                "Properties": {
                    "BucketName": {
                        "Fn::Join": ["", ["b-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}]]
                    }
                },
            },
            "Logs": {"Type": "AWS::S3::Bucket", "Properties": {}},
            "Bus": {"Type": "AWS::Events::EventBus", "Properties": {"Name": "bus"}},
        }
    }


def test_reads_keys_ttl_indexes_redrive_and_resolves_pseudo_parameters() -> None:
    # When a template with every kind of resource is described for an account and region
    d = template_resources(template(), account="111122223333", region="eu-west-1")
    # Then it comes back in the shared form
    assert d == {
        "tables": {"t1": {"pk": "a", "sk": "b", "ttl": "exp", "indexes": {"g": {"pk": "s", "sk": None}}}},
        "queues": {
            "d.fifo": {"fifo": True, "dlq": None, "max_receive_count": None, "visibility_timeout": 30},
            "q.fifo": {"fifo": True, "dlq": "d.fifo", "max_receive_count": 3, "visibility_timeout": 90},
            "plain": {"fifo": False, "dlq": None, "max_receive_count": None, "visibility_timeout": 30},
        },
        # Unnamed (infrastructure) buckets are left out.
        "buckets": ["b-111122223333-eu-west-1"],
        "event_buses": ["bus"],
    }


def test_defaults_to_the_local_runtimes_account_and_region() -> None:
    assert template_resources(template())["buckets"] == ["b-000000000000-us-east-1"]


def test_disabled_ttl_is_no_ttl() -> None:
    t = template()
    t["Resources"]["T"]["Properties"]["TimeToLiveSpecification"]["Enabled"] = False
    assert template_resources(t)["tables"]["t1"]["ttl"] is None


def test_refuses_what_it_cannot_resolve() -> None:
    t = template()
    t["Resources"]["B"]["Properties"]["BucketName"] = {"Fn::ImportValue": "elsewhere"}
    with pytest.raises(UnresolvableValue):
        template_resources(t)


def test_expected_resources_follow_posync_resources() -> None:
    res = resources("qa", account="123456789012", region="ap-south-1")
    e = expected_resources(res)
    assert e["buckets"] == ["posync-qa-exports-123456789012-ap-south-1"]
    assert e["queues"]["posync-qa-sync.fifo"]["dlq"] == "posync-qa-sync-dlq.fifo"
    assert e["tables"]["posync-qa-control"]["ttl"] == "expires_at"
