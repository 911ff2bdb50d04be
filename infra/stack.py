"""The posync stack: everything built from ``posync.resources``, environment-agnostic.

Names that contain the account and region use the ``Aws.ACCOUNT_ID`` / ``Aws.REGION``
tokens, so the same template deploys to any account and synth needs no credentials.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, CfnOutput, Stack, Tags
from constructs import Construct

from infra.constructs.access import FunctionAccess
from infra.constructs.api import Api
from infra.constructs.exports import Exports
from infra.constructs.functions import Functions
from infra.constructs.monitoring import Monitoring
from infra.constructs.secrets import KeysAndSecrets
from infra.constructs.storage import Storage
from infra.constructs.sync import SyncPipeline
from infra.context import InfraContext
from posync.config import PROVIDERS
from posync.observability import NAMESPACE, SERVICE, TRACE_CALLS_ENV
from posync.resources import resources


def stack_name(stage: str) -> str:
    return f"posync-{stage}"


def _camel(key: str) -> str:
    return "".join(part.capitalize() for part in key.split("_"))


class PosyncStack(Stack):
    def __init__(
        self, scope: Construct, construct_id: str, *, ctx: InfraContext, deps_layer_dir: Path
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            description=f"posync {ctx.stage}: Clover and Poynt orders into this account",
        )
        self.ctx = ctx
        res = resources(ctx.stage, account=Aws.ACCOUNT_ID, region=Aws.REGION)
        self.res = res
        Tags.of(self).add("project", "posync")
        Tags.of(self).add("posync:stage", ctx.stage)

        self.secrets = KeysAndSecrets(self, "Secrets", res=res)
        key = self.secrets.key
        self.storage = Storage(self, "Storage", res=res, key=key, ia_days=ctx.exports_ia_days)
        self.sync = SyncPipeline(self, "Sync", res=res, key=key)
        self.exports = Exports(self, "Exports", res=res, bucket=self.storage.bucket, key=key)
        self.api = Api(
            self,
            "Api",
            stage=ctx.stage,
            rate_limit=ctx.api_rate_limit,
            burst_limit=ctx.api_burst_limit,
            log_retention_days=ctx.log_retention_days,
        )
        public_base_url = ctx.public_base_url or self.api.endpoint
        environment = {
            "POSYNC_STAGE": ctx.stage,
            "POSYNC_ACCOUNT_ID": Aws.ACCOUNT_ID,
            "POSYNC_EXPORT_BUCKET": self.storage.bucket.bucket_name,
            "POSYNC_SYNC_QUEUE_URL": self.sync.sync_queue.queue_url,
            "POSYNC_PUBLIC_BASE_URL": public_base_url,
            "POSYNC_PROVIDER_REGION": ctx.provider_region,
            "POSYNC_SCHEDULE_MINUTES": str(ctx.schedule_minutes),
            "POSYNC_RECONCILE_DAYS": str(ctx.reconcile_days),
            "POWERTOOLS_SERVICE_NAME": SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": NAMESPACE,
        }
        if ctx.trace_calls:
            environment[TRACE_CALLS_ENV] = "true"
        self.functions = Functions(
            self,
            "Functions",
            stage=ctx.stage,
            environment=environment,
            deps_layer_dir=deps_layer_dir,
            log_retention_days=ctx.log_retention_days,
        )
        fns = self.functions.functions
        self.api.add_routes(fns)
        self.sync.wire(
            dispatcher=fns["dispatcher"],
            worker=fns["worker"],
            schedule_minutes=ctx.schedule_minutes,
            reconcile_hours=ctx.reconcile_hours,
            worker_max_concurrency=ctx.worker_max_concurrency,
        )
        self.access = FunctionAccess(
            self,
            "Access",
            roles=self.functions.roles,
            key=key,
            tables=self.storage.tables,
            state_key=self.secrets.state_key,
            app_secrets=self.secrets.app_secrets,
            connection_secret_arns=self.secrets.connection_secret_arns(),
            secret_prefix=res.secret_prefix,
            sync_queue=self.sync.sync_queue,
            bucket=self.storage.bucket,
            event_bus=self.exports.event_bus,
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            stage=ctx.stage,
            key=key,
            functions=fns,
            dead_letter_queue=self.sync.dead_letter_queue,
            schedule_minutes=ctx.schedule_minutes,
            alarm_email=ctx.alarm_email,
            http_api=self.api.http_api,
        )
        self._outputs(public_base_url)

    def _outputs(self, public_base_url: str) -> None:
        """The CLI finds a deployed stack by these outputs."""

        def out(name: str, value: str, description: str) -> None:
            CfnOutput(self, name, value=value, description=description)

        out("Stage", self.ctx.stage, "posync stage")
        out("ApiUrl", public_base_url, "Public base URL of the HTTP API")
        for provider in PROVIDERS:
            out(
                f"ConnectUrl{provider.capitalize()}",
                f"{public_base_url}/connect/{provider}",
                f"Send merchants here to connect {provider}",
            )
        out("ExportBucket", self.storage.bucket.bucket_name, "Exports bucket (exports/orders/v1/...)")
        out("SyncQueueUrl", self.sync.sync_queue.queue_url, "Sync queue (FIFO)")
        out("SyncDlqUrl", self.sync.dead_letter_queue.queue_url, "Sync dead-letter queue (FIFO)")
        out("EventBus", self.exports.event_bus.event_bus_name, "OrdersExported / ConnectionNeedsReauth bus")
        for key, table in self.storage.tables.items():
            out(f"{_camel(key)}Table", table.table_name, f"DynamoDB {key} table")
        out("GlueDatabase", self.exports.database_name, "Glue database of the exports")
        out("AthenaWorkGroup", self.exports.workgroup_name, "Athena workgroup (results encrypted)")
        out("AlarmTopicArn", self.monitoring.topic.topic_arn, "SNS topic the alarms publish to")
        out("KmsKeyArn", self.secrets.key.key_arn, "The stage's KMS customer key")
