"""DynamoDB tables and the exports bucket, exactly as ``posync.resources`` describes them."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as ddb
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge
from posync.resources import Resources, TableSpec

# Bucket prefixes (DESIGN.md contracts; the storage engineer's writer and the Glue table use them).
EXPORTS_PREFIX = "exports/"
QUARANTINE_PREFIX = "quarantine/"
RAW_PREFIX = "raw/"
ATHENA_RESULTS_PREFIX = "athena-results/"

QUARANTINE_EXPIRY_DAYS = 90
NONCURRENT_EXPIRY_DAYS = 30
ATHENA_RESULTS_EXPIRY_DAYS = 30
ACCESS_LOG_EXPIRY_DAYS = 365


def _attr(name: str) -> ddb.Attribute:
    # Every key in posync's tables is a string (connection ids, order ids, statuses, control keys).
    return ddb.Attribute(name=name, type=ddb.AttributeType.STRING)


class Storage(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, res: Resources, key: kms.IKey, ia_days: int
    ) -> None:
        super().__init__(scope, construct_id)
        self.tables: dict[str, ddb.Table] = {spec.key: self._table(spec, key) for spec in res.tables}

        # Server access logs for the exports bucket (S3 log delivery supports SSE-S3 only).
        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-logs", expiration=Duration.days(ACCESS_LOG_EXPIRY_DAYS))
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.access_logs,
            "AwsSolutions-S1",
            "This is the server access log bucket of the exports bucket; logging it into itself would loop.",
        )

        self.bucket = s3.Bucket(
            self,
            "Exports",
            bucket_name=res.bucket,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=key,
            bucket_key_enabled=True,
            versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="exports-bucket/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="exports-to-infrequent-access",
                    prefix=EXPORTS_PREFIX,
                    transitions=[
                        s3.Transition(
                            storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                            transition_after=Duration.days(ia_days),
                        )
                    ],
                ),
                s3.LifecycleRule(
                    id="quarantine-expiry",
                    prefix=QUARANTINE_PREFIX,
                    expiration=Duration.days(QUARANTINE_EXPIRY_DAYS),
                ),
                s3.LifecycleRule(
                    id="athena-results-expiry",
                    prefix=ATHENA_RESULTS_PREFIX,
                    expiration=Duration.days(ATHENA_RESULTS_EXPIRY_DAYS),
                ),
                s3.LifecycleRule(
                    id="noncurrent-versions-and-uploads",
                    noncurrent_version_expiration=Duration.days(NONCURRENT_EXPIRY_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                ),
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _table(self, spec: TableSpec, key: kms.IKey) -> ddb.Table:
        table = ddb.Table(
            self,
            "".join(part.capitalize() for part in spec.key.split("_")) + "Table",
            table_name=spec.name,
            partition_key=_attr(spec.pk),
            sort_key=_attr(spec.sk) if spec.sk else None,
            billing_mode=ddb.BillingMode.PAY_PER_REQUEST,
            encryption=ddb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            point_in_time_recovery_specification=ddb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=spec.ttl_attribute,
            deletion_protection=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        for index in spec.indexes:
            table.add_global_secondary_index(
                index_name=index.name,
                partition_key=_attr(index.pk),
                sort_key=_attr(index.sk) if index.sk else None,
                projection_type=ddb.ProjectionType.ALL,
            )
        return table
