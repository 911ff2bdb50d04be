"""``posync.serialized``: a canonical order serialized once, read as a mapping, written as is."""

from __future__ import annotations

import json
from typing import Any

import pytest

from posync.serialized import Serialized, to_json

ORDER: dict[str, Any] = {
    "schema_version": 1,
    "provider": "clover",
    "order_id": "ABC123DEF456G",
    "modified_at": "2026-09-20T10:00:00.000Z",
    "title": "Café, crème brûlée",  # not ASCII: written as UTF-8, not \\u escapes
    "totals": {"total": 1234, "currency": "EUR"},
    "line_items": [{"name": "a", "price": 1}],
}


def test_the_text_is_the_compact_json_storage_and_exports_wrote_before() -> None:
    s = Serialized.of(ORDER)
    assert s.text == json.dumps(ORDER, separators=(",", ":"), ensure_ascii=False)
    assert "Café" in s.text
    assert to_json(s) == to_json(ORDER) == s.text


def test_it_reads_as_the_order_it_was_made_of() -> None:
    s = Serialized.of(ORDER)
    assert (s["order_id"], s["modified_at"]) == ("ABC123DEF456G", "2026-09-20T10:00:00.000Z")
    assert s["totals"] == {"total": 1234, "currency": "EUR"}
    assert s.get("missing") is None
    assert "line_items" in s and len(s) == len(ORDER) and list(s) == list(ORDER)
    assert dict(s) == s.to_dict() == ORDER
    assert s == ORDER  # a Mapping compares by items
    with pytest.raises(KeyError):
        s["missing"]


def test_its_reading_hands_out_copies_so_the_text_is_the_order() -> None:
    s = Serialized.of(ORDER)
    s["totals"]["total"] = 0
    s.to_dict()["title"] = "changed"
    assert s.to_dict() == ORDER


@pytest.mark.parametrize("field", ["order_id", "modified_at"])
def test_an_order_without_the_fields_storage_keys_on_is_refused(field: str) -> None:
    broken = {k: v for k, v in ORDER.items() if k != field}
    with pytest.raises(KeyError):
        Serialized.of(broken)


def test_the_repr_names_the_order_and_not_its_content() -> None:
    assert repr(Serialized.of(ORDER)) == "<Serialized order 'ABC123DEF456G' at 2026-09-20T10:00:00.000Z>"
