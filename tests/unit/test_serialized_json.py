"""``to_json``: msgspec's text is exactly ``json.dumps``'s, floats of every magnitude included."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from posync.serialized import Serialized, to_json


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | finite
    | st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False)  # around 1e-4 (and 1e-5, 1e-7)
    | st.floats(min_value=1e15, max_value=1e17)  # around 1e16
    | st.text()
    | st.text(alphabet='e0.:,[-1"\\\x00\x1f\u2028')  # the fallback's pattern inside strings
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(order=st.dictionaries(st.text(max_size=8), values, max_size=6))
def test_the_text_is_what_json_dumps_writes(order: dict[str, Any]) -> None:
    # Given any JSON object of finite numbers; When serialized; Then byte for byte json.dumps's text
    assert to_json(order) == dumps(order)


@settings(max_examples=300, deadline=None)
@given(x=finite, exp=st.integers(min_value=-330, max_value=308))
def test_a_float_of_any_magnitude_is_spelled_as_python_spells_it(x: float, exp: int) -> None:
    for value in (x, float(f"1e{exp}"), float(f"-1.5e{exp}") if exp < 308 else -1.5):
        order = {"quantity": value, "lines": [value, {"rate": value}]}
        assert to_json(order) == dumps(order)


def test_what_msgspec_cannot_encode_falls_back_to_json_dumps() -> None:
    # Given keys that are not strings and a lone surrogate (json.dumps writes both)
    orders: list[dict[Any, Any]] = [{1: "a", "b": 2}, {"name": "\ud800"}]
    for order in orders:
        assert to_json(order) == dumps(order)


def test_a_serialized_order_reads_back_as_the_order() -> None:
    order = {"order_id": "A1", "modified_at": "2026-01-01T00:00:00.000Z", "lines": [{"quantity": 1.5}]}
    s = Serialized.of(order)
    assert s.text == dumps(order)
    assert s.to_dict() == order
    assert to_json(s) == s.text
