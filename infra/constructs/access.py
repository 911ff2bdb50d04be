"""Least privilege, declared in one table: what each function may do, on which resource.

``ACCESS`` is the whole story of the functions' permissions (besides writing their own
log group, X-Ray, and the worker's queue polling that its SQS event source grants).
The KMS permissions follow from it: a function gets ``kms:Decrypt`` on the stage key
if it reads anything encrypted and ``kms:GenerateDataKey`` if it writes, only through
the services it uses (``kms:ViaService``). No action is a wildcard; the only wildcard
resources are ARN patterns the design calls for (connection secrets per provider,
bucket prefixes) plus X-Ray's ``*``, each acknowledged to cdk-nag with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aws_cdk import Aws, Stack
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as sm
from aws_cdk import aws_sqs as sqs
from aws_cdk.aws_dynamodb import Table
from constructs import Construct

from infra.constructs.storage import EXPORTS_PREFIX, QUARANTINE_PREFIX, RAW_PREFIX
from infra.nag import acknowledge
from posync.config import PROVIDERS

READ_SECRET = ("secretsmanager:GetSecretValue",)
WRITE_ACTIONS = frozenset(
    {
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "secretsmanager:CreateSecret",
        "secretsmanager:PutSecretValue",
        "s3:PutObject",
        "sqs:SendMessage",
    }
)


@dataclass(frozen=True)
class Access:
    """What one function may touch. Table and index keys are ``posync.resources`` keys."""

    tables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    indexes: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    state_key: tuple[str, ...] = ()
    app_secrets: tuple[str, ...] = ()
    connection_secrets: tuple[str, ...] = ()  # on posync/{stage}/{clover,poynt}/* only
    send_to_sync_queue: bool = False
    bucket_objects: tuple[str, ...] = ()  # s3 object actions, on bucket_prefixes only
    bucket_prefixes: tuple[str, ...] = ()
    put_events: bool = False

    def actions(self) -> set[str]:
        """Every action this function is granted by the table (KMS excluded)."""
        out: set[str] = set()
        for acts in (*self.tables.values(), *self.indexes.values()):
            out.update(acts)
        out.update(self.state_key, self.app_secrets, self.connection_secrets, self.bucket_objects)
        if self.send_to_sync_queue:
            out.add("sqs:SendMessage")
        if self.put_events:
            out.add("events:PutEvents")
        return out

    def kms_services(self) -> set[str]:
        """The services through which this function uses the stage key."""
        services: set[str] = set()
        if self.tables or self.indexes:
            services.add("dynamodb")
        if self.state_key or self.app_secrets or self.connection_secrets:
            services.add("secretsmanager")
        if self.send_to_sync_queue:
            services.add("sqs")
        if self.bucket_objects:
            services.add("s3")
        return services

    def kms_actions(self) -> set[str]:
        if not self.kms_services():
            return set()
        acts = {"kms:Decrypt", "kms:DescribeKey"}
        if self.actions() & WRITE_ACTIONS:
            acts |= {"kms:GenerateDataKey", "kms:Encrypt"}
        return acts


ACCESS: dict[str, Access] = {
    # GET /health answers from configuration alone.
    "health": Access(),
    # GET /connect/{provider}: signs the OAuth state with the state key and builds the provider's
    # authorize URL from the app's client id (app credentials). The state's single use is recorded
    # at callback time, so connect writes nothing.
    "connect": Access(
        state_key=READ_SECRET,
        app_secrets=READ_SECRET,
    ),
    # GET /oauth/{provider}/callback: verifies the state and records its single use (conditional put),
    # exchanges the code with the app credentials, takes the connection's refresh lease (put, read back,
    # delete), stores the tokens in the connection's secret (created here with tags, or updated /
    # restored from a pending deletion on reconnect), upserts the connection, queues the first backfill.
    "callback": Access(
        state_key=READ_SECRET,
        app_secrets=READ_SECRET,
        connection_secrets=(
            "secretsmanager:CreateSecret",
            "secretsmanager:TagResource",
            "secretsmanager:DescribeSecret",
            "secretsmanager:RestoreSecret",
            "secretsmanager:PutSecretValue",
        ),
        tables={
            "control": ("dynamodb:PutItem", "dynamodb:GetItem", "dynamodb:DeleteItem"),
            "connections": ("dynamodb:UpdateItem",),
        },
        send_to_sync_queue=True,
    ),
    # POST /webhooks/{provider}: verifies with the app's webhook secret, stores Clover's verification
    # code, queues targeted syncs, marks uninstalled connections revoked, schedules their secret's
    # deletion and emits ConnectionRevoked.
    "webhooks": Access(
        app_secrets=READ_SECRET,
        connection_secrets=("secretsmanager:DeleteSecret",),
        tables={
            "connections": ("dynamodb:GetItem", "dynamodb:UpdateItem"),
            "control": ("dynamodb:PutItem",),
        },
        send_to_sync_queue=True,
        put_events=True,
    ),
    # Scheduled: pages the active connections from the by-status index (reading an item itself only
    # if the index ever returns keys alone), queues the due ones' syncs and marks each queued
    # connection (``queued_at``, a conditional UpdateItem: posync.schedule coalesces on it).
    "dispatcher": Access(
        tables={"connections": ("dynamodb:GetItem", "dynamodb:UpdateItem")},
        indexes={("connections", "by-status"): ("dynamodb:Query",)},
        send_to_sync_queue=True,
    ),
    # SQS: syncs one connection. Tokens (read; refresh and save), connection state, cursor and token
    # expiries, orders (newest-wins transactions of conditional puts), refresh leases, rate-limit
    # buckets, the app breakers and export-run ledger in the control table, export parts / manifests /
    # quarantine / raw payloads, OrdersExported, ConnectionNeedsReauth and AppAuthFailed events,
    # continuations on the queue.
    "worker": Access(
        app_secrets=READ_SECRET,
        connection_secrets=("secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"),
        tables={
            "connections": ("dynamodb:GetItem", "dynamodb:UpdateItem"),
            # BatchGetItem and Query: the reconcile sweep reads stored versions and its window
            "orders": ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:BatchGetItem", "dynamodb:Query"),
            "control": (
                "dynamodb:GetItem",
                "dynamodb:BatchGetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
            ),
        },
        bucket_objects=("s3:PutObject", "s3:GetObject"),
        bucket_prefixes=(EXPORTS_PREFIX, QUARANTINE_PREFIX, RAW_PREFIX),
        put_events=True,
        send_to_sync_queue=True,
    ),
}


class FunctionAccess(Construct):
    """Attaches ``ACCESS[name]`` to each function's role as statements on the concrete resources."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        roles: Mapping[str, iam.Role],
        key: kms.IKey,
        tables: Mapping[str, Table],
        state_key: sm.ISecret,
        app_secrets: Mapping[str, sm.ISecret],
        connection_secret_arns: list[str],
        secret_prefix: str,
        sync_queue: sqs.IQueue,
        bucket: s3.IBucket,
        event_bus: events.IEventBus,
        access: Mapping[str, Access] = ACCESS,
    ) -> None:
        super().__init__(scope, construct_id)
        missing = set(roles) ^ set(access)
        if missing:
            raise ValueError(f"ACCESS and FUNCTIONS disagree on: {sorted(missing)}")
        self.stack = Stack.of(self)
        self.secret_prefix = secret_prefix
        for name, role in roles.items():
            self._grant(
                name,
                role,
                access[name],
                key=key,
                tables=tables,
                state_key=state_key,
                app_secrets=app_secrets,
                connection_secret_arns=connection_secret_arns,
                sync_queue=sync_queue,
                bucket=bucket,
                event_bus=event_bus,
            )

    def _grant(
        self,
        name: str,
        role: iam.Role,
        a: Access,
        *,
        key: kms.IKey,
        tables: Mapping[str, Table],
        state_key: sm.ISecret,
        app_secrets: Mapping[str, sm.ISecret],
        connection_secret_arns: list[str],
        sync_queue: sqs.IQueue,
        bucket: s3.IBucket,
        event_bus: events.IEventBus,
    ) -> None:
        def allow(sid: str, actions: tuple[str, ...] | list[str], resources: list[str], **kw: object) -> None:
            role.add_to_principal_policy(
                iam.PolicyStatement(sid=sid, actions=sorted(actions), resources=resources, **kw)  # type: ignore[arg-type]
            )

        for table_key, acts in a.tables.items():
            allow(f"Table{_camel(table_key)}", acts, [tables[table_key].table_arn])
        for (table_key, index), acts in a.indexes.items():
            allow(
                f"Index{_camel(table_key)}{_camel(index)}",
                acts,
                [f"{tables[table_key].table_arn}/index/{index}"],
            )
        if a.state_key:
            allow("StateKeySecret", a.state_key, [state_key.secret_arn])
        if a.app_secrets:
            allow("AppSecrets", a.app_secrets, [app_secrets[p].secret_arn for p in PROVIDERS])
        if a.connection_secrets:
            allow("ConnectionSecrets", a.connection_secrets, connection_secret_arns)
            for provider in PROVIDERS:
                acknowledge(
                    role,
                    f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:secretsmanager:<AWS::Region>:"
                    f"<AWS::AccountId>:secret:{self.secret_prefix}/{provider}/*]",
                    "Connection secrets are created at run time, one per merchant "
                    "(posync/{stage}/{provider}/{merchant_id}); the pattern is scoped to this stage and "
                    "provider, and never matches the app secrets or the state key.",
                )
        if a.send_to_sync_queue:
            allow("SyncQueueSend", ("sqs:SendMessage",), [sync_queue.queue_arn])
        if a.bucket_objects:
            allow(
                "BucketObjects",
                a.bucket_objects,
                [bucket.arn_for_objects(f"{p}*") for p in a.bucket_prefixes],
            )
            for prefix in a.bucket_prefixes:
                acknowledge(
                    role,
                    f"AwsSolutions-IAM5[Resource::<{self._logical_id(bucket)}.Arn>/{prefix}*]",
                    f"Objects under {prefix} are keyed per provider, merchant, day and run; the grant is "
                    "scoped to this one prefix of the stage's exports bucket.",
                )
        if a.put_events:
            allow("EventBusPut", ("events:PutEvents",), [event_bus.event_bus_arn])
        kms_actions = a.kms_actions()
        if kms_actions:
            allow(
                "StageKey",
                sorted(kms_actions),
                [key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": [
                            f"{svc}.{Aws.REGION}.amazonaws.com" for svc in sorted(a.kms_services())
                        ]
                    }
                },
            )

    def _logical_id(self, bucket: s3.IBucket) -> str:
        child = bucket.node.default_child
        if child is None:
            raise ValueError("bucket has no CloudFormation resource")
        return self.stack.resolve(self.stack.get_logical_id(child))  # type: ignore[arg-type,no-any-return]


def _camel(text: str) -> str:
    return "".join(part.capitalize() for part in text.replace("-", "_").split("_"))
