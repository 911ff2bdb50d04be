"""``iter_json_list``: a reply's list parsed one item at a time, the same JSON as ``json.loads`` reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posync.errors import ProviderError
from posync.transport import iter_json_list

finite = st.floats(allow_nan=False, allow_infinity=False)  # NaN and Infinity are not JSON
scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def read(body: bytes, key: str = "elements", **kw: Any) -> tuple[list[Any], dict[str, Any]]:
    rest: dict[str, Any] = {}
    items = list(iter_json_list(body, key, what="Test", rest=rest, **kw))
    return items, rest


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(values, max_size=6),
    others=st.dictionaries(st.text(max_size=6).filter(lambda k: k != "elements"), values, max_size=3),
    first=st.booleans(),
    indent=st.sampled_from([None, 0, 2, "\t"]),
    separators=st.sampled_from([None, (",", ":"), (" ,\r\n", " :  ")]),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
)
def test_items_and_members_are_what_json_loads_reads(
    items: list[Any],
    others: dict[str, Any],
    first: bool,
    indent: Any,
    separators: Any,
    encoding: str,
) -> None:
    # Given any object with a list under the key, the key first or last, in any layout and encoding
    doc = {"elements": items, **others} if first else {**others, "elements": items}
    body = " \n" + json.dumps(doc, indent=indent, separators=separators, ensure_ascii=False) + "\r\n"
    raw = body.encode(encoding)
    # When streamed
    got, rest = read(raw)
    # Then the items and the other members are exactly what json.loads reads
    expected = json.loads(raw)
    assert got == expected["elements"]
    assert rest == {k: v for k, v in expected.items() if k != "elements"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"elements":[1,2',  # cut mid-list
        b'{"elements":[1,2]',  # cut before the object closes
        b'{"elements":[1,2]} x',  # trailing data
        b'{"elements":[1,,2]}',
        b'{"elements":[1,]}',
        b'{"a":1,}',
        b"{elements:[]}",
        b"   ",
        b"\xff\xfe\xfd",  # not text
    ],
)
def test_a_body_json_loads_rejects_is_a_provider_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(body)
    with pytest.raises(ProviderError, match="non-JSON body"):
        read(body)


@pytest.mark.parametrize("body", [b'[{"elements":[]}]', b'"elements"', b"12", b" null"])
def test_json_that_is_not_an_object_is_a_provider_error(body: bytes) -> None:
    with pytest.raises(ProviderError, match="Test reply is not a JSON object"):
        read(body)


def test_an_error_late_in_the_body_comes_before_any_item() -> None:
    # Given a body cut after two items
    it = iter_json_list(b'{"elements":[{"id":"A"},{"id":"B"},{"id"', "elements", what="Test")
    # Then no item comes: the whole body is checked before the first one
    with pytest.raises(ProviderError, match="non-JSON body"):
        next(it)


@pytest.mark.parametrize(
    "body",
    [
        b'{"elements":[NaN]}',  # json.loads reads these; they are not JSON (RFC 8259)
        b'{"elements":[Infinity]}',
        b'{"elements":[1e999]}',  # out of a double's range
        b'{"elements":["\\ud800"]}',  # a lone surrogate: no Unicode text
        b'{"elements":["\xff"]}',  # not UTF-8
        b'{"href":"\xff","elements":[]}',
    ],
)
def test_what_is_not_json_text_is_a_provider_error(body: bytes) -> None:
    with pytest.raises(ProviderError, match="non-JSON body"):
        read(body)


def test_a_repeated_member_is_refused() -> None:
    # Given a reply naming another member twice (json.loads would keep the last silently)
    with pytest.raises(ProviderError, match="repeats a member"):
        read(b'{"href":"a","elements":[],"href":"b"}')


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"href":"h"}',
        b'{"elements":{}}',
        b'{"elements":null}',
        b'{"elements":[1],"elements":[2]}',  # json.loads keeps the last: which one is meant?
    ],
)
def test_no_single_list_under_the_key_is_an_error_when_required(body: bytes) -> None:
    with pytest.raises(ProviderError, match="Test reply without an elements list"):
        read(body)


@pytest.mark.parametrize("body", [b"", b"{}", b'{"links":[]}'])
def test_no_list_is_an_empty_one_when_not_required(body: bytes) -> None:
    assert read(body, required=False)[0] == []


def test_the_status_is_carried_on_the_error() -> None:
    with pytest.raises(ProviderError) as err:
        list(iter_json_list(b"<html>", "elements", what="Test", status=203))
    assert err.value.status == 203
