"""The synthesized template's data resources in a comparable form.

:func:`template_resources` reads a CloudFormation template (a dict) and returns its
DynamoDB tables, SQS queues, named S3 buckets and EventBridge buses in the same form
as ``posync_local.local_aws.describe_local(settings)`` (the local runtime's
provisioned resources) and as :func:`expected_resources` (straight from
``posync.resources``)::

    {
      "tables": {name: {"pk": str, "sk": str | None, "ttl": str | None,
                        "indexes": {index_name: {"pk": str, "sk": str | None}}}},
      "queues": {name: {"fifo": bool, "dlq": dlq_name | None,
                        "max_receive_count": int | None, "visibility_timeout": int}},
      "buckets": [name],
      "event_buses": [name],
    }

Names built from ``AWS::AccountId`` / ``AWS::Region`` (the exports bucket) are resolved
with the ``account`` and ``region`` given, by default the local runtime's
``000000000000`` / ``us-east-1``. Buckets without an explicit name (the server access
log bucket) are infrastructure only and not listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from posync.resources import Resources

LOCAL_ACCOUNT = "000000000000"
LOCAL_REGION = "us-east-1"


class UnresolvableValue(ValueError):
    """A property uses an intrinsic function this reader does not evaluate."""


def _resolve(value: Any, pseudo: Mapping[str, str]) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list):
        return [_resolve(v, pseudo) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref" and arg in pseudo:
            return pseudo[arg]
        if fn == "Fn::Join":
            sep, parts = arg
            return str(sep).join(str(_resolve(p, pseudo)) for p in parts)
        if fn == "Fn::Sub" and isinstance(arg, str):
            out = arg
            for name, val in pseudo.items():
                out = out.replace("${" + name + "}", val)
            if "${" in out:
                raise UnresolvableValue(f"Fn::Sub with non-pseudo variables: {arg!r}")
            return out
    if isinstance(value, dict):
        raise UnresolvableValue(f"cannot resolve {value!r}")
    return value


def _keys(schema: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    pk = next((k["AttributeName"] for k in schema if k["KeyType"] == "HASH"), None)
    sk = next((k["AttributeName"] for k in schema if k["KeyType"] == "RANGE"), None)
    return pk, sk


def _queue_logical_id(ref: Any) -> str | None:
    """The logical id behind ``{"Fn::GetAtt": [id, "Arn"]}`` (a DLQ target)."""
    if isinstance(ref, dict) and "Fn::GetAtt" in ref:
        logical_id, attr = ref["Fn::GetAtt"]
        if attr == "Arn":
            return str(logical_id)
    return None


def template_resources(
    template: Mapping[str, Any], *, account: str = LOCAL_ACCOUNT, region: str = LOCAL_REGION
) -> dict[str, Any]:
    """Tables, queues, named buckets and event buses of ``template`` (form: module doc)."""
    pseudo = {
        "AWS::AccountId": account,
        "AWS::Region": region,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
    }
    res: Mapping[str, Any] = template.get("Resources", {})

    def resolve(value: Any) -> Any:
        return _resolve(value, pseudo)

    tables: dict[str, Any] = {}
    queues: dict[str, Any] = {}
    queue_names: dict[str, str] = {}
    buckets: list[str] = []
    buses: list[str] = []
    for logical_id, r in res.items():
        props: Mapping[str, Any] = r.get("Properties", {})
        kind = r.get("Type")
        if kind == "AWS::SQS::Queue" and "QueueName" in props:
            queue_names[logical_id] = str(resolve(props["QueueName"]))
    for r in res.values():
        props = r.get("Properties", {})
        kind = r.get("Type")
        if kind == "AWS::DynamoDB::Table":
            pk, sk = _keys(props["KeySchema"])
            ttl = props.get("TimeToLiveSpecification") or {}
            tables[str(resolve(props["TableName"]))] = {
                "pk": pk,
                "sk": sk,
                "ttl": ttl.get("AttributeName") if ttl.get("Enabled") else None,
                "indexes": {
                    g["IndexName"]: dict(zip(("pk", "sk"), _keys(g["KeySchema"]), strict=True))
                    for g in props.get("GlobalSecondaryIndexes", [])
                },
            }
        elif kind == "AWS::SQS::Queue" and "QueueName" in props:
            redrive = props.get("RedrivePolicy")
            dlq = None
            if redrive:
                target = _queue_logical_id(redrive["deadLetterTargetArn"])
                dlq = queue_names.get(target) if target else None
                if dlq is None:
                    dlq = str(resolve(redrive["deadLetterTargetArn"])).rsplit(":", 1)[-1]
            queues[str(resolve(props["QueueName"]))] = {
                "fifo": bool(props.get("FifoQueue", False)),
                "dlq": dlq,
                "max_receive_count": int(redrive["maxReceiveCount"]) if redrive else None,
                "visibility_timeout": int(props.get("VisibilityTimeout", 30)),
            }
        elif kind == "AWS::S3::Bucket" and "BucketName" in props:
            buckets.append(str(resolve(props["BucketName"])))
        elif kind == "AWS::Events::EventBus":
            buses.append(str(resolve(props["Name"])))
    return {"tables": tables, "queues": queues, "buckets": sorted(buckets), "event_buses": sorted(buses)}


def expected_resources(res: Resources) -> dict[str, Any]:
    """What ``posync.resources`` says, in the same form (``res`` built with concrete account/region)."""
    queue_names = {q.key: q.name for q in res.queues}
    return {
        "tables": {
            t.name: {
                "pk": t.pk,
                "sk": t.sk,
                "ttl": t.ttl_attribute,
                "indexes": {i.name: {"pk": i.pk, "sk": i.sk} for i in t.indexes},
            }
            for t in res.tables
        },
        "queues": {
            q.name: {
                "fifo": q.fifo,
                "dlq": queue_names[q.dead_letter] if q.dead_letter else None,
                "max_receive_count": q.max_receive_count if q.dead_letter else None,
                "visibility_timeout": q.visibility_timeout_s,
            }
            for q in res.queues
        },
        "buckets": [res.bucket],
        "event_buses": [res.event_bus],
    }
