"""The canonical order v1 columns, in one place, for the Glue table and the Athena view.

Each column's type is a tiny tree rendered two ways: Hive DDL for the Glue table
(``struct<...>``, ``array<...>``) and Presto/Trino for the view definition
(``row(...)``, ``array(...)``). The top-level names follow the canonical order v1
contract (``posync.canonical``); ``provider`` and ``merchant_id`` are not data
columns here because they are the table's partition keys (Athena rejects a column
that shares its name with a partition key) and their values are the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Prim:
    hive: str  # string, bigint, int, double, boolean

    def to_hive(self) -> str:
        return self.hive

    def to_presto(self) -> str:
        return {"string": "varchar", "int": "integer"}.get(self.hive, self.hive)


@dataclass(frozen=True)
class Struct:
    fields: tuple[tuple[str, Prim | Struct | Array], ...]

    def to_hive(self) -> str:
        return "struct<" + ",".join(f"{n}:{t.to_hive()}" for n, t in self.fields) + ">"

    def to_presto(self) -> str:
        return "row(" + ",".join(f"{n} {t.to_presto()}" for n, t in self.fields) + ")"


@dataclass(frozen=True)
class Array:
    element: Prim | Struct | Array

    def to_hive(self) -> str:
        return f"array<{self.element.to_hive()}>"

    def to_presto(self) -> str:
        return f"array({self.element.to_presto()})"


ColumnType = Prim | Struct | Array

STRING = Prim("string")
BIGINT = Prim("bigint")  # money: integer minor units
INT = Prim("int")
DOUBLE = Prim("double")
BOOLEAN = Prim("boolean")

# Partition keys, in path order: exports/orders/v1/provider={p}/merchant_id={m}/dt={YYYY-MM-DD}/
PARTITION_KEYS: tuple[tuple[str, ColumnType], ...] = (
    ("provider", STRING),
    ("merchant_id", STRING),
    ("dt", STRING),
)
PROVIDERS: tuple[str, ...] = ("clover", "poynt")

# Data columns of canonical order v1 (times stay RFC 3339 strings: they sort as they should).
ORDER_COLUMNS: tuple[tuple[str, ColumnType], ...] = (
    ("schema_version", INT),
    ("schema_minor", INT),  # v1.1 (null on orders written before it)
    ("order_id", STRING),
    ("state", STRING),
    ("provider_state", STRING),
    ("currency", STRING),
    ("created_at", STRING),
    ("modified_at", STRING),
    (
        "totals",
        Struct(
            (
                ("subtotal", BIGINT),
                ("discount", BIGINT),
                ("tax", BIGINT),
                ("tip", BIGINT),
                ("service_charge", BIGINT),
                ("total", BIGINT),
                ("paid", BIGINT),
                ("refunded", BIGINT),
            )
        ),
    ),
    (
        "line_items",
        Array(
            Struct(
                (
                    ("line_id", STRING),
                    ("name", STRING),
                    ("sku", STRING),
                    ("quantity", DOUBLE),
                    ("unit_price", BIGINT),
                    ("discount", BIGINT),
                    ("tax", BIGINT),
                    ("total", BIGINT),
                    ("refunded", BOOLEAN),
                )
            )
        ),
    ),
    (
        "payments",
        Array(
            Struct(
                (
                    ("payment_id", STRING),
                    ("amount", BIGINT),
                    ("tip", BIGINT),
                    ("tax", BIGINT),
                    ("tender", STRING),
                    ("card_brand", STRING),
                    ("status", STRING),
                    ("created_at", STRING),
                )
            )
        ),
    ),
    (
        "refunds",
        Array(
            Struct(
                (
                    ("refund_id", STRING),
                    ("payment_id", STRING),
                    ("amount", BIGINT),
                    ("tax", BIGINT),
                    ("tip", BIGINT),
                    ("created_at", STRING),
                )
            )
        ),
    ),
    ("discounts", Array(Struct((("name", STRING), ("amount", BIGINT))))),
    ("taxes", Array(Struct((("name", STRING), ("rate", DOUBLE), ("amount", BIGINT))))),
    ("source", Struct((("store_id", STRING), ("device_id", STRING), ("employee_id", STRING)))),
    ("discrepancies", Array(Struct((("field", STRING), ("value", BIGINT), ("computed", BIGINT))))),  # v1.1
    # v1.1: tombstones only (state "deleted"); null on every other version.
    ("deleted_at", STRING),
)


def canonical_top_level_names() -> list[str]:
    """Every top-level field of a canonical order that the table exposes (partition keys included)."""
    return [n for n, _ in PARTITION_KEYS if n != "dt"] + [n for n, _ in ORDER_COLUMNS]


def latest_view_sql(database: str, table: str) -> str:
    """``orders_latest``: the newest ``modified_at`` per (provider, merchant_id, order_id).

    A deleted order's newest version is its tombstone (``state = 'deleted'``, ``deleted_at``
    set): the view shows it as deleted; a report of live orders filters ``state <> 'deleted'``.

    ``modified_at`` is RFC 3339 UTC with milliseconds and a ``Z``, so string order is time order.
    """
    for ident in (database, table):
        if not IDENTIFIER.fullmatch(ident):
            raise ValueError(f"not a plain Athena identifier: {ident!r}")
    cols = ", ".join([f'"{n}"' for n, _ in ORDER_COLUMNS] + [f'"{n}"' for n, _ in PARTITION_KEYS])
    return (  # identifiers checked above; nothing here comes from a request
        f"SELECT {cols} FROM ("  # noqa: S608
        f"SELECT *, row_number() OVER (PARTITION BY provider, merchant_id, order_id "
        f"ORDER BY modified_at DESC, dt DESC) AS rn "
        f'FROM "{database}"."{table}") WHERE rn = 1'
    )
