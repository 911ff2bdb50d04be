"""The embedded AWS (moto's server) and provisioning from ``posync.resources``.

``EmbeddedAws(port).start()`` runs moto's server on 127.0.0.1 in a daemon thread,
unless ``POSYNC_EXTERNAL_AWS=1`` says to use what ``AWS_ENDPOINT_URL`` points at
(LocalStack, or a real account when no endpoint is set). ``provision(settings)``
then creates, idempotently, every resource of ``settings.resources`` - the same
description the CDK stack is built from - so code, template and local stack
cannot drift apart.

moto keeps its state in the process, not in the server: several moto servers in
one process serve the same tables and queues. Runtimes that share a process
therefore use distinct stages (distinct resource names) to stay apart.

``describe_local(settings)`` reads the provisioned resources back from AWS in the
comparable form below; ``infra.describe.template_resources(template)`` returns
the synthesized template's resources in the same form, and a test compares them::

    {
      "tables": {name: {"pk": str, "sk": str | None, "ttl": str | None,
                        "indexes": {index_name: {"pk": str, "sk": str | None}}}},
      "queues": {name: {"fifo": bool, "dlq": dlq_name | None,
                        "max_receive_count": int | None, "visibility_timeout": int}},
      "buckets": [name],
      "event_buses": [name],
    }
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from posync.config import Settings
from posync.resources import QueueSpec, TableSpec

log = logging.getLogger(__name__)
_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)

LOCAL_REGION = "us-east-1"
# moto accepts any credentials; these well-known dummies are not secrets.
LOCAL_ACCESS_KEY_ID = "testing"
LOCAL_SECRET_ACCESS_KEY = "testing"  # noqa: S105 - moto's dummy credential, documented by moto
CDK_BOOTSTRAP_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
CDK_BOOTSTRAP_VERSION = "21"

# The app-credential secrets as the CLI fills them; created with empty values when absent.
APP_CREDENTIAL_FIELDS: dict[str, tuple[str, ...]] = {
    "clover": ("client_id", "client_secret"),
    "poynt": ("app_id", "private_key_pem"),
}


_ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_sessions: dict[tuple[str | None, ...], Any] = {}
_clients: dict[tuple[str, tuple[str | None, ...]], Any] = {}
_clients_lock = threading.Lock()


def client(service: str) -> Any:
    """A boto3 client for the AWS the environment points at now (cached per environment).

    The runtime's own calls (provisioning, draining) share one boto3 session per
    environment, so service models are loaded once, not once per client.
    """
    key = tuple(os.environ.get(k) for k in _ENV_KEYS)
    with _clients_lock:
        found = _clients.get((service, key))
        if found is None:
            session = _sessions.get(key)
            if session is None:
                session = _sessions[key] = boto3.session.Session()
            found = _clients[(service, key)] = session.client(service, config=_CONFIG)  # type: ignore[call-overload]
        return found


def external_aws_requested(env: dict[str, str] | None = None) -> bool:
    """``POSYNC_EXTERNAL_AWS=1``: use the AWS that the environment points at instead of moto."""
    e = os.environ if env is None else env
    return e.get("POSYNC_EXTERNAL_AWS", "") in ("1", "true", "yes")


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"port {port} on 127.0.0.1 is already in use") from exc


class _NoTableCopy:
    """``copy`` for moto's DynamoDB backend during a transaction: tables are not deep-copied."""

    def __init__(self, table_type: type) -> None:
        self._table_type = table_type

    def deepcopy(self, x: Any, memo: Any = None) -> Any:
        return x if isinstance(x, self._table_type) else copy.deepcopy(x, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


_moto_patch_lock = threading.Lock()


def _patch_moto_transactions() -> None:
    """Make moto's TransactWriteItems cost O(items) instead of O(items x table size).

    moto 5.2 deep-copies every table a transaction touches, once per item, to roll back
    on failure: with a few thousand orders stored, each 100-item transaction takes
    seconds. This backs up only the touched items and puts them back when the
    transaction fails: the same behaviour, and transactions are serialized (atomic
    with respect to each other, like DynamoDB's). Applied once, when this process runs
    moto's server; a moto without the expected internals is left as it is.
    """
    with _moto_patch_lock:
        try:
            moto_models: Any = importlib.import_module("moto.dynamodb.models")
            DynamoType: Any = importlib.import_module("moto.dynamodb.models.dynamo_type").DynamoType  # noqa: N806
            Table: Any = importlib.import_module("moto.dynamodb.models.table").Table  # noqa: N806

            original = moto_models.DynamoDBBackend.transact_write_items
            _ = moto_models.copy
        except (ImportError, AttributeError):  # pragma: no cover - another moto version
            log.warning("moto's DynamoDB internals changed: transactions stay slow on big tables")
            return
        if getattr(original, "posync_patched", False):
            return
        no_table_copy = _NoTableCopy(Table)
        run_lock = threading.Lock()

        def item_key(table: Any, op_type: str, op: dict[str, Any]) -> tuple[Any, Any]:
            attrs = op["Item"] if op_type == "Put" else op["Key"]
            hash_value = DynamoType(attrs[table.hash_key_attr])
            range_value = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
            return hash_value, range_value

        def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
            with run_lock:
                backups: list[tuple[Any, Any, Any, Any]] = []
                for entry in transact_items:
                    op_type, op = next(iter(entry.items()))
                    table = self.tables.get(op.get("TableName"))
                    if table is None or op_type not in ("Put", "Update", "Delete"):
                        continue
                    with contextlib.suppress(Exception):  # malformed: moto itself will refuse it
                        h, r = item_key(table, op_type, op)
                        backups.append((table, h, r, copy.deepcopy(table.get_item(h, r))))
                moto_models.copy = no_table_copy
                try:
                    return original(self, transact_items)
                except Exception:
                    for table, h, r, previous in reversed(backups):
                        if r is None:
                            table.items.pop(h, None)
                            if previous is not None:
                                table.items[h] = previous
                        else:
                            table.items[h].pop(r, None)
                            if previous is not None:
                                table.items[h][r] = previous
                    raise
                finally:
                    moto_models.copy = copy

        transact_write_items.posync_patched = True  # type: ignore[attr-defined]
        moto_models.DynamoDBBackend.transact_write_items = transact_write_items


class EmbeddedAws:
    """moto's server on 127.0.0.1 (``port=0``: a free port), or the external AWS when asked for.

    ``endpoint`` is the URL boto3 should use (None only for a real account without an
    endpoint override); ``external`` says whether this process started nothing.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.endpoint: str | None = None
        self.external = False
        self._server: Any = None

    def start(self) -> EmbeddedAws:
        if self._server is not None or self.external:
            return self
        if external_aws_requested():
            self.external = True
            self.endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
            log.info("using external AWS at %s", self.endpoint or "the default AWS endpoints")
            return self
        from moto.server import ThreadedMotoServer

        if self.port:
            # ThreadedMotoServer would wait forever for a server that failed to bind.
            _check_port_free(self.port)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        _patch_moto_transactions()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.port = port
        self.endpoint = f"http://{host}:{port}"
        log.info("embedded AWS (moto) listening on %s", self.endpoint)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def env(self) -> dict[str, str | None]:
        """The environment boto3 needs for this AWS. ``None`` values mean: unset the variable."""
        if self.external:
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or LOCAL_REGION
            return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": region, "AWS_DEFAULT_REGION": region}
        if self.endpoint is None:
            raise RuntimeError("EmbeddedAws.start() first")
        return aws_env(self.endpoint)


def aws_env(endpoint: str, region: str = LOCAL_REGION) -> dict[str, str | None]:
    """Point boto3 at a local endpoint with moto's dummy credentials (and no profile)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_ACCESS_KEY,
        "AWS_SESSION_TOKEN": None,
        "AWS_SECURITY_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


@dataclass(frozen=True)
class ProvisionedResources:
    """What ``provision`` created or found, by the logical keys of ``posync.resources``."""

    stage: str
    tables: dict[str, str]  # key -> table name
    queue_urls: dict[str, str]  # key -> queue URL
    queue_arns: dict[str, str]  # key -> queue ARN
    bucket: str
    event_bus: str
    event_bus_arn: str
    kms_key_id: str
    kms_alias: str
    secrets: tuple[str, ...] = field(default=())

    @property
    def sync_queue_url(self) -> str:
        return self.queue_urls["sync"]

    @property
    def sync_dlq_url(self) -> str:
        return self.queue_urls["sync_dlq"]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


# --- DynamoDB -------------------------------------------------------------------------------


def _ensure_table(spec: TableSpec) -> None:
    ddb = client("dynamodb")
    attrs: dict[str, str] = {spec.pk: "S"}
    key_schema = [{"AttributeName": spec.pk, "KeyType": "HASH"}]
    if spec.sk:
        attrs[spec.sk] = "S"
        key_schema.append({"AttributeName": spec.sk, "KeyType": "RANGE"})
    gsis = []
    for index in spec.indexes:
        attrs[index.pk] = "S"
        index_keys = [{"AttributeName": index.pk, "KeyType": "HASH"}]
        if index.sk:
            attrs[index.sk] = "S"
            index_keys.append({"AttributeName": index.sk, "KeyType": "RANGE"})
        gsis.append(
            {"IndexName": index.name, "KeySchema": index_keys, "Projection": {"ProjectionType": "ALL"}}
        )
    try:
        existing = ddb.describe_table(TableName=spec.name)["Table"]
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
        kwargs: dict[str, Any] = {
            "TableName": spec.name,
            "KeySchema": key_schema,
            "AttributeDefinitions": [{"AttributeName": k, "AttributeType": t} for k, t in attrs.items()],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if gsis:
            kwargs["GlobalSecondaryIndexes"] = gsis
        ddb.create_table(**kwargs)
        ddb.get_waiter("table_exists").wait(
            TableName=spec.name, WaiterConfig={"Delay": 1, "MaxAttempts": 120}
        )
    else:
        have = {g["IndexName"] for g in existing.get("GlobalSecondaryIndexes", [])}
        for gsi in gsis:
            if gsi["IndexName"] in have:
                continue
            ddb.update_table(
                TableName=spec.name,
                AttributeDefinitions=[{"AttributeName": k, "AttributeType": t} for k, t in attrs.items()],
                GlobalSecondaryIndexUpdates=[{"Create": gsi}],
            )
    if spec.ttl_attribute:
        ttl = ddb.describe_time_to_live(TableName=spec.name)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or (
            ttl.get("AttributeName") != spec.ttl_attribute
        ):
            ddb.update_time_to_live(
                TableName=spec.name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
            )


# --- SQS ------------------------------------------------------------------------------------


def _queue_attributes(spec: QueueSpec, dlq_arn: str | None) -> dict[str, str]:
    attrs = {
        "VisibilityTimeout": str(spec.visibility_timeout_s),
        "MessageRetentionPeriod": str(spec.retention_s),
    }
    if spec.fifo:
        attrs["ContentBasedDeduplication"] = "false"
    if dlq_arn is not None:
        attrs["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": spec.max_receive_count}
        )
    return attrs


def _ensure_queue(spec: QueueSpec, dlq_arn: str | None) -> tuple[str, str]:
    sqs = client("sqs")
    attrs = _queue_attributes(spec, dlq_arn)
    try:
        url: str = sqs.get_queue_url(QueueName=spec.name)["QueueUrl"]
    except ClientError as exc:
        if _code(exc) not in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            raise
        create_attrs = dict(attrs)
        if spec.fifo:
            create_attrs["FifoQueue"] = "true"
        url = sqs.create_queue(QueueName=spec.name, Attributes=create_attrs)["QueueUrl"]
    else:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
    arn: str = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def _ensure_queues(specs: tuple[QueueSpec, ...]) -> tuple[dict[str, str], dict[str, str]]:
    urls: dict[str, str] = {}
    arns: dict[str, str] = {}
    pending = list(specs)
    # Dead-letter queues first: their ARNs go into the redrive policies of the others.
    while pending:
        progressed = False
        for spec in list(pending):
            if spec.dead_letter is not None and spec.dead_letter not in arns:
                continue
            dlq_arn = arns[spec.dead_letter] if spec.dead_letter is not None else None
            urls[spec.key], arns[spec.key] = _ensure_queue(spec, dlq_arn)
            pending.remove(spec)
            progressed = True
        if not progressed:
            raise ValueError(f"dead-letter queues missing or cyclic: {[q.key for q in pending]}")
    return urls, arns


# --- S3, EventBridge, KMS, SSM, Secrets Manager -----------------------------------------------


def _ensure_bucket(name: str, region: str) -> None:
    s3 = client("s3")
    try:
        s3.head_bucket(Bucket=name)
        return
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if _code(exc) != "BucketAlreadyOwnedByYou":
            raise


def _ensure_event_bus(name: str) -> str:
    events = client("events")
    try:
        arn: str = events.describe_event_bus(Name=name)["Arn"]
        return arn
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    created: str = events.create_event_bus(Name=name)["EventBusArn"]
    return created


def _find_alias(alias: str) -> str | None:
    kms = client("kms")
    for page in kms.get_paginator("list_aliases").paginate():
        for a in page.get("Aliases", []):
            if a.get("AliasName") == alias and a.get("TargetKeyId"):
                return str(a["TargetKeyId"])
    return None


def _ensure_kms_key(alias: str, stage: str) -> str:
    existing = _find_alias(alias)
    if existing is not None:
        return existing
    kms = client("kms")
    key_id: str = kms.create_key(Description=f"posync {stage}: secrets, tables, queues and exports")[
        "KeyMetadata"
    ]["KeyId"]
    kms.enable_key_rotation(KeyId=key_id)
    kms.create_alias(AliasName=alias, TargetKeyId=key_id)
    return key_id


def _ensure_bootstrap_parameter() -> None:
    client("ssm").put_parameter(
        Name=CDK_BOOTSTRAP_PARAMETER, Value=CDK_BOOTSTRAP_VERSION, Type="String", Overwrite=True
    )


def _secret_exists(name: str) -> bool:
    try:
        client("secretsmanager").describe_secret(SecretId=name)
    except ClientError as exc:
        if _code(exc) == "ResourceNotFoundException":
            return False
        raise
    return True


def _create_secret_if_absent(name: str, value: str, kms_alias: str) -> None:
    if _secret_exists(name):
        return
    try:
        client("secretsmanager").create_secret(Name=name, SecretString=value, KmsKeyId=kms_alias)
    except ClientError as exc:
        if _code(exc) != "ResourceExistsException":
            raise


def empty_app_credentials(provider: str) -> dict[str, str]:
    return dict.fromkeys(APP_CREDENTIAL_FIELDS[provider], "")


def provision(settings: Settings) -> ProvisionedResources:
    """Create every resource of ``settings.resources`` that does not exist yet (idempotent).

    Existing secrets are left as they are: a second run never rotates the state key
    nor empties app credentials the CLI has filled.
    """
    res = settings.resources
    _ensure_bootstrap_parameter()
    kms_key_id = _ensure_kms_key(res.kms_alias, res.stage)
    for table in res.tables:
        _ensure_table(table)
    urls, arns = _ensure_queues(res.queues)
    _ensure_bucket(res.bucket, settings.aws_region)
    bus_arn = _ensure_event_bus(res.event_bus)
    state_key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    _create_secret_if_absent(settings.state_key_secret_name, state_key, res.kms_alias)
    names = [settings.state_key_secret_name]
    for provider in APP_CREDENTIAL_FIELDS:
        name = settings.app_secret_name(provider)
        _create_secret_if_absent(name, json.dumps(empty_app_credentials(provider)), res.kms_alias)
        names.append(name)
    log.info("provisioned stage %s", res.stage)
    return ProvisionedResources(
        stage=res.stage,
        tables={t.key: t.name for t in res.tables},
        queue_urls=urls,
        queue_arns=arns,
        bucket=res.bucket,
        event_bus=res.event_bus,
        event_bus_arn=bus_arn,
        kms_key_id=kms_key_id,
        kms_alias=res.kms_alias,
        secrets=tuple(names),
    )


def store_app_credentials(settings: Settings, provider: str, creds: dict[str, str]) -> None:
    """Write one provider's app credentials to ``settings.app_secret_name(provider)``.

    Shapes: clover ``{"client_id", "client_secret"}``, poynt ``{"app_id", "private_key_pem"}``;
    extra string fields (e.g. ``webhook_auth_code``, ``webhook_secret``) are kept.
    """
    if provider not in APP_CREDENTIAL_FIELDS:
        raise ValueError(f"unknown provider {provider!r}")
    missing = [
        f for f in APP_CREDENTIAL_FIELDS[provider] if not isinstance(creds.get(f), str) or not creds[f]
    ]
    if missing:
        raise ValueError(f"{provider} app credentials need {', '.join(missing)}")
    name = settings.app_secret_name(provider)
    value = json.dumps(creds)
    sm = client("secretsmanager")
    if _secret_exists(name):
        sm.put_secret_value(SecretId=name, SecretString=value)
    else:
        sm.create_secret(Name=name, SecretString=value, KmsKeyId=settings.resources.kms_alias)


# --- describe ---------------------------------------------------------------------------------


def _key_names(schema: list[dict[str, str]]) -> tuple[str | None, str | None]:
    pk = next((k["AttributeName"] for k in schema if k["KeyType"] == "HASH"), None)
    sk = next((k["AttributeName"] for k in schema if k["KeyType"] == "RANGE"), None)
    return pk, sk


def describe_local(settings: Settings) -> dict[str, Any]:
    """The stage's provisioned tables, queues, bucket and bus, read back from AWS (form: module doc).

    Only resources named by ``settings.resources`` are looked at; missing ones are absent.
    """
    ddb, sqs, s3, events = client("dynamodb"), client("sqs"), client("s3"), client("events")
    res = settings.resources
    tables: dict[str, Any] = {}
    for spec in res.tables:
        try:
            t = ddb.describe_table(TableName=spec.name)["Table"]
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                continue
            raise
        pk, sk = _key_names(t["KeySchema"])
        ttl = ddb.describe_time_to_live(TableName=spec.name)["TimeToLiveDescription"]
        indexes = {}
        for g in t.get("GlobalSecondaryIndexes", []):
            ipk, isk = _key_names(g["KeySchema"])
            indexes[g["IndexName"]] = {"pk": ipk, "sk": isk}
        tables[spec.name] = {
            "pk": pk,
            "sk": sk,
            "ttl": ttl.get("AttributeName")
            if ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
            else None,
            "indexes": indexes,
        }
    queues: dict[str, Any] = {}
    for qspec in res.queues:
        try:
            url = sqs.get_queue_url(QueueName=qspec.name)["QueueUrl"]
        except ClientError:
            continue
        a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(a["RedrivePolicy"]) if a.get("RedrivePolicy") else None
        queues[qspec.name] = {
            "fifo": a.get("FifoQueue") == "true",
            "dlq": str(redrive["deadLetterTargetArn"]).rsplit(":", 1)[-1] if redrive else None,
            "max_receive_count": int(redrive["maxReceiveCount"]) if redrive else None,
            "visibility_timeout": int(a["VisibilityTimeout"]),
        }
    buckets = [b["Name"] for b in s3.list_buckets().get("Buckets", []) if b["Name"] == res.bucket]
    buses: list[str] = []
    with contextlib.suppress(ClientError):
        buses.append(events.describe_event_bus(Name=res.event_bus)["Name"])
    return {"tables": tables, "queues": queues, "buckets": buckets, "event_buses": buses}


# --- data reset (tests) -----------------------------------------------------------------------


def clear_data(settings: Settings) -> None:
    """Empty the stage's tables, queues and bucket and delete its connection secrets.

    The state key and app credentials stay (they are configuration, not data).
    """
    ddb, sqs, s3, sm = client("dynamodb"), client("sqs"), client("s3"), client("secretsmanager")
    for spec in settings.resources.tables:
        key_names = [spec.pk] + ([spec.sk] if spec.sk else [])
        for page in ddb.get_paginator("scan").paginate(
            TableName=spec.name,
            ProjectionExpression=", ".join(f"#k{i}" for i in range(len(key_names))),
            ExpressionAttributeNames={f"#k{i}": k for i, k in enumerate(key_names)},
        ):
            items = page.get("Items", [])
            for start in range(0, len(items), 25):
                requests = [{"DeleteRequest": {"Key": item}} for item in items[start : start + 25]]
                while requests:
                    out = ddb.batch_write_item(RequestItems={spec.name: requests})
                    requests = out.get("UnprocessedItems", {}).get(spec.name, [])
    for qspec in settings.resources.queues:
        try:
            url = sqs.get_queue_url(QueueName=qspec.name)["QueueUrl"]
        except ClientError:
            continue
        _drop_all_messages(url)
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.bucket):
        objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objects:
            s3.delete_objects(Bucket=settings.bucket, Delete={"Objects": objects, "Quiet": True})
    keep = {settings.state_key_secret_name, *(settings.app_secret_name(p) for p in APP_CREDENTIAL_FIELDS)}
    prefix = settings.resources.secret_prefix + "/"
    for page in sm.get_paginator("list_secrets").paginate(Filters=[{"Key": "name", "Values": [prefix]}]):
        for s in page.get("SecretList", []):
            name = s["Name"]
            if name.startswith(prefix) and name not in keep:
                sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)


def _drop_all_messages(url: str) -> None:
    """Delete every message, in flight or not (PurgeQueue is limited to once a minute on AWS)."""
    sqs = client("sqs")
    for _ in range(10_000):
        attrs = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        if not any(int(v) for v in attrs.values()):
            return
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30).get(
            "Messages", []
        )
        if not msgs:
            # Everything left is in flight or delayed: PurgeQueue drops those too.
            with contextlib.suppress(ClientError):
                sqs.purge_queue(QueueUrl=url)
            return
        sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
        )
