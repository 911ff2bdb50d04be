"""Provider and merchant ids are checked before they reach a key or a secret name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from posync.domain import check_merchant_id, check_ref, connection_id
from posync.errors import InvalidInput, UnknownProvider
from posync.syncqueue import SyncKind, SyncRequest

POYNT_ID = "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f"


def test_valid_ids_make_a_connection_id() -> None:
    assert connection_id("clover", "ABCDEFGHJKMNP") == "clover#ABCDEFGHJKMNP"
    assert connection_id("poynt", POYNT_ID) == f"poynt#{POYNT_ID}"


@pytest.mark.parametrize(
    "merchant_id",
    ["../../etc/passwd", "ABCDEFGHJKMN", "abcdefghjkmnp", "ABCDEFGHJKMNP/x", "ABCDEFGHJKMNP\n", "*", ""],
)
def test_hostile_clover_ids_are_refused(merchant_id: str) -> None:
    with pytest.raises(InvalidInput):
        check_merchant_id("clover", merchant_id)


@pytest.mark.parametrize("provider", ["square", "CLOVER", "clover/../app", "", "poynt "])
def test_unknown_providers_are_refused(provider: str) -> None:
    with pytest.raises(UnknownProvider):
        connection_id(provider, "ABCDEFGHJKMNP")


@given(st.text(max_size=80))
def test_no_string_outside_the_pattern_passes(text: str) -> None:
    for provider in ("clover", "poynt"):
        try:
            check_merchant_id(provider, text)
        except InvalidInput:
            continue
        assert "/" not in text and "#" not in text and len(text) in (13, 36)


def test_ref_is_optional_and_strict() -> None:
    assert check_ref(None) is None
    assert check_ref("crm-42") == "crm-42"
    with pytest.raises(InvalidInput):
        check_ref("<script>")


def test_sync_request_round_trips_and_rejects_garbage() -> None:
    req = SyncRequest("clover", "ABCDEFGHJKMNP", SyncKind.BACKFILL, since="2026-08-25T00:00:00Z")
    assert SyncRequest.from_json(req.to_json()) == req
    for body in ("{", "[]", '{"provider": "clover"}', '{"provider":"clover","merchant_id":"../x"}'):
        with pytest.raises((InvalidInput, UnknownProvider)):
            SyncRequest.from_json(body)
