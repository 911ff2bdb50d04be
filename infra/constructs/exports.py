"""What downstream consumers see: the event bus, the Glue table over the exports, the Athena view.

- Event bus (name from ``posync.resources``): ``OrdersExported`` and ``ConnectionNeedsReauth``.
- Glue table over ``exports/orders/v1/`` (gzip JSONL, OpenX JSON SerDe) with partition
  projection: ``provider`` enum, ``merchant_id`` injected (queries name the merchant),
  ``dt`` date from 2020-01-01 to NOW. No crawler, no MSCK REPAIR: new partitions are
  queryable the moment their files land.
- ``orders_latest``: a Glue ``VIRTUAL_VIEW`` (Presto view text) that keeps the newest
  ``modified_at`` per (provider, merchant_id, order_id): exports are a change log.
  The same SQL ships as an Athena named query (``CREATE OR REPLACE VIEW``).
- An Athena workgroup whose results go to the bucket's ``athena-results/``, KMS-encrypted,
  enforced for every query in the workgroup.
"""

from __future__ import annotations

import base64
import json

from aws_cdk import Aws, Stack
from aws_cdk import aws_athena as athena
from aws_cdk import aws_events as events
from aws_cdk import aws_glue as glue
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.constructs.storage import ATHENA_RESULTS_PREFIX
from infra.order_columns import ORDER_COLUMNS, PARTITION_KEYS, PROVIDERS, latest_view_sql
from posync.resources import Resources

ORDERS_PREFIX = "exports/orders/v1/"
ORDERS_TABLE = "orders"
LATEST_VIEW = "orders_latest"
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"
TEXT_INPUT = "org.apache.hadoop.mapred.TextInputFormat"
TEXT_OUTPUT = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
DT_RANGE_START = "2020-01-01"


def glue_database_name(stage: str) -> str:
    # Athena identifiers: lower case, digits and underscores.
    return f"posync_{stage.replace('-', '_')}"


def presto_view_text(database: str, sql: str) -> str:
    """The ``ViewOriginalText`` Athena writes for a view: base64 of a Presto view definition."""
    columns = [{"name": n, "type": t.to_presto()} for n, t in (*ORDER_COLUMNS, *PARTITION_KEYS)]
    definition = {"originalSql": sql, "catalog": "awsdatacatalog", "schema": database, "columns": columns}
    encoded = base64.b64encode(json.dumps(definition, separators=(",", ":")).encode()).decode()
    return f"/* Presto View: {encoded} */"


class Exports(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, res: Resources, bucket: s3.IBucket, key: kms.IKey
    ) -> None:
        super().__init__(scope, construct_id)
        self.event_bus = events.EventBus(
            self,
            "Bus",
            event_bus_name=res.event_bus,
            description="posync: OrdersExported (after a run's manifest) and ConnectionNeedsReauth",
        )

        self.database_name = glue_database_name(res.stage)
        self.database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=Aws.ACCOUNT_ID,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name, description="posync order exports (canonical order v1)"
            ),
        )

        location = f"s3://{bucket.bucket_name}/{ORDERS_PREFIX}"
        template = location + "provider=${provider}/merchant_id=${merchant_id}/dt=${dt}/"
        self.orders_table = glue.CfnTable(
            self,
            "OrdersTable",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=self.database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=ORDERS_TABLE,
                description="Canonical orders v1, one JSON object per line (a change log: see orders_latest)",
                table_type="EXTERNAL_TABLE",
                partition_keys=[
                    glue.CfnTable.ColumnProperty(name=n, type=t.to_hive()) for n, t in PARTITION_KEYS
                ],
                parameters={
                    "EXTERNAL": "TRUE",
                    "classification": "json",
                    "compressionType": "gzip",
                    "projection.enabled": "true",
                    "projection.provider.type": "enum",
                    "projection.provider.values": ",".join(PROVIDERS),
                    "projection.merchant_id.type": "injected",
                    "projection.dt.type": "date",
                    "projection.dt.format": "yyyy-MM-dd",
                    "projection.dt.range": f"{DT_RANGE_START},NOW",
                    "projection.dt.interval": "1",
                    "projection.dt.interval.unit": "DAYS",
                    "storage.location.template": template,
                },
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    location=location,
                    input_format=TEXT_INPUT,
                    output_format=TEXT_OUTPUT,
                    compressed=True,
                    columns=[
                        glue.CfnTable.ColumnProperty(name=n, type=t.to_hive()) for n, t in ORDER_COLUMNS
                    ],
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library=JSON_SERDE,
                        parameters={"ignore.malformed.json": "FALSE", "case.insensitive": "FALSE"},
                    ),
                ),
            ),
        )
        self.orders_table.add_resource_dependency(self.database)

        view_sql = latest_view_sql(self.database_name, ORDERS_TABLE)
        self.latest_view = glue.CfnTable(
            self,
            "LatestView",
            catalog_id=Aws.ACCOUNT_ID,
            database_name=self.database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=LATEST_VIEW,
                description="Newest modified_at per (provider, merchant_id, order_id)",
                table_type="VIRTUAL_VIEW",
                parameters={"presto_view": "true", "comment": "Presto View"},
                view_original_text=presto_view_text(self.database_name, view_sql),
                view_expanded_text="/* Presto View */",
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    columns=[
                        glue.CfnTable.ColumnProperty(name=n, type=t.to_hive())
                        for n, t in (*ORDER_COLUMNS, *PARTITION_KEYS)
                    ],
                    serde_info=glue.CfnTable.SerdeInfoProperty(),
                ),
            ),
        )
        self.latest_view.add_resource_dependency(self.orders_table)

        self.workgroup_name = f"posync-{res.stage}"
        self.workgroup = athena.CfnWorkGroup(
            self,
            "WorkGroup",
            name=self.workgroup_name,
            description="posync exports: results encrypted with the stage key in the exports bucket",
            recursive_delete_option=True,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{bucket.bucket_name}/{ATHENA_RESULTS_PREFIX}",
                    expected_bucket_owner=Stack.of(self).account,
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=key.key_arn
                    ),
                ),
            ),
        )
        self.create_view_query = athena.CfnNamedQuery(
            self,
            "CreateLatestView",
            name=f"posync-{res.stage}-create-{LATEST_VIEW}",
            description="Re-create the orders_latest view (the stack also defines it in Glue)",
            database=self.database_name,
            work_group=self.workgroup_name,
            query_string=f'CREATE OR REPLACE VIEW "{self.database_name}"."{LATEST_VIEW}" AS {view_sql}',
        )
        self.create_view_query.add_resource_dependency(self.workgroup)
        self.create_view_query.add_resource_dependency(self.database)
