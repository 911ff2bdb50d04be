"""Least privilege: no wildcard actions, '*' resources only where AWS requires them, one role each."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from infra.constructs.access import ACCESS
from posync.resources import FUNCTIONS
from tests.infra.support import Synth

# Actions AWS does not let us scope to a resource: X-Ray's segment upload (active tracing).
# (posync publishes metrics as EMF log lines, so cloudwatch:PutMetricData is not needed at all.)
STAR_RESOURCE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
BASELINE = {"logs:CreateLogStream", "logs:PutLogEvents", *STAR_RESOURCE_ACTIONS}
# What the worker's SQS event source needs to poll (granted by the event source mapping).
POLLING = {
    "sqs:ReceiveMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "kms:Decrypt",
}


def render(value: Any) -> str:
    """A resource value as text: refs as <Id>, attributes as <Id.Attr>, joins concatenated."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return f"<{value['Fn::GetAtt'][0]}.{value['Fn::GetAtt'][1]}>"
    if "Fn::Join" in value:
        return str(value["Fn::Join"][0]).join(render(v) for v in value["Fn::Join"][1])
    raise AssertionError(f"unexpected intrinsic {value}")


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def statements_by_role(synth: Synth) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in synth.props("AWS::IAM::Policy"):
        for role in p["Roles"]:
            out[role["Ref"]].extend(p["PolicyDocument"]["Statement"])
    for lid, r in synth.resources("AWS::IAM::Role").items():
        for inline in r["Properties"].get("Policies", []):
            out[lid].extend(inline["PolicyDocument"]["Statement"])
    return out


def statements_by_function(synth: Synth) -> dict[str, list[dict[str, Any]]]:
    by_role = statements_by_role(synth)
    return {
        r["Properties"]["FunctionName"].removeprefix("posync-dev-"): by_role[
            r["Properties"]["Role"]["Fn::GetAtt"][0]
        ]
        for r in synth.resources("AWS::Lambda::Function").values()
    }


def actions_of(statements: list[dict[str, Any]]) -> set[str]:
    return {a for s in statements if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def grants(statements: list[dict[str, Any]], action: str) -> set[str]:
    """Rendered resources on which ``action`` is allowed."""
    return {
        render(res)
        for s in statements
        if s["Effect"] == "Allow" and action in as_list(s["Action"])
        for res in as_list(s["Resource"])
    }


def logical_id(synth: Synth, kind: str, **match: str) -> str:
    (lid,) = [
        lid
        for lid, r in synth.resources(kind).items()
        if all(r["Properties"].get(k) == v for k, v in match.items())
    ]
    return lid


def test_only_function_roles_exist(synth: Synth) -> None:
    # No other role (no custom-resource providers, no log-retention helpers) is in the stack.
    assert len(synth.resources("AWS::IAM::Role")) == len(FUNCTIONS)
    assert not synth.resources("AWS::IAM::ManagedPolicy")
    assert not synth.resources("AWS::IAM::User")


def test_no_wildcard_actions_in_any_identity_policy(synth: Synth) -> None:
    for role, statements in statements_by_role(synth).items():
        for s in statements:
            assert "NotAction" not in s and "NotResource" not in s, role
            for action in as_list(s["Action"]):
                assert "*" not in action, f"{role}: {action}"


def test_star_resources_only_for_actions_that_require_it(synth: Synth) -> None:
    for role, statements in statements_by_role(synth).items():
        for s in statements:
            if "*" in as_list(s["Resource"]):
                assert set(as_list(s["Action"])) <= STAR_RESOURCE_ACTIONS, role


def test_wildcard_patterns_are_the_designed_ones(synth: Synth) -> None:
    bucket = logical_id_of_exports_bucket(synth)
    allowed = {
        "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:posync/dev/clover/*",
        "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:posync/dev/poynt/*",
        f"<{bucket}.Arn>/exports/*",
        f"<{bucket}.Arn>/quarantine/*",
        f"<{bucket}.Arn>/raw/*",
    }
    seen = set()
    for statements in statements_by_role(synth).values():
        for s in statements:
            for res in as_list(s["Resource"]):
                text = render(res)
                if "*" in text and text != "*":
                    assert text in allowed
                    seen.add(text)
    assert seen == allowed


def logical_id_of_exports_bucket(synth: Synth) -> str:
    (lid,) = [lid for lid, r in synth.resources("AWS::S3::Bucket").items() if "BucketName" in r["Properties"]]
    return lid


@pytest.mark.parametrize("name", [f.name for f in FUNCTIONS])
def test_each_role_has_exactly_the_declared_access(synth: Synth, name: str) -> None:
    # Given the access table and the role as synthesized
    declared = ACCESS[name]
    expected = BASELINE | declared.actions() | declared.kms_actions()
    if name == "worker":
        expected |= POLLING
    # Then the role allows exactly that
    assert actions_of(statements_by_function(synth)[name]) == expected


def test_health_can_do_nothing_but_log_and_trace(synth: Synth) -> None:
    assert actions_of(statements_by_function(synth)["health"]) == BASELINE


def test_state_key_is_readable_only_by_connect_and_callback(synth: Synth) -> None:
    state_key = f"<{logical_id(synth, 'AWS::SecretsManager::Secret', Name='posync/dev/app/state-key')}>"
    readers = {
        n
        for n, st in statements_by_function(synth).items()
        if state_key in grants(st, "secretsmanager:GetSecretValue")
    }
    assert readers == {"connect", "callback"}


def test_app_credentials_are_not_readable_by_health_or_dispatcher(synth: Synth) -> None:
    clover = f"<{logical_id(synth, 'AWS::SecretsManager::Secret', Name='posync/dev/app/clover')}>"
    readers = {
        n
        for n, st in statements_by_function(synth).items()
        if clover in grants(st, "secretsmanager:GetSecretValue")
    }
    # connect needs the client id for the authorize URL; the others talk to the provider.
    assert readers == {"connect", "callback", "webhooks", "worker"}
    # Nobody may write the app credentials from a function (the CLI does).
    for st in statements_by_function(synth).values():
        assert clover not in grants(st, "secretsmanager:PutSecretValue")


def test_connection_secrets_lifecycle_is_split_by_function(synth: Synth) -> None:
    fns = statements_by_function(synth)
    patterns = {
        "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:posync/dev/clover/*",
        "arn:<AWS::Partition>:secretsmanager:<AWS::Region>:<AWS::AccountId>:secret:posync/dev/poynt/*",
    }
    creators = {n for n, st in fns.items() if grants(st, "secretsmanager:CreateSecret")}
    deleters = {n for n, st in fns.items() if grants(st, "secretsmanager:DeleteSecret")}
    assert creators == {"callback"}
    assert deleters == {"webhooks"}
    assert grants(fns["callback"], "secretsmanager:CreateSecret") == patterns
    assert grants(fns["webhooks"], "secretsmanager:DeleteSecret") == patterns
    assert grants(fns["worker"], "secretsmanager:PutSecretValue") == patterns


def test_only_the_worker_touches_orders_and_exports(synth: Synth) -> None:
    fns = statements_by_function(synth)
    orders = f"<{logical_id(synth, 'AWS::DynamoDB::Table', TableName='posync-dev-orders')}.Arn>"
    for name, st in fns.items():
        touches_orders = any(orders in grants(st, a) for a in actions_of(st) if a.startswith("dynamodb:"))
        assert touches_orders == (name == "worker"), name
        assert bool(grants(st, "s3:PutObject")) == (name == "worker"), name
        assert bool(grants(st, "s3:GetObject")) == (name == "worker"), name
    # Events: the worker (OrdersExported, ConnectionNeedsReauth) and webhooks (ConnectionRevoked).
    bus = logical_id(synth, "AWS::Events::EventBus", Name="posync-dev")
    emitters = {n for n, st in fns.items() if grants(st, "events:PutEvents")}
    assert emitters == {"worker", "webhooks"}
    assert all(grants(fns[n], "events:PutEvents") == {f"<{bus}.Arn>"} for n in emitters)


def test_dispatcher_queries_the_status_index_and_sends_to_the_queue(synth: Synth) -> None:
    st = statements_by_function(synth)["dispatcher"]
    table = logical_id(synth, "AWS::DynamoDB::Table", TableName="posync-dev-connections")
    queue = logical_id(synth, "AWS::SQS::Queue", QueueName="posync-dev-sync.fifo")
    assert grants(st, "dynamodb:Query") == {f"<{table}.Arn>/index/by-status"}
    assert grants(st, "sqs:SendMessage") == {f"<{queue}.Arn>"}
    # the queued marks (coalescing): on the connections table only
    assert grants(st, "dynamodb:UpdateItem") == {f"<{table}.Arn>"}
    assert not {
        a for a in actions_of(st) if a.startswith(("secretsmanager:", "s3:", "dynamodb:Put", "dynamodb:Scan"))
    }


def test_only_producers_may_send_to_the_sync_queue(synth: Synth) -> None:
    senders = {n for n, st in statements_by_function(synth).items() if grants(st, "sqs:SendMessage")}
    assert senders == {"callback", "webhooks", "dispatcher", "worker"}
    receivers = {n for n, st in statements_by_function(synth).items() if grants(st, "sqs:ReceiveMessage")}
    assert receivers == {"worker"}


def test_key_use_is_limited_to_the_services_each_function_calls(synth: Synth) -> None:
    (key,) = synth.resources("AWS::KMS::Key")
    for name, st in statements_by_function(synth).items():
        for s in st:
            kms = [a for a in as_list(s["Action"]) if a.startswith("kms:")]
            if not kms:
                continue
            assert as_list(s["Resource"]) == [{"Fn::GetAtt": [key, "Arn"]}], name
            if "Condition" in s:
                via = s["Condition"]["StringEquals"]["kms:ViaService"]
                services = {render(v).split(".")[0] for v in via}
                assert services == ACCESS[name].kms_services(), name
            else:
                # The only unconditioned key use is the worker's event source decrypting queue messages.
                assert (name, kms) == ("worker", ["kms:Decrypt"])
    assert not any(a.startswith("kms:") for a in actions_of(statements_by_function(synth)["health"]))


def test_resource_policies_allow_no_wildcard_actions(synth: Synth) -> None:
    # Wildcard actions appear only in Deny statements (TLS-only) and the key's standard root statement.
    policies = [
        *(p["PolicyDocument"] for p in synth.props("AWS::S3::BucketPolicy")),
        *(p["PolicyDocument"] for p in synth.props("AWS::SQS::QueuePolicy")),
        *(p["PolicyDocument"] for p in synth.props("AWS::SNS::TopicPolicy")),
    ]
    for doc in policies:
        for s in doc["Statement"]:
            if s["Effect"] == "Allow":
                assert all("*" not in a for a in as_list(s["Action"])), s
    (key,) = synth.props("AWS::KMS::Key")
    root = "arn:<AWS::Partition>:iam::<AWS::AccountId>:root"
    for s in key["KeyPolicy"]["Statement"]:
        # Principals: the account root (the standard "enable IAM policies" delegation, plus the
        # statements Secrets Manager's integration adds, scoped to kms:ViaService secretsmanager)...
        if "AWS" in s["Principal"]:
            assert render(s["Principal"]["AWS"]) == root, s
        # ...or CloudWatch alarms, without any wildcard action.
        else:
            assert s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
            assert all("*" not in a for a in as_list(s["Action"]))
    # The account root's full access is what lets IAM policies (the roles above) grant key use at all.
    assert any(
        as_list(s["Action"]) == ["kms:*"] and "Condition" not in s for s in key["KeyPolicy"]["Statement"]
    )
