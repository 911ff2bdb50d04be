"""The canonical order v1 JSON Schema: its contract, the layer's light validator (which must
agree with jsonschema), the docs covering every field, and the package staying light.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from posync.canonical import SCHEMA_VERSION, normalize, schema, validate
from posync.canonical.validation import _check_keywords
from posync.errors import MalformedOrder
from tests.unit.canonical_support import BUSINESS_ID, clover_orders, poynt_orders, schema_errors

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "canonical-order-v1.md"
TOP_LEVEL = [
    "schema_version",
    "provider",
    "merchant_id",
    "order_id",
    "state",
    "provider_state",
    "currency",
    "created_at",
    "modified_at",
    "totals",
    "line_items",
    "payments",
    "refunds",
    "discounts",
    "taxes",
    "source",
]


def a_valid_order() -> dict[str, Any]:
    return {
        "schema_version": 1,
        "provider": "clover",
        "merchant_id": "MERCHANT12345",
        "order_id": "ORDER00000001",
        "state": "paid",
        "provider_state": "locked",
        "currency": "USD",
        "created_at": "2026-11-20T10:00:00.000Z",
        "modified_at": "2026-11-20T10:05:00.250Z",
        "totals": {
            "subtotal": 1000,
            "discount": -100,
            "tax": 80,
            "tip": 200,
            "service_charge": 0,
            "total": 980,
            "paid": 980,
            "refunded": 0,
        },
        "line_items": [
            {
                "line_id": "L1",
                "name": "Widget",
                "sku": None,
                "quantity": 2.0,
                "unit_price": 500,
                "discount": -100,
                "tax": 80,
                "total": 900,
                "refunded": False,
            }
        ],
        "payments": [
            {
                "payment_id": "P1",
                "amount": 980,
                "tip": 200,
                "tax": 80,
                "tender": "card",
                "card_brand": "VISA",
                "status": "succeeded",
                "created_at": None,
            }
        ],
        "refunds": [
            {
                "refund_id": "R1",
                "payment_id": None,
                "amount": 1,
                "tax": 0,
                "tip": 0,
                "created_at": "2026-11-20T10:05:00.250Z",
            }
        ],
        "discounts": [{"name": None, "amount": -100}],
        "taxes": [{"name": "SALES", "rate": 8.889, "amount": 80}],
        "source": {"store_id": None, "device_id": "D1", "employee_id": None},
    }


def test_the_schema_is_valid_draft_2020_12_and_matches_the_contract() -> None:
    s = schema()
    Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # v1.1 adds optional fields only (orders written before it lack them and stay valid):
    # schema_minor and discrepancies, and deleted_at (tombstones only, state "deleted")
    assert s["required"] == TOP_LEVEL
    assert list(s["properties"]) == [
        TOP_LEVEL[0],
        "schema_minor",
        *TOP_LEVEL[1:],
        "discrepancies",
        "deleted_at",
    ]
    assert s["properties"]["schema_version"]["const"] == SCHEMA_VERSION == 1
    assert s["properties"]["totals"]["required"] == [
        "subtotal",
        "discount",
        "tax",
        "tip",
        "service_charge",
        "total",
        "paid",
        "refunded",
    ]
    assert s["$defs"]["line_item"]["required"] == [
        "line_id",
        "name",
        "sku",
        "quantity",
        "unit_price",
        "discount",
        "tax",
        "total",
        "refunded",
    ]
    assert s["$defs"]["payment"]["required"] == [
        "payment_id",
        "amount",
        "tip",
        "tax",
        "tender",
        "card_brand",
        "status",
        "created_at",
    ]
    assert s["$defs"]["refund"]["required"] == [
        "refund_id",
        "payment_id",
        "amount",
        "tax",
        "tip",
        "created_at",
    ]
    assert s["properties"]["state"]["enum"] == [
        "open",
        "paid",
        "completed",
        "cancelled",
        "refunded",
        "partially_refunded",
        "hidden",
        "deleted",
    ]


def test_schema_returns_a_copy() -> None:
    s = schema()
    s["required"].clear()
    assert schema()["required"] == TOP_LEVEL


def test_the_hand_written_order_is_valid_for_both_validators() -> None:
    order = a_valid_order()
    assert schema_errors(order) == []
    validate(order)


MUTATIONS: list[tuple[str, Any]] = [
    ("order_id", None),
    ("order_id", ""),
    ("schema_version", 2),
    ("schema_version", True),
    ("provider", "square"),
    ("state", "closed"),
    ("currency", "usd"),
    ("currency", "USDX"),
    ("created_at", "2026-11-20T10:00:00Z"),
    ("created_at", "2026-11-20 10:00:00.000Z"),
    ("totals.total", 9.8),
    ("totals.total", "980"),
    ("totals.total", True),
    ("totals.discount", 5),
    ("totals.tip", -1),
    ("totals.total", 10**16),
    ("line_items[0].quantity", "2"),
    ("line_items[0].refunded", 0),
    ("line_items[0].line_id", 1),
    ("payments[0].tender", "crypto"),
    ("payments[0].status", "SUCCESS"),
    ("payments[0].card_brand", "X" * 33),
    ("payments[0].created_at", 1763900000000),
    ("refunds[0].amount", -1),
    ("discounts[0].amount", 1),
    ("taxes[0].rate", -8.0),
    ("source.device_id", 5),
    ("line_items", {}),
    ("payments", None),
]


def _apply(order: dict[str, Any], path: str, value: Any) -> None:
    node: Any = order
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = value


@pytest.mark.parametrize(("path", "value"), MUTATIONS)
def test_both_validators_refuse_a_broken_order_and_the_light_one_names_the_field(
    path: str, value: Any
) -> None:
    order = a_valid_order()
    _apply(order, path, value)
    assert schema_errors(order)
    with pytest.raises(MalformedOrder) as caught:
        validate(order)
    assert caught.value.reason.startswith(path.split("[", maxsplit=1)[0].split(".", maxsplit=1)[0])


@pytest.mark.parametrize(
    "where", ["", "totals", "line_items[0]", "payments[0]", "refunds[0]", "source", "taxes[0]"]
)
def test_extra_and_missing_fields_are_refused(where: str) -> None:
    for change in ("extra", "missing"):
        order = a_valid_order()
        node: Any = order
        for part in where.replace("[", ".").replace("]", "").split(".") if where else []:
            node = node[int(part)] if part.isdigit() else node[part]
        if change == "extra":
            node["card_number"] = "4111111111111111"
        else:
            node.pop(next(iter(node)))
        assert schema_errors(order)
        with pytest.raises(MalformedOrder):
            validate(order)


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**60), 2**60), st.floats(allow_nan=False), st.text(max_size=8)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(clover_orders().map(lambda c: ("clover", c[0])), poynt_orders().map(lambda c: ("poynt", c[0]))),
    st.data(),
)
def test_the_light_validator_agrees_with_jsonschema(
    case: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    # Given a normalized order with one value replaced (or not)
    provider, raw = case
    order = normalize(provider, "MERCHANT12345" if provider == "clover" else BUSINESS_ID, raw)
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, prefix: tuple[Any, ...]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            paths.append((*prefix, key))
            walk(value, (*prefix, key))

    walk(order, ())
    broken = copy.deepcopy(order)
    if data.draw(st.booleans()):
        path = data.draw(st.sampled_from(paths))
        node: Any = broken
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = data.draw(JSON_LEAVES)
    # When both validators judge it, then they agree
    jsonschema_ok = not schema_errors(broken)
    try:
        validate(broken)
        light_ok = True
    except MalformedOrder:
        light_ok = False
    assert light_ok == jsonschema_ok


def test_the_light_validator_refuses_a_schema_it_cannot_enforce() -> None:
    with pytest.raises(ValueError, match="oneOf"):
        _check_keywords({"type": "object", "properties": {"x": {"oneOf": [{"type": "string"}]}}}, "#")
    with pytest.raises(ValueError, match="additionalProperties"):
        _check_keywords({"type": "object", "additionalProperties": {"type": "string"}}, "#")
    _check_keywords(schema(), "#")


def test_every_schema_field_is_documented() -> None:
    # Given the human description of the contract
    text = DOC.read_text(encoding="utf-8")
    s = schema()
    names = set(s["properties"]) | set(s["properties"]["totals"]["properties"])
    names |= set(s["properties"]["source"]["properties"])
    for definition in ("line_item", "payment", "refund"):
        names |= set(s["$defs"][definition]["properties"])
    names |= set(s["properties"]["taxes"]["items"]["properties"]) | set(
        s["properties"]["discounts"]["items"]["properties"]
    )
    # Then every field name appears in it, as code
    missing = sorted(name for name in names if f"`{name}`" not in text)
    assert not missing, missing
    for state in s["properties"]["state"]["enum"]:
        assert f"`{state}`" in text


def test_importing_and_normalizing_stays_light() -> None:
    # Given a fresh interpreter, when the package is imported and an order normalized
    code = (
        "import sys, time; t = time.perf_counter(); import posync.canonical as c; "
        "c.normalize('clover', 'M', {'id': 'O', 'currency': 'USD', 'createdTime': 1, 'modifiedTime': 2}); "
        "print(round((time.perf_counter() - t) * 1000), "
        "sorted(m for m in ('jsonschema', 'posync.canonical.validation', 'decimal', 'boto3', 'requests') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT / "layers" / "posync" / "python"), "PATH": "/usr/bin:/bin"},
    ).stdout.split(maxsplit=1)
    # Then neither jsonschema nor the schema machinery nor heavy libraries were loaded
    assert out[1].strip() == "[]"
