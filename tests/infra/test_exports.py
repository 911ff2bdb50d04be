"""Glue table with partition projection, the orders_latest view, the Athena workgroup."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from infra.constructs.exports import presto_view_text
from infra.order_columns import (
    ORDER_COLUMNS,
    PARTITION_KEYS,
    Array,
    ColumnType,
    Prim,
    Struct,
    latest_view_sql,
)
from posync.canonical import schema
from tests.infra.support import Synth


def glue_tables(synth: Synth) -> dict[str, dict[str, Any]]:
    return {p["TableInput"]["Name"]: p for p in synth.props("AWS::Glue::Table")}


def bucket_lid(synth: Synth) -> str:
    (lid,) = [lid for lid, r in synth.resources("AWS::S3::Bucket").items() if "BucketName" in r["Properties"]]
    return lid


def joined(value: Any, bucket: str) -> str:
    """Render a Fn::Join over the bucket's Ref as text with <bucket> in its place."""
    parts = value["Fn::Join"][1]
    assert all(isinstance(p, str) or p == {"Ref": bucket} for p in parts)
    return "".join(p if isinstance(p, str) else "<bucket>" for p in parts)


def test_database_and_table_names(synth: Synth) -> None:
    (db,) = synth.props("AWS::Glue::Database")
    assert db["DatabaseInput"]["Name"] == "posync_dev"
    assert sorted(glue_tables(synth)) == ["orders", "orders_latest"]
    assert all(t["DatabaseName"] == "posync_dev" for t in glue_tables(synth).values())


def test_orders_table_reads_gzip_jsonl_under_the_v1_prefix(synth: Synth) -> None:
    t = glue_tables(synth)["orders"]["TableInput"]
    sd = t["StorageDescriptor"]
    assert t["TableType"] == "EXTERNAL_TABLE"
    assert joined(sd["Location"], bucket_lid(synth)) == "s3://<bucket>/exports/orders/v1/"
    assert sd["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    assert sd["InputFormat"] == "org.apache.hadoop.mapred.TextInputFormat"
    assert t["Parameters"]["compressionType"] == "gzip"
    assert [c["Name"] for c in t["PartitionKeys"]] == ["provider", "merchant_id", "dt"]
    assert [c["Name"] for c in sd["Columns"]] == [n for n, _ in ORDER_COLUMNS]


def test_partition_projection(synth: Synth) -> None:
    p = glue_tables(synth)["orders"]["TableInput"]["Parameters"]
    assert p["projection.enabled"] == "true"
    assert p["projection.provider.type"] == "enum"
    assert p["projection.provider.values"] == "clover,poynt"
    assert p["projection.merchant_id.type"] == "injected"
    assert p["projection.dt.type"] == "date"
    assert p["projection.dt.format"] == "yyyy-MM-dd"
    assert p["projection.dt.range"] == "2020-01-01,NOW"
    # The template matches the export key layout of the DESIGN.md contract.
    assert (
        joined(p["storage.location.template"], bucket_lid(synth))
        == "s3://<bucket>/exports/orders/v1/provider=${provider}/merchant_id=${merchant_id}/dt=${dt}/"
    )


def decoded_view(original_text: str) -> dict[str, Any]:
    m = re.fullmatch(r"/\* Presto View: ([A-Za-z0-9+/=]+) \*/", original_text)
    assert m, original_text
    view: dict[str, Any] = json.loads(base64.b64decode(m.group(1)))
    return view


def test_latest_view_keeps_the_newest_modified_at_per_order(synth: Synth) -> None:
    t = glue_tables(synth)["orders_latest"]["TableInput"]
    assert t["TableType"] == "VIRTUAL_VIEW"
    assert t["Parameters"]["presto_view"] == "true"
    assert t["ViewExpandedText"] == "/* Presto View */"
    view = decoded_view(t["ViewOriginalText"])
    sql = view["originalSql"]
    assert view["catalog"] == "awsdatacatalog"
    assert view["schema"] == "posync_dev"
    assert "row_number() OVER (PARTITION BY provider, merchant_id, order_id ORDER BY modified_at DESC" in sql
    assert sql.endswith("WHERE rn = 1")
    assert 'FROM "posync_dev"."orders"' in sql
    # The view's columns (and their Glue types) are the table's columns plus the partition keys.
    expected = [(n, t.to_presto()) for n, t in (*ORDER_COLUMNS, *PARTITION_KEYS)]
    assert [(c["name"], c["type"]) for c in view["columns"]] == expected
    glue_cols = [(c["Name"], c["Type"]) for c in t["StorageDescriptor"]["Columns"]]
    assert glue_cols == [(n, t.to_hive()) for n, t in (*ORDER_COLUMNS, *PARTITION_KEYS)]
    assert "rn" not in [c["name"] for c in view["columns"]]


def test_view_text_round_trips() -> None:
    sql = latest_view_sql("posync_x", "orders")
    assert decoded_view(presto_view_text("posync_x", sql))["originalSql"] == sql


def test_named_query_recreates_the_view(synth: Synth) -> None:
    (q,) = synth.props("AWS::Athena::NamedQuery")
    assert q["Database"] == "posync_dev"
    assert q["WorkGroup"] == "posync-dev"
    assert (
        q["QueryString"]
        == f'CREATE OR REPLACE VIEW "posync_dev"."orders_latest" AS {latest_view_sql("posync_dev", "orders")}'
    )


def test_view_sql_refuses_odd_identifiers() -> None:
    with pytest.raises(ValueError, match="identifier"):
        latest_view_sql('x"; DROP TABLE y; --', "orders")


def test_workgroup_results_are_encrypted_in_the_bucket_and_enforced(synth: Synth) -> None:
    (wg,) = synth.props("AWS::Athena::WorkGroup")
    cfg = wg["WorkGroupConfiguration"]
    assert cfg["EnforceWorkGroupConfiguration"] is True
    result = cfg["ResultConfiguration"]
    assert joined(result["OutputLocation"], bucket_lid(synth)) == "s3://<bucket>/athena-results/"
    (key,) = synth.resources("AWS::KMS::Key")
    assert result["EncryptionConfiguration"] == {
        "EncryptionOption": "SSE_KMS",
        "KmsKey": {"Fn::GetAtt": [key, "Arn"]},
    }


# --- alignment with the canonical order v1 JSON Schema -----------------------------------------


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _json_kind(node: dict[str, Any]) -> str:
    if "const" in node:
        return type(node["const"]).__name__.replace("int", "integer")
    if "enum" in node:
        return "string"
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    (kind,) = [k for k in kinds if k != "null"]
    return str(kind)


def assert_aligned(path: str, glue: ColumnType, node: dict[str, Any], defs: dict[str, Any]) -> None:
    node = _deref(node, defs)
    kind = _json_kind(node)
    if isinstance(glue, Struct):
        assert kind == "object", path
        props = node["properties"]
        assert sorted(n for n, _ in glue.fields) == sorted(props), path
        for name, sub in glue.fields:
            assert_aligned(f"{path}.{name}", sub, props[name], defs)
    elif isinstance(glue, Array):
        assert kind == "array", path
        assert_aligned(f"{path}[]", glue.element, node["items"], defs)
    else:
        assert isinstance(glue, Prim)
        allowed = {
            "string": {"string"},
            "integer": {"bigint", "int"},
            "number": {"double"},
            "boolean": {"boolean"},
        }
        assert glue.hive in allowed[kind], f"{path}: {glue.hive} for JSON {kind}"


def test_columns_follow_the_canonical_order_schema() -> None:
    # Given the canonical order v1 JSON Schema shipped in the posync package
    s = schema()
    props, defs = s["properties"], s["$defs"]
    # Then every top-level field is a column or a partition key, and nothing else is
    columns = dict(ORDER_COLUMNS)
    partitions = {n for n, _ in PARTITION_KEYS} - {"dt"}
    assert set(props) == set(columns) | partitions
    # And each column's type (down to struct fields) matches the schema's
    for name, glue in ORDER_COLUMNS:
        assert_aligned(name, glue, props[name], defs)
    # Money is never a float
    totals = columns["totals"]
    assert isinstance(totals, Struct)
    assert all(t.to_hive() == "bigint" for _, t in totals.fields)
